"""`percept models …`: the model lifecycle (`pipeline.lifecycle`).

- ``export WEIGHTS --to openvino-fp32,openvino-fp16,openvino-int8,onnx [--calib DIR]``: a ``.pt``
  detector or classifier to the formats the service runs; INT8 calibrated on the frames named.
- ``compare VARIANT... --data DIR [--labels CSV]``: accuracy (as ``percept eval``) and speed of
  each variant in one table.
- ``finetune WEIGHTS --data DIR [--epochs N] [--imgsz N] [--freeze-backbone]``: transfer learning
  on a labelled folder (`pipeline.lifecycle.finetune`), the held-out split measured before and after.

Progress goes to stderr, the result table to stdout (``--json OUT`` for all of it). Bad input
(an unknown format, a missing file, a calibration folder without images, weights of another
task) exits 2 with the reason, before anything is written.

Each subcommand is a ``_<name>_parser(actions)`` function listed in `SUBCOMMANDS`: more of them
(``swap``) are added the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import CONFIG_ERROR_EXIT_CODE, ENV_MODELS_DIR

from .common import IMGSZ, POSITIVE_INT, device_problem, fail, output_file_arg, overwritten_input, stride_imgsz


def register(sub: Any) -> None:
    m = sub.add_parser("models", help="export and quantise a model, compare its variants (speed vs accuracy), "
                       "fine-tune it on a labelled folder")
    actions = m.add_subparsers(dest="models_command", required=True)
    for add in SUBCOMMANDS:
        add(actions)  # (each gets -v: `cli.main`)


def _export_parser(actions: Any) -> argparse.ArgumentParser:
    from pipeline.lifecycle.export import FORMATS, RECOMMENDED_CALIBRATION

    e = actions.add_parser("export", help="a .pt detector or classifier to OpenVINO FP32/FP16/INT8, ONNX, TensorRT")
    e.add_argument("weights", help=f"the .pt file (a path, or a file in {ENV_MODELS_DIR})")
    e.add_argument("--to", required=True, metavar="FORMAT[,FORMAT]",
                   help=f"comma-separated: {', '.join(FORMATS)} (tensorrt-* need a GPU)")
    e.add_argument("--calib", action="append", metavar="DIR|VIDEO",
                   help="INT8 calibration frames: a folder of images (subfolders too) or a video file (frames "
                   "sampled evenly); repeatable. Use frames of the cameras the model will see, not the eval set")
    e.add_argument("--calib-images", type=POSITIVE_INT, default=RECOMMENDED_CALIBRATION, metavar="N",
                   help=f"at most N calibration images, taken evenly (default {RECOMMENDED_CALIBRATION})")
    e.add_argument("--out", metavar="DIR", help="where the variants go (default: beside the weights; the current "
                   "folder for weights found in PERCEPT_MODELS_DIR, which is never written); an earlier export "
                   "of the same name is replaced")
    e.add_argument("--imgsz", type=stride_imgsz, help="input size, a multiple of 32 (default 640 for a detector, 224 for a classifier)")
    e.add_argument("--task", choices=("detect", "classify"), help="refuse weights of another task")
    e.add_argument("--no-check", action="store_true", help="do not load each variant after writing it")
    e.add_argument("--json", metavar="OUT", type=output_file_arg, help="also write the result as JSON to OUT")
    e.set_defaults(func=_export)
    return e


def _compare_parser(actions: Any) -> argparse.ArgumentParser:
    c = actions.add_parser("compare", help="accuracy (as percept eval) and ms per image of each variant, one table")
    c.add_argument("variants", nargs="+", metavar="VARIANT",
                   help="weights files / export folders (a path, or a file in PERCEPT_MODELS_DIR)")
    c.add_argument("--data", required=True, metavar="DIR",
                   help="detectors: a YOLO folder (images/ + labels/) or data.yaml; classifiers: the crops folder")
    c.add_argument("--labels", metavar="CSV", help="classifiers: Filename,ClassId (without it: detectors)")
    c.add_argument("--imgsz", type=stride_imgsz, help="input size for every variant (default: each export's own size; "
                   ".pt: 640 detect, 224 classify)")
    c.add_argument("--batches", default="1,4,8", metavar="B,B",
                   help="batch sizes timed (default 1,4,8); the table shows batch 1 and the fastest")
    c.add_argument("--timing-images", type=POSITIVE_INT, default=32, metavar="N", help="images timed (default 32)")
    c.add_argument("--repeat", type=POSITIVE_INT, default=3, help="timing rounds, the best is kept (default 3)")
    c.add_argument("--threads", type=POSITIVE_INT,
                   help="CPU threads per model (default: as a replica, its num_cpus: 1)")
    c.add_argument("--device", default="auto", help="auto, cpu, cuda:0 … (default auto)")
    c.add_argument("--json", metavar="OUT", type=output_file_arg, help="also write the result as JSON to OUT")
    c.add_argument("--markdown", action="store_true", help="also print the table in Markdown")
    c.set_defaults(func=_compare)
    return c


def _finetune_parser(actions: Any) -> argparse.ArgumentParser:
    from pipeline.lifecycle.finetune import DEFAULT_EPOCHS, Augment

    a = Augment()
    f = actions.add_parser("finetune", help="transfer learning from a .pt detector or classifier on a labelled folder, "
                           "with the held-out evaluation before and after")
    f.add_argument("weights", help=f"the .pt file to start from (a path, or a file in {ENV_MODELS_DIR})")
    f.add_argument("--data", required=True, metavar="DIR|YAML",
                   help="classifier: one subfolder per class (DIR/<class>/*.jpg, or DIR/train/ + DIR/val/); "
                   "detector: a YOLO folder (images/ + labels/, names in data.yaml or classes.txt) or a data.yaml")
    f.add_argument("--out", metavar="PT", help="the fine-tuned weights (default finetuned/<weights>-<data>.pt "
                   "in the current folder, never in the models folder); replaced if it exists, never the weights started from")
    f.add_argument("--epochs", type=POSITIVE_INT, default=DEFAULT_EPOCHS, help=f"default {DEFAULT_EPOCHS}")
    f.add_argument("--imgsz", type=IMGSZ, help="training and evaluation size (default 224 classify, 640 detect)")
    f.add_argument("--batch", type=POSITIVE_INT, default=16, help="images per batch (default 16)")
    f.add_argument("--device", default="auto", help="auto, cpu, cuda:0 … (default auto)")
    f.add_argument("--workers", type=int, default=2, help="data loader workers on a GPU (a CPU uses none; default 2)")
    f.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                   help="held out at random, per class (default 0.2); a folder already split keeps its split")
    f.add_argument("--seed", type=int, default=0, help="the split's and the trainer's seed (default 0)")
    frz = f.add_mutually_exclusive_group()
    frz.add_argument("--freeze", type=int, metavar="N", help="keep the first N layers as they are")
    frz.add_argument("--freeze-backbone", action="store_true", help="keep the backbone as it is: train the head only")
    aug = f.add_argument_group("augmentation (ultralytics' train arguments)")
    aug.add_argument("--flip", type=float, default=a.flip, metavar="P", help=f"horizontal flip probability (fliplr; default {a.flip})")
    aug.add_argument("--vflip", type=float, default=a.vflip, metavar="P", help=f"vertical flip probability (flipud; default {a.vflip})")
    aug.add_argument("--crop", type=float, default=a.crop, metavar="F",
                     help=f"random crop: classify, a random resized crop of 1-F..1 of the area; detect, a random zoom ±F "
                     f"(scale; default {a.crop}; 0: none)")
    aug.add_argument("--color-jitter", default=",".join(map(str, a.color_jitter)), metavar="H,S,V",
                     help="hue, saturation, value (brightness/contrast) jitter (hsv_h,hsv_s,hsv_v; default "
                     f"{','.join(map(str, a.color_jitter))}; 0 for none)")
    aug.add_argument("--mosaic", type=float, metavar="P", help="detect only: mosaic of 4 images, probability "
                     "(default 1.0; off for the last quarter of the epochs)")
    f.add_argument("--work", metavar="DIR", help="keep the split (links) and ultralytics' run (results.csv, "
                   "weights/) here (default: a temporary folder, removed)")
    f.add_argument("--json", metavar="OUT", type=output_file_arg, help="also write the result as JSON to OUT")
    f.set_defaults(func=_finetune)
    return f


from .models_swap import _served_parser, _swap_parser  # noqa: E402 (hot swap on a running graph)

SUBCOMMANDS: list[Callable[[Any], argparse.ArgumentParser]] = [
    _export_parser, _compare_parser, _finetune_parser, _swap_parser, _served_parser]


def _progress(line: str) -> None:
    print(f"percept: {line}", file=sys.stderr, flush=True)


def _guarded(command: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any] | int:
    """``run()``, with bad input as one line naming the command (exit 2); the exporter's and the
    backends' own output goes to stderr, so stdout holds only the table."""
    from pydantic import ValidationError

    from pipeline.config_errors import ConfigError, format_validation_error
    from pipeline.models import ModelError

    try:
        with contextlib.redirect_stdout(sys.stderr):
            return run()
    except ValidationError as exc:
        return fail(f"models {command}: " + "; ".join(format_validation_error(exc)), CONFIG_ERROR_EXIT_CODE)
    except (ValueError, ModelError, ConfigError) as exc:  # ExportError, CompareError, EvalError are ValueErrors
        return fail(f"models {command}: {exc}", CONFIG_ERROR_EXIT_CODE)
    except OSError as exc:  # a path the system refuses (a name too long, a folder not readable)
        return fail(f"models {command}: {exc.strerror or exc}" + (f": {str(exc.filename)[:120]!r}" if exc.filename else ""),
                    CONFIG_ERROR_EXIT_CODE)


