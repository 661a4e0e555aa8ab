"""`signals_held`: signals held back for a moment, then delivered (cli/main.py imports it first:
nothing here is costly to import)."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def signals_held(*signals: signal.Signals) -> Iterator[None]:
    """``signals`` (default SIGINT) wait until the block ends, then take effect as usual (Ctrl-C
    raises KeyboardInterrupt there). The calling thread's mask: the main thread's, where Python
    runs its handlers, in a command that starts no thread of its own."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, set(signals or (signal.SIGINT,)))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
