"""Models: weight resolution, device/FP16 choice, batched detection and classification.

Ultralytics does the heavy lifting (loading any format, letterbox, NMS, box rescaling). The
decoder prepares model-sized letterboxed frames (`prepare_frame`) and square crops
(`prepare_crop`) so that only small contiguous arrays cross process boundaries; `Detector` and
`Classifier` take a list and return a list of the same length with per-item errors, so one bad
frame never fails a whole batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .config import ENV_MODELS_DIR, ClassifierConfig, DetectorConfig, ModelServerConfig
from .schema import Detections

log = logging.getLogger("percept.models")


class ModelError(RuntimeError):
    """A model that cannot be used; the message names the config path and what to do."""


# --- what crosses the wire ---------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class DetectorInput:
    image: np.ndarray  # letterboxed to imgsz×imgsz, contiguous uint8 BGR
    orig_shape: tuple[int, int]  # (height, width) of the camera frame
    frame_ts: float | None = None  # capture time: the detector reports frame age for autoscaling


def prepare_frame(image: np.ndarray, imgsz: int, frame_ts: float | None = None) -> DetectorInput:
    """Letterbox a camera frame to the detector's square input (ultralytics' own LetterBox)."""
    from ultralytics.data.augment import LetterBox

    boxed = LetterBox(new_shape=(imgsz, imgsz), auto=False)(image=image)
    return DetectorInput(np.ascontiguousarray(boxed), (int(image.shape[0]), int(image.shape[1])), frame_ts)


def prepare_crop(image: np.ndarray, box: Sequence[float], imgsz: int, *, context: float = 1.15) -> np.ndarray:
    """A square crop centred on ``box`` with a little context, resized to ``imgsz``.

    Square context crops classify better than tight, stretched ones (small top-down cars)."""
    import cv2

    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1) * context
    half = max(side / 2, 1.0)
    l, t, r, b = int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half))
    crop = image[max(t, 0) : min(b, h), max(l, 0) : min(r, w)]
    pad = (max(-t, 0), max(b - h, 0), max(-l, 0), max(r - w, 0))
    if any(pad):
        crop = cv2.copyMakeBorder(crop, *pad, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return np.ascontiguousarray(cv2.resize(crop, (imgsz, imgsz), interpolation=cv2.INTER_AREA))


# --- loading -------------------------------------------------------------------------------------

def resolve_weights(spec: str, models_dir: str | None) -> str:
    """A path that exists, else the file in ``models_dir``, else the name as given (an
    ultralytics name such as ``yolo11n.pt`` that ultralytics downloads when online)."""
    p = Path(spec).expanduser()
    if p.exists():
        return str(p)
    if models_dir and (Path(models_dir) / spec).exists():
        return str(Path(models_dir) / spec)
    return spec


def choose_device(device: str, half: bool | None) -> tuple[str, bool]:
    """``auto`` → cuda:0 with FP16 when a GPU is present, else cpu (FP32)."""
    if device == "auto":
        import torch

        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.isdigit():
        device = f"cuda:{device}"
    use_half = device.startswith("cuda") if half is None else half
    return device, use_half


def load_yolo(cfg: ModelServerConfig, *, models_dir: str | None, field: str, task: str) -> Any:
    """Load weights through ultralytics and check the task; errors name the config field."""
    from ultralytics import YOLO

    resolved = resolve_weights(cfg.weights, models_dir)
    try:
        model = YOLO(resolved)
    except Exception as exc:  # ultralytics raises many types: missing file, offline download, bad file
        where = f"{cfg.weights!r} (looked in the current directory"
        where += f" and {ENV_MODELS_DIR}={models_dir})" if models_dir else f"; {ENV_MODELS_DIR} is not set)"
        raise ModelError(
            f"{field}: cannot load {where}: {type(exc).__name__}: {str(exc).strip()[:300]}. "
            f"Online, ultralytics downloads its own model names; offline, put the file there or "
            f"set {ENV_MODELS_DIR} to the folder that holds it."
        ) from None
    if model.task != task:
        raise ModelError(
            f"{field}: {cfg.weights!r} is a {model.task} model; this stage needs a {task} model"
        )
    return model


def model_name(cfg: ModelServerConfig) -> str:
    return Path(cfg.weights.rstrip("/")).name


# --- detection -----------------------------------------------------------------------------------

class CategoryMap:
    """Model class id → (label, category); labels not mapped to a category are dropped."""

    def __init__(self, categories: Mapping[str, Sequence[str]], names: Mapping[int, str], *, field: str = "detector.categories"):
        by_label = {name: idx for idx, name in names.items()}
        self.by_class: dict[int, tuple[str, str]] = {}
        for category, labels in categories.items():
            for label in labels:
                if label not in by_label:
                    log.warning("%s.%s: model has no class %r; ignored", field, category, label)
                    continue
                self.by_class[by_label[label]] = (label, category)
        if categories and not self.by_class:
            raise ModelError(f"{field}: none of the labels are classes of this model (it has e.g. {list(names.values())[:8]})")

    @property
    def class_ids(self) -> list[int]:
        return sorted(self.by_class)

    def detections(self, xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray) -> Detections:
        keep = [i for i, c in enumerate(class_ids) if int(c) in self.by_class]
        pairs = [self.by_class[int(class_ids[i])] for i in keep]
        return Detections(
            xyxy=xyxy[keep],
            scores=scores[keep],
            labels=tuple(p[0] for p in pairs),
            categories=tuple(p[1] for p in pairs),
        )


class Detector:
    """A detection model on batches of `DetectorInput`; boxes come back in camera pixels."""

    def __init__(self, model: Any, *, cfg: DetectorConfig, device: str, half: bool, name: str):
        self.model = model
        self.cfg = cfg
        self.device = device
        self.half = half
        self.name = name
        self.categories = CategoryMap(cfg.categories, model.names)

    @classmethod
    def from_config(cls, cfg: DetectorConfig, *, models_dir: str | None, warmup: bool = True) -> "Detector":
        set_threads(cfg)
        model = load_yolo(cfg, models_dir=models_dir, field="detector.weights", task="detect")
        device, half = choose_device(cfg.device, cfg.half)
        det = cls(model, cfg=cfg, device=device, half=half, name=model_name(cfg))
        if warmup:
            det.detect_batch([DetectorInput(np.zeros((cfg.imgsz, cfg.imgsz, 3), np.uint8), (cfg.imgsz, cfg.imgsz))])
        log.info("detector %s on %s (fp16=%s)", det.name, device, half)
        return det

    def detect_batch(self, inputs: Sequence[DetectorInput]) -> list[Detections | Exception]:
        if not inputs:
            return []
        from ultralytics.utils.ops import scale_boxes

        try:
            results = self.model.predict(
                [inp.image for inp in inputs],
                imgsz=self.cfg.imgsz,
                conf=self.cfg.conf,
                iou=self.cfg.iou,
                max_det=self.cfg.max_det,
                classes=self.categories.class_ids or None,
                device=self.device,
                verbose=False,
                **({"half": True} if self.half else {}),
            )
        except Exception as exc:
            if len(inputs) == 1:
                return [exc]
            return [r for inp in inputs for r in self.detect_batch([inp])]  # isolate the bad item
        out: list[Detections | Exception] = []
        for inp, res in zip(inputs, results):
            boxes = res.boxes
            xyxy = boxes.xyxy.cpu().numpy().astype(np.float32)
            xyxy = scale_boxes(inp.image.shape[:2], xyxy, inp.orig_shape)
            out.append(self.categories.detections(xyxy, boxes.conf.cpu().numpy(), boxes.cls.cpu().numpy().astype(int)))
        return out


# --- classification ------------------------------------------------------------------------------

class Classifier:
    """An image classifier on batches of square crops; the answer is the top label, restricted
    to ``labels`` when the config lists some."""

    def __init__(self, model: Any, *, cfg: ClassifierConfig, device: str, half: bool, name: str, field: str):
        self.model = model
        self.cfg = cfg
        self.device = device
        self.half = half
        self.name = name
        names: Mapping[int, str] = model.names
        if cfg.labels:
            by_label = {n: i for i, n in names.items()}
            missing = [(i, lab) for i, lab in enumerate(cfg.labels) if lab not in by_label]
            if missing:
                i, lab = missing[0]
                raise ModelError(f"{field}.labels[{i}]: {lab!r} is not a class of {name}")
            self.allowed = np.array([by_label[lab] for lab in cfg.labels])
        else:
            self.allowed = None
        self.names = names

    @classmethod
    def from_config(cls, category: str, cfg: ClassifierConfig, *, models_dir: str | None, warmup: bool = True) -> "Classifier":
        field = f"classifiers.{category}"
        set_threads(cfg)
        model = load_yolo(cfg, models_dir=models_dir, field=f"{field}.weights", task="classify")
        device, half = choose_device(cfg.device, cfg.half)
        clf = cls(model, cfg=cfg, device=device, half=half, name=model_name(cfg), field=field)
        if warmup:
            clf.classify_batch([np.zeros((cfg.imgsz, cfg.imgsz, 3), np.uint8)])
        return clf

    def classify_batch(self, crops: Sequence[np.ndarray]) -> list[dict[str, Any] | Exception]:
        if not crops:
            return []
        try:
            results = self.model.predict(
                list(crops),
                imgsz=self.cfg.imgsz,
                device=self.device,
                verbose=False,
                **({"half": True} if self.half else {}),
            )
        except Exception as exc:
            if len(crops) == 1:
                return [exc]
            return [r for c in crops for r in self.classify_batch([c])]
        out: list[dict[str, Any] | Exception] = []
        for res in results:
            probs = res.probs.data.float().cpu().numpy()
            if self.allowed is not None:
                k = int(self.allowed[int(np.argmax(probs[self.allowed]))])
            else:
                k = int(np.argmax(probs))
            out.append({"label": self.names[k], "score": round(float(probs[k]), 4)})
        return out


def set_threads(cfg: ModelServerConfig) -> None:
    """Torch CPU threads: the configured number, else the CPUs the replica reserves (at least 1)."""
    import torch

    torch.set_num_threads(cfg.threads or max(1, int(round(cfg.num_cpus))))


def check_models(config: Any) -> None:
    """Load every model of a `PerceptConfig` once, here, before anything starts: a missing file,
    a failed download or a model of the wrong task is a config error naming the field."""
    from .config import ConfigError

    sections = [("detector", config.detector, "detect")]
    sections += [(f"classifiers.{c}", cc, "classify") for c, cc in config.classifiers.items()]
    errors = []
    for field, section, task in sections:
        try:
            load_yolo(section, models_dir=config.models_dir, field=f"{field}.weights", task=task)
        except ModelError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError(errors)
