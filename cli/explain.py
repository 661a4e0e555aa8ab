"""`percept explain`: a PNG heat map of what drove one detection (`pipeline/explain.py`).

- ``percept explain CAMERA --object N [--seq S]``: a frame a running graph published (the newest,
  or ``seq`` while its decoder still keeps it), through the HTTP API (``--api``).
- ``percept explain --image FILE | --video FILE [--frame K] --weights W --object N``: no graph;
  the detector runs here, objects are what it finds at ``--conf`` (every label of the model).

Prints the object, the method's cost, the heat inside/outside the box and the deletion check;
writes the PNG (``--out``). Bad input (no such camera, object, seq, file or frame; weights that
do not load) exits 2 naming what there is; an unreachable or not yet running graph exits 3."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any

from pipeline.config import ENV_MODELS_DIR
from pipeline.redact import redact, redact_url

from .common import (EXIT_UNAVAILABLE, NOT_PERCEPTS, POSITIVE_INT, SCORE, UNAVAILABLE_STATUS, api_text, ingress_url_arg,
                     fail, number_arg, output_file_arg, overwritten_input, request_api, say, stride_imgsz,
                     unreachable, utf8_arg)

BAD_INPUT = 2
METHOD_CHOICES = ("auto", "rise", "occlusion", "eigencam")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


MIN_MASKS, MAX_MASKS = 16, 4000  # the API's bounds too (`GET /cameras/{id}/explain?masks=`)
MASKS = number_arg(int, MIN_MASKS, MAX_MASKS)


def register(sub: Any) -> None:
    e = sub.add_parser(
        "explain", help="heat map (PNG) of what drove one detection: of a running camera, or of an image/video frame",
        description="A camera of a running graph (CAMERA, through --api), or offline an image or a video frame "
        "(--image/--video with --weights).")
    e.add_argument("camera", nargs="?", type=utf8_arg, help="camera id of the running graph")
    e.add_argument("--object", type=int, required=True, metavar="N", help="index of the object in the frame (0: first)")
    e.add_argument("--method", choices=METHOD_CHOICES, default="auto",
                   help="rise (masking; every backend; auto), occlusion (sliding grey patch), eigencam (.pt models)")
    e.add_argument("--masks", type=MASKS, default=400, help=f"rise: masked inputs scored, {MIN_MASKS}..{MAX_MASKS} (default 400)")
    e.add_argument("--out", type=output_file_arg,
                   help="PNG to write (default explain-<camera or file>-<seq or frame>-<N>.png)")
    e.add_argument("--seq", type=int, help="camera: this kept frame instead of the newest")
    e.add_argument("--api", default=os.environ.get("PERCEPT_API", "http://127.0.0.1:8000"), type=ingress_url_arg,
                   help="the graph's HTTP address (default: PERCEPT_API or http://127.0.0.1:8000)")
    e.add_argument("--wait", type=number_arg(float, 0.0), default=10.0,
                   help="camera: seconds to keep asking while the graph answers 503 (Redis unavailable, no frame "
                        "published yet; default 10)")
    off = e.add_argument_group("offline (no running graph)")
    off.add_argument("--image", help="an image file")
    off.add_argument("--video", help="a video file (with --frame)")
    off.add_argument("--frame", type=number_arg(int, 0), help="--video: the frame index (default 0)")
    off.add_argument("--weights", help=f"detector weights: a path or a file in {ENV_MODELS_DIR}")
    # (defaults None, filled in for --image/--video: one given as its default with a CAMERA is refused too)
    off.add_argument("--imgsz", type=stride_imgsz, help="detector input size (default 640)")
    off.add_argument("--conf", type=SCORE,
                     help="objects are the detections from this score (default 0.25)")
    off.add_argument("--device", help="auto, cpu, cuda:0 … (default auto)")
    off.add_argument("--threads", type=POSITIVE_INT, help="CPU threads for the model (default: every core)")
    off.add_argument("--no-blur", action="store_true",
                     help="draw on the frame as it is (default: faces blurred first, as the service does, "
                          "when the YuNet model is in the models folder)")
    e.set_defaults(func=_explain)




def _offline_options(args: argparse.Namespace) -> list[str]:
    """The offline-only options given (a camera's graph explains with its own model, as it runs)."""
    given = {"--weights": args.weights is not None, "--imgsz": args.imgsz is not None, "--conf": args.conf is not None,
             "--device": args.device is not None, "--threads": args.threads is not None, "--no-blur": args.no_blur}
    return [name for name, on in given.items() if on]


def _explain(args: argparse.Namespace) -> int:
    offline = args.image or args.video
    problem = (
        "give a CAMERA of a running graph, or --image/--video with --weights" if not (args.camera or offline) else
        "give a CAMERA or --image/--video, not both" if args.camera and offline else
        "give --image or --video, not both" if args.image and args.video else
        "--weights: needed with --image/--video" if offline and not args.weights else
        "--frame: only with --video" if args.frame is not None and not args.video else
        "--seq: only with a CAMERA" if args.seq is not None and offline else
        f"{'/'.join(_offline_options(args))}: only with --image/--video (a CAMERA is explained by its graph's "
        "own detector, faces blurred)" if args.camera and _offline_options(args) else
        "--object: must be >= 0" if args.object < 0 else
        f"--out: {args.out!r} is the {named} itself"  # (it was overwritten with the PNG)
        if (named := overwritten_input(args.out, image=args.image, video=args.video)) else None)
    if problem:
        return fail(f"explain: {problem}", BAD_INPUT)
    for name, default in (("imgsz", 640), ("conf", 0.25), ("device", "auto")):
        setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
    return _offline(args) if offline else _online(args)


# --- a running graph ------------------------------------------------------------------------------

def _online(args: argparse.Namespace) -> int:
    query = {"object": args.object, "method": args.method, "masks": args.masks}
    if args.seq is not None:
        query["seq"] = args.seq
    path = f"/cameras/{urllib.parse.quote(args.camera, safe='')}/explain?" + urllib.parse.urlencode(query)
    try:  # a 503 (Redis unavailable, no frame published yet) is asked again for up to --wait seconds
        status, png, headers = request_api(args.api, "GET", path, wait_s=args.wait, timeout=600)
    except (urllib.error.URLError, OSError) as exc:
        return unreachable(args.api, exc)
    if status >= 400:
        return fail(f"explain {args.camera}: HTTP {status}: {api_text(redact(_detail(png)))}",  # (the codes of `percept cameras`)
                    EXIT_UNAVAILABLE if status in UNAVAILABLE_STATUS else BAD_INPUT if status < 500 else 1)
    if not png.startswith(PNG_SIGNATURE):  # another service behind --api: nothing written as a PNG that is none
        return fail(f"explain {args.camera}: {redact_url(args.api)} did not answer with a PNG (HTTP {status}): "
                    "is --api the graph's ingress?", EXIT_UNAVAILABLE)
    frame = dict(kv.split("=", 1) for kv in headers.get("X-Percept-Frame", "").split() if "=" in kv)
    out = Path(args.out or f"explain-{args.camera}-{frame.get('seq', 'latest')}-{args.object}.png")
    if (why := _write(out, png)) is not None:
        return fail(f"explain: cannot write {out}: {why}", BAD_INPUT)
    say(f"{args.camera} seq {frame.get('seq', '?')}, object {headers.get('X-Percept-Object', '?')}")
    say(f"{headers.get('X-Percept-Method', '?')}; heat inside/outside the box {headers.get('X-Percept-Heat-Ratio', '?')}")
    say(f"deletion check: {headers.get('X-Percept-Deletion', '?')}")
    say(f"wrote {out}")
    return 0


def _detail(body: bytes) -> str:
    """The API's error detail in one line: its message and what is available."""
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        return NOT_PERCEPTS
    detail = parsed.get("detail", "") if isinstance(parsed, dict) else parsed  # (another service: any JSON)
    if isinstance(detail, dict):
        extra = {k: v for k, v in detail.items() if k not in ("message", "camera", "seq")}
        try:
            extra["objects"] = _objects_line(extra["objects"])
        except (KeyError, TypeError, ValueError, AttributeError):  # none, or not percept's list
            pass
        return "; ".join([str(detail.get("message", ""))] + [f"{k}: {v}" for k, v in extra.items()])
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg', d)}" if isinstance(d, dict) else str(d)
                         for d in detail)
    return str(detail)


