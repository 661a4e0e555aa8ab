"""What models share whatever runs them: the detector's input (`prepare_frame`), crops cut at a
classifier's size (`prepare_crop`), weight resolution, device/FP16 choice and the label →
category map. The decoder prepares model-sized arrays so only small contiguous arrays cross
process boundaries; the backends (`pipeline.backends`) run the models."""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .config import ENV_MODELS_DIR, ModelServerConfig
from .openvino_quiet import quiet_openvino
from .redact import quoted_url
from .schema import Detections

log = logging.getLogger("percept.models")


class ModelError(RuntimeError):
    """A model that cannot be used; the message names the config path and what to do."""


# --- what crosses the wire ---------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class DetectorInput:
    image: np.ndarray  # letterboxed to imgsz×imgsz, contiguous uint8 BGR (on the way: a frame_share.SharedImage)
    orig_shape: tuple[int, int]  # (height, width) of the camera frame
    frame_ts: float | None = None  # capture time: the detector reports frame age for autoscaling
    camera: str | None = None  # the camera it comes from: the detector's batcher waits for cameras by it
    age_s: float | None = None  # its age as the decoder sent it, on the decoder's clock (`sent`)

    def sent(self, now: float | None = None) -> "DetectorInput":
        """Stamped as it leaves the decoder: its age then, measured on the clock that stamped
        ``frame_ts`` (``now``: that clock's time)."""
        if self.frame_ts is None:
            return self
        return replace(self, age_s=(time.time() if now is None else now) - self.frame_ts)

    def age(self, now: float | None = None) -> float | None:
        """Its age now: as the decoder sent it (`sent`; the hop since is not in it), else from
        ``frame_ts`` on this host's clock (``now``); None without a capture time."""
        if self.age_s is not None or self.frame_ts is None:
            return self.age_s
        return (time.time() if now is None else now) - self.frame_ts

    def arrived(self, now: float | None = None) -> "DetectorInput":
        """``frame_ts`` moved onto this host's clock (now − its age when sent), so that a frame's
        age here, the autoscaler's lag, does not hang on two hosts' clocks agreeing."""
        if self.age_s is None:
            return self
        return replace(self, frame_ts=(time.time() if now is None else now) - self.age_s, age_s=None)


PAD_VALUE = 114  # the grey ultralytics pads with


def letterbox_geometry(height: int, width: int, imgsz: int) -> tuple[tuple[int, int], int, int]:
    """((resized width, height), top, left) of a frame centred in the ``imgsz`` square, rounded
    exactly as ultralytics' ``LetterBox(auto=False)`` does (so its ``scale_boxes`` maps boxes back)."""
    r = min(imgsz / height, imgsz / width)
    new_w, new_h = max(round(width * r), 1), max(round(height * r), 1)
    top, left = round((imgsz - new_h) / 2 - 0.1), round((imgsz - new_w) / 2 - 0.1)
    return (new_w, new_h), top, left


