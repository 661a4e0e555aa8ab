"""What every command shares: exit codes, error lines, and riding out a Redis outage."""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, TypeVar

import redis

from pipeline.config_urls import bind_host_problem, host_name_ok, redis_url_problem
from pipeline.redact import redact, redact_url
from pipeline.streams import CREDENTIALS_REFUSED, reconnect_if_demoted, redis_unavailable

from .api_client import (  # noqa: F401 (every command's: cli/api_client.py)
    NOT_PERCEPTS, RETRIED_STATUS, UNAVAILABLE_STATUS, call_api, redirected, request_api)

EXIT_UNAVAILABLE = 3  # a service the config names is unreachable, or a deployment could not start
EXIT_INTERRUPTED = 130
T = TypeVar("T")


class ScrubbedParser(argparse.ArgumentParser):
    """argparse's, its errors scrubbed of credentials (``unrecognized arguments: --redis-url
    redis://:pw@…``, a URL given where a camera id goes); its subcommands' parsers too (and
    `percept bench soak`'s own, which printed them)."""

    def error(self, message: str):  # type: ignore[override]
        super().error(redact(message))


def fail(message: str, code: int) -> int:
    print(f"percept: {message}", file=sys.stderr, flush=True)
    return code


def api_text(text: str, limit: int = 2000) -> str:
    """Text an API answered, as one terminal line: control characters escaped (an escape sequence
    or a ``\r`` was written raw to the terminal) and at most ``limit`` characters (a 3 MB detail
    went to stderr whole)."""
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text)[:limit + 1])
    return text if len(text) <= limit else f"{text[:limit]}… (cut at {limit} characters)"


def say(message: str) -> None:
    print(f"percept: {message}", flush=True)


def state_dir_error(path: str, field: str) -> str | None:
    """Why the state folder (private Redis, logs, the demo's video) cannot be made, naming the
    option or config key; None when it is there or was created."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{field}: cannot create the folder {path}: {exc.strerror}"
    return None


def unreachable(api: str, exc: BaseException) -> int:
    """The graph's HTTP ingress did not answer (exit 3), its URL's credentials scrubbed."""
    return fail(f"cannot reach {redact_url(api)}: {redact(str(exc))}", EXIT_UNAVAILABLE)


def redis_url_arg(value: str) -> str:
    """argparse type of ``--redis``: a URL redis-py can use; else exit 2 saying why."""
    problem = redis_url_problem(value)
    if problem:
        problem = problem.removeprefix("not a Redis URL: ")
        raise argparse.ArgumentTypeError(problem if ", got " in problem else f"{problem}, got {redact_url(value)!r}")
    return value


def bind_host_arg(value: str) -> str:
    """argparse type of ``--http-host``: an address Serve's proxy can bind; else exit 2 saying why."""
    problem = bind_host_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def number_arg(kind: type, low: float | None = None, high: float | None = None, *,
               what: str = "") -> Callable[[str], Any]:
    """An argparse type: an int or float within [low, high] (``what`` it is, for the message);
    else exit 2 naming the option."""
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'a whole number' if kind is int else 'a number'}, "
                                             f"got {value!r}") from None
        if (low is not None and number < low) or (high is not None and number > high) or number != number:
            span = f"from {low:g} to {high:g}" if low is not None and high is not None else \
                f">= {low:g}" if low is not None else f"<= {high:g}"
            raise argparse.ArgumentTypeError(f"must be {what + ' ' if what else ''}{span}, got {value!r}")
        return number
    parse.__name__ = kind.__name__
    return parse


POSITIVE_INT = number_arg(int, 1)
IMGSZ = number_arg(int, 32, 4096)
SCORE = number_arg(float, 0.0, 1.0)
PORT = number_arg(int, 1, 65535, what="a port")  # as ``http.port``


def stride_imgsz(value: str) -> int:
    """`IMGSZ`, a multiple of 32 (the models' stride): what a model is exported or trained at
    (ultralytics rounds any other up, and the size said would not be the one used)."""
    size = IMGSZ(value)
    if size % 32:
        raise argparse.ArgumentTypeError(f"must be a multiple of 32 (the models' stride), got {value!r}")
    return size


stride_imgsz.__name__ = "int"  # (argparse names a type by it: "invalid int value")


def output_or_stdout_arg(value: str) -> str:
    """`output_file_arg`, or ``-``: stdout."""
    return value if value == "-" else output_file_arg(value)


