"""`percept models compare`: each variant's accuracy and speed, in one run, in one table.

- Accuracy is `percept eval`'s (`pipeline.evaluate`): mAP50-95 / mAP50 of a detector on a YOLO
  folder, top-1 of a classifier on crops and a ``Filename,ClassId`` CSV; through the backend the
  service would load for the file (`pipeline.backends`).
- Speed is the time the service spends per image (``prepare_frame`` / ``prepare_crop`` + the
  backend's ``detect_batch`` / ``classify_batch``) on the first ``timing_images`` images, at each
  batch size, after a warm-up batch, the best of ``repeat`` rounds (the least disturbed by other
  work on the machine); with the service's default thresholds (conf 0.25) and threads (the
  replica's ``num_cpus``: 1 unless ``threads``).
- Size is the file's, a folder's files together (MB).

Each variant runs at ``imgsz`` when given, else at the size it was exported at (OpenVINO
``metadata.yaml``, ONNX metadata), else the default (640 detect, 224 classify).
Bad input raises `CompareError` or `pipeline.evaluate.EvalError` (the CLI exits 2).
"""

from __future__ import annotations

import ast
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..models import ModelError
from ..redact import quoted_url
from .export import DEFAULT_IMGSZ, size_mb


class CompareError(ValueError):
    """Bad compare input (a variant that does not exist, bad batch sizes)."""


def resolve_variants(variants: Sequence[str], models_dir: str | None) -> list[str]:
    """Each variant as a path that exists (a path, or a file in the models folder)."""
    from ..models import resolve_weights

    if not variants:
        raise CompareError("no variant to compare: name the weights files / export folders")
    out = []
    for v in variants:
        path = resolve_weights(str(v), models_dir)
        if not Path(path).exists():
            where = f" (nor in {models_dir})" if models_dir else ""
            raise CompareError(f"variant {quoted_url(v)} does not exist{where}")
        out.append(path)
    return out


def export_imgsz(weights: str | Path) -> int | None:
    """The input size an ultralytics export was made at (OpenVINO folder or .xml beside its
    metadata.yaml, ONNX metadata); None for a .pt or when it does not say."""
    p = Path(str(weights).rstrip("/"))
    meta = p / "metadata.yaml" if p.is_dir() else p.parent / "metadata.yaml" if p.suffix == ".xml" else None
    value: Any = None
    if meta is not None and meta.is_file():
        value = (yaml.safe_load(meta.read_text()) or {}).get("imgsz")
    elif p.suffix == ".onnx":
        try:
            import onnx

            props = {m.key: m.value for m in onnx.load(str(p), load_external_data=False).metadata_props}
            value = ast.literal_eval(props["imgsz"]) if "imgsz" in props else None
        except Exception:  # noqa: BLE001 -- not an ultralytics export, or onnx missing: the default size
            value = None
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    return int(value) if isinstance(value, (int, float)) else None


def variant_task(weights: str | Path) -> str | None:
    """detect / classify as the file says (an export's metadata, a .pt's model); None if unknown."""
    p = Path(str(weights).rstrip("/"))
    meta = p / "metadata.yaml" if p.is_dir() else p.parent / "metadata.yaml" if p.suffix == ".xml" else None
    try:
        if meta is not None and meta.is_file():
            return (yaml.safe_load(meta.read_text()) or {}).get("task")
        if p.suffix == ".onnx":
            import onnx

            return {m.key: m.value for m in onnx.load(str(p), load_external_data=False).metadata_props}.get("task")
        if p.suffix == ".pt":
            from ultralytics import YOLO

            return YOLO(str(p)).task
    except Exception:  # noqa: BLE001 -- not an ultralytics file: the backends say what is wrong when it loads
        return None
    return None


def check_tasks(variants: Sequence[str], paths: Sequence[str], task: str) -> None:
    """Every variant is a model of ``task``, before any is measured."""
    for spec, path in zip(variants, paths):
        found = variant_task(path)
        if found and found != task:
            how = ("without --labels, compare measures detectors (give --labels CSV for classifiers)"
                   if task == "detect" else "with --labels, compare measures classifiers")
            raise CompareError(f"variant {spec!r} is a {found} model; {how}")


