"""Threads that should yield the CPU to the cameras (the live view's drawing, an explanation's
detector runs) lower their own priority — relative to their process, never to a fixed value.

Ray starts every replica at nice 15 (``RAY_worker_niceness``): a thread set to an absolute nice
10 there would, as root (a container's usual user), run *above* the decoders and detectors
instead of below them; not as root, the call is refused and it stays their equal.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger("percept.priority")

MAX_NICE = 19  # the lowest priority Linux has


def lower_thread_priority(steps: int, *, what: str = "a background thread") -> int | None:
    """Lower the calling thread's priority by ``steps`` nice values (at most to 19); threads it
    starts inherit it. Linux only (a thread is a task there, with its own nice value). Returns
    the thread's nice value now, None where nothing changed (another OS, or refused: logged)."""
    if not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        nice = min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, tid) + max(0, steps))
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        log.warning("%s keeps its priority: %s", what, exc)
        return None
    return nice
