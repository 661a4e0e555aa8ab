"""`percept models export`: a ``.pt`` detector or classifier to the formats the service runs.

Ultralytics' own exporter does the work (`YOLO(pt).export(format=..., quantize=...)`); this module
names the variants, gathers the calibration frames for INT8 (`export_inputs`), keeps the exporter offline and
checks that every variant it wrote loads through `pipeline.backends`:

    format          written as (beside the weights, or in --out)  loaded by                    needs
    openvino-fp32   <stem>_openvino_model/                         openvino (native on CPU)     openvino
    openvino-fp16   <stem>_fp16_openvino_model/                    openvino (native on CPU)     openvino
    openvino-int8   <stem>_int8_openvino_model/  (calibrated)      openvino (native on CPU)     nncf
    onnx            <stem>.onnx                                    ultralytics (ONNX Runtime)   onnx, onnxruntime
    tensorrt-fp16   <stem>_fp16.engine                             ultralytics                  a GPU, tensorrt
    tensorrt-int8   <stem>_int8.engine  (calibrated)               ultralytics                  a GPU, tensorrt

(OpenVINO classifiers load through ultralytics' OpenVINO runtime.) OpenVINO variants keep a static batch of 1 (the native backend runs a batch as parallel infer
requests); ONNX and TensorRT ones take a dynamic batch (TensorRT up to 8), as the service batches.
Each variant carries ultralytics' metadata (``metadata.yaml`` in an OpenVINO folder, embedded in
ONNX and engine files: task, names, imgsz, stride), which is what the backends read: no card is
needed. INT8 is post-training quantisation (NNCF for OpenVINO, TensorRT's calibrator) on frames
the user names: folders of images and video files (frames sampled evenly), up to ``limit``.
Calibrating on the images a model is then evaluated on flatters it; use other frames of the
same cameras when you can.

Bad input raises `ExportError` (the CLI exits 2) before anything is written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models import load_failure
from ..openvino_quiet import quiet_openvino
from .export_inputs import RECOMMENDED_CALIBRATION, ExportError, calibration_data, current_folder, in_models_folder
from .offline import offline_ultralytics

DEFAULT_IMGSZ = {"detect": 640, "classify": 224}


@dataclass(frozen=True)
class Format:
    name: str  # what --to takes
    exporter: str  # ultralytics' format
    quantize: int | None  # ultralytics' quantize: None (FP32), 16, 8
    suffix: str  # appended to the weights' stem
    needs: tuple[str, ...]  # python modules it needs (to export, and to load what it wrote)
    gpu: bool = False
    calibrated: bool = False


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("openvino-fp32", "openvino", None, "_openvino_model", ("openvino",)),
    Format("openvino-fp16", "openvino", 16, "_fp16_openvino_model", ("openvino",)),
    Format("openvino-int8", "openvino", 8, "_int8_openvino_model", ("openvino", "nncf"), calibrated=True),
    Format("onnx", "onnx", None, ".onnx", ("onnx", "onnxruntime")),
    Format("tensorrt-fp16", "engine", 16, "_fp16.engine", ("onnx", "tensorrt"), gpu=True),
    Format("tensorrt-int8", "engine", 8, "_int8.engine", ("onnx", "tensorrt"), gpu=True, calibrated=True),
)}


# --- checks before anything is written ------------------------------------------------------------

def parse_formats(spec: str | Sequence[str]) -> list[Format]:
    """``openvino-fp32,onnx`` (or a list of names) → formats, in order, without repeats."""
    names = spec.split(",") if isinstance(spec, str) else [n for s in spec for n in str(s).split(",")]
    out: list[Format] = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        if name not in FORMATS:
            raise ExportError(f"--to: unknown format {raw.strip()!r}; known: {', '.join(FORMATS)}")
        if FORMATS[name] not in out:
            out.append(FORMATS[name])
    if not out:
        raise ExportError(f"--to: no format given; known: {', '.join(FORMATS)}")
    return out


def check_weights(weights: str | Path, task: str | None, models_dir: str | None = None) -> tuple[Path, str, Any]:
    """(path, task, the loaded ``YOLO``) of a ``.pt`` file; its task must be ``task`` when given."""
    from ..models import resolve_weights

    path = Path(resolve_weights(str(weights), models_dir)).expanduser()
    if not path.exists():
        where = f" (nor in {models_dir})" if models_dir else ""
        raise ExportError(f"weights: {str(weights)!r} does not exist{where}")
    if path.suffix != ".pt" or not path.is_file():
        kind = " (a folder: an export already? export the .pt it came from)" if path.is_dir() else ""
        raise ExportError(f"weights: {path.name}: export starts from an ultralytics .pt file{kind}")
    model = _load_yolo(path)
    if model.task not in ("detect", "classify"):
        raise ExportError(f"weights: {path.name} is a {model.task} model; export handles detect and classify models")
    if task and model.task != task:
        raise ExportError(f"weights: {path.name} is a {model.task} model, not a {task} model (--task {task})")
    return path, model.task, model


def _load_yolo(path: Path) -> Any:
    from ultralytics import YOLO

    try:
        return YOLO(str(path))
    except Exception as exc:  # noqa: BLE001 -- ultralytics raises many types for a bad file
        raise ExportError(f"weights: cannot load {path}: {load_failure(exc)}") from None


def check_can_export(formats: Sequence[Format], calib: Sequence[str | Path]) -> None:
    """A GPU for TensorRT, the python packages each format needs, calibration frames for INT8."""
    import torch

    for fmt in formats:
        if fmt.gpu and not torch.cuda.is_available():
            raise ExportError(f"--to {fmt.name}: needs a GPU (CUDA), and none is visible here; "
                              "export the openvino-* formats for CPUs")
        missing = [m for m in fmt.needs if importlib.util.find_spec(m) is None]
        if missing:
            raise ExportError(f"--to {fmt.name}: needs the python package(s) {', '.join(missing)} "
                              f"(pip install {' '.join(missing)}); ultralytics is kept from installing them")
        if fmt.calibrated and not calib:
            raise ExportError(f"--to {fmt.name}: INT8 is calibrated on frames of the cameras: give --calib DIR "
                              "(a folder of images, or a video file)")


# --- export -------------------------------------------------------------------------------------

@contextlib.contextmanager
def offline_exporter(quantizing: bool = False) -> Iterator[None]:
    """Ultralytics' exporter never reaches the network here (`offline_ultralytics`: no package
    install, missing ones are checked beforehand; no font download by the calibration's dataset
    check; no analytics) and keeps its INFO lines and NNCF's to itself."""
    quiet_openvino()  # (before nncf: it imports openvino, whose telemetry would start there)
    if quantizing and importlib.util.find_spec("nncf") is not None:
        import nncf  # noqa: F401  (it sets its logger's level on import: import it first, then quieten it)
    loggers = {name: logging.getLogger(name) for name in ("nncf", "ultralytics")}
    levels = {name: lg.level for name, lg in loggers.items()}
    quiet = not logging.getLogger().isEnabledFor(logging.DEBUG)  # percept -v shows them
    if quiet:
        for lg in loggers.values():
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        with warnings.catch_warnings(), offline_ultralytics():
            if quiet:  # torch.jit.trace's deprecation, on every export
                warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for name, lg in loggers.items():
            lg.setLevel(levels[name])


