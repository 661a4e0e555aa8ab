"""A decoder replica's leases kept (`CameraSupervisor`'s part for them): each renewed on its own
task every third of the TTL, a camera stopped at once when its lease was not renewed in time
(the fencing timer), and what an outage of Redis changes (`lease.OutageClaims`)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable
from typing import Any, Callable

import redis

from .camera_restarts import RunningCamera
from .lease import Lease, OutageClaims, renew
from .streams import reconnect_if_demoted

log = logging.getLogger("percept.assignment")


class LeaseKeeping:
    """What `CameraSupervisor` gives these methods: its Redis client, owner token and TTL, the
    cameras it runs and the leases it holds otherwise, and how it stops a camera."""

    client: redis.Redis
    owner: str
    ttl: float
    running: dict[str, RunningCamera]
    _held: dict[str, Lease]  # leases renewed while their camera is starting or stopping
    _renewing: bool
    _renewals: dict[str, "asyncio.Task[None]"]
    _renewal_errors: list[BaseException]
    _outage: OutageClaims
    _stop_soon: Callable[..., "asyncio.Task[None] | None"]

    async def _renew_loop(self) -> None:
        while self._renewing:
            try:
                await self._renew_all()
            except redis.RedisError as exc:
                log.warning("lease renewal failed (redis: %s); cameras stop when their lease runs out",
                            type(exc).__name__)
                self._unreachable()
                reconnect_if_demoted(self.client, exc)
            await asyncio.sleep(self.ttl / 3)

    async def _renew_all(self) -> None:
        """Each lease renewed on its own task, within its own deadline: one slow renewal (a dead
        pooled connection waits out its socket timeout) delays no other camera's, in this round
        or the next (a lease whose last renewal still waits is not asked again meanwhile). A
        renewal's Redis error is raised here, at the next round (one warning a round)."""
        errors, self._renewal_errors = self._renewal_errors, []
        due: dict[str, Callable[[], Awaitable[None]]] = {
            **{f"held:{cid}": functools.partial(self._renew_held, lease) for cid, lease in self._held.items()},
            **{cid: functools.partial(self._renew_running, cid, entry) for cid, entry in self.running.items()}}
        self._renewals = {key: task for key, task in self._renewals.items() if not task.done()}
        for key, renewal in due.items():
            if key not in self._renewals:
                task = self._renewals[key] = asyncio.create_task(renewal())
                task.add_done_callback(self._renewal_done)
        if errors:
            raise errors[0]

    def _renewal_done(self, task: "asyncio.Task[None]") -> None:
        if not task.cancelled() and task.exception() is not None:
            self._renewal_errors.append(task.exception())

    async def _renew_held(self, lease: Lease) -> None:
        try:
            await asyncio.wait_for(asyncio.to_thread(renew, lease, self.owner), timeout=self.ttl / 3)
        except asyncio.TimeoutError:
            pass  # (starting: checked once started; stopping: released at its end anyway)

    async def _renew_running(self, cid: str, entry: RunningCamera) -> None:
        # A camera whose source ended (a file, or failed for good) stays leased here, so that
        # no other replica replays it (a file read to its end is also marked so in its hash,
        # for when the lease is lost: `_read_to_its_end`); its state says why it stopped.
        if self._expire_overdue(cid):
            return
        try:
            left = max(0.05, entry.lease.deadline - time.monotonic())
            kept = await asyncio.wait_for(asyncio.to_thread(renew, entry.lease, self.owner), timeout=left)
        except asyncio.TimeoutError:
            return  # no answer in time: the expiry timer stops the camera
        if self.running.get(cid) is not entry:
            return  # stopped meanwhile
        if kept:
            self._outage.reached(time.monotonic())
            self._arm(cid, entry)
        else:
            log.warning("camera %s: lease lost; stopping here", cid)
            self._stop_soon(cid, lost=True)

    def _unreachable(self) -> None:
        self._outage.unreachable(time.monotonic())

    async def _after_an_outage(self) -> None:
        """Redis answers again after this replica could not reach it (`lease.OutageClaims`)."""
        if self._outage.unreachable_since is None:
            return
        await asyncio.to_thread(self.client.ping)  # still out of reach: the round fails here
        lasted = self._outage.answered(time.monotonic())
        if lasted is not None:
            log.info("redis answers again after %.1f s; for %.1f s claiming only the cameras whose lease ran out here"
                     " (%s)", lasted, self.ttl, ", ".join(sorted(self._outage.expired_here)) or "none")

    # --- fencing: stop a camera whose lease may have run out ---

    def _arm(self, cid: str, entry: RunningCamera) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
        loop = asyncio.get_running_loop()
        entry.timer = loop.call_later(max(0.0, entry.lease.deadline - time.monotonic()), self._on_deadline, cid)

    def _on_deadline(self, cid: str) -> None:
        entry = self.running.get(cid)
        if entry is not None and not self._expire_overdue(cid):
            self._arm(cid, entry)  # renewed meanwhile (a renewal that answered late)

    def _expire_overdue(self, cid: str | None = None) -> bool:
        """Stops (now, in the background) the camera(s) whose lease was not renewed in time:
        another replica may own it already. True if the one named was stopped."""
        now, stopped = time.monotonic(), False
        for c in [cid] if cid is not None else list(self.running):
            entry = self.running.get(c)
            if entry is not None and entry.lease.overdue(now):
                log.warning("camera %s: lease not renewed for %.1f s (TTL %.1f s); stopping it here",
                            c, now - entry.lease.renewed_at, self.ttl)
                self._outage.expired_here.add(c)
                self._stop_soon(c, lost=True)
                stopped = stopped or c == cid
        return stopped

    def _renew(self, lock: Any) -> bool:
        """Extend our lease (see `lease.renew`): taken back if it expired and nobody took it."""
        return renew(Lease("", lock, self.ttl, time.monotonic()), self.owner)
