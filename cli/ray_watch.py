"""`percept run`'s private Ray watched: its raylet and GCS are this process's children, and
when one of them ends (killed, the OOM killer) the graph is gone with it. A raylet killed left
the console printing healthy lines for as long as the run lasted (its replicas orphaned, still
publishing, `GET /status` timing out); a GCS killed ended the run 60 s later in Ray's own words.
Now `percept run` says which one ended and how, and stops (exit 3)."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Sequence

import psutil

DAEMONS = ("raylet", "gcs_server")
KEPT = ("redis-server",)  # this process's children that are not Ray's


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""


class RayGone(Exception):
    """One of the private Ray's daemons ended; its text says which and how (``daemons``: the
    watcher, to stop the rest)."""

    def __init__(self, message: str, daemons: "RayDaemons"):
        super().__init__(message)
        self.daemons = daemons


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
    """The raylet and GCS of a Ray this process started (none found: nothing to watch), and the
    rest of that Ray's processes among this process's children when it was found."""

    def __init__(self, procs: Sequence[tuple[psutil.Process, str]], others: Sequence[psutil.Process] = ()):
        self.procs = list(procs)  # (each with its name, read while it ran)
        self.others = list(others)  # (Ray's log monitor, dashboard: children of this process too)

    @classmethod
    def started_here(cls) -> "RayDaemons":
        """Called right after this process started its private Ray: its children then are that
        Ray's, but for `KEPT` (the private redis-server)."""
        found, others = [], []
        for proc in psutil.Process().children():
            name = _name(proc)
            if name in DAEMONS:
                found.append((proc, name))
            elif name and name not in KEPT:
                others.append(proc)
        return cls(found, others)

    def stop_the_rest(self) -> None:
        """Once one ended: every process of this Ray still here ended too (SIGKILL: the daemons,
        what runs under them — its agents and workers — and its other processes found with them;
        nothing else of this process). With its GCS gone, Ray's own exit waited 60 s on it and
        left its agents running."""
        here = [p for p, _ in self.procs] + self.others
        for proc, _ in self.procs:
            try:
                here += proc.children(recursive=True)
            except psutil.Error:  # (gone: its own were reparented, found no more)
                continue
        for proc in here:
            try:
                proc.kill()
            except psutil.Error:  # (gone already)
                continue
        psutil.wait_procs(here, timeout=5)

    def check(self) -> None:
        """Raises `RayGone` once one of them has ended."""
        for proc, daemon in self.procs:
            how = _ended(proc)
            if how is not None:
                name = "GCS (gcs_server)" if daemon == "gcs_server" else "raylet"
                raise RayGone(f"the private Ray's {name} (pid {proc.pid}) {how}: the graph's replicas are lost with "
                              f"it, so nothing more is published; stopping (run percept run again; look for the OOM "
                              f"killer in the system log if nothing here killed it)", self)



def ray_lost(exc: RayGone) -> int:
    """The private Ray's raylet or GCS ended: said, the rest of that Ray stopped at once (so that
    the way out does not wait on it: `terminate.while_ray_lives`), exit 3."""
    from .common import EXIT_UNAVAILABLE, fail
    from .terminate import said_ray_gone

    said_ray_gone()  # (its own line said it, not "a signal to the whole process group?")
    code = fail(str(exc), EXIT_UNAVAILABLE)
    exc.daemons.stop_the_rest()
    return code


class ClusterGcs:
    """A cluster joined by address (none of its processes are this one's): its GCS asked for a
    TCP connection every ``every_s``. Ray's driver waits 60 s for a GCS that went away, then
    ends the run in its own words (exit 1) while the console printed healthy lines; now the
    console says at once that it does not answer, and again when it is back (a GCS with fault
    tolerance restarts within that time)."""

    def __init__(self, address: str | None, *, every_s: float = 2.0, timeout_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.address, self.every_s, self.timeout_s, self._clock = address, every_s, timeout_s, clock
        self._next = 0.0
        self.silent_since: float | None = None

    @classmethod
    def of_this_driver(cls) -> "ClusterGcs":
        """The GCS this driver talks to (none in Ray Client mode: the driver runs on the cluster)."""
        import ray

        try:
            return cls(ray.get_runtime_context().gcs_address)
        except Exception:  # (Ray Client: no GCS address here)
            return cls(None)

    def check(self) -> str | None:
        """A line to print when its GCS stopped or started answering again, else None."""
        now = self._clock()
        if not self.address or now < self._next:
            return None
        self._next = now + self.every_s
        host, _, port = self.address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=self.timeout_s).close()
        except (OSError, ValueError) as exc:
            if self.silent_since is not None:
                return None
            self.silent_since = now
            return (f"the Ray cluster's GCS at {self.address} does not answer ({exc.strerror or type(exc).__name__}): "
                    f"the graph can do nothing meanwhile, and Ray ends this run if it is not back within 60 s")
        if self.silent_since is None:
            return None
        gone, self.silent_since = now - self.silent_since, None
        return f"the Ray cluster's GCS at {self.address} answers again (silent for {gone:.0f} s)"
