"""Model backends, chosen by the weights file and its card; one backend per module, keyed by ``type``.

- ``ultralytics`` (`ultralytics_backend`): .pt, ultralytics exports (OpenVINO folders, ONNX,
  TensorRT engines), anything ``YOLO()`` loads; models without a card.
- ``openvino`` (`openvino_classifier`, `openvino_detector`): plain networks (IR .xml, .onnx,
  .pb, .tflite) described by a card; also the native path for ultralytics' OpenVINO exports.
- ``yunet`` (`yunet`): OpenCV's YuNet face detector.

`load_detector` / `load_classifier` resolve the weights, find the card (the config's ``card``,
else the shipped card naming the file) and hand both to the backend's module.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..config import ENV_MODELS_DIR, ClassifierConfig, DetectorConfig, ModelServerConfig
from ..config_errors import ConfigError
from ..models import ModelError, field_key, resolve_weights
from .base import ClassifierBackend, DetectorBackend
from .card import ModelCard, find_card, load_card

# type → module (relative to this package) that has load_detector / load_classifier
MODULES = {
    "ultralytics": "ultralytics_backend",
    "openvino": {"detect": "openvino_detector", "classify": "openvino_classifier"},
    "yunet": "yunet",
}


def resolve_card(cfg: ModelServerConfig, weights: str, *, models_dir: str | None, field: str) -> ModelCard | None:
    """The config's ``card`` (a path, or a file in the models folder), else the shipped card for
    this weights file, else None (an ultralytics model needs none)."""
    if getattr(cfg, "card", None):
        path = Path(cfg.card).expanduser()
        if not path.exists() and models_dir and (Path(models_dir) / cfg.card).exists():
            path = Path(models_dir) / cfg.card
        if not path.exists():
            raise ModelError(f"{field_key(field, 'card')}: {cfg.card!r} does not exist")
        try:
            return load_card(path)
        except ConfigError as exc:
            raise ModelError(f"{field_key(field, 'card')}: " + "; ".join(exc.errors)) from None
    found = find_card(weights)
    if found is None:
        return None
    try:
        return load_card(found)
    except ConfigError as exc:
        raise ModelError(f"{field}: shipped card: " + "; ".join(exc.errors)) from None


def _weights(cfg: ModelServerConfig, models_dir: str | None, field: str) -> str:
    resolved = resolve_weights(cfg.weights, models_dir)
    suffix = Path(resolved).suffix
    if suffix in (".xml", ".onnx", ".pb", ".tflite") and not Path(resolved).exists():
        where = f" (looked in the current directory and {ENV_MODELS_DIR}={models_dir})" if models_dir else ""
        raise ModelError(f"{field_key(field, 'weights')}: {cfg.weights!r} not found{where}")
    return resolved


def _needs_card(card: ModelCard | None, weights: str, field: str) -> None:
    """A bare OpenVINO IR file is a plain network: without a card nothing says what it means."""
    export = (Path(weights).parent / "metadata.yaml").is_file()  # an ultralytics export describes itself
    if card is None and Path(weights).suffix == ".xml" and not export:
        if not Path(weights).with_suffix(".bin").exists():
            raise ModelError(f"{field_key(field, 'weights')}: {weights!r} has no weights file beside it "
                             f"({Path(weights).with_suffix('.bin').name} is missing)")
        raise ModelError(f"{field}: {Path(weights).name} is a plain network and has no model card; give one with "
                         f"{field_key(field, 'card')} (see configs/models/ for the format)")
    if card is None and Path(weights).suffix == ".onnx" and Path(weights).is_file() and not _ultralytics_onnx(weights):
        # ultralytics would guess "detect" and run it with its own head's layout: no detection, no error
        raise ModelError(f"{field}: {Path(weights).name} is not an ultralytics export (its metadata names no task) "
                         f"and has no model card; give one with {field_key(field, 'card')} (see configs/models/ for the format)")


def _ultralytics_onnx(weights: str) -> bool:
    """Whether an ONNX file is an ultralytics export (its metadata names the task it was made for)."""
    import onnx

    try:
        meta = {p.key for p in onnx.load(weights, load_external_data=False).metadata_props}
    except Exception:  # not readable as ONNX: what loads it says why
        return True
    return "task" in meta


def _module(card: ModelCard | None, task: str, backend: str = "auto", *, weights: str | None = None,
            device: str = "auto") -> Any:
    """The backend module: the card's type; without a card ultralytics, except ``backend: openvino``
    and, on ``auto``, an ultralytics OpenVINO export folder detecting on the CPU (OpenVINO's own
    runtime runs it with parallel infer requests: 1.3x ultralytics' frames per second at batch 1, 1.5x at 4)."""
    if card is not None:
        kind = card.type
    elif backend == "openvino" or (backend == "auto" and task == "detect" and _openvino_export_on_cpu(weights, device)):
        kind = "openvino"
    else:
        kind = "ultralytics"
    target = MODULES[kind]
    name = target[task] if isinstance(target, dict) else target
    return importlib.import_module(f"{__name__}.{name}")


def _openvino_export(weights: str) -> bool:
    """An ultralytics OpenVINO export: a folder with its metadata.yaml and one .xml."""
    folder = Path(str(weights).rstrip("/")).expanduser()
    return folder.is_dir() and (folder / "metadata.yaml").is_file() and len(list(folder.glob("*.xml"))) == 1


def _openvino_export_on_cpu(weights: str | None, device: str) -> bool:
    """An ultralytics OpenVINO export (folder with metadata.yaml and an .xml) on cpu, or on auto without a GPU."""
    import importlib.util

    if not weights or importlib.util.find_spec("openvino") is None or not _openvino_export(weights):
        return False
    if device == "auto":
        from ..models import choose_device

        device = choose_device(device, None)[0]
    return device == "cpu"


def runs_on_cpu_only(cfg: ModelServerConfig, *, models_dir: str | None) -> bool:
    """Whether the model runs on the CPU whatever GPUs its replica gets: ``device: cpu``, a plain network described
    by a card (the openvino and yunet backends), ``backend: openvino``, or an ultralytics
    OpenVINO export on ``device`` auto or cpu (OpenVINO has no CUDA device; ultralytics runs
    one on the CPU too). A card that cannot be read says no here (the model's load names it)."""
    if getattr(cfg, "backend", "auto") == "openvino" or cfg.device == "cpu":  # (device: cpu, whatever the model)
        return True
    try:
        weights = resolve_weights(cfg.weights, models_dir)
        if resolve_card(cfg, weights, models_dir=models_dir, field="") is not None:
            return True
    except (ModelError, OSError):
        return False
    return cfg.device in ("auto", "cpu") and _openvino_export(weights)


def load_detector(cfg: DetectorConfig, *, models_dir: str | None, field: str = "detector",
                  warmup: bool = True) -> DetectorBackend:
    weights = _weights(cfg, models_dir, field)
    card = resolve_card(cfg, weights, models_dir=models_dir, field=field)
    if card is not None and card.task != "detect":
        raise ModelError(f"{field}: card {card.where()} describes a {card.task} model; this stage needs a detect model")
    _needs_card(card, weights, field)
    module = _module(card, "detect", getattr(cfg, "backend", "auto"), weights=weights, device=cfg.device)
    return module.load_detector(cfg, card=card, weights=weights, models_dir=models_dir, field=field, warmup=warmup)


def load_classifier(cfg: ClassifierConfig, *, models_dir: str | None, field: str,
                    warmup: bool = True) -> ClassifierBackend:
    weights = _weights(cfg, models_dir, field)
    card = resolve_card(cfg, weights, models_dir=models_dir, field=field)
    if card is not None and card.task != "classify":
        raise ModelError(f"{field}: card {card.where()} describes a {card.task} model; this stage needs a classify model")
    _needs_card(card, weights, field)
    module = _module(card, "classify")
    return module.load_classifier(cfg, card=card, weights=weights, models_dir=models_dir, field=field, warmup=warmup)
