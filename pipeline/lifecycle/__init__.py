"""Model lifecycle: what happens to a model between training and serving (`percept models`).

- `export`: a ``.pt`` detector or classifier to OpenVINO FP32 / FP16 / INT8 (post-training
  quantisation calibrated on the user's frames), ONNX and, with a GPU, TensorRT FP16 / INT8,
  through ultralytics' own exporter; every variant loads with `pipeline.backends`.
- `compare`: each variant's accuracy (`pipeline.evaluate`) and speed (ms per image at batch 1
  and at the best batch, file size) in one table.

No Ray here: these run on a workstation, beside or before the service.
"""

from __future__ import annotations

from .compare import CompareError, compare_variants
from .export import FORMATS, ExportError, export_model

__all__ = ["FORMATS", "CompareError", "ExportError", "compare_variants", "export_model"]