def _finish(result: dict[str, Any], table: str, json_out: str | None) -> int:
    for warning in result.get("warnings", []):
        print(f"percept: warning: {warning}", file=sys.stderr)
    print(table, flush=True)
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"percept: wrote {json_out}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from pipeline.lifecycle.export import export_model

    if named := overwritten_input(args.json, weights=args.weights, calib=args.calib or ()):
        return fail(f"models export: --json: {args.json!r} is the {named} given", CONFIG_ERROR_EXIT_CODE)

    result = _guarded("export", lambda: export_model(
        args.weights, args.to, calib=args.calib or (), out=args.out, imgsz=args.imgsz, task=args.task,
        models_dir=os.environ.get(ENV_MODELS_DIR) or None, calib_limit=args.calib_images,
        check=not args.no_check, progress=_progress))
    if isinstance(result, int):
        return result
    return _finish(result, export_table(result), args.json)


def _compare(args: argparse.Namespace) -> int:
    if problem := device_problem(args.device):  # before the data is read and the variants load
        return fail(f"models compare: {problem}", CONFIG_ERROR_EXIT_CODE)
    if named := overwritten_input(args.json, variants=args.variants, data=args.data, labels=args.labels):
        return fail(f"models compare: --json: {args.json!r} is the {named} given", CONFIG_ERROR_EXIT_CODE)
    from pipeline.lifecycle.compare import (
        compare_markdown,
        compare_table,
        compare_variants,
    )

    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        return fail(f"models compare: --batches: comma-separated integers, got {args.batches!r}", CONFIG_ERROR_EXIT_CODE)
    result = _guarded("compare", lambda: compare_variants(
        args.variants, args.data, labels=args.labels, imgsz=args.imgsz, batches=batches,
        timing_images=args.timing_images, repeat=args.repeat, threads=args.threads, device=args.device,
        models_dir=os.environ.get(ENV_MODELS_DIR) or None, progress=_progress))
    if isinstance(result, int):
        return result
    table = compare_table(result) + ("\n\n" + compare_markdown(result) if args.markdown else "")
    return _finish(result, table, args.json)