def export_model(weights: str | Path, formats: str | Sequence[str], *, calib: Sequence[str | Path] = (),
                 out: str | Path | None = None, imgsz: int | None = None, task: str | None = None,
                 models_dir: str | None = None, calib_limit: int = RECOMMENDED_CALIBRATION,
                 check: bool = True, progress: Any = None) -> dict[str, Any]:
    """Export ``weights`` (a ``.pt``) to each format; returns what was written and how it loads.
    ``imgsz``: default 640 for a detector, 224 for a classifier. ``progress``: called with a line
    before each format (the CLI prints it)."""
    fmts = parse_formats(formats)
    check_can_export(fmts, calib)
    src, model_task, model = check_weights(weights, task, models_dir)
    imgsz = imgsz or DEFAULT_IMGSZ[model_task]
    # beside the weights, unless they were found in the models folder (shared: never written)
    out_dir = Path(out).expanduser() if out else _default_out(src, weights, models_dir)
    calibrated = any(f.calibrated for f in fmts)
    result: dict[str, Any] = {"weights": str(src), "task": model_task, "imgsz": imgsz, "out": str(out_dir),
                              "calibration": None, "variants": [], "warnings": []}
    data_cm = (calibration_data(calib, model_task, model.names, calib_limit, warnings=result["warnings"]) if calibrated
               else contextlib.nullcontext(None))
    if calib and not calibrated:
        result["warnings"].append("--calib is for the INT8 formats only: not used")
    with data_cm as data, offline_exporter(calibrated):  # the calibration frames are checked first
        if data is not None:
            result["calibration"] = {"sources": [str(c) for c in calib], "images": data[1]}
            if data[1] < RECOMMENDED_CALIBRATION:
                result["warnings"].append(f"INT8 calibrated on {data[1]} images ({RECOMMENDED_CALIBRATION} recommended)")
        made = [p for p in (out_dir.absolute(), *out_dir.absolute().parents) if not p.exists()]  # (deepest first)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file there, a folder that cannot be made
            raise ExportError(f"--out: cannot make the folder {out_dir}: "
                              f"{'a file is there' if isinstance(exc, FileExistsError) else exc.strerror}") from None
        if not os.access(out_dir, os.W_OK):
            raise ExportError(f"--out: {out_dir} is not writable")
        staging = Path(tempfile.mkdtemp(prefix=".percept-export-", dir=out_dir))
        try:
            (staging / src.name).symlink_to(src.resolve())  # the exporter writes beside the file it loaded
            staged = _load_yolo(staging / src.name)
            for fmt in fmts:
                if progress:
                    progress(f"exporting {src.name} to {fmt.name} at imgsz {imgsz}"
                             + (f", calibrated on {data[1]} images" if fmt.calibrated and data else ""))
                try:
                    result["variants"].append(_export_one(staged, fmt, src, out_dir, imgsz=imgsz,
                                                          data=data[0] if data else None, task=model_task, check=check))
                except ExportError as exc:  # the variants written before this one stay: say which
                    done = ", ".join(v["path"] for v in result["variants"])
                    raise ExportError(f"{exc}" + (f" (already written: {done})" if done else "")) from None
        except BaseException:  # (Ctrl-C too) a folder made for nothing is not left behind
            shutil.rmtree(staging, ignore_errors=True)
            if not result["variants"]:
                _remove_empty(made)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return result


