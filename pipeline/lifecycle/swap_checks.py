"""The checks of a hot swap before anything changes (`validate_swap`, on the API's replica): the
path exists and loads, on the CPU, as a model of the deployment's kind; it keeps the facts the
rest of the graph relies on (`compare_facts` against the running model's `model_facts`); and what
it does not change is said in the answer (`size_notes`). Refusals are `SwapRefused`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from ..config_errors import ConfigError
from ..models import ModelError, model_name, path_exists, resolve_weights
from ..redact import redact
from .swap import SwapRefused, model_facts, swapped_cfg

log = logging.getLogger("percept.swap")

WEIGHT_FORMATS = {".pt": "PyTorch", ".onnx": "ONNX", ".xml": "OpenVINO IR", ".engine": "TensorRT",
                  ".torchscript": "TorchScript", ".tflite": "TFLite", ".pb": "TensorFlow GraphDef"}


def _quoted(path: str) -> str:
    """A path as given, quoted, its credentials scrubbed (a URL pasted as weights came back whole)."""
    return redact(repr(path))


def check_weights_path(spec: str, models_dir: str | None, *, field: str = "weights") -> str:
    """The weights as a path that exists, is readable and has a format percept loads."""
    path = Path(resolve_weights(spec, models_dir)).expanduser()
    if not path_exists(path):
        where = f" (nor in PERCEPT_MODELS_DIR={models_dir})" if models_dir and not Path(spec).is_absolute() else ""
        raise SwapRefused(f"{field}: {_quoted(spec)} does not exist{where}; the path must be readable by the model replicas")
    files = sorted(path.glob("*.xml")) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise SwapRefused(f"{field}: {_quoted(spec)} is a folder without a model (an OpenVINO export folder holds an .xml)")
    if not path.is_dir() and path.suffix.lower() not in WEIGHT_FORMATS:
        known = ", ".join(f"{s} ({n})" for s, n in WEIGHT_FORMATS.items())
        raise SwapRefused(f"{field}: {_quoted(spec)}: unknown model format {path.suffix or '(no suffix)'!r}; "
                          f"percept loads {known} and OpenVINO export folders")
    unreadable = [f for f in [path, *files] if not os.access(f, os.R_OK)]
    if unreadable:
        raise SwapRefused(f"{field}: {str(unreadable[0])!r} is not readable (permissions)")
    return str(path)


def load_model(kind: str, cfg: Any, *, models_dir: str | None, field: str) -> Any:
    """The backend for ``cfg`` (with its warm-up frame), load errors as `SwapRefused`."""
    from ..backends import load_classifier, load_detector

    loader = load_detector if kind == "detector" else load_classifier
    try:
        return loader(cfg, models_dir=models_dir, field=field)
    except ConfigError as exc:
        raise SwapRefused(exc.errors) from None
    except ModelError as exc:
        raise SwapRefused(str(exc)) from None
    except Exception as exc:  # ultralytics and OpenVINO raise many types for a bad file
        raise SwapRefused(f"{field}.weights: cannot load {cfg.weights!r}: {type(exc).__name__}: "
                          f"{str(exc).strip()[:300]}") from None


def compare_facts(kind: str, new: Mapping[str, Any], running: Mapping[str, Any], *, new_name: str,
                  running_name: str, field: str) -> list[str]:
    """Why the new model cannot replace the running one (empty: it can)."""
    errors = []
    if kind == "detector":
        missing = sorted(set(running.get("labels", ())) - set(new.get("labels", ())))
        if missing:
            errors.append(f"{field}.weights: {new_name} has no class {missing[:8]} that {running_name} gives in "
                          f"{field}.categories; a detector with other classes needs a config change and a restart")
        return errors
    if running.get("attributes") is not None and sorted(new["attributes"]) != sorted(running["attributes"]):
        errors.append(f"{field}.weights: {new_name} writes attributes {new['attributes']}, {running_name} writes "
                      f"{running['attributes']}; a swap keeps the attributes (change the config and restart)")
    for key, what in (("crop_size", "crop size (width, height)"), ("crop_context", "crop context"),
                      ("min_size", "smallest box (width, height)"), ("crop_fit", "crop fit")):
        if key in running and (running[key] is not None or key == "min_size") and new.get(key) != running[key]:
            errors.append(f"{field}.weights: {new_name} takes {what} {new[key]}, {running_name} {running[key]}; "
                          "the decoders cut crops for the running model (change the config and restart)")
    return errors


def settled_detector_facts(cfg: Any, *, models_dir: str | None, field: str) -> dict[str, Any]:
    """The facts of the detector the deployment should serve (``cfg``), loaded here; where it
    cannot be, the labels its categories name (a model that no longer loads gives no others)."""
    try:
        return model_facts("detector", load_model("detector", cfg.model_copy(update={"device": "cpu", "half": None}),
                                                  models_dir=models_dir, field=field))
    except SwapRefused as exc:
        log.warning("%s: the model to compare with does not load (%s): comparing with the configured labels",
                    field, exc)
        return {"labels": sorted({label for labels in cfg.categories.values() for label in labels if label != "*"})}


def validate_swap(kind: str, cfg: Any, weights: str, card: str | None, *, models_dir: str | None, field: str,
                  running: Mapping[str, Any] | None, running_name: str) -> tuple[Any, str, list[str]]:
    """Load the new weights here, on the CPU, and check them against the running model's facts
    (``running``: a live replica's `model_facts`; None: only what the config gives).
    Returns (the new config section, the model name, notes for the answer); raises `SwapRefused`."""
    check_weights_path(weights, models_dir)
    if card is not None and not path_exists(Path(card).expanduser()) and not (models_dir and path_exists(Path(models_dir) / card)):
        raise SwapRefused(f"card: {_quoted(card)} does not exist")
    new_cfg = swapped_cfg(cfg, weights, card)
    backend = load_model(kind, new_cfg.model_copy(update={"device": "cpu", "half": None}), models_dir=models_dir,
                         field=field)
    facts = model_facts(kind, backend)
    if running is None and kind == "detector":  # no live replica serves it: its labels from the model itself
        running = settled_detector_facts(cfg, models_dir=models_dir, field=field)
    if running is None and kind == "classifier":
        from ..backends.crops import crop_spec, written_attributes

        try:  # what the decoders read from the config's card at their start: the crops they cut, the attributes
            spec = crop_spec(cfg, models_dir=models_dir, field=field)
            running = {"crop_size": list(spec.size), "crop_context": round(float(spec.context), 4), "crop_fit": spec.fit,
                       "min_size": list(spec.minimum) if spec.minimum else None,
                       "attributes": sorted(written_attributes(cfg, models_dir=models_dir, field=field))}
        except (ModelError, ConfigError, OSError) as exc:  # its card gone or broken: nothing runs it to compare with
            logging.getLogger("percept.swap").warning("%s: the running model's crops cannot be read (%s): the new one "
                                                      "is not compared with them", field, exc)
    errors = compare_facts(kind, facts, running or {}, new_name=model_name(new_cfg), running_name=running_name,
                           field=field)
    if errors:
        raise SwapRefused(errors)
    return new_cfg, model_name(new_cfg), size_notes(backend, cfg, model_name(new_cfg), field)


def size_notes(backend: Any, cfg: Any, name: str, field: str) -> list[str]:
    """What a swap does not change, said in its answer (it was a warning in the replicas' logs
    only): a detector network of another input size than ``imgsz`` gets the frames the decoders
    letterbox to ``imgsz``, resized to its own size."""
    size = getattr(backend, "input_size", None)
    imgsz = getattr(cfg, "imgsz", None)
    if size is None or imgsz is None or max(size) == imgsz:
        return []
    return [f"{field}.weights: {name} takes {size[1]}x{size[0]} frames; the decoders letterbox frames to "
            f"{field}.imgsz {imgsz} and the detector resizes them to its size (detections as at {max(size)}); "
            f"to run at {imgsz}, export it at {imgsz}, or set {field}.imgsz {max(size)} and restart"]
