"""SIGTERM while `percept run` (or `demo`) starts: what was started is unwound and the command
exits 143 (128 + SIGTERM), whenever the signal lands.

Three things stood in the way:
- ``ray.init`` installs Ray's own SIGTERM handlers while it runs (the driver's ``sys.exit(15)``,
  then the node's: drain for up to 30 s, ``sys.exit(1)``) and leaves them in place, with a C++
  one that printed a stack trace on the console and ended the run with SIGABRT (-6);
- Ray turns a ``SystemExit`` raised while it waits in ``ray.get`` (``serve.start``,
  ``serve.run``) into its own ``SystemExit(1)``;
- an exception a signal handler raises can be swallowed where Python ignores exceptions (one of
  Ray's was, in ``logging``'s lock release: the run went on, then hung).
So `StartupTermination` remembers the signal as well as raising it, puts its handler back after
``ray.init``, reads a wake-up file descriptor that sees the signal under Ray's handlers too (their
swallowed exit is not reported on the console), and the startup checks between its steps.
"""

from __future__ import annotations

import functools
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

EXIT_TERMINATED = 128 + signal.SIGTERM


class StartupTermination:
    """Our SIGTERM handler while the graph starts (installed by `install`, main thread only)."""

    def __init__(self) -> None:
        self.seen = False
        self.active = threading.current_thread() is threading.main_thread()

    def handler(self, *_: Any) -> None:
        self.seen = True
        raise SystemExit(EXIT_TERMINATED)

    def install(self) -> Any:
        """Ours from now on; returns the handler it replaced (None off the main thread)."""
        return signal.signal(signal.SIGTERM, self.handler) if self.active else None

    def check(self) -> None:
        """Between steps: a SIGTERM whose exception was swallowed still ends the startup."""
        if self.seen:
            raise SystemExit(EXIT_TERMINATED)

    @contextmanager
    def exits_as_terminated(self) -> Iterator[None]:
        """A SystemExit after our SIGTERM is ours (Ray turns one raised while it waits in
        ``ray.get``, as ``serve.start`` and ``serve.run`` do, into its own ``SystemExit(1)``)."""
        try:
            yield
        except SystemExit:
            if self.seen:
                raise SystemExit(EXIT_TERMINATED) from None
            raise

    @contextmanager
    def around_ray_init(self) -> Iterator[None]:
        """``ray.init`` under Ray's handlers: their exit (15, 1) becomes ours, a SIGTERM they
        swallowed is read from the wake-up descriptor, and our handler is put back after."""
        if not self.active:
            yield
            return
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        unraisable = sys.unraisablehook
        sys.unraisablehook = functools.partial(self._swallowed, unraisable)
        try:
            yield
        except SystemExit:
            self.seen = True
            raise SystemExit(EXIT_TERMINATED) from None
        finally:
            sys.unraisablehook = unraisable
            signal.set_wakeup_fd(previous)
            self.install()
            self.seen |= signal.SIGTERM in _drained(reader)
            reader.close()
            writer.close()
        self.check()

    def _swallowed(self, hook: Callable[[Any], None], unraisable: Any) -> None:
        """Python's "Exception ignored in …" report: Ray's handler's exit, swallowed, is a
        SIGTERM seen (not a traceback on the console); anything else is reported as before."""
        if issubclass(unraisable.exc_type, SystemExit):
            self.seen = True
        else:
            hook(unraisable)


def _drained(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


_said_gone = threading.Event()


def said_ray_gone() -> None:
    """The private Ray's end was said already (`cli/ray_watch.py`): the way out says no more of it."""
    _said_gone.set()


def local_ray_gone() -> bool:
    """Whether this process's private Ray lost its raylet: a SIGTERM to the whole process group
    (GNU ``timeout``, systemd's default ``KillMode``, ``kill -- -PGID``) reaches Ray's own
    processes too, which share ours. False for a cluster joined by address (none of its
    processes are ours)."""
    import ray

    node = getattr(getattr(ray, "_private", None) and ray._private.worker, "_global_node", None)
    processes = getattr(node, "all_processes", None) or {}
    return any(info.process is not None and info.process.poll() is not None for info in processes.get("raylet", ()))


def while_ray_lives(call: Callable[..., Any], *args: Any, poll_s: float = 0.2, stops_ray: bool = False,
                    stop_wait_s: float = 30.0) -> None:
    """``call(*args)`` (a Serve or Ray call made on the way out), given up once the private Ray's
    raylet is gone: ``serve.delete`` against a Ray whose processes had the same SIGTERM waited
    ~60 s, printing Ray's errors, until Ray's worker ended percept (exit 1) before what came
    after it — the private redis-server's stop — ever ran. ``stops_ray`` (``ray.shutdown``): a
    raylet alive when it starts and gone meanwhile is its own doing, not a signal to the group:
    waited for (at most ``stop_wait_s``: given up half-way it left Ray's processes running), unsaid."""
    own_stop = stops_ray and not local_ray_gone()
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            call(*args)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread below
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name=f"percept-exit-{getattr(call, '__name__', 'ray')}", daemon=True).start()
    if own_stop and not done.wait(stop_wait_s):
        return
    while not done.wait(poll_s):
        if local_ray_gone():
            if not _said_gone.is_set():
                _said_gone.set()
                print("percept: Ray's own processes were stopped too (a signal to the whole process group?); "
                      "the graph went with them", file=sys.stderr, flush=True)
            return
    if failure:
        raise failure[0]
