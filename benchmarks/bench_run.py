"""`percept bench`'s command: its options (checked before anything runs), the run, and its
report (the JSON written and the table printed, also when interrupted). The phases: `bench.py`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from pipeline.config import CONFIG_ERROR_EXIT_CODE, ConfigError

from . import report as R
from .bench import PHASES, Bench
from .harness import _base_config, _clips, _parse_counts, add_rtsp_encode, fail, py_spy


def add_arguments(p: argparse.ArgumentParser, number_arg: Callable[..., Callable[[str], Any]],
                  output_file: Callable[[str], str]) -> None:
    """``number_arg``, ``output_file``: the CLI's option types (cli/common.py; benchmarks/ does not
    import cli/): exit 2 naming the option before anything runs (``--duration nan`` looped for
    ever, ``--rtsp-fps 0`` divided by zero, a ``--json`` folder lost the run at its end)."""
    day = 86_400.0
    p.add_argument("--cameras", default="1,4", help="camera counts for the e2e phase (default 1,4); the largest "
                   "is used for Ultralytics, latency and overload")
    p.add_argument("--duration", type=number_arg(float, 1.0, day), default=None,
                   help="seconds measured per phase, 1 to 86400 (default 30; overload then runs 60)")
    p.add_argument("--overload-duration", type=number_arg(float, 1.0, day), default=None,
                   help="seconds of overload (default 60, or --duration when that is given)")
    p.add_argument("--limit-duration", type=number_arg(float, 1.0, day), default=None,
                   help="seconds of benchmark_app's throughput run (default duration/2, 3..15; the latency run "
                   "takes half)")
    p.add_argument("--warmup", type=number_arg(float, 0.0, day), default=None,
                   help="seconds before each window (default duration/3, 3..8)")
    p.add_argument("--model", help="detector weights: a path, a file in PERCEPT_MODELS_DIR or an ultralytics name "
                   "(default: the demo's, the OpenVINO INT8 YOLO11n when present)")
    p.add_argument("-c", "--config", help="take detector/classifier/decoder settings from this config (cameras and "
                   "redis are replaced)")
    p.add_argument("--source", choices=("rtsp", "file"), default="rtsp",
                   help="cameras: the clips over a loopback RTSP server (default) or the files")
    p.add_argument("--rtsp-fps", type=number_arg(int, 1, 240), default=30,
                   help="frame rate of each RTSP camera, 1 to 240 (default 30)")
    add_rtsp_encode(p)
    p.add_argument("--videos", help="folder with traffic.mp4, vtest.avi, people.mp4 (default PERCEPT_SAMPLE_VIDEOS)")
    p.add_argument("--skip", default="", help=f"comma-separated phases to skip: {','.join(PHASES)}")
    p.add_argument("--json", dest="json_out", type=output_file, help="write the results here (default: <state-dir>/bench/<time>-<host>.json; "
                   "pass benchmarks/results/<name>.json to commit a run on purpose)")
    p.add_argument("--state-dir", default=".percept", help="percept's state directory (default .percept)")
    p.add_argument("--profile", type=_profile_folder, help="py-spy record every Serve replica during the largest "
                   "e2e window into this folder (raw collapsed stacks)")


def _profile_folder(value: str) -> str:
    """argparse type of ``--profile``: a folder (made if missing) and py-spy installed, checked
    before the run (a file there, or no py-spy, failed the largest e2e window and lost its fps)."""
    if py_spy() is None:
        raise argparse.ArgumentTypeError("py-spy is not installed (pip install py-spy)")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a file; give a folder")
    if not path.exists() and not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {str(path.parent)!r} does not exist")
    return str(path)


NULL_KEYS = ("limit", "limit_fps", "limit_rect_fps", "bare_fps", "frame_bytes", "classifiers_cost", "e2e_fps", "e2e_detect_only_fps",
             "e2e_vehicle_fps", "ultralytics_fps", "latency_ms", "overload", "single_infer_ms", "ray_own_cpu",
             "tracking_cost", "view_cost", "decode", "frame_copies", "frame_shipped_bytes", "decoder_cpu_ms_per_s",
             "decode_keyframes_over_all", "decoder_cpu_files_ms_per_s", "decode_reference_over_all")


EXIT_UNAVAILABLE, EXIT_INTERRUPTED, EXIT_TERMINATED = 3, 130, 143  # (cli/common.py's, cli/terminate.py's)


def run_bench(args: argparse.Namespace, overwritten: Callable[..., str | None] = lambda *_, **__: None) -> int:
    """``overwritten``: which input a ``--json`` names (`cli.common.overwritten_input`)."""
    from pipeline.backends.checks import check_models as _check_models

    try:
        counts = _parse_counts(args.cameras)
        skip = {s.strip() for s in args.skip.split(",") if s.strip()}
        unknown = skip - set(PHASES)
        if unknown:
            raise ConfigError([f"--skip: unknown phase(s) {sorted(unknown)}; phases are {', '.join(PHASES)}"])
        clips = _clips(args)
        named = overwritten(args.json_out, config=args.config, model=args.model, clip=[str(c) for c in clips])
        if named:  # (it was overwritten with the results)
            raise ConfigError([f"--json: {args.json_out!r} is the {named} given"])
    except ConfigError as exc:  # (the options' own problems: said as such, not as "invalid config")
        return fail("bench: " + "; ".join(exc.errors), CONFIG_ERROR_EXIT_CODE)
    if missing := missing_tools(args.source, publish="publish" not in skip):
        return fail(f"bench: {missing}", EXIT_UNAVAILABLE)
    os.environ.setdefault("YOLO_VERBOSE", "False")
    t_start = time.monotonic()
    result: dict[str, Any] = {}
    stopped = None
    with ExitStack() as stack:
        if threading.current_thread() is threading.main_thread():  # SIGTERM unwinds: the redis-server and
            stack.callback(signal.signal, signal.SIGTERM, signal.signal(signal.SIGTERM, _interrupt))  # RTSP server go
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="percept-bench-")))
        try:
            base = _base_config(args, str(workdir / "state"))
            _check_models(base)
        except ConfigError as exc:
            return fail(str(exc), CONFIG_ERROR_EXIT_CODE)
        bench = Bench(args, base, counts, skip, clips, workdir)
        result = bench.result
        try:
            bench.run(stack)
        except (KeyboardInterrupt, SystemExit) as exc:  # (Ray's SIGTERM handler exits): what was measured is kept
            stopped = exc
            result["interrupted"] = True
    return _report(args, result, t_start, stopped)


def _interrupt(*_: Any) -> None:
    raise SystemExit(EXIT_TERMINATED)


def missing_tools(source: str, *, publish: bool = True) -> str | None:
    """What the run needs and this machine lacks, said before any phase (it was a traceback after
    the limit phase): redis-server, redis-benchmark for the publish phase, and for RTSP cameras
    GStreamer's RTSP server."""
    for tool in ("redis-server", "redis-benchmark") if publish else ("redis-server",):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: redis-server; scripts/install-system-deps.sh installs it)"
    if source == "rtsp":
        from .rtsp import gst_rtsp_available

        if not gst_rtsp_available():
            return ("GStreamer's RTSP server is not available to the system python3 (scripts/install-system-deps.sh), "
                    "or use --source file")
    return None