def _load(weights: str, task: str, imgsz: int, *, threads: int | None, device: str) -> Any:
    """The backend the service would run for this file, with the service's default settings."""
    from ..backends import load_classifier, load_detector
    from ..config_models import ClassifierConfig, DetectorConfig

    if task == "detect":
        cfg = DetectorConfig(weights=weights, imgsz=imgsz, device=device, threads=threads, categories={"all": ["*"]})
        return load_detector(cfg, models_dir=None, field="variant", warmup=True)
    cfg = ClassifierConfig(weights=weights, imgsz=imgsz, device=device, threads=threads)
    return load_classifier(cfg, models_dir=None, field="variant", warmup=True)


def time_variant(weights: str, task: str, images: Sequence[Any], batches: Sequence[int], *, imgsz: int,
                 threads: int | None = None, device: str = "auto", repeat: int = 3) -> dict[int, float]:
    """ms per image at each batch size (preparation + inference, best of ``repeat`` rounds)."""
    from ..models import prepare_crop, prepare_frame

    model = _load(weights, task, imgsz, threads=threads, device=device)
    if task == "detect":
        prepare: Callable[[Any], Any] = lambda im: prepare_frame(im, imgsz)
        run = model.detect_batch
    else:
        prepare = lambda im: prepare_crop(im, (0, 0, im.shape[1], im.shape[0]), model.crop_size, context=1.0,
                                                 fit=getattr(model, "crop_fit", "context"))
        run = model.classify_batch
    ms: dict[int, float] = {}
    for im in images:  # every image once, untimed: a rectangle export compiles per frame size on first use
        run([prepare(im)])
    getattr(model, "wait_compiling", lambda: True)()  # (in the background: its frames in the square till then)
    for batch in batches:
        run([prepare(im) for im in images[:batch]])  # warm-up at this batch size
        best = math.inf
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            for start in range(0, len(images), batch):
                run([prepare(im) for im in images[start:start + batch]])
            best = min(best, time.perf_counter() - t0)
        ms[batch] = round(1000 * best / len(images), 2)
    return ms


def _inputs(task: str, data: str | Path, labels: str | Path | None) -> list[Path]:
    from ..evaluate import find_yolo_images
    from ..evaluate_classifier import read_label_csv

    if task == "detect":
        return find_yolo_images(data)[0]
    return [p for p, _ in read_label_csv(labels, data)]  # type: ignore[arg-type]


def _accuracy(weights: str, task: str, data: str | Path, labels: str | Path | None, *, imgsz: int,
              batch: int, threads: int | None, device: str, models_dir: str | None) -> dict[str, Any]:
    from ..evaluate import evaluate_detector
    from ..evaluate_classifier import evaluate_classifier

    common: dict[str, Any] = {"imgsz": imgsz, "batch": batch, "threads": threads, "device": device,
                              "models_dir": models_dir}  # (where a load error says it looked)
    if task == "detect":
        return evaluate_detector(weights, data, **common)
    return evaluate_classifier(weights, data, labels, **common)  # type: ignore[arg-type]


