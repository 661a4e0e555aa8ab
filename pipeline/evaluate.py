"""`percept eval`: what the deployed models are worth, measured through the code the service runs.

- Detector: every image goes through `prepare_frame` (the decoder's letterbox) and the backend's
  ``detect_batch``; boxes come back in image pixels and are matched to the YOLO labels with
  ultralytics' own matching (`BaseValidator.match_predictions`, `box_iou`, IoU 0.50:0.95) and
  scored with `ap_per_class`: the numbers ``model.val()`` prints, for the service's pipeline.
  ``per_category`` does the same after mapping labels to the service's categories (a car found as a
  truck is a vehicle found). One difference from val remains, on purpose: the service's NMS keeps
  one class per box (val's is multi-label), worth ~0.002 mAP50-95 on coco128.
- Classifier: `pipeline.evaluate_classifier` (top-1 and recall per class).

Data: a YOLO folder (``images/`` and ``labels/``, subfolders allowed), a ``data.yaml`` (path, val,
names) or a folder holding one. Bad input raises `EvalError` (the CLI exits 2). No Ray here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import yaml

from .config_models import DEFAULT_CATEGORIES, DetectorConfig
from .redact import quoted_url

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}


class EvalError(ValueError):
    """Bad evaluation input (missing folder, no images, a malformed label file or CSV)."""


# --- data --------------------------------------------------------------------------------------

def images_under(folder: Path) -> list[Path]:
    """The images in ``folder`` and its subfolders, sorted; hidden files and folders skipped."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def yaml_entry_images(spec: Path, base: Path, entry: object, key: str) -> list[Path]:
    """The images a data.yaml's ``train``/``val`` entry names: folders, list files (one image path
    a line) or a list of either, relative to ``base``. A missing target is an `EvalError`."""
    images: list[Path] = []
    for item in entry if isinstance(entry, list) else [entry]:
        target = Path(str(item)) if Path(str(item)).is_absolute() else base / str(item)
        if target.is_dir():
            images += images_under(target)
        elif target.is_file():  # a list of image paths, one a line
            lines = [ln.strip() for ln in text_of(target).splitlines() if ln.strip()]
            images += [p if p.is_absolute() else target.parent / p for p in map(Path, lines)]
        else:
            raise EvalError(f"--data: {spec}: {key} {item!r} not found (looked for {target})")
    return images


def _label_path(image: Path) -> Path:
    """ultralytics' convention: the last ``images`` folder in the path becomes ``labels``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def find_yolo_images(data: str | Path) -> tuple[list[Path], dict[int, str] | None]:
    """The images of a YOLO dataset (a folder with ``images/``, a folder of images with label
    files beside them, a ``data.yaml`` or a folder holding one) and the yaml's names if any."""
    root = Path(data).expanduser()
    if not root.exists():
        raise EvalError(f"--data: {quoted_url(data)} does not exist")
    names = None
    spec = root if root.is_file() else root / "data.yaml"
    if spec.is_file():
        try:
            cfg = yaml.safe_load(text_of(spec)) or {}
        except yaml.YAMLError as exc:
            raise EvalError(f"--data: {spec}: YAML syntax error: {exc}") from None
        if not isinstance(cfg, dict) or "val" not in cfg:
            raise EvalError(f"--data: {spec}: a data.yaml needs 'val' (and usually 'path' and 'names')")
        base, names = yaml_base_and_names(spec, cfg, ("val",))
        images = yaml_entry_images(spec, base, cfg["val"], "val")
    elif root.is_dir():
        images = images_under(root / "images" if (root / "images").is_dir() else root)
    else:
        raise EvalError(f"--data: {str(data)!r} is neither a folder nor a data.yaml")
    if not images:
        raise EvalError(f"--data: no images found in {str(data)!r} (expected images/ and labels/ in YOLO layout)")
    return images, names


