"""`percept bench` and `percept bench soak`: thin entry points to benchmarks/ (the measuring
code lives there, beside the RTSP test server)."""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Sequence

from .common import ScrubbedParser, number_arg, output_file_arg, overwritten_input


def register(sub: Any) -> None:
    from benchmarks.bench_run import add_arguments, run_bench

    b = sub.add_parser("bench", help="measure the graph against the bare model, Ultralytics and redis-benchmark "
                       "(`percept bench soak --help` for the long run)")
    add_arguments(b, number_arg, output_file_arg)
    b.set_defaults(func=functools.partial(run_bench, overwritten=overwritten_input))


def soak_main(argv: Sequence[str], verbose: bool = False) -> int:
    """``percept bench soak …``: a mode of its own, with its own options."""
    from benchmarks.soak import add_arguments, run_soak

    soak = ScrubbedParser(prog="percept bench soak", description="long run: RSS, fds, drops, lag, exceptions")
    add_arguments(soak, number_arg, output_file_arg)  # (--json checked before the run, not after it)
    soak.add_argument("-v", "--verbose", action="store_true", help="as percept --verbose")
    args = soak.parse_args(list(argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose or verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    return run_soak(args)
