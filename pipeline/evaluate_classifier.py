"""`percept eval` for a classifier: every image is taken as the crop the decoder cut
(`prepare_crop` over the whole image at the model's crop size) and goes through
``classify_batch``; top-1 and recall per class. Labels: a ``Filename,ClassId`` CSV (GTSRB's
own, ``;``-separated, too). Bad input raises `EvalError` (the CLI exits 2). No Ray here.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config_models import ClassifierConfig
from .evaluate import EvalError, _backend_name, _read_image, text_of
from .redact import quoted_url


def read_label_csv(labels: str | Path, data: str | Path) -> list[tuple[Path, int]]:
    """(image path, class id) rows of a ``Filename,ClassId`` CSV; file names are looked up in
    the data folder, its ``images/`` and beside the CSV."""
    csv_path, root = Path(labels).expanduser(), Path(data).expanduser()
    if not root.is_dir():
        raise EvalError(f"--data: {quoted_url(data)} is not a folder")
    if not csv_path.is_file():
        raise EvalError(f"--labels: {quoted_url(labels)} " + ("is not a file" if csv_path.exists() else "does not exist"))
    try:
        return _label_rows(csv_path, root)
    except UnicodeDecodeError:
        try:
            text_of(csv_path)  # (the whole file's bytes: the line and byte of the first undecodable one)
        except EvalError as exc:
            raise EvalError(f"--labels: {exc}") from None
        raise


def _label_rows(csv_path: Path, root: Path) -> list[tuple[Path, int]]:
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:  # (a byte-order mark: a spreadsheet's export)
        sample = fh.read(4096)
        fh.seek(0)
        delimiter = ";" if sample.count(";") > sample.count(",") else ","  # GTSRB's own CSVs use ';'
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = [h.strip() for h in reader.fieldnames or []]
        if "Filename" not in header or "ClassId" not in header:
            raise EvalError(f"--labels: {csv_path}: the first line must be the header 'Filename,ClassId' (got {header})")
        rows = []
        for n, row in enumerate(reader, 2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("Filename"):
                continue
            try:
                cls = int(row["ClassId"])
            except ValueError:
                raise EvalError(f"--labels: {csv_path}:{n}: ClassId {row['ClassId']!r} is not an integer") from None
            name = row["Filename"]
            found = next((p for p in (root / name, root / "images" / name, csv_path.parent / name) if p.is_file()), None)
            if found is None:
                raise EvalError(f"--labels: {csv_path}:{n}: {name!r} not found in {root} (nor {root / 'images'})")
            rows.append((found, cls))
    if not rows:
        raise EvalError(f"--labels: {csv_path}: no rows after the header")
    return rows


def classifier_labels(cfg: ClassifierConfig, clf: Any, models_dir: str | None) -> tuple[str, list[str]]:
    """(attribute, labels in class-id order): a card's first softmax head, else the model's names."""
    from .backends import resolve_card
    from .backends.card import read_labels
    from .models import resolve_weights

    weights = resolve_weights(cfg.weights, models_dir)
    card = resolve_card(cfg, weights, models_dir=models_dir, field="--weights")
    if card is None:
        return cfg.attribute, [str(clf.names[k]) for k in sorted(clf.names)]
    head = next((o for o in card.outputs if o.kind == "softmax"), None)
    if head is None:
        raise EvalError(f"--weights: card {card.where()} has no softmax output: top-1 needs one")
    return head.attribute_name, read_labels(head, card, weights)


def evaluate_classifier(weights: str, data: str | Path, labels: str | Path, *, card: str | None = None,
                        imgsz: int = 224, context: float = 1.0, batch: int = 32, models_dir: str | None = None,
                        device: str = "auto", threads: int | None = None) -> dict[str, Any]:
    from .backends import load_classifier
    from .models import prepare_crop

    rows = read_label_csv(labels, data)  # before loading the model: bad input fails fast
    cfg = ClassifierConfig(weights=weights, card=card, imgsz=imgsz, device=device, threads=threads)
    clf = load_classifier(cfg, models_dir=models_dir, field="--weights", warmup=True)
    attribute, names = classifier_labels(cfg, clf, models_dir)
    bad = next(((p, c) for p, c in rows if not 0 <= c < len(names)), None)
    if bad:
        raise EvalError(f"--labels: ClassId {bad[1]} of {bad[0].name} is not a class of {clf.name} (0-{len(names) - 1})")
    hits, seen, elapsed = np.zeros(len(names), int), np.zeros(len(names), int), 0.0
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        images = [_read_image(p) for p, _ in chunk]
        t0 = time.perf_counter()
        crops = [prepare_crop(im, (0, 0, im.shape[1], im.shape[0]), clf.crop_size, context=context,
                              fit=getattr(clf, "crop_fit", "context")) for im in images]
        results = clf.classify_batch(crops)
        elapsed += time.perf_counter() - t0
        for (path, cls), res in zip(chunk, results):
            if isinstance(res, Exception):
                raise EvalError(f"{path}: the classifier failed: {type(res).__name__}: {res}")
            seen[cls] += 1
            hits[cls] += res[attribute]["label"] == names[cls]
    return {
        "task": "classify", "weights": str(weights), "model": clf.name, "backend": _backend_name(clf),
        "data": str(data), "labels": str(labels), "images": len(rows), "attribute": attribute,
        "crop_size": list(clf.crop_size), "context": context,
        "top1": round(float(hits.sum() / seen.sum()), 4),
        "per_class_recall": {names[i]: round(float(hits[i] / seen[i]), 4) for i in range(len(names)) if seen[i]},
        "ms_per_image": round(1000 * elapsed / len(rows), 2), "batch": batch, "device": clf.device, "threads": threads,
    }