def yaml_base_and_names(spec: Path, cfg: Mapping[str, Any], keys: Sequence[str]
                        ) -> tuple[Path, dict[int, str] | None]:
    """(the folder a data.yaml's entries are relative to, its ``names`` as id → name, None when
    it has none), its ``path`` and each of ``keys`` (``train``/``val``) checked to be text (a
    list of text for an entry): a number or a list there was a TypeError's traceback, and a
    ``names`` key that is no whole number "invalid literal for int()", naming no file."""
    where = f"--data: {spec}"
    if cfg.get("path") is not None and not isinstance(cfg["path"], str):
        raise EvalError(f"{where}: path: must be a folder name (text), got {cfg['path']!r}")
    for key in keys:
        entry = cfg.get(key)
        if entry is not None and not all(isinstance(e, str) for e in (entry if isinstance(entry, list) else [entry])):
            raise EvalError(f"{where}: {key}: must be a folder or list file name (text), or a list of them, "
                            f"got {entry!r}")
    base = Path(cfg.get("path") or spec.parent).expanduser()
    raw = cfg.get("names")
    if isinstance(raw, list):
        names: dict[int, str] | None = dict(enumerate(map(str, raw)))
    elif isinstance(raw, dict):
        names = {}
        for k, v in raw.items():
            if isinstance(k, bool) or not (isinstance(k, int) or isinstance(k, str) and k.strip().isdigit()):
                raise EvalError(f"{where}: names: key {k!r} is not a class id (a whole number)")
            names[int(k)] = str(v)
    elif raw is None:
        names = None
    else:
        raise EvalError(f"{where}: names: must be a list of class names or a mapping of class id to name, got {raw!r}")
    return (base if base.is_absolute() else spec.parent / base), names


LABEL_SLACK = 0.01  # a label's coordinates may pass the image's border by this much (rounding, as exported)


def text_of(path: Path) -> str:
    """A label file's (a list's, a data.yaml's) text; `EvalError` naming the file when it is not
    UTF-8 text (it said which byte, not which of thousands of files)."""
    try:
        return path.read_text()
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1  # (the README said the line; only the byte was)
        raise EvalError(f"{path}:{line}: not UTF-8 text (byte {exc.start})") from None


def normalised(values: Sequence[float], where: str, line: str) -> None:
    """`EvalError` naming ``where`` unless every coordinate is within 0-1 (`LABEL_SLACK`): labels
    in pixels (a common export mistake) matched nothing and gave mAP 0.000 without a word."""
    if any(v < -LABEL_SLACK or v > 1 + LABEL_SLACK for v in values):
        raise EvalError(f"{where}: coordinates outside 0-1 (YOLO labels are normalised to the image's size, "
                        f"not pixels): {line.strip()!r}")


