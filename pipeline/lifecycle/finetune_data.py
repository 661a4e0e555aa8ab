"""The labelled folder `percept models finetune` trains on: its layout checked, a held-out split made.

- Classification: one subfolder per class (``DIR/<class>/*.jpg``, subfolders of a class too), or a
  folder already split (``DIR/train/<class>/``, ``DIR/val/<class>/``: the split is kept).
- Detection: a YOLO folder (``DIR/images/**`` with ``DIR/labels/**.txt`` mirroring it; names from
  ``DIR/data.yaml`` or ``DIR/classes.txt``, else the model's own), or a ``data.yaml`` (its
  ``train`` / ``val`` split is kept when it has both). ``images/train`` + ``images/val`` are kept too.

The split is deterministic (``seed``), per class for a classifier, and lands in a work folder as
links, one file at a time: ultralytics' caches go there, never beside the user's files, which are
never written. Bad input raises `FinetuneError` (the CLI exits 2) before anything is written.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..redact import quoted_url
from ..evaluate import (IMAGE_SUFFIXES, EvalError, _label_path, images_under, normalised, text_of,
                        yaml_base_and_names, yaml_entry_images)

VAL_FOLDERS = ("val", "valid", "validation", "test")
SUFFIXES = ", ".join(sorted(IMAGE_SUFFIXES))


class FinetuneError(ValueError):
    """Bad fine-tuning input: missing or malformed data, weights of another task, bad options."""


@dataclass
class Dataset:
    """What was found: ``task``; class ``names`` (id → name); items as (image, class name) for a
    classifier, (image, label file or None) for a detector; ``val`` set when the folder was split."""

    task: str  # "classify" | "detect"
    root: Path
    names: dict[int, str]
    train: list[tuple[Path, object]]
    val: list[tuple[Path, object]] = field(default_factory=list)
    names_from: str = "folders"  # folders | data.yaml | classes.txt | model
    presplit: bool = False
    spec: Path | None = None  # the data.yaml, when there is one
    base: Path | None = None  # the data.yaml's ``path:``, its images' folder (elsewhere than the yaml's)

    @property
    def folders(self) -> list[Path]:
        """The folders that are never written: the data's, and a data.yaml's ``path:``."""
        return list(dict.fromkeys(p.resolve() for p in (self.root, self.base) if p is not None))

    @property
    def layout(self) -> str:
        return "folder-per-class (classify)" if self.task == "classify" else "YOLO detection (images/ + labels/)"


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


# --- reading ------------------------------------------------------------------------------------

def read_dataset(data: str | Path, *, model_names: dict[int, str] | None = None) -> Dataset:
    """The dataset at ``data``, its layout decided by what is there (see the module's doc)."""
    root = Path(data).expanduser()
    if not root.exists():
        raise FinetuneError(f"--data: {quoted_url(data)} does not exist")
    if root.is_file():
        if root.suffix.lower() in (".yaml", ".yml"):
            return _detect_from_yaml(root, model_names)
        raise FinetuneError(f"--data: {root} is a file: give a folder (one subfolder per class for a classifier, "
                            "images/ + labels/ for a detector) or a data.yaml")
    if (root / "data.yaml").is_file():
        return _detect_from_yaml(root / "data.yaml", model_names)
    if (root / "images").is_dir() or (root / "labels").is_dir():
        return _detect_from_folder(root, model_names)
    return _classify_from_folder(root)


def _classify_from_folder(root: Path) -> Dataset:
    train_dir = root / "train"
    val_dir = next((root / v for v in VAL_FOLDERS if (root / v).is_dir()), None)
    if train_dir.is_dir() and val_dir is None:  # train/ alone: it is split
        classes = _classes(train_dir)
        return Dataset("classify", root, dict(enumerate(sorted(classes))), _flatten(classes))
    if train_dir.is_dir():
        train, val = _classes(train_dir), _classes(val_dir)
        unknown = sorted(set(val) - set(train))
        if unknown:
            raise FinetuneError(f"--data: {val_dir / unknown[0]} is not a class of {train_dir} "
                                f"(its classes: {', '.join(sorted(train))})")
        names = dict(enumerate(sorted(train)))
        return Dataset("classify", root, names, _flatten(train), _flatten(val), presplit=True)
    classes = _classes(root)
    return Dataset("classify", root, dict(enumerate(sorted(classes))), _flatten(classes))


def _classes(folder: Path) -> dict[str, list[Path]]:
    """{class: images} of a folder-per-class folder; its layout errors name the folder."""
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    classes = {d.name: images_under(d) for d in _subfolders(folder)}
    if loose and not classes:
        raise FinetuneError(f"--data: {folder} holds images ({loose[0]}, …) but no class folders: a classifier is "
                            f"fine-tuned on one subfolder per class ({folder}/<class>/*.jpg), a detector on a YOLO "
                            "folder (images/ + labels/)")
    if loose:
        raise FinetuneError(f"--data: {folder} has images at its top level ({loose[0]}, …): in a folder-per-class "
                            f"dataset every image is in its class's subfolder ({folder}/<class>/*.jpg)")
    if not any(classes.values()):
        raise FinetuneError(f"--data: no images in {folder} (looked for {SUFFIXES} in its class subfolders)")
    empty = [name for name, images in classes.items() if not images]
    if empty:
        raise FinetuneError(f"--data: class folder {folder / empty[0]} has no images ({SUFFIXES})")
    if len(classes) < 2:
        raise FinetuneError(f"--data: {folder} has 1 class folder ({next(iter(classes))}): "
                            "a classifier needs at least 2 classes")
    return classes


def _flatten(classes: dict[str, list[Path]]) -> list[tuple[Path, object]]:
    return [(image, name) for name in sorted(classes) for image in classes[name]]


def _detect_from_folder(root: Path, model_names: dict[int, str] | None) -> Dataset:
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir():
        raise FinetuneError(f"--data: {root} has labels/ but no images/: a YOLO detection dataset has "
                            "images/<name>.jpg and labels/<name>.txt")
    if not labels_dir.is_dir():
        raise FinetuneError(f"--data: {root} has images/ but no labels/: a YOLO detection dataset has "
                            "labels/<name>.txt (class cx cy w h, normalised) for each images/<name>.jpg")
    names, names_from = _names_beside(root, model_names)
    split = {s: images_dir / s for s in ("train", "val") if (images_dir / s).is_dir()}
    if len(split) == 2:
        train, val = (_with_labels(images_under(split[s]), images_dir) for s in ("train", "val"))
        return _checked(Dataset("detect", root, names, train, val, names_from, presplit=True))
    images = images_under(images_dir)
    if not images:
        raise FinetuneError(f"--data: no images in {images_dir} (looked for {SUFFIXES}, subfolders too)")
    return _checked(Dataset("detect", root, names, _with_labels(images, images_dir), names_from=names_from))


def _names_beside(root: Path, model_names: dict[int, str] | None) -> tuple[dict[int, str], str]:
    classes_txt = root / "classes.txt"  # labelImg / CVAT exports
    if classes_txt.is_file():
        lines = [ln.strip() for ln in _text(classes_txt).splitlines() if ln.strip()]
        if lines:
            return dict(enumerate(lines)), "classes.txt"
    if model_names:
        return dict(model_names), "model"
    raise FinetuneError(f"--data: {root}: no class names (give a data.yaml with names:, or a classes.txt)")


def _with_labels(images: list[Path], images_dir: Path) -> list[tuple[Path, object]]:
    out = []
    for image in images:
        label = _label_path(image)
        out.append((image, label if label.is_file() else None))
    if images and not any(label for _, label in out):
        raise FinetuneError(f"--data: none of the {len(images)} images under {images_dir} has a label file "
                            f"(expected e.g. {_label_path(images[0])})")
    return out


def _detect_from_yaml(spec: Path, model_names: dict[int, str] | None) -> Dataset:
    try:
        cfg = yaml.safe_load(_text(spec)) or {}
    except yaml.YAMLError as exc:
        raise FinetuneError(f"--data: {spec}: YAML syntax error: {exc}") from None
    if not isinstance(cfg, dict) or not (cfg.get("train") or cfg.get("val")):
        raise FinetuneError(f"--data: {spec}: a data.yaml needs train: (and val:, names:)")
    try:
        base, names = yaml_base_and_names(spec, cfg, ("train", "val"))
    except EvalError as exc:
        raise FinetuneError(str(exc)) from None
    names_from = "data.yaml"
    if names is None:
        names, names_from = _names_beside(spec.parent, model_names)
    parts = {key: _yaml_images(spec, base, cfg[key], key) for key in ("train", "val") if cfg.get(key)}
    if len(parts) == 2 and cfg["train"] != cfg["val"]:
        train, val = (_with_labels(parts[k], base) for k in ("train", "val"))
        return _checked(Dataset("detect", spec.parent, names, train, val, names_from, presplit=True, spec=spec,
                                base=base))
    images = sorted({p for found in parts.values() for p in found})
    return _checked(Dataset("detect", spec.parent, names, _with_labels(images, base), names_from=names_from,
                            spec=spec, base=base))


def _yaml_images(spec: Path, base: Path, entry: object, key: str) -> list[Path]:
    try:
        images = yaml_entry_images(spec, base, entry, key)
    except EvalError as exc:
        raise FinetuneError(str(exc)) from None
    if not images:
        raise FinetuneError(f"--data: {spec}: no images in {key} {entry!r} ({SUFFIXES})")
    return images


def _text(path: Path) -> str:
    """`text_of` (a file that is not UTF-8 named), as this command's error."""
    try:
        return text_of(path)
    except EvalError as exc:
        raise FinetuneError(f"--data: {exc}") from None


def _class_id(text: str) -> int:
    """A label line's class: ``58`` or ``58.0`` (some exporters write floats; ultralytics and
    `percept eval` read them), not ``58.5``."""
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def _checked(ds: Dataset) -> Dataset:
    """Every label line is ``class cx cy w h`` (or a segment) with a class of ``names``."""
    nc = len(ds.names)
    for _, label in ds.train + ds.val:
        if label is None:
            continue
        lines = _text(Path(str(label))).splitlines()
        for n, line in enumerate(lines, 1):
            row = line.split()
            if not row:
                continue
            try:
                cls, values = _class_id(row[0]), [float(v) for v in row[1:]]
            except ValueError:
                raise FinetuneError(f"--data: {label}:{n}: not a YOLO label line (class cx cy w h): "
                                    f"{line.strip()!r}") from None
            if len(values) != 4 and (len(values) < 6 or len(values) % 2):
                raise FinetuneError(f"--data: {label}:{n}: expected 'class cx cy w h' (normalised), got {line.strip()!r}")
            try:
                normalised(values, f"{label}:{n}", line)
            except EvalError as exc:
                raise FinetuneError(f"--data: {exc}") from None
            if not 0 <= cls < nc:
                raise FinetuneError(f"--data: {label}:{n}: class {cls} is not one of the {nc} classes "
                                    f"(names from {ds.names_from}: ids 0-{nc - 1})")
    return ds


# --- the held-out split -----------------------------------------------------------------------------

def split(ds: Dataset, val_fraction: float, seed: int) -> tuple[list, list]:
    """(train, val): the folder's own split, else ``val_fraction`` held out at random (``seed``),
    per class for a classifier; each class keeps at least one image on each side."""
    if ds.presplit:
        return list(ds.train), list(ds.val)
    if not 0 < val_fraction < 1:
        raise FinetuneError(f"--val-fraction: between 0 and 1, got {val_fraction}")
    groups: dict[object, list] = {}
    for item in ds.train:
        groups.setdefault(item[1] if ds.task == "classify" else "all", []).append(item)
    train, val = [], []
    for key in sorted(groups, key=str):
        items = sorted(groups[key], key=lambda it: str(it[0]))
        if len(items) < 2:
            raise FinetuneError(f"--data: class {key!r} has 1 image: at least 2 are needed (one is held out)")
        random.Random(f"{seed}:{key}").shuffle(items)
        n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction)))
        val += items[:n_val]
        train += items[n_val:]
    return train, val