def letterbox(image: np.ndarray, imgsz: int) -> np.ndarray:
    """The frame resized into the middle of a grey ``imgsz`` square: one allocation, the resize
    writes straight into the square (ultralytics' LetterBox makes the resized frame, then the
    padded copy). Same pixels as ``LetterBox(new_shape=(imgsz, imgsz), auto=False)``."""
    import cv2

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:  # (a grey or BGRA frame gave a
        # square of uninitialised memory; a 16-bit one wrapped round to its low byte)
        raise ValueError(f"letterbox takes 8-bit BGR frames (height, width, 3), got shape {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    (new_w, new_h), top, left = letterbox_geometry(h, w, imgsz)
    square = np.empty((imgsz, imgsz, 3), np.uint8)
    square[:top] = square[top + new_h :] = PAD_VALUE  # only the borders are filled
    square[top : top + new_h, :left] = square[top : top + new_h, left + new_w :] = PAD_VALUE
    inner = square[top : top + new_h, left : left + new_w]
    if (new_w, new_h) == (w, h):
        inner[...] = image
    else:
        cv2.resize(image, (new_w, new_h), dst=inner, interpolation=cv2.INTER_LINEAR)
    return square


def prepare_frame(image: np.ndarray, imgsz: int, frame_ts: float | None = None,
                  camera: str | None = None) -> DetectorInput:
    """A camera frame letterboxed to the detector's square input (`letterbox`); the camera's
    reader thread calls it for the frames the conductor will take (pipeline/conductor.py)."""
    return DetectorInput(letterbox(image, imgsz), (int(image.shape[0]), int(image.shape[1])), frame_ts, camera)


def prepare_crop(image: np.ndarray, box: Sequence[float], size: int | tuple[int, int], *, context: float = 1.15,
                 fit: str = "context") -> np.ndarray:
    """A crop centred on ``box`` at ``size`` (an int: square; else (width, height)), cut with a
    little context (the box grown by ``context``) and resized to ``size``. ``fit`` (a card's
    ``input.resize``): ``context`` widens the cut to the target's aspect ratio (never stretched),
    ``stretch`` stretches the box to it, ``letterbox`` fits it inside, its aspect kept and no
    borders (the classifier adds its card's ``pad_value`` ones: `openvino_classifier.fit_crop`).

    Square context crops classify better than tight, stretched ones (small top-down cars); a
    pedestrian model's 80×160 gets a tall crop around the person; a traffic-light model trained
    on tight crops gets its light stretched (`configs/models/traffic-light-state.yaml`)."""
    import cv2

    out_w, out_h = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    aspect = out_w / out_h
    bw, bh = max(x2 - x1, 1.0) * context, max(y2 - y1, 1.0) * context
    if fit != "context":
        pass  # the box as it is: stretched or letterboxed below
    elif bw / bh < aspect:
        bw = bh * aspect  # widen to the target's aspect
    else:
        bh = bw / aspect
    l, t = int(round(cx - bw / 2)), int(round(cy - bh / 2))
    r, b = int(round(cx + bw / 2)), int(round(cy + bh / 2))
    r, b = max(r, l + 1), max(b, t + 1)
    ct, cb, cl, cr = min(max(t, 0), h), max(min(b, h), 0), min(max(l, 0), w), max(min(r, w), 0)  # inside the frame
    crop = image[ct:cb, cl:cr]  # (clamped: a box above the frame cut rows from its bottom, as negative indices)
    if fit == "letterbox":  # the whole cut fitted inside, its aspect kept
        out_w, out_h = fitted_size((r - l, b - t), (out_w, out_h))
    if crop.size == 0:  # a box wholly outside the frame: nothing of it to show (was a cv2.error)
        return np.full((out_h, out_w) + image.shape[2:], 114, image.dtype)
    # (a letterboxed crop enlarged smoothly: INTER_AREA enlarges in blocks)
    interp = cv2.INTER_LINEAR if fit == "letterbox" and out_w > r - l else cv2.INTER_AREA
    if t >= 0 and l >= 0 and b <= h and r <= w:
        return np.ascontiguousarray(cv2.resize(crop, (out_w, out_h), interpolation=interp))
    # past the frame's edge: the part inside resized to where it goes in the output, grey around
    # it (padding the frame-sized cut first made a 4K frame's truck a 4K grey square to shrink)
    sx, sy = out_w / (r - l), out_h / (b - t)
    x1, y1 = min(round((cl - l) * sx), out_w - 1), min(round((ct - t) * sy), out_h - 1)
    x2, y2 = max(min(round((cr - l) * sx), out_w), x1 + 1), max(min(round((cb - t) * sy), out_h), y1 + 1)
    out = np.full((out_h, out_w) + image.shape[2:], 114, image.dtype)
    out[y1:y2, x1:x2] = cv2.resize(crop, (x2 - x1, y2 - y1), interpolation=interp).reshape(out[y1:y2, x1:x2].shape)
    return out


def fitted_size(size: tuple[int, int], inside: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of ``size`` scaled to fit inside ``inside``, its aspect kept (≥ 1 px)."""
    (cw, ch), (w, h) = size, inside
    r = min(w / cw, h / ch)
    return min(w, max(1, round(cw * r))), min(h, max(1, round(ch * r)))


def fit_inside(crop: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``crop`` resized to fit inside ``size`` (width, height), its aspect kept (enlarged
    smoothly: INTER_AREA enlarges in blocks)."""
    import cv2

    nw, nh = fitted_size((crop.shape[1], crop.shape[0]), size)
    return cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA if nw <= crop.shape[1] else cv2.INTER_LINEAR)


def letterbox_crop(crop: np.ndarray, size: tuple[int, int], pad: int = 114) -> np.ndarray:
    """``crop`` fitted inside ``size`` (width, height), its aspect kept, centred on ``pad`` grey."""
    import cv2

    w, h = size
    inner = fit_inside(crop, size)
    nh, nw = inner.shape[:2]
    top, left = (h - nh) // 2, (w - nw) // 2
    return cv2.copyMakeBorder(inner, top, h - nh - top, left, w - nw - left, cv2.BORDER_CONSTANT, value=(pad,) * 3)


# --- loading -------------------------------------------------------------------------------------

def resolve_weights(spec: str, models_dir: str | None) -> str:
    """A path that exists, else the file in ``models_dir``, else, when there is no such folder
    here (a cluster node given the driver's), in this machine's own ``PERCEPT_MODELS_DIR``, else
    the name as given (an ultralytics name such as ``yolo11n.pt`` that ultralytics downloads
    when online)."""
    p = Path(spec).expanduser()
    if path_exists(p):
        return str(p)
    own = os.environ.get(ENV_MODELS_DIR) if not (models_dir and Path(models_dir).is_dir()) else None
    for folder in (models_dir, own):
        if folder and path_exists(Path(folder) / spec):
            return str(Path(folder) / spec)
    return spec


def path_exists(path: Path) -> bool:
    """``path.exists()``, False for a name the system refuses to look up (too long: ENAMETOOLONG,
    which pathlib raises): the caller then says it is not there."""
    try:
        return path.exists()
    except OSError:
        return False


def field_key(field: str, key: str) -> str:
    """Where a model's ``key`` was given: the config key under ``field`` (``detector.card``), or,
    for a command's option (``--weights``), the option that gives it (``--card``)."""
    if field.startswith("-"):
        return field if key == "weights" else f"--{key}"
    return f"{field}.{key}"


def offline() -> bool:
    """``YOLO_OFFLINE`` set (1, true, yes): a weights name that is no local file is an error, not
    a download (ultralytics itself reads the variable only for its analytics and hub)."""
    return os.environ.get("YOLO_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _found_offline(spec: str) -> bool:
    """What ultralytics loads without a download: a file that exists (here, or in its own
    ``weights_dir``), or a network's description (``yolo11n.yaml`` builds one, untrained). A name
    without a suffix is no exception: ultralytics downloads ``yolo11s`` as ``yolo11s.pt``."""
    path = Path(spec).expanduser()
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return True
    from ultralytics.utils import SETTINGS

    return (Path(SETTINGS.get("weights_dir") or ".") / (path.name if path.suffix else f"{path.name}.pt")).exists()


def choose_device(device: str, half: bool | None) -> tuple[str, bool]:
    """``auto`` → cuda:0 with FP16 when a GPU is present, else cpu (FP32)."""
    if device == "auto":
        import torch

        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.isdigit():
        device = f"cuda:{device}"
    use_half = device.startswith("cuda") if half is None else half
    return device, use_half


def load_failure(exc: BaseException, limit: int = 300) -> str:
    """Why ultralytics could not load (or run) a model, in one line: its error's first line
    without its "ERROR ❌️" (what follows, "Recommended fixes … 'yolo predict model=yolo26n.pt'",
    offers a download that offline use never makes)."""
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else ""
    text = re.sub(r"^ERROR\W*\s", "", text)[:limit]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_yolo(cfg: ModelServerConfig, *, models_dir: str | None, field: str, task: str) -> Any:
    """Load weights through ultralytics and check the task; errors name the config field."""
    from ultralytics import YOLO

    resolved = resolve_weights(cfg.weights, models_dir)
    where = f"{quoted_url(cfg.weights)} (looked in the current directory"
    where += f" and {ENV_MODELS_DIR}={models_dir})" if models_dir else f"; {ENV_MODELS_DIR} is not set)"
    if offline() and not _found_offline(resolved):
        raise ModelError(f"{field}: cannot load {where}: no such file, and YOLO_OFFLINE is set: nothing is downloaded. "
                         f"Put the file there or set {ENV_MODELS_DIR} to the folder that holds it.")
    quiet_openvino()  # (ultralytics imports openvino for an OpenVINO export)
    try:
        model = YOLO(resolved)
        model.names  # an export's backend loads here: a file of no known format fails now, not later
    except Exception as exc:  # ultralytics raises many types: missing file, offline download, bad file
        if Path(resolved).exists():  # (the hint to download or place the file misled: it is there)
            why = load_failure(exc)
            if Path(resolved).is_dir() and not any(Path(resolved).glob("*.xml")):  # (it said "StopIteration: ")
                why = "a folder without a model in it (an OpenVINO export folder holds an .xml)"
            raise ModelError(f"{field}: cannot load {where}: {resolved} is there but is no model ultralytics "
                             f"can load (a .pt, an export folder such as *_openvino_model, .onnx, …): {why}") from None
        raise ModelError(
            f"{field}: cannot load {where}: {load_failure(exc)}. "
            f"Online, ultralytics downloads its own model names; offline, put the file there or "
            f"set {ENV_MODELS_DIR} to the folder that holds it."
        ) from None
    if model.task != task:
        raise ModelError(
            f"{field}: {cfg.weights!r} is a {model.task} model; this stage needs a {task} model"
        )
    return model


def model_name(cfg: ModelServerConfig) -> str:
    """The name messages give the model: its weights' file (or export folder) name; for
    ultralytics' training output (``runs/detect/<run>/weights/best.pt``, and exports beside it)
    with the run's name before it, ``<run>/best.pt``: every fine-tuned model is a ``best.pt``, and
    a swap from one run's to another's was not to be told apart in the messages; for a network in
    a folder named after its precision (Open Model Zoo's ``<model>/FP16-INT8/<model>.xml``) with
    that folder before it, ``FP16-INT8/<model>.xml``: the FP32 and the INT8 file had one name."""
    path = Path(cfg.weights.rstrip("/"))
    if path.parent.name == "weights" and path.parent.parent.name not in ("", ".", ".."):
        return f"{path.parent.parent.name}/{path.name}"
    if _PRECISION_FOLDER.fullmatch(path.parent.name):
        return f"{path.parent.name}/{path.name}"
    return path.name


_PRECISION_FOLDER = re.compile(r"(FP|INT|BF)\d+(-(FP|INT|BF)\d+)*", re.IGNORECASE)  # FP32, FP16-INT8, INT8, …


# --- detection -----------------------------------------------------------------------------------

def card_nms_iou(cfg: Any, card: Any, *, field: str) -> float:
    """The NMS IoU a carded detector runs at: its card's ``nms_iou`` (the value the network was
    made and measured with). A ``detector.iou`` other than the default that differs from it is
    not used: one warning at load says so and names the card's value. (The default, not "set in
    the config", is the test: the deployments get the config through ``model_dump``, which sets
    every field, and ``percept eval`` always passes its ``--iou``.)"""
    default = type(cfg).model_fields["iou"].default
    if abs(cfg.iou - default) > 1e-9 and abs(cfg.iou - card.nms_iou) > 1e-9:
        key = field_key(field, "iou")  # (`percept eval --weights …`: its --iou)
        log.warning("%s: %g is not used: %s runs at its card's nms_iou %g (card %s); to change it, "
                    "edit nms_iou in a copy of the card and give it as %s", key, cfg.iou, model_name(cfg),
                    card.nms_iou, card.where(), field_key(field, "card"))
    return card.nms_iou


class CategoryMap:
    """Model class id → (label, category); labels not mapped to a category are dropped. A label
    the model gives several class ids maps every one of them."""

    def __init__(self, categories: Mapping[str, Sequence[str]], names: Mapping[int, str], *, field: str = "detector.categories"):
        by_label: dict[str, list[int]] = {}  # a label may name several classes (the sign detector's 9 and 10)
        for idx, name in names.items():
            by_label.setdefault(name, []).append(idx)
        self.by_class: dict[int, tuple[str, str]] = {}
        for category, labels in categories.items():
            if list(labels) == ["*"]:  # every label of the model
                self.by_class.update({idx: (name, category) for idx, name in names.items()})
                continue
            for label in labels:
                if label not in by_label:
                    log.warning("%s.%s: model has no class %r; ignored", field, category, label)
                    continue
                self.by_class.update({idx: (label, category) for idx in by_label[label]})
        if categories and not self.by_class:
            raise ModelError(f"{field}: none of the labels are classes of this model (it has e.g. {list(names.values())[:8]})")

    @property
    def class_ids(self) -> list[int]:
        return sorted(self.by_class)

    def detections(self, xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray) -> Detections:
        """The boxes of the classes kept, with their labels and categories; a box or score that is
        no finite number (a network's NaN) is no object: it would be published as ``null``s."""
        finite = np.isfinite(np.asarray(xyxy, np.float64)).all(axis=1) & np.isfinite(np.asarray(scores, np.float64))
        keep = [i for i, c in enumerate(class_ids) if finite[i] and int(c) in self.by_class]
        pairs = [self.by_class[int(class_ids[i])] for i in keep]
        return Detections(
            xyxy=xyxy[keep],
            scores=scores[keep],
            labels=tuple(p[0] for p in pairs),
            categories=tuple(p[1] for p in pairs),
        )


def model_threads(cfg: ModelServerConfig) -> int:
    """CPU threads a model runs on: the configured number, else the CPUs the replica reserves (at least 1)."""
    return cfg.threads or max(1, int(round(cfg.num_cpus)))


def set_threads(cfg: ModelServerConfig) -> None:
    """Torch CPU threads (`model_threads`)."""
    import torch

    torch.set_num_threads(model_threads(cfg))