def read_yolo_labels(image: Path, image_hw: tuple[int, int], nc: int, names: Mapping[int, str] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(class ids, xyxy boxes in pixels) from the image's label file; none when it has no file.
    ``names``: a data.yaml's; a label of a class it does not name is an `EvalError` (such labels
    were dropped from the evaluation without a word)."""
    path = _label_path(image)
    if not path.exists():
        return np.zeros(0, int), np.zeros((0, 4), np.float32)
    h, w = image_hw
    classes, boxes = [], []
    for n, line in enumerate(text_of(path).splitlines(), 1):
        row = line.split()
        if not row:
            continue
        try:
            cls, values = int(float(row[0])), [float(v) for v in row[1:]]
        except ValueError:
            raise EvalError(f"{path}:{n}: not a YOLO label line (class cx cy w h): {line.strip()!r}") from None
        normalised(values, f"{path}:{n}", line)
        if len(values) == 4:
            cx, cy, bw, bh = values
            box = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
        elif len(values) >= 6 and len(values) % 2 == 0:  # a segment: its bounding box
            xs, ys = values[0::2], values[1::2]
            box = [min(xs), min(ys), max(xs), max(ys)]
        else:
            raise EvalError(f"{path}:{n}: expected 'class cx cy w h' (normalised), got {line.strip()!r}")
        if names is not None and cls not in names:
            raise EvalError(f"{path}:{n}: class {cls} is not in data.yaml's names ({_ids(names)})")
        if not 0 <= cls < nc:
            raise EvalError(f"{path}:{n}: class {cls} is not a class of the model (ids 0-{nc - 1}, in its label order)")
        classes.append(cls)
        boxes.append(box)
    xyxy = np.array(boxes, np.float32).reshape(-1, 4) * np.array([w, h, w, h], np.float32)
    return np.array(classes, int), xyxy


def _ids(names: Mapping[int, str]) -> str:
    """``0..79`` for ids without a gap, else the ids themselves."""
    ids = sorted(names)
    return f"{ids[0]}..{ids[-1]}" if ids and ids == list(range(ids[0], ids[-1] + 1)) else ", ".join(map(str, ids))


def frame_rectangle(hw: tuple[int, int], imgsz: int) -> tuple[int, int]:
    """The rectangle a frame of this size runs at in a detector that fits the frame
    (`openvino_export.crop_window`: what ``LetterBox(auto=True)`` makes of it)."""
    from .backends.openvino_export import crop_window

    return crop_window(hw, imgsz)[2:]


def _read_image(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise EvalError(f"{path}: cannot read the image")
    return image


# --- detector ----------------------------------------------------------------------------------

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def match(pred_cls: np.ndarray, gt_cls: np.ndarray, pred_xyxy: np.ndarray, gt_xyxy: np.ndarray) -> np.ndarray:
    """(N, 10) correct matrix, exactly as ultralytics' DetectionValidator (predictions sorted by
    descending score)."""
    import torch
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import box_iou

    if len(gt_cls) == 0 or len(pred_cls) == 0:
        return np.zeros((len(pred_cls), len(IOU_THRESHOLDS)), bool)
    iou = box_iou(torch.from_numpy(gt_xyxy).float(), torch.from_numpy(pred_xyxy).float())
    me = SimpleNamespace(iouv=torch.from_numpy(IOU_THRESHOLDS))  # the only state the method uses
    correct = BaseValidator.match_predictions(me, torch.from_numpy(pred_cls), torch.from_numpy(gt_cls), iou)
    return np.asarray(correct.cpu().numpy(), bool)


def _ap(stats: Mapping[str, list], names: Mapping[int, str]) -> dict[str, Any]:
    from ultralytics.utils.metrics import ap_per_class

    cat = {k: np.concatenate(v) for k, v in stats.items()}  # one entry per image, never empty
    target = cat["target"]
    if len(target) == 0:
        return {"map50_95": None, "map50": None, "precision": None, "recall": None, "instances": 0, "per_class": {}}
    _, _, p, r, _, ap, classes, *_ = ap_per_class(cat["tp"], cat["conf"], cat["pred_cls"], target)
    counts = np.bincount(target.astype(int), minlength=max(names) + 1 if names else 0)
    per_class = {names[int(c)]: {"map50_95": round(float(ap[i].mean()), 4), "map50": round(float(ap[i, 0]), 4),
                                 "instances": int(counts[int(c)])} for i, c in enumerate(classes)}
    return {"map50_95": round(float(ap.mean()), 4), "map50": round(float(ap[:, 0].mean()), 4),
            "precision": round(float(p.mean()), 4), "recall": round(float(r.mean()), 4),
            "instances": len(target), "per_class": per_class}


def default_categories(labels: Sequence[str]) -> dict[str, list[str]]:
    """The service's default mapping for a COCO-named model; a model whose labels it does not
    know (a sign detector) maps every label to ``sign``."""
    known = {label for group in DEFAULT_CATEGORIES.values() for label in group}
    if known & set(labels):
        return {cat: list(group) for cat, group in DEFAULT_CATEGORIES.items()}
    return {"sign": ["*"]}


def _label_maps(det: Any, categories: Mapping[str, Sequence[str]] | None
                ) -> tuple[dict[str, int], dict[int, int], dict[str, Sequence[str]], dict[int, int]]:
    """The service publishes labels, not class ids: classes sharing a label are one (the first
    id). Returns label → class, every class → its label's class, the categories (label lists;
    ``["*"]`` is every label) and class → category index; a category naming a label the model
    does not have is an `EvalError`."""
    class_of: dict[str, int] = {}
    for k, label in sorted((int(k), str(v)) for k, v in det.names.items()):
        class_of.setdefault(label, k)
    canonical = {int(k): class_of[str(v)] for k, v in det.names.items()}
    groups = dict(categories) if categories else default_categories(list(class_of))
    category_of: dict[int, int] = {}
    for ci, (category, labels) in enumerate(groups.items()):
        for label in (list(class_of) if list(labels) == ["*"] else labels):
            if label not in class_of:
                raise EvalError(f"--categories: {category}: {label!r} is not a label of {det.name}")
            category_of[class_of[label]] = ci
    return class_of, canonical, groups, category_of


def evaluate_detector(weights: str, data: str | Path, *, card: str | None = None, imgsz: int = 640,
                      conf: float = 0.001, iou: float = 0.7, max_det: int = 300, batch: int = 8,
                      categories: Mapping[str, Sequence[str]] | None = None, models_dir: str | None = None,
                      device: str = "auto", backend: str = "auto", threads: int | None = None,
                      labelled: bool = True) -> dict[str, Any]:
    """``labelled``: some image must have a label file (else each counts as background: metrics
    of nothing); fine-tuning's held-out split may be backgrounds only."""
    from .backends import load_detector
    from .models import prepare_frame

    images, yaml_names = find_yolo_images(data)
    if labelled and not any(_label_path(p).exists() for p in images):
        raise EvalError(f"--data: none of the {len(images)} images has a label file "
                        f"(expected e.g. {_label_path(images[0])}, YOLO layout: images/ and labels/)")
    cfg = DetectorConfig(weights=weights, card=card, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det,
                         device=device, backend=backend, threads=threads, categories={"all": ["*"]})
    det = load_detector(cfg, models_dir=models_dir, field="--weights", warmup=True)
    class_of, canonical, groups, category_of = _label_maps(det, categories)
    names = {k: label for label, k in class_of.items()}
    gt_of, warnings = _dataset_ids(yaml_names, class_of, canonical, data)
    stats, cat_stats = ({k: [] for k in ("tp", "conf", "pred_cls", "target")} for _ in range(2))
    elapsed = 0.0  # prepare_frame + detect_batch, as the service spends it
    sizes_run: set[tuple[int, int]] = set()
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        frames = [_read_image(p) for p in chunk]
        t0 = time.perf_counter()
        inputs = [prepare_frame(f, imgsz) for f in frames]
        elapsed += time.perf_counter() - t0
        sizes = {frame_rectangle(f.shape[:2], imgsz) for f in frames}
        if not sizes <= sizes_run:  # a frame size first seen: once untimed (a rectangle export compiles per size,
            det.detect_batch(inputs)  # in the background: waited for, so that the timed run is at its rectangle)
            getattr(det, "wait_compiling", lambda: True)()
            sizes_run |= sizes
        t0 = time.perf_counter()
        results = det.detect_batch(inputs)
        elapsed += time.perf_counter() - t0
        for path, frame, res in zip(chunk, frames, results):
            if isinstance(res, Exception):
                raise EvalError(f"{path}: the detector failed: {type(res).__name__}: {res}")
            order = np.argsort(-res.scores, kind="stable")
            xyxy, scores = res.xyxy[order], res.scores[order]
            pred = np.array([class_of[res.labels[i]] for i in order], int)
            gt, gt_xyxy = read_yolo_labels(path, frame.shape[:2], max(len(canonical), *[k + 1 for k in gt_of]),
                                           yaml_names or None)
            known = np.array([int(c) in gt_of for c in gt], bool).reshape(-1)
            gt, gt_xyxy = np.array([gt_of[int(c)] for c in gt[known]], int), gt_xyxy[known]
            for out, p_cls, g_cls, keep_p, keep_g in (
                (stats, pred, gt, slice(None), slice(None)),
                (cat_stats, *_to_categories(pred, gt, category_of)),
            ):
                out["tp"].append(match(p_cls, g_cls, xyxy[keep_p], gt_xyxy[keep_g]))
                out["conf"].append(scores[keep_p])
                out["pred_cls"].append(p_cls)
                out["target"].append(g_cls)
    overall = _ap(stats, names)
    by_cat = _ap(cat_stats, dict(enumerate(groups)))["per_class"]
    n_cat = np.bincount(np.concatenate(cat_stats["target"]).astype(int), minlength=len(groups))
    per_category = {c: by_cat.get(c, {"map50_95": None, "map50": None, "instances": int(n_cat[i])})
                    for i, c in enumerate(groups)}
    return {
        "task": "detect", "weights": str(weights), "model": det.name, "backend": _backend_name(det),
        "data": str(data), "images": len(images), "imgsz": ran_at(det, imgsz), "conf": conf, "max_det": max_det,
        "nms_iou": getattr(getattr(det, "card", None), "nms_iou", iou),  # a card sets its own
        "map50_95": overall["map50_95"], "map50": overall["map50"], "precision": overall["precision"],
        "recall": overall["recall"], "instances": overall["instances"],
        "per_category": per_category, "categories": groups, "per_class": overall["per_class"],
        "ms_per_image": round(1000 * elapsed / len(images), 2), "batch": batch, "device": det.device, "threads": threads,
        "warnings": warnings,
    }


