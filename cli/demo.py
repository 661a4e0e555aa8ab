"""`percept demo`: the graph on the looping sample clips (PERCEPT_SAMPLE_VIDEOS) with live status."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.samples import ENV_SAMPLE_VIDEOS, demo_config

from .common import PORT, fail, number_arg, say, state_dir_error
from .run import run_graph


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run on looping sample videos (PERCEPT_SAMPLE_VIDEOS) with live status")
    demo.add_argument("--duration", type=number_arg(float, 0.1), help="stop after this many seconds")
    demo.add_argument("--state-dir", default=".percept")
    demo.add_argument("--http-port", type=PORT, default=8000, help="the live view's and API's port (default 8000)")
    demo.set_defaults(func=_demo)


def _demo(args: Any) -> int:
    problem = state_dir_error(args.state_dir, "--state-dir")
    if problem:
        return fail(problem, 2)
    cfg = demo_config(os.environ.get(ENV_SAMPLE_VIDEOS), os.environ.get("PERCEPT_MODELS_DIR"), args.state_dir)
    cfg = cfg.model_copy(update={"http": cfg.http.model_copy(update={"port": args.http_port})})
    say("demo cameras " + ", ".join(f"{c.id} ({Path(c.url).name})" for c in cfg.cameras))
    return run_graph(cfg, address=None, duration=args.duration, monitor=True, verbose=args.verbose,
                     port_option="--http-port")
