"""A camera whose task died (its reader crashed) is restarted with backoff (0.5 s → 10 s) while
its lease is kept (`CameraSupervisor`'s part for it)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from .backoff import Backoff
from .conductor import CameraConductor
from .config import CameraConfig
from .geometry import GeometryError
from .lease import Lease
from .redact import redact

log = logging.getLogger("percept.assignment")


@dataclass
class RunningCamera:
    """A camera this replica holds the lease of: its conductor and the task running it."""

    conductor: CameraConductor
    task: "asyncio.Task[None]"
    lease: Lease
    started_at: float  # monotonic
    backoff: Backoff
    restart_at: float | None = None  # monotonic; set while a crashed camera waits to restart
    timer: asyncio.TimerHandle | None = None  # stops the camera when the lease runs out


class CameraRestarts:
    """What `CameraSupervisor` gives these methods: its running cameras, the config's, its
    publisher and how it starts a camera and runs its task."""

    running: dict[str, RunningCamera]
    cameras: dict[str, CameraConfig]
    publisher: Any
    start_camera: Callable[[CameraConfig], Any]
    _run_task: Callable[[CameraConductor], "asyncio.Task[None]"]
    _stop: asyncio.Event  # set by `stop()`: nothing is restarted any more

    async def _restart_dead(self) -> None:
        now = time.monotonic()
        for cid, entry in list(self.running.items()):
            if entry.restart_at is None:
                task = entry.task
                if task.done() and not task.cancelled() and task.exception() is not None:
                    self._schedule_restart(cid, entry, task.exception(), now, said=True, ran=True)
            elif now >= entry.restart_at and cid in self.cameras and not self._stop.is_set():
                await self._restart(cid, entry)

    def _schedule_restart(self, cid: str, entry: RunningCamera, exc: BaseException, now: float, *,
                          said: bool = False, ran: bool = False) -> None:
        """A restart after the backoff, said in the camera's state and logged; ``said``: the camera's
        run ended with ``exc``, and a `GeometryError` its conductor said as it failed is not said
        again (a second status entry; a hash write alone is not guarded against a resend, which
        could land over the camera's later states); ``ran``: ``exc`` ended a run (not a restart
        that failed to start, which never resets the backoff: a camera that had run for an hour
        retried a failing start every 0.5 s for as long as the fault lasted)."""
        if ran and now - entry.started_at >= entry.backoff.cap:
            entry.backoff.reset()  # it had been running fine: a new fault, not the same one again
        delay = entry.backoff.next()
        entry.restart_at = now + delay
        cam = self.cameras.get(cid)
        failed = isinstance(exc, GeometryError)  # the camera cannot run as configured: said as it is
        what = "crashed" if ran else "could not restart"
        error = redact(str(exc) if failed else f"{what}: {type(exc).__name__}: {exc}",
                       cam.secrets if cam is not None else ())
        log.error("camera %s: %s; restarting in %.1f s", cid, error, delay)
        if self.publisher is not None and not (failed and said):
            self.publisher.camera_state(cid, "failed" if failed else "reconnecting",
                                        error=f"{error} (restart in {delay:.1f} s)")

    async def _restart(self, cid: str, entry: RunningCamera) -> None:
        entry.restart_at = None
        try:
            conductor = await self.start_camera(self.cameras[cid])
        except Exception as exc:
            if self.running.get(cid) is entry:
                self._schedule_restart(cid, entry, exc, time.monotonic())
            return
        if self.running.get(cid) is not entry:
            return  # stopped while starting (lease lost): the new conductor never ran
        entry.conductor, entry.task, entry.started_at = conductor, self._run_task(conductor), time.monotonic()
