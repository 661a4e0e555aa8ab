"""A signal stack of our own on the calling thread, after OpenVINO compiled a network on it.

OpenVINO's CPU plugin (2026.4) installs an alternate signal stack (``sigaltstack``, ~10 kB) on
the thread that calls ``compile_model`` and leaves it there. Python runs every signal handler it
installs on that stack (``SA_ONSTACK``); once the plugin's memory is gone, a SIGTERM or Ctrl-C
landing later wrote its frame there: a segfault (`percept bench` interrupted: exit -11) or the
heap quietly damaged. `own_signal_stack` replaces it with a stack of ours, kept for the life of
the process (one per thread that asks): called after each ``compile_model`` of ours."""

from __future__ import annotations

import ctypes
import mmap
import sys
import threading

SIZE = 256 * 1024
_kept: dict[int, mmap.mmap] = {}  # thread id → its stack (never freed while the thread may use it)
_lock = threading.Lock()


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def current() -> tuple[int, int, int]:
    """(address, flags, size) of the calling thread's alternate signal stack (0, 2, 0: none)."""
    now = _StackT()
    if _libc().sigaltstack(None, ctypes.byref(now)) != 0:
        return 0, 2, 0
    return now.ss_sp or 0, now.ss_flags, now.ss_size


def own_signal_stack() -> None:
    """The calling thread's alternate signal stack made ours (Linux; elsewhere nothing), unless it
    is ours already or there is none (then none is added)."""
    if not sys.platform.startswith("linux"):  # (another stack_t layout; OpenVINO's leftover seen on Linux)
        return
    try:
        address, flags, _ = current()
    except (OSError, AttributeError, TypeError):  # (no sigaltstack in this libc)
        return
    with _lock:
        mine = _kept.get(threading.get_ident())
        if flags & 2 or (mine is not None and address == ctypes.addressof(ctypes.c_char.from_buffer(mine))):
            return  # (SS_DISABLE: none; or ours)
        if mine is None:
            mine = _kept[threading.get_ident()] = mmap.mmap(-1, SIZE)
        stack = _StackT(ctypes.addressof(ctypes.c_char.from_buffer(mine)), 0, SIZE)
        _libc().sigaltstack(ctypes.byref(stack), None)


_LIBC: list[ctypes.CDLL] = []


def _libc() -> ctypes.CDLL:
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]