def _finetune(args: argparse.Namespace) -> int:
    if problem := device_problem(args.device):  # before the weights load and the data is measured
        return fail(f"models finetune: {problem}", CONFIG_ERROR_EXIT_CODE)
    from pipeline.lifecycle.finetune import (
        Augment,
        TrainingError,
        finetune,
        finetune_table,
    )

    try:
        jitter = [float(v) for v in args.color_jitter.split(",")]
        jitter = jitter * 3 if len(jitter) == 1 else jitter
    except ValueError:
        return fail(f"models finetune: --color-jitter: H,S,V (three numbers), got {args.color_jitter!r}",
                    CONFIG_ERROR_EXIT_CODE)
    augment = Augment(flip=args.flip, vflip=args.vflip, crop=args.crop, color_jitter=tuple(jitter),  # type: ignore[arg-type]
                      mosaic=args.mosaic)
    try:
        result = _guarded("finetune", lambda: finetune(
            args.weights, args.data, out=args.out, work=args.work, epochs=args.epochs, imgsz=args.imgsz,
            batch=args.batch, device=args.device, workers=args.workers, val_fraction=args.val_fraction,
            seed=args.seed, freeze=args.freeze, freeze_backbone=args.freeze_backbone, augment=augment,
            models_dir=os.environ.get(ENV_MODELS_DIR) or None, progress=_progress))
    except TrainingError as exc:
        return fail(f"models finetune: {exc}", 1)
    if isinstance(result, int):
        return result
    return _finish(result, finetune_table(result), args.json)


def export_table(r: dict[str, Any]) -> str:
    calib = r["calibration"]
    head = f"{Path(r['weights']).name} ({r['task']}) → {r['out']}, imgsz {r['imgsz']}"
    if calib:
        head += f"; INT8 calibrated on {calib['images']} images of {', '.join(calib['sources'])}"
    rows = [[v["format"], f"{v['size_mb']:.1f}", f"{v['seconds']:.0f}", v.get("backend", "-"), Path(v["path"]).name]
            for v in r["variants"]]
    header = ["format", "size MB", "seconds", "loads with", "written"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = lambda row: "  ".join(c.rjust(w) if i in (1, 2) else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    return "\n".join([head, line(header), *map(line, rows)])
