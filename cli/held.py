"""`signals_held`: signals held back for a moment, then delivered (cli/main.py imports it first:
nothing here is costly to import)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def signals_held(*signals: signal.Signals) -> Iterator[None]:
    """``signals`` (default SIGINT) wait until the block ends, then take effect as usual (Ctrl-C
    raises KeyboardInterrupt there). Blocked in the calling thread's mask and, in the main thread
    (where Python runs its handlers), also recorded by handlers of the block's own: a thread of a
    library (OpenBLAS's) takes a process's signal when the main thread blocks it, and Python
    then ran the handler in the main thread anyway, inside the block."""
    held_signals = set(signals or (signal.SIGINT,))
    held = signal.pthread_sigmask(signal.SIG_BLOCK, held_signals)
    main = threading.current_thread() is threading.main_thread()
    came: list[int] = []
    before: dict[int, Any] = {}
    if main:
        for sig in held_signals:
            before[sig] = signal.signal(sig, lambda number, _frame: came.append(number))
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # (None: not set from Python)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        for sig in dict.fromkeys(came):  # (once each, in order: as the handlers they were for)
            signal.raise_signal(sig)