def _objects_line(objects: list[dict[str, Any]]) -> str:
    return ", ".join(f"{i}: {o['label']} {o['score']:.2f}" for i, o in enumerate(objects)) or "none"


def _write(path: Path, data: bytes) -> str | None:
    """Writes ``data`` whole or not at all (a full disk left a cut PNG over the file there); the
    reason it could not, else None."""
    if path.exists() and not path.is_file():  # (/dev/stdout, a pipe: written into, never replaced)
        try:
            path.write_bytes(data)
            return None
        except OSError as exc:
            return exc.strerror or str(exc)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        part.write_bytes(data)
        os.replace(part, path)
        return None
    except OSError as exc:
        part.unlink(missing_ok=True)
        return exc.strerror or str(exc)


# --- offline -------------------------------------------------------------------------------------------

def _read_frame(args: argparse.Namespace) -> tuple[Any, str]:
    """(BGR image, name for the default output); ValueError naming the file or frame."""
    import cv2

    if args.image:
        image = cv2.imread(args.image, cv2.IMREAD_COLOR) if Path(args.image).is_file() else None
        if image is None:
            raise ValueError(f"--image: cannot read {args.image!r} as an image")
        return image, Path(args.image).stem
    index = args.frame or 0
    cap = cv2.VideoCapture(args.video) if Path(args.video).is_file() else None
    try:
        if cap is None or not cap.isOpened():
            raise ValueError(f"--video: cannot open {args.video!r} as a video")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if index < 0 or (count > 0 and index >= count):
            raise ValueError(f"--frame: {index} is out of range: {args.video} has frames 0..{count - 1}")
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, image = cap.read()
        if not ok:
            raise ValueError(f"--frame: cannot read frame {index} of {args.video}")
        return image, f"{Path(args.video).stem}-{index}"
    finally:
        if cap is not None:
            cap.release()