def _report(args: argparse.Namespace, result: dict[str, Any], t_start: float, stopped: BaseException | None) -> int:
    """The JSON written and the table printed, also for a run interrupted or whose --json cannot
    be written (then in the temporary folder, said so)."""
    R.add_ratios(result)
    result["wall_s"] = time.monotonic() - t_start
    for key in NULL_KEYS:
        result.setdefault(key, None)
    result = R.rounded(result)
    text = json.dumps(result, indent=2)
    try:
        written = R.write_results(text, args.json_out, args.state_dir, result["machine"]["host"])
    except OSError as exc:
        written = R.write_results(text, None, tempfile.gettempdir(), result["machine"]["host"])
        print(f"percept: bench: cannot write {args.json_out or 'the results'} ({exc.strerror}): written to {written}",
              file=sys.stderr, flush=True)
    print(R.format_table(result), flush=True)
    if result["errors"]:
        print("errors: " + "; ".join(f"{k}: {v[:300]}" for k, v in result["errors"].items()), flush=True)
    print(f"results: {written}", flush=True)
    if stopped is not None:
        print("percept: bench: interrupted; the phases measured so far are in the results", file=sys.stderr, flush=True)
        return EXIT_TERMINATED if isinstance(stopped, SystemExit) else EXIT_INTERRUPTED
    return 1 if result["errors"] else 0
