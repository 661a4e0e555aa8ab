"""`percept eval detector|classifier`: what the deployed models are worth, through the code the
service runs (the decoder's letterbox and crops, the same backends); see `pipeline.evaluate`.

A table on stdout, the full result as JSON with ``--json OUT``. Bad input (a missing folder,
no images, a CSV without its header, weights that do not load) exits 2 with the reason."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.config import CONFIG_ERROR_EXIT_CODE, ENV_MODELS_DIR
from pipeline.redact import quoted_url

from .common import (IMGSZ, POSITIVE_INT, SCORE, device_problem, fail, number_arg, output_file_arg, overwritten_input,
                     stride_imgsz)


def register(sub: Any) -> None:
    e = sub.add_parser("eval", help="measure a detector (mAP) or a classifier (top-1) on labelled data, "
                       "through the service's own preprocessing and backends")
    tasks = e.add_subparsers(dest="eval_task", required=True)

    d = tasks.add_parser("detector", help="mAP50-95 / mAP50 on a YOLO dataset (images/ + labels/, or a data.yaml)")
    _common(d)
    d.add_argument("--imgsz", type=stride_imgsz, default=640, help="detector input size (default 640)")
    d.add_argument("--conf", type=SCORE, default=0.001, help="score threshold (default 0.001, as model.val())")
    d.add_argument("--iou", type=SCORE, default=0.7, help="NMS IoU (default 0.7, as model.val())")
    d.add_argument("--max-det", type=POSITIVE_INT, default=300, help="detections per image (default 300)")
    d.add_argument("--batch", type=POSITIVE_INT, default=8, help="images per detect_batch call (default 8)")
    d.add_argument("--backend", default="auto", choices=("auto", "ultralytics", "openvino"),
                   help="as detector.backend in the config (default auto)")
    d.add_argument("--categories", action="append", metavar="NAME=LABEL,LABEL",
                   help="category for per_category (repeatable; NAME=* for every label); default: the service's "
                   "vehicle/pedestrian/sign for COCO-named models, every label as 'sign' otherwise")
    d.set_defaults(func=_detector)

    c = tasks.add_parser("classifier", help="top-1 and per-class recall on labelled crops (Filename,ClassId CSV)")
    _common(c)
    c.add_argument("--labels", required=True, metavar="CSV",
                   help="Filename,ClassId (ClassId in the model's label order: a card's first softmax head)")
    c.add_argument("--context", type=number_arg(float, 1.0, 4.0), default=1.0,
                   help="each image is the crop the decoder cut (default 1.0); >1 treats it as a tight box grown "
                   "by this, padded grey, as the decoder does for a box at the frame's edge")
    c.add_argument("--batch", type=POSITIVE_INT, default=32, help="crops per classify_batch call (default 32)")
    c.add_argument("--imgsz", type=IMGSZ, default=224, help="ultralytics classifiers: crop size (default 224; "
                   "a card sets its own)")
    c.set_defaults(func=_classifier)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help=f"path, or a file in {ENV_MODELS_DIR}")
    p.add_argument("--card", help="model card (YAML) of a plain network; shipped models are found by file name")
    p.add_argument("--data", required=True, metavar="DIR", help="the labelled data")
    p.add_argument("--json", metavar="OUT", type=output_file_arg, help="also write the result as JSON to OUT")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda:0 … (default auto)")
    p.add_argument("--threads", type=POSITIVE_INT,
                   help="CPU threads for the model (default: as a replica, its num_cpus: 1)")


def _categories(specs: list[str] | None) -> dict[str, list[str]] | None:
    if not specs:
        return None
    out: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, labels = spec.partition("=")
        if not sep or not name.strip() or not labels.strip():
            raise ValueError(f"--categories: {spec!r}: expected NAME=LABEL,LABEL (or NAME=*)")
        out[name.strip()] = [lab.strip() for lab in labels.split(",") if lab.strip()]
    return out


def _run(args: argparse.Namespace, evaluate: Any, **kwargs: Any) -> int:
    from pydantic import ValidationError

    from pipeline.config_errors import ConfigError, format_validation_error
    from pipeline.evaluate import EvalError
    from pipeline.models import ModelError

    if problem := device_problem(args.device):  # (said as the config's field and its pattern; mps taken where none is)
        return fail(f"eval: {problem}", CONFIG_ERROR_EXIT_CODE)
    if named := overwritten_input(args.json, weights=args.weights, data=args.data, labels=getattr(args, "labels", None),
                                  card=args.card):
        return fail(f"eval: --json: {args.json!r} is the {named} given", CONFIG_ERROR_EXIT_CODE)
    try:
        if not Path(args.data).expanduser().exists():
            raise EvalError(f"--data: {quoted_url(args.data)} does not exist")
        result = evaluate(args.weights, args.data, card=args.card, device=args.device, threads=args.threads,
                          models_dir=os.environ.get(ENV_MODELS_DIR) or None, **kwargs)
    except (EvalError, ModelError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            return fail("eval: " + "; ".join(format_validation_error(exc)), CONFIG_ERROR_EXIT_CODE)
        return fail(f"eval: {exc}", CONFIG_ERROR_EXIT_CODE)
    except ConfigError as exc:
        return fail(f"eval: {exc}", CONFIG_ERROR_EXIT_CODE)
    for warning in result.get("warnings", []):
        print(f"percept: warning: {warning}", file=sys.stderr)
    print(detector_table(result) if result["task"] == "detect" else classifier_table(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"percept: wrote {args.json}", file=sys.stderr)
    return 0


def _detector(args: argparse.Namespace) -> int:
    from pipeline.evaluate import evaluate_detector

    try:
        categories = _categories(args.categories)
    except ValueError as exc:
        return fail(f"eval: {exc}", CONFIG_ERROR_EXIT_CODE)
    return _run(args, evaluate_detector, imgsz=args.imgsz, conf=args.conf, iou=args.iou, max_det=args.max_det,
                batch=args.batch, categories=categories, backend=args.backend)


def _classifier(args: argparse.Namespace) -> int:
    from pipeline.evaluate_classifier import evaluate_classifier

    return _run(args, lambda w, d, **kw: evaluate_classifier(w, d, args.labels, **kw),
                imgsz=args.imgsz, context=args.context, batch=args.batch)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def detector_table(r: dict[str, Any]) -> str:
    lines = [(f"{r['model']} ({r['backend']}, {r['device']}) on {r['images']} images of {r['data']}: "
              f"imgsz {r['imgsz']}, conf {r['conf']}, NMS IoU {r['nms_iou']}"),
             f"{'':<14}{'instances':>10}{'mAP50':>8}{'mAP50-95':>10}",
             f"{'all':<14}{r['instances']:>10}{_f(r['map50']):>8}{_f(r['map50_95']):>10}"]
    for name, c in r["per_category"].items():
        lines.append(f"{name:<14}{c['instances']:>10}{_f(c['map50']):>8}{_f(c['map50_95']):>10}")
    lines.append(f"{r['ms_per_image']:.1f} ms/image (prepare_frame + detect_batch, batch {r['batch']})")
    return "\n".join(lines)


def classifier_table(r: dict[str, Any]) -> str:
    recalls = r["per_class_recall"]
    worst = sorted(recalls.items(), key=lambda kv: kv[1])[:5]
    w, h = r["crop_size"]
    lines = [(f"{r['model']} ({r['backend']}, {r['device']}) on {r['images']} crops of {r['data']}: "
              f"attribute {r['attribute']!r}, crop {w}x{h}, context {r['context']}"),
             f"top-1 {r['top1']:.3f} over {len(recalls)} classes",
             "lowest recall: " + ", ".join(f"{k} {v:.2f}" for k, v in worst),
             f"{r['ms_per_image']:.1f} ms/image (prepare_crop + classify_batch, batch {r['batch']})"]
    return "\n".join(lines)
