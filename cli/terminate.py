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
