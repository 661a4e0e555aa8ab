"""`percept run`'s private Ray watched: its raylet and GCS are this process's children, and
when one of them ends (killed, the OOM killer) the graph is gone with it. A raylet killed left
the console printing healthy lines for as long as the run lasted (its replicas orphaned, still
publishing, `GET /status` timing out); a GCS killed ended the run 60 s later in Ray's own words.
Now `percept run` says which one ended and how, and stops (exit 3)."""

from __future__ import annotations

import signal
from collections.abc import Sequence

import psutil

DAEMONS = ("raylet", "gcs_server")


class RayGone(Exception):
    """One of the private Ray's daemons ended; its text says which and how."""


def _ended(proc: psutil.Process) -> str | None:
    """How a daemon ended (None: it runs): its exit code or signal, reaped if it was ours."""
    try:
        if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            return None
        code = proc.wait(timeout=0)  # (a child: reaped, its code read)
    except psutil.NoSuchProcess:
        return "ended"
    except psutil.TimeoutExpired:  # (not a zombie after all: still running)
        return None
    if code is None:
        return "ended"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class RayDaemons:
    """The raylet and GCS of a Ray this process started (none found: nothing to watch)."""

    def __init__(self, procs: Sequence[tuple[psutil.Process, str]]):
        self.procs = list(procs)  # (each with its name, read while it ran)

    @classmethod
    def started_here(cls) -> "RayDaemons":
        found = []
        for proc in psutil.Process().children():
            try:
                if (name := proc.name()) in DAEMONS:
                    found.append((proc, name))
            except psutil.Error:  # (one that ended as it was listed)
                continue
        return cls(found)

    def check(self) -> None:
        """Raises `RayGone` once one of them has ended."""
        for proc, daemon in self.procs:
            how = _ended(proc)
            if how is not None:
                name = "GCS (gcs_server)" if daemon == "gcs_server" else "raylet"
                raise RayGone(f"the private Ray's {name} (pid {proc.pid}) {how}: the graph's replicas are lost with "
                              f"it, so nothing more is published; stopping (run percept run again; look for the OOM "
                              f"killer in the system log if nothing here killed it)")

