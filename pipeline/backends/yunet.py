"""The ``yunet`` detector backend: OpenCV's YuNet face detector through ``cv2.FaceDetectorYN``,
which decodes the network's heads and runs NMS itself. It runs on the decoder's letterboxed
square (one OpenCV detector per square size), one frame at a time; boxes come back in camera
pixels with the label ``face``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DetectorConfig
from ..models import CategoryMap, DetectorInput, ModelError, card_nms_iou, field_key, model_name
from ..schema import Detections
from ..yunet_open import create_yunet
from .base import per_item, warm_up_detector, warn_cpu_only
from .card import ModelCard

log = logging.getLogger("percept.backends")

TOP_K = 5000  # candidates kept before NMS (OpenCV's default)


def load_detector(cfg: DetectorConfig, *, card: ModelCard | None, weights: str, models_dir: str | None,
                  field: str, warmup: bool = True) -> YuNetDetector:
    import cv2

    if not Path(weights).is_file():
        raise ModelError(f"{field_key(field, 'weights')}: {weights!r} does not exist")
    if not hasattr(cv2, "FaceDetectorYN"):
        raise ModelError(f"{field}: the yunet backend needs OpenCV >= 4.8 (cv2.FaceDetectorYN); "
                         f"this is OpenCV {cv2.__version__}")
    warn_cpu_only(cfg, field, "yunet")  # (a device or half asked for: said, not ignored)
    threads = cfg.threads or max(1, round(cfg.num_cpus))
    cv2.setNumThreads(threads)  # OpenCV's pool is per process: the replica's share
    nms_iou = card_nms_iou(cfg, card, field=field) if card is not None else 0.3
    det = YuNetDetector(weights, cfg=cfg, nms_iou=nms_iou, name=model_name(cfg), field=field, card=card)
    det.detector_for(cfg.imgsz)  # reads the network: a bad file fails here, not on the first frame
    if warmup:
        warm_up_detector(det, cfg.imgsz, field, weights)
    log.info("detector %s on CPU (yunet, %d thread(s))", det.name, threads)
    return det


class YuNetDetector:
    """Faces on batches of `DetectorInput` (frame by frame); boxes in camera pixels."""

    def __init__(self, weights: str, *, cfg: DetectorConfig, nms_iou: float, name: str, field: str,
                 card: ModelCard | None = None):
        self.weights = weights
        self.cfg = cfg
        self.nms_iou = nms_iou
        self.name = name
        self.field = field
        self.device = "cpu"
        self.half = False
        self.names = {0: "face"}
        self.card = card  # as the openvino detector keeps it: `percept eval` reports its nms_iou
        self.categories = CategoryMap(cfg.categories, self.names, field=field_key(field, "categories"))
        self._detectors: dict[tuple[int, int], Any] = {}
        self._lock = threading.Lock()

    def detector_for(self, side: int) -> Any:
        """The OpenCV detector for a ``side``×``side`` input (made once per size)."""
        import cv2

        key = (side, side)
        if key not in self._detectors:
            try:
                self._detectors[key] = create_yunet(self.weights, key, self.cfg.conf, self.nms_iou, TOP_K)
            except cv2.error as exc:
                raise ModelError(f"{self.field}: OpenCV cannot load {self.weights!r} as YuNet: "
                                 f"{str(exc).strip().splitlines()[-1][:300]}") from None
        return self._detectors[key]

    def detect_batch(self, inputs: Sequence[DetectorInput]) -> list[Detections | Exception]:
        return [r for inp in inputs for r in per_item(self._detect, [inp])]

    def _detect(self, inputs: Sequence[DetectorInput]) -> list[Detections]:
        return [self._one(inp) for inp in inputs]

    def _one(self, inp: DetectorInput) -> Detections:
        from ultralytics.utils.ops import scale_boxes

        image = inp.image
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3 and image.shape[0] == image.shape[1]):
            raise ValueError(f"{self.name}: expects a square uint8 BGR image (the frame letterboxed to imgsz "
                             f"{self.cfg.imgsz}), got shape {getattr(image, 'shape', None)}")
        side = image.shape[0]
        with self._lock:  # an OpenCV detector is not safe to share between threads
            _, faces = self.detector_for(side).detect(image)
        if faces is None or len(faces) == 0:
            faces = np.zeros((0, 15), np.float32)
        faces = faces[faces[:, 14] >= self.cfg.conf][: self.cfg.max_det]
        xyxy = np.concatenate([faces[:, 0:2], faces[:, 0:2] + faces[:, 2:4]], axis=1).astype(np.float32)
        xyxy = scale_boxes((side, side), xyxy, inp.orig_shape)
        return self.categories.detections(xyxy, faces[:, 14].astype(np.float32), np.zeros(len(faces), np.int64))