def _dataset_ids(yaml_names: Mapping[int, str] | None, class_of: Mapping[str, int], canonical: Mapping[int, int],
                 data: str | Path) -> tuple[dict[int, int], list[str]]:
    """The model's class id of each label id of the dataset. When its data.yaml names every class
    as the model does (case, "_", "-" and spaces aside), by name: another order is read right;
    when it names none of them: EvalError; else — and without names — the ids as the model's."""
    def norm(name: str) -> str:
        return re.sub(r"[\s_-]+", " ", str(name).strip().casefold())

    if not yaml_names:
        return dict(canonical), []
    model = {norm(name): k for name, k in class_of.items()}
    matched = {k: model[norm(name)] for k, name in yaml_names.items() if norm(name) in model}
    if not matched:
        raise EvalError(f"--data: {data}: none of data.yaml's names is a class of the model "
                        f"(e.g. {next(iter(yaml_names.values()))!r}; the model's: {', '.join(list(class_of)[:5])}, …)")
    if len(matched) == len(yaml_names):
        moved = any(matched[k] != canonical.get(k) for k in matched)
        return matched, [f"{data}: data.yaml's class ids are in another order than the model's: matched by name"] * moved
    k, name = next((k, n) for k, n in yaml_names.items() if k not in matched)
    return dict(canonical), [f"{data}: data.yaml's names differ from the model's (e.g. class {k}: {name!r}); "
                             "label class ids are read in the model's label order"]


def _to_categories(pred: np.ndarray, gt: np.ndarray, category_of: Mapping[int, int]) -> tuple:
    """Predictions and labels of mapped classes, as category ids (with the masks that keep them)."""
    keep_p = np.array([int(c) in category_of for c in pred], bool).reshape(-1)
    keep_g = np.array([int(c) in category_of for c in gt], bool).reshape(-1)
    p = np.array([category_of[int(c)] for c in pred[keep_p]], int)
    g = np.array([category_of[int(c)] for c in gt[keep_g]], int)
    return p, g, keep_p, keep_g


def ran_at(det: Any, imgsz: int) -> int:
    """The size a detector ran at: an export of a fixed size runs at its own whatever ``imgsz``
    asked (it says so as it loads); reported as asked, a 320 export's accuracy read as 640's."""
    size = getattr(getattr(det, "net", None), "size", None)
    return int(max(size)) if size else imgsz


def _backend_name(model: Any) -> str:
    """The backend's ``type`` (ultralytics, openvino, yunet), from the module that made it."""
    from .backends import MODULES

    module = type(model).__module__.rsplit(".", 1)[-1]
    for kind, target in MODULES.items():
        if module in (target.values() if isinstance(target, dict) else (target,)):
            return kind
    return module