def compare_variants(variants: Sequence[str], data: str | Path, *, labels: str | Path | None = None,
                     imgsz: int | None = None, batches: Sequence[int] = (1, 4, 8), timing_images: int = 32,
                     repeat: int = 3, threads: int | None = None, device: str = "auto",
                     models_dir: str | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Accuracy and speed of each variant (detectors without ``labels``, classifiers with)."""
    from ..evaluate import _read_image

    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise CompareError(f"--batches: positive batch sizes, got {list(batches)}")
    if timing_images < 1:
        raise CompareError(f"--timing-images: at least 1, got {timing_images}")
    task = "classify" if labels else "detect"
    paths = resolve_variants(variants, models_dir)
    check_tasks(variants, paths, task)
    inputs = _inputs(task, data, labels)  # bad data fails before any model loads
    frames = [_read_image(p) for p in inputs[:timing_images]]
    rows = []
    for spec, path in zip(variants, paths):
        size = imgsz or export_imgsz(path) or DEFAULT_IMGSZ[task]
        if progress:
            progress(f"{Path(path.rstrip('/')).name}: accuracy on {len(inputs)} images, then timing at imgsz {size}")
        try:
            acc = _accuracy(path, task, data, labels, imgsz=size, batch=max(batches), threads=threads, device=device,
                            models_dir=models_dir)
        except ModelError as exc:  # (it named `eval`'s --weights, an option compare does not have)
            raise CompareError(f"variant {spec!r}: {str(exc).removeprefix('--weights: ')}") from None
        ms = time_variant(path, task, frames, batches, imgsz=size, threads=threads, device=device, repeat=repeat)
        best = min(ms, key=lambda b: (ms[b], b))
        row = {"variant": str(spec), "weights": path, "model": acc["model"], "backend": acc["backend"],
               "device": acc["device"], "imgsz": size, "size_mb": round(size_mb(path), 2),
               "ms_per_image": ms, "ms_b1": ms.get(1), "best_batch": best, "ms_best": ms[best]}
        row.update({k: acc[k] for k in ("map50_95", "map50")} if task == "detect" else {"top1": acc["top1"]})
        crop = acc.get("crop_size")  # a classifier's card sets its own input: what it ran at, not --imgsz
        if crop and crop[0] == crop[1]:
            row["imgsz"] = int(crop[0])
        elif task == "detect":  # (an export of a fixed size runs at its own: `evaluate.ran_at`)
            row["imgsz"] = acc["imgsz"]
        row["eval"] = {k: v for k, v in acc.items() if k != "per_class"}
        rows.append(row)
    return {"task": task, "data": str(data), "labels": str(labels) if labels else None, "images": len(inputs),
            "batches": batches, "timing_images": len(frames), "repeat": repeat, "threads": threads,
            "variants": rows}


# --- the table ----------------------------------------------------------------------------------

def _columns(task: str) -> list[tuple[str, str]]:
    acc = [("mAP50-95", "map50_95"), ("mAP50", "map50")] if task == "detect" else [("top-1", "top1")]
    return [("backend", "backend"), ("imgsz", "imgsz"), *acc]


def _cells(row: dict[str, Any], task: str) -> list[str]:
    cells = [str(row["backend"]), str(row["imgsz"])]
    cells += [("-" if row[k] is None else f"{row[k]:.3f}") for _, k in _columns(task)[2:]]
    b1 = "-" if row["ms_b1"] is None else f"{row['ms_b1']:.1f}"
    return cells + [b1, f"{row['ms_best']:.1f} (b{row['best_batch']})", f"{row['size_mb']:.1f}"]


def _header(result: dict[str, Any]) -> list[str]:
    return ["variant", *[name for name, _ in _columns(result["task"])], "ms/img b1", "ms/img best", "size MB"]


def _labels(rows: list[dict[str, Any]]) -> list[str]:
    """Each row's model name; where two rows share one (two ``best.pt``, the ``.xml`` of two
    export folders), the variant as it was given instead."""
    names = [row["model"] for row in rows]
    return [row["variant"] if names.count(row["model"]) > 1 else row["model"] for row in rows]


def compare_table(result: dict[str, Any]) -> str:
    """The speed–accuracy table, one row per variant, aligned for a terminal."""
    header = _header(result)
    body = [[label, *_cells(row, result["task"])] for label, row in zip(_labels(result["variants"]), result["variants"])]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    threads = result["threads"] or "1 (as a replica)"
    title = (f"{len(result['variants'])} variants on {result['images']} images of {result['data']}; timing: "
             f"{result['timing_images']} images, batches {result['batches']}, best of {result['repeat']}, "
             f"threads {threads}")
    lines = [title, fmt(header), *map(fmt, body)]
    return "\n".join(lines)


def compare_markdown(result: dict[str, Any]) -> str:
    """The same table in Markdown (for a README)."""
    header = _header(result)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| `" + label + "` | " + " | ".join(_cells(row, result["task"])) + " |"
              for label, row in zip(_labels(result["variants"]), result["variants"])]
    return "\n".join(lines)
