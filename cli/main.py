"""`percept`: parses the command line, sets up the console, runs one command.

Exit codes: 0 ok; 1 an unexpected failure; 2 invalid config or arguments, or a model that cannot
be loaded (nothing was started); 3 a service the config names is unreachable (Redis, the graph's
API), or a deployment that could not start; 130 interrupted; 143 `run` stopped by SIGTERM while
starting (the README's table).

The console shows percept's own lines (status, warnings and errors naming the camera); Ray's
and the replicas' logs go to files (the replica log folder is printed at start) unless
``--verbose``."""

from __future__ import annotations

import sys

from .held import signals_held  # (before the hold: cheap)

# Ctrl-C while modules import waits until they have (`signals_held`), then raises
# KeyboardInterrupt. Raised inside an import, it could come out as another error (pydantic turns
# one that lands while it builds a model's schema into SchemaError: a traceback) or, under
# `python -m`, end the process by SIGINT itself (one that lands in an `exec` of a string, as a
# namedtuple makes).

try:  # Ctrl-C while these import (the command's first ~0.3 s): held until they have, then exit 130
    with signals_held():
        import argparse
        import logging
        import os
        import warnings
        from typing import Sequence

        import redis

        from pipeline.config import CONFIG_ERROR_EXIT_CODE, ConfigError
        from pipeline.redact import redact, redact_url
        from pipeline.streams import CREDENTIALS_REFUSED, database_missing

        from . import bench, build, cameras, demo, run, subscribe, top
        from . import eval as eval_cmd
        from . import explain as explain_cmd
        from . import models as models_cmd
        from .common import EXIT_INTERRUPTED, EXIT_UNAVAILABLE, ScrubbedParser, fail
except KeyboardInterrupt:
    sys.exit(130)


COMMANDS = (run, demo, build, cameras, subscribe, top, bench, eval_cmd, models_cmd, explain_cmd)
NOISY_LOGGERS = ("ray", "ray.serve", "ray.data", "ray.tune", "ultralytics", "filelock", "urllib3")


def parser() -> argparse.ArgumentParser:
    p = ScrubbedParser(prog="percept", description="Streaming video perception on Ray Serve → Redis Streams")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show Ray's, Serve's and the replicas' logs on the console")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    _verbose_everywhere(p)  # `percept run -v`, `percept eval detector -v` as well as `percept -v run`
    return p


def _verbose_everywhere(p: argparse.ArgumentParser) -> None:
    """``-v`` on every subcommand, at every level, that has none of its own; a missing one is
    said by its choices (``required: {export,compare,…}``, as usage writes it, not its ``dest``)."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.metavar = action.metavar or "{" + ",".join(action.choices) + "}"
            for child in action.choices.values():
                if not any("-v" in a.option_strings for a in child._actions):
                    child.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                       help="as percept --verbose")
                _verbose_everywhere(child)


def setup_console(verbose: bool) -> None:
    """percept's warnings and errors by default; everything with ``--verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "percept: %(levelname)s %(message)s",
    )
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if not verbose:  # FFmpeg's own lines ("moov atom not found") before percept's about the same video: off
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # (read at OpenCV's first FFmpeg open)
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module="ray")
        # Ray's own start-up chatter (and its token-auth notice) on a private local cluster
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = [a for a in argv[:1] if a in ("-v", "--verbose")]  # (`percept -v bench soak`)
    soak = argv[len(verbose):len(verbose) + 2] == ["bench", "soak"]  # a mode of its own, with its own options
    if soak:
        argv = argv[len(verbose):]
    try:
        if not soak:
            with signals_held():  # (some commands import their modules here)
                args = parser().parse_args(argv)
                setup_console(args.verbose)
        return bench.soak_main(argv[2:], verbose=bool(verbose)) if soak else int(args.func(args) or 0)
    except ConfigError as exc:
        return fail(str(exc), CONFIG_ERROR_EXIT_CODE)
    except CREDENTIALS_REFUSED as exc:
        return fail(f"redis refused our credentials: {redact(str(exc))} (check redis.url / PERCEPT_REDIS_URL)",
                    EXIT_UNAVAILABLE)
    except redis.RedisError as exc:  # what no command handled (WRONGTYPE, NOPERM, ...): one line, not a traceback
        if missing := database_missing(exc):  # (the URL's database number: a config error)
            url = None if soak else getattr(args, "redis", None)  # (--redis; else the config's, unnamed)
            return fail(f"redis{f' {redact_url(url)}' if url else ''}: {missing}", CONFIG_ERROR_EXIT_CODE)
        return fail(f"redis: {type(exc).__name__}: {redact(str(exc))}", EXIT_UNAVAILABLE)
    except KeyboardInterrupt:  # Ctrl-C anywhere (a retry's wait, a model load): no traceback
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `percept subscribe … | head -1`: the reader went away, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit fails no more
        return 0


if __name__ == "__main__":
    sys.exit(main())