ULTRALYTICS_READS = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}  # of IMAGE_SUFFIXES


def link_image(image: Path, dest: Path) -> Path:
    """``image`` at ``dest`` for ultralytics: linked, or — a format it does not read (GTSRB's
    ``.ppm``: "no training images found") — written there as PNG. Where it went."""
    if image.suffix.lower() in ULTRALYTICS_READS:
        dest.symlink_to(image.resolve())
        return dest
    import cv2

    pixels = cv2.imread(str(image), cv2.IMREAD_COLOR)
    dest = dest.with_suffix(".png")
    if pixels is None or not cv2.imwrite(str(dest), pixels):
        raise EvalError(f"{image}: cannot read it as an image")
    return dest


SPLIT_MARK = ".percept-split"  # in a split `write_split` made: the next run may remove it


def write_split(ds: Dataset, train: Sequence, val: Sequence, into: Path) -> tuple[Path, Path]:
    """Links to the images (and labels) in ``into/train`` and ``into/val``; returns (what
    ultralytics trains on: the folder or a data.yaml, the held-out folder)."""
    for part, items in (("train", train), ("val", val)):
        for i, (image, target) in enumerate(items):
            name = f"{i:05d}_{image.stem}{image.suffix.lower()}"  # unique: two folders may share a file name
            if ds.task == "classify":
                dest = into / part / str(target) / name
            else:
                dest = into / part / "images" / name
                if target is not None:
                    label = into / part / "labels" / f"{Path(name).stem}.txt"
                    label.parent.mkdir(parents=True, exist_ok=True)
                    label.symlink_to(Path(str(target)).resolve())
            dest.parent.mkdir(parents=True, exist_ok=True)
            link_image(image, dest)
    into.mkdir(parents=True, exist_ok=True)
    (into / SPLIT_MARK).write_text("made by percept models finetune: written afresh by each run\n")
    if ds.task == "classify":
        return into, into / "val"
    (into / "val" / "labels").mkdir(parents=True, exist_ok=True)  # a held-out split of backgrounds only
    spec = {"path": str(into), "train": "train/images", "val": "val/images", "names": dict(ds.names)}
    (into / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return into / "data.yaml", into / "val"


def heldout_csv(names: dict[int, str], heldout: Path, into: Path) -> tuple[Path | None, int]:
    """A ``Filename,ClassId`` CSV of the held-out crops whose class ``names`` has (ids in its
    order), for `pipeline.evaluate_classifier.evaluate_classifier`; (None, 0) when it has none of them."""
    ids = {name: k for k, name in names.items()}
    rows = [(p.relative_to(heldout), ids[p.parent.name]) for p in sorted(heldout.rglob("*"))
            if p.is_file() and p.parent.name in ids]  # (linked, or written as PNG: `link_image`)
    if not rows:
        return None, 0
    with into.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Filename", "ClassId"])
        writer.writerows((str(name), cls) for name, cls in rows)
    return into, len(rows)


# --- the options' checks (before anything is written) ------------------------------------------

def outside(path: Path, ds: Dataset, option: str) -> None:
    """(a data.yaml's ``path:`` elsewhere too: checked against the yaml's folder alone, --out and
    --work were written into the dataset itself)"""
    for folder in ds.folders:
        if path.resolve().is_relative_to(folder):
            raise FinetuneError(f"{option}: {path} is inside the data folder {folder}, which is never written")


def apart(work: Path, ds: Dataset) -> None:
    """``--work`` and the data folder do not hold each other (the work folder's split/ is
    written afresh each run), and it is no file."""
    if work.exists() and not work.is_dir():
        raise FinetuneError(f"--work: {work} is a file; give a folder (made if missing)")
    outside(work, ds, "--work")
    for folder in ds.folders:
        if folder.is_relative_to(work.resolve()):
            raise FinetuneError(f"--work: the data folder {folder} is inside {work}, whose split/ each run writes "
                                "afresh; give another --work")
    if (work / "split").exists() and not (work / "split" / SPLIT_MARK).is_file():  # (it was removed, whatever it was)
        raise FinetuneError(f"--work: {work / 'split'} is not a split a finetune run made (no {SPLIT_MARK} in it): "
                            "each run writes split/ afresh, and this one is not removed; give another --work")


def check_options(epochs: int, imgsz: int, batch: int, workers: int) -> None:
    if epochs < 1:
        raise FinetuneError(f"--epochs: at least 1, got {epochs}")
    if imgsz < 32 or imgsz % 32:
        raise FinetuneError(f"--imgsz: a multiple of 32 (the models' stride), at least 32, got {imgsz}")
    if batch < 1:
        raise FinetuneError(f"--batch: at least 1, got {batch}")
    if workers < 0:
        raise FinetuneError(f"--workers: 0 or more, got {workers}")