def output_file_arg(value: str) -> str:
    """argparse type of a file to write at the end: its folder must exist, so that a typo fails
    before the work, not after it. (``-`` is refused: it was written as a file named ``-``.)"""
    if value == "-":
        raise argparse.ArgumentTypeError("'-' (stdout) is not taken here: give a file name")
    path = Path(value).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a folder; give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {str(path.parent)!r} does not exist")
    existed = path.exists()
    try:  # can it be written? (root passes every permission check: only trying tells, e.g. under /proc)
        with path.open("a"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write {value!r}: {exc.strerror}") from None
    if not existed:
        path.unlink(missing_ok=True)
    return str(path)  # (as checked: ``--out=~/x``, which no shell expands, was checked at home and written to ./~)


def prefix_arg(value: str) -> str:
    """argparse type of ``--prefix``: a stream prefix as ``redis.stream_prefix`` takes it."""
    import re

    from pipeline.config_redis import STREAM_PREFIX

    if not re.fullmatch(STREAM_PREFIX, value):  # (match's $ lets a trailing newline through)
        raise argparse.ArgumentTypeError(f"a stream prefix is letters, digits and _ . : - (as redis.stream_prefix), "
                                         f"got {value!r}")
    return value


def camera_id_arg(value: str) -> str:
    """argparse type of a camera id: as ``cameras[].id`` takes it (letters, digits, _ and -)."""
    import re

    from pipeline.config import CameraConfig

    field = CameraConfig.model_fields["id"]
    pattern = next(m.pattern for m in field.metadata if getattr(m, "pattern", None))
    longest = next(m.max_length for m in field.metadata if getattr(m, "max_length", None))
    if not re.fullmatch(pattern, value) or len(value) > longest:  # (match's $ lets a trailing newline through)
        raise argparse.ArgumentTypeError(f"a camera id is 1 to {longest} letters, digits, _ and - "
                                         f"(as cameras[].id), got {value!r}")
    return value


def utf8_arg(value: str) -> str:
    """argparse type of text sent on (a path, a Redis command): bytes of another encoding in argv
    raised UnicodeEncodeError where it was sent."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"is not valid UTF-8: {ascii(value)[:80]}") from None
    return value


def name_arg(value: str) -> str:
    """argparse type of a name that must not be empty (``--group ''`` read as no group at all)."""
    if not utf8_arg(value).strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def api_url_arg(value: str) -> str:
    """argparse type of ``--api``: the graph's ingress, an http:// or https:// URL; else exit 2
    (a value that is ``PERCEPT_API``'s, the option's default, is said to be)."""
    source = " (PERCEPT_API, its default)" if value == os.environ.get("PERCEPT_API") else ""
    try:
        utf8_arg(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"is not valid UTF-8{source}") from None
    try:
        parts = urllib.parse.urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError as exc:  # a port that is not a number, or past 65535
        if "out of range" in str(exc):
            raise argparse.ArgumentTypeError(f"the port is out of range (0 to 65535), got {redact_url(value)!r}"
                                             f"{source}") from None
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL, got {redact_url(value)!r}{source}")
    if not host_name_ok(parts.hostname or ""):  # ("a..b": the IDNA codec's UnicodeError at connect)
        raise argparse.ArgumentTypeError(f"the host is no address or host name (an empty label, or one over 63 "
                                         f"characters), got {redact_url(value)!r}{source}")
    if parts.username is not None or parts.password is not None:  # (urllib would take them for the host)
        raise argparse.ArgumentTypeError(f"a user or password in the URL is not sent (neither the ingress nor a "
                                         f"metrics endpoint takes one), got {redact_url(value)!r}{source}")
    return value


def ingress_url_arg(value: str) -> str:
    """`api_url_arg` of the graph's ingress, to which paths are added: no query or fragment
    (``http://h/?token=x`` became ``http://h/?token=x/models``)."""
    value = api_url_arg(value)
    if "?" in value or "#" in value:
        source = " (PERCEPT_API, its default)" if value == os.environ.get("PERCEPT_API") else ""
        raise argparse.ArgumentTypeError(f"the graph's address takes no query or fragment (paths are added to it), "
                                         f"got {redact_url(value)!r}{source}")
    return value


class RedisOutage:
    """One line when Redis goes away (``redis unreachable at … — retrying``), one when it is
    back; foreground loops call `attempt` and carry on with ``default`` meanwhile. Credentials
    Redis refuses are no outage: `attempt` raises them, unless ``carry_on_refused`` (a command
    whose own work goes on without Redis, as `percept run`'s console), which says so instead."""

    def __init__(self, url: str | None, *, carry_on_refused: bool = False, quiet: bool = False,
                 client: Any = None):
        self.where = redact_url(url or "?")
        self.client = client  # READONLY from it (a failover behind one address): its connections made again
        self.down = False
        self.what = ""  # what the last line said Redis does: unreachable, refuses our credentials, …
        self.carry_on_refused = carry_on_refused
        self.quiet = quiet  # a one-shot command: it says why itself (`reason`), there is no retrying
        self.reason = ""

    def notice(self, exc: Exception | None) -> None:
        """A line when Redis goes away, when what it does changes meanwhile (back with other
        credentials than ours: still "unreachable" was said), and when it is back."""
        if exc is not None:
            what = "refuses our credentials" if isinstance(exc, CREDENTIALS_REFUSED) else "unreachable"
            if self.down and what == self.what:
                return
            # why, in one line (a refused port, a TLS certificate that is not one, …), credentials scrubbed
            self.reason = f"{type(exc).__name__}: {' '.join(redact(str(exc)).split())[:200]}".rstrip(": ")
            if not self.quiet:
                print(f"percept: redis {what} at {self.where} — retrying ({self.reason})", file=sys.stderr, flush=True)
            self.down, self.what = True, what
        elif self.down:
            print(f"percept: redis at {self.where} is back", file=sys.stderr, flush=True)
            self.down, self.what = False, ""

    def _demoted(self, exc: Exception) -> None:
        """The client's idle connections closed on READONLY: the same one was asked again and
        again, and a reader behind a DNS name or a Service retried a demoted primary for ever."""
        if self.client is not None:
            reconnect_if_demoted(self.client, exc)

    def attempt(self, fn: Callable[[], T], default: T) -> T:
        try:
            value = fn()
        except redis.RedisError as exc:
            if not redis_unavailable(exc) and not (self.carry_on_refused and isinstance(exc, CREDENTIALS_REFUSED)):
                raise
            self._demoted(exc)
            self.notice(exc)
            return default
        self.notice(None)
        return value

    def until_back(self, fn: Callable[[], T], *, timeout_s: float | None = None, interval_s: float = 1.0) -> T:
        """``fn()`` retried through an outage (up to ``timeout_s``, then the error is raised)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                value = fn()
            except redis.RedisError as exc:
                if not redis_unavailable(exc):
                    raise
                self._demoted(exc)
                self.notice(exc)
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                time.sleep(interval_s)
                continue
            self.notice(None)
            return value


def device_problem(device: str) -> str | None:
    """Why ``--device`` cannot be used here (as the config's ``device`` pattern, and a CUDA device
    this machine does not have, as `eval` says it); None when it can."""
    import re
    from types import SimpleNamespace

    from pipeline.backends.ultralytics_backend import existing_device
    from pipeline.config_models import ModelServerConfig
    from pipeline.models import ModelError

    pattern = next(m.pattern for m in ModelServerConfig.model_fields["device"].metadata if getattr(m, "pattern", None))
    if not re.match(pattern, device):
        return f"--device: must be auto, cpu, cuda, cuda:N, N or mps, got {device!r}"
    try:
        existing_device(SimpleNamespace(device=device, half=None), "--device")
    except ModelError as exc:
        return str(exc)
    return None


def overwritten_input(out: str | None, **inputs: Any) -> str | None:
    """Which input option (``labels``: ``--labels``) the output file ``out`` names, if any: a
    ``--json`` onto the labels CSV or the weights replaced them with the result. A folder given
    as ``--data`` counts with its ``data.yaml``; lists (``--calib``) item by item."""
    if not out or not Path(out).exists():
        return None
    for option, given in inputs.items():
        for path in given if isinstance(given, (list, tuple)) else [given]:
            if not path:
                continue
            for candidate in (Path(path).expanduser(), Path(path).expanduser() / "data.yaml"):
                try:
                    if candidate.is_file() and os.path.samefile(out, candidate):
                        return f"--{option.replace('_', '-')}"
                except OSError:
                    continue
    return None
