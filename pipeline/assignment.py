"""Which decoder replica ingests which camera: per-camera leases in Redis.

Every decoder replica runs a `CameraSupervisor`. Each round (a third of the lease TTL) it renews
the leases it holds, stops cameras whose lease it lost, and claims free cameras up to its fair
share (``ceil(cameras / replicas)``); a camera left free for two rounds is claimed by whoever sees
it, so a dead replica's cameras move within about one TTL. A lease is redis-py's `Lock`
(``SET NX PX`` with an owner token), so no camera is ever ingested twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from typing import Any, Callable

import redis
from redis.exceptions import LockError

from .config import CameraConfig
from .conductor import CameraConductor
from .publish import StreamKeys

log = logging.getLogger("percept.assignment")


class CameraSupervisor:
    def __init__(
        self,
        cameras: list[CameraConfig] | Callable[[], list[CameraConfig]],
        *,
        client: redis.Redis,
        keys: StreamKeys,
        start_camera: Callable[[CameraConfig], "asyncio.Future[CameraConductor] | Any"],
        replicas: int,
        lease_ttl_s: float,
        owner: str | None = None,
    ):
        # A list is fixed; a callable (the registry) is read again every round, so cameras can
        # be added and removed at runtime without touching the others.
        self._load = cameras if callable(cameras) else (lambda: list(cameras))
        self.cameras: dict[str, CameraConfig] = {}
        self.client = client
        self.keys = keys
        self.start_camera = start_camera
        self.replicas = max(1, replicas)
        self.ttl = lease_ttl_s
        self.owner = owner or uuid.uuid4().hex[:12]
        self.running: dict[str, tuple[CameraConductor, asyncio.Task[None], Any]] = {}
        self._free_rounds: dict[str, int] = {}
        self._stop = asyncio.Event()

    @property
    def fair_share(self) -> int:
        return max(1, math.ceil(len(self.cameras) / self.replicas))

    async def run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    await self._round()
                except redis.RedisError as exc:
                    log.warning("lease round failed (redis: %s); keeping current cameras", type(exc).__name__)
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=self.ttl / 3)
                except asyncio.TimeoutError:
                    pass
        finally:
            await asyncio.gather(*(self._stop_camera(cid) for cid in list(self.running)), return_exceptions=True)

    async def stop(self) -> None:
        self._stop.set()

    async def _round(self) -> None:
        self.cameras = {c.id: c for c in await asyncio.to_thread(self._load)}
        for cid, (conductor, task, lock) in list(self.running.items()):
            # A camera whose source ended (a file, or failed for good) stays leased here, so that
            # no other replica replays it; its state says why it stopped.
            lost = not await asyncio.to_thread(self._renew, lock)
            if lost or cid not in self.cameras:
                log.warning("camera %s: lease lost or camera removed; stopping here", cid)
                await self._stop_camera(cid)
        for cid, cam in self.cameras.items():
            if cid in self.running:
                continue
            if len(self.running) >= self.fair_share and self._free_rounds.get(cid, 0) < 2:
                if not await asyncio.to_thread(self.client.exists, self.keys.lease(cid)):
                    self._free_rounds[cid] = self._free_rounds.get(cid, 0) + 1
                continue
            lock = self.client.lock(self.keys.lease(cid), timeout=self.ttl, blocking=False, thread_local=False)
            if not await asyncio.to_thread(lock.acquire, token=self.owner):
                self._free_rounds.pop(cid, None)
                continue
            self._free_rounds.pop(cid, None)
            log.info("camera %s: lease acquired by %s", cid, self.owner)
            try:
                conductor = await self.start_camera(cam)
            except Exception as exc:
                log.error("camera %s: could not start: %s", cid, exc)
                await asyncio.to_thread(self._release, lock)
                continue
            self.running[cid] = (conductor, asyncio.create_task(conductor.run()), lock)

    async def _stop_camera(self, cid: str) -> None:
        entry = self.running.pop(cid, None)
        if entry is None:
            return
        conductor, task, lock = entry
        await conductor.stop()
        try:
            await asyncio.wait_for(task, timeout=15)
        except (asyncio.TimeoutError, Exception):
            task.cancel()
        await asyncio.to_thread(self._release, lock)

    def _renew(self, lock: Any) -> bool:
        """Extend our lease. If it expired meanwhile (Redis was down longer than the TTL) and
        nobody took it, take it back rather than restarting the camera."""
        try:
            lock.reacquire()
            return True
        except LockError:
            return bool(lock.acquire(blocking=False, token=self.owner))

    @staticmethod
    def _release(lock: Any) -> None:
        try:
            lock.release()
        except (LockError, redis.RedisError):
            pass

    def status(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "cameras": {cid: conductor.status() for cid, (conductor, _, _) in self.running.items()},
        }