def _remove_empty(folders: Sequence[Path]) -> None:
    """The folders this export made (deepest first), as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _default_out(src: Path, weights: str | Path, models_dir: str | None) -> Path:
    """Beside the weights; the current folder for weights found in, or lying in, the models
    folder (`current_folder`)."""
    if Path(weights).expanduser().exists() and not in_models_folder(src, models_dir):
        return src.parent
    return current_folder(models_dir)


def _export_one(model: Any, fmt: Format, src: Path, out_dir: Path, *, imgsz: int, data: str | None,
                task: str, check: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"format": fmt.exporter, "imgsz": imgsz, "device": "0" if fmt.gpu else "cpu"}
    if fmt.quantize is not None:
        kwargs["quantize"] = fmt.quantize
    if fmt.calibrated:
        kwargs["data"] = data
    if fmt.exporter in ("onnx", "engine"):
        kwargs["simplify"] = False  # onnxslim is not needed: ONNX Runtime and TensorRT optimise the graph
        kwargs["dynamic"] = True  # the service batches; a batch-1 graph runs a batch item by item
    if fmt.exporter == "engine":
        kwargs["batch"] = 8  # TensorRT's largest batch (and INT8 calibration batch), as ultralytics' docs do
    t0 = time.perf_counter()
    try:
        produced = Path(str(model.export(**kwargs)).rstrip("/"))
    except Exception as exc:  # noqa: BLE001 -- the exporter raises many types; one line names the format
        raise ExportError(f"{fmt.name}: ultralytics' exporter failed: {type(exc).__name__}: {str(exc).strip()[:400]}") from None
    target = out_dir / f"{src.stem}{fmt.suffix}"
    # checked where it was made: a variant that does not load replaces no earlier one
    backend = check_loads(produced, task, imgsz, shown=target) if check else None
    _replace(target, produced)
    entry = {"format": fmt.name, "path": str(target), "size_mb": round(size_mb(target), 2),
             "seconds": round(time.perf_counter() - t0, 1)}
    if backend is not None:
        entry["backend"] = backend
    return entry


def _replace(target: Path, produced: Path) -> None:
    """``produced`` (in the staging folder) moved to ``target``; an earlier ``target`` is moved
    into the staging folder first (deleted with it) and put back when the move fails."""
    old = produced.parent / f".replaced-{target.name}"
    had = target.exists() or target.is_symlink()
    if had:
        shutil.move(str(target), str(old))
    try:
        shutil.move(str(produced), str(target))
    except BaseException:
        if had:
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
            shutil.move(str(old), str(target))
        raise


def check_loads(path: str | Path, task: str, imgsz: int, *, shown: str | Path | None = None) -> str:
    """Load a variant as the service would; the backend's type, or `ExportError` (naming it
    ``shown``, where it would have gone, when it lies elsewhere: the staging folder).
    A detector is loaded with every class in one category (as `compare` loads it): the config's
    default categories name COCO labels, which a detector of other classes does not have."""
    from ..backends import load_classifier, load_detector
    from ..config_models import ClassifierConfig, DetectorConfig
    from ..evaluate import _backend_name
    from ..models import ModelError

    try:
        if task == "detect":
            cfg = DetectorConfig(weights=str(path), imgsz=imgsz, categories={"all": ["*"]})
            model = load_detector(cfg, models_dir=None, field="export")
        else:
            model = load_classifier(ClassifierConfig(weights=str(path), imgsz=imgsz), models_dir=None, field="export")
    except ModelError as exc:
        raise ExportError(f"{shown or path}: the exported variant does not load, nothing was replaced: {exc}") from None
    return _backend_name(model)


def size_mb(path: str | Path) -> float:
    """A file's size, a folder's files together, an IR ``.xml`` with its ``.bin`` (MB)."""
    p = Path(str(path).rstrip("/"))
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6
    files = [p, p.with_suffix(".bin")] if p.suffix == ".xml" else [p]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6