def _offline(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from pipeline.backends import load_detector
    from pipeline.config import DetectorConfig
    from pipeline.config_errors import format_validation_error
    from pipeline.explain import (
        EXPLAIN_CONF,
        ExplainError,
        Target,
        deletion_check,
        encode_png,
        explain,
        inside_outside_ratio,
        overlay,
    )
    from pipeline.models import ModelError, prepare_frame

    from pipeline.config_view import PrivacyConfig
    from pipeline.privacy import Blurrer, PrivacyUnavailable

    try:
        # the heat map is drawn on what the service would show: faces blurred (checked first: no
        # minutes of work for an image that cannot be shown)
        blurrer = None if args.no_blur else Blurrer.from_config(PrivacyConfig(), os.environ.get(ENV_MODELS_DIR))
        if blurrer is not None:
            blurrer.refuse_if_unavailable()
            if not blurrer.kinds:  # (the default blurs faces only where the face model is: said, not silent)
                say(f"faces are not blurred: no face model in the models folder ({ENV_MODELS_DIR}="
                    f"{os.environ.get(ENV_MODELS_DIR) or 'unset'}); --no-blur draws on the frame as it is")
        image, name = _read_frame(args)
        cfg = DetectorConfig(weights=args.weights, imgsz=args.imgsz, device=args.device,
                             threads=args.threads or min(os.cpu_count() or 1, 256),
                             conf=min(args.conf, EXPLAIN_CONF), categories={"object": ["*"]})
        detector = load_detector(cfg, models_dir=os.environ.get(ENV_MODELS_DIR), field="--weights")
        found = detector.detect_batch([prepare_frame(image, args.imgsz)])[0]
        if isinstance(found, Exception):
            raise found
        objects = found[found.scores >= args.conf]
        try:
            target = Target.of(objects, args.object)
        except ExplainError as exc:
            raise ValueError(f"--object: {exc} at --conf {args.conf}: {_objects_line(objects.to_objects())}") from None
        method = "rise" if args.method == "auto" else args.method
        result = explain(detector, image, target, imgsz=args.imgsz, method=method, masks=args.masks)
        check = deletion_check(detector, image, target, result.heat, imgsz=args.imgsz)
    except ValidationError as exc:  # the options went into a DetectorConfig: its fields are their names
        return fail("explain: " + "; ".join("--" + line for line in format_validation_error(exc)), BAD_INPUT)
    except (ValueError, ModelError) as exc:  # ExplainError is a ValueError
        return fail(f"explain: {exc}", BAD_INPUT)
    except PrivacyUnavailable as exc:
        return fail(f"explain: {exc} (--no-blur draws on the frame as it is)", BAD_INPUT)
    out = Path(args.out or f"explain-{name}-{args.object}.png")
    if blurrer is not None:
        image = blurrer.blur(image)
    if (why := _write(out, encode_png(overlay(image, result.heat, target, method=method)))) is not None:
        return fail(f"explain: cannot write {out}: {why}", BAD_INPUT)
    box = ",".join(f"{v:.0f}" for v in target.box)
    say(f"object {args.object}: {target.label} {target.score:.2f} [{box}] of {len(objects)}")
    say(f"{method}: {result.calls} detector calls, {result.elapsed_ms / 1000:.1f} s; "
        f"heat inside/outside the box {inside_outside_ratio(result.heat, target.box):.2f}")
    say(f"deletion check ({check.fraction:.0%} of the pixels greyed): score {check.original:.3f} → "
        f"{check.hottest:.3f} hottest, {check.random:.3f} random")
    say(f"wrote {out}")
    return 0
