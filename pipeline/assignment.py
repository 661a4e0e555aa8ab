"""Which decoder replica ingests which camera: per-camera leases in Redis.

Every decoder replica runs a `CameraSupervisor`. Each round (a third of the lease TTL) it renews
the leases it holds, stops cameras whose lease it lost, and claims free cameras up to its fair
share (``ceil(cameras / replicas)``, ``replicas`` the larger of the configured number and the
replicas alive now, ``live_replicas``: more replicas than the config says take their part, one
camera handed over a round by a replica above its share, taken back by it only after five free
rounds in a row); a camera left free for two rounds is claimed by whoever sees it, so a dead
replica's cameras move within about 1.3–2 TTLs (its lease runs out, then two or three rounds). A lease is redis-py's `Lock`
(``SET NX PX`` with an owner token), so no camera is ever ingested twice:

- fencing (pipeline/lease.py): a camera whose lease was not renewed for ``TTL - margin`` is
  stopped at once (a timer, and the first thing a round checks, also after the replica was paused),
  and the publisher writes a camera's results only while Redis says the lease is ours;
- a camera whose task died (its reader crashed) is restarted with backoff (0.5 s → 10 s) while
  its lease is kept; one that ended normally (a file that finished, a source failed for good)
  stays as it is;
- after Redis was out of reach for as long as a lease lasts, a replica claims for a TTL only the
  cameras whose leases ran out there (`lease.OutageClaims`): their results wait in its publisher.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import uuid
from typing import Any, Callable

import redis

from .backoff import Backoff
from .camera_restarts import CameraRestarts, RunningCamera
from .lease_keeping import LeaseKeeping
from .conductor import CameraConductor
from .config import CameraConfig
from .lease import Lease, OutageClaims, acquire, release
from .publish import Publisher
from .redact import redact
from .streams import ENDED_FIELD, StreamKeys, ended_mark, reconnect_if_demoted

log = logging.getLogger("percept.assignment")


HANDED_OVER_ROUNDS = 3  # extra free rounds before a camera handed over is taken back by its old owner


class CameraSupervisor(CameraRestarts, LeaseKeeping):
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
        publisher: Publisher | None = None,
        live_replicas: Callable[[], int] | None = None,
        end_removed: Callable[[str], Any] | None = None,
    ):
        # A list is fixed; a callable (the registry) is read again every round, so cameras can
        # be added and removed at runtime without touching the others.
        self._load = cameras if callable(cameras) else (lambda: list(cameras))
        self.cameras: dict[str, CameraConfig] = {}
        self._start_errors: dict[str, str] = {}  # cameras that could not start: the error last said
        self.client = client
        self.keys = keys
        self.start_camera = start_camera
        self.replicas = max(1, replicas)
        self._live_replicas = live_replicas  # how many decoder replicas run now (read each round)
        self._live = 0
        self.ttl = lease_ttl_s
        self.owner = owner or uuid.uuid4().hex[:12]
        self.publisher = publisher  # fenced by our leases when given
        self.running: dict[str, RunningCamera] = {}
        self._stopping: set[str] = set()  # being stopped: not claimed again until done
        # leases renewed while their camera is not in `running`: starting, or stopping (not lost):
        # a start or stop that takes longer than the lease has left never lets it lapse meanwhile
        self._held: dict[str, Lease] = {}
        self._renewals: dict[str, asyncio.Task[None]] = {}  # in flight, by camera (`_renew_all`)
        self._renewal_errors: list[BaseException] = []
        self._free_rounds: dict[str, int] = {}
        self._outage = OutageClaims(lease_ttl_s)  # after an outage, our own cameras first
        self._stop = asyncio.Event()
        self._hand_over_all = False  # `stop(hand_over=True)`: the service stays (see `stop`)
        self._wake = asyncio.Event()
        self._next_round = 0.0
        self._background: set[asyncio.Task[None]] = set()
        # each round: the open tracks of removed cameras end (`track_orphans.RemovedCameraSweeper.sweep`,
        # given this replica's token for it; blocking)
        self._end_removed = end_removed
        self._sweep: asyncio.Task[None] | None = None

    @property
    def start_errors(self) -> dict[str, str]:
        """The cameras this replica could not start, and why, while no other replica runs them."""
        return dict(self._start_errors)

    @property
    def fair_share(self) -> int:
        return max(1, math.ceil(len(self.cameras) / max(self.replicas, self._live)))

    async def run(self) -> None:
        # Renewals run on their own, so a slow camera start never delays another camera's lease.
        self._renewing = True
        renewals = asyncio.create_task(self._renew_loop())
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    await self._tick()
                except redis.RedisError as exc:
                    log.warning("lease round failed (redis: %s); keeping current cameras", type(exc).__name__)
                    self._unreachable()
                    reconnect_if_demoted(self.client, exc)
                except Exception:  # a fault of one round (an entry nobody foresaw): never every camera's end
                    log.exception("lease round failed; keeping current cameras")
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, self._next_wake() - time.monotonic()))
                except asyncio.TimeoutError:
                    pass
        finally:
            # read while the leases are still renewed (a slow read must not let them run out), and
            # renewed while the cameras stop: what they publish last lands under them
            handing_over = await self._still_listed() if self._hand_over_all else set()
            await asyncio.gather(*(self._stop_camera(cid, hand_over=cid in handing_over) for cid in list(self.running)),
                                 return_exceptions=True)
            await asyncio.gather(*self._background, *([self._sweep] if self._sweep else []), return_exceptions=True)
            # the flag as well as the cancel: Python 3.11's wait_for can swallow a cancellation
            # that lands as its call completes, and the loop would then renew forever
            self._renewing = False
            renewals.cancel()
            await asyncio.gather(renewals, *self._renewals.values(), return_exceptions=True)

    async def stop(self, *, hand_over: bool = False) -> None:
        """Stop every camera and release its lease; ``hand_over``: the replica goes while the
        service stays (a scale-down, a redeploy), so the open tracks of the cameras the registry
        still lists as they run go on at their next owners (`track_state.leave_tracks`) instead
        of ending. (A camera the next version changes or removes after this read: its next owner
        ends them, `track_restore.restore_tracking`, or a sweep of the removed cameras,
        `pipeline/track_orphans.py`.)"""
        self._hand_over_all = hand_over
        self._stop.set()
        self._wake.set()

    async def _still_listed(self) -> set[str]:
        """The cameras running here that the registry still lists as they run (a new version of
        the service may have removed one or changed its settings: its tracks end); none when
        the registry cannot be read in a third of the lease TTL."""
        try:
            listed = {c.id: c for c in await asyncio.wait_for(asyncio.to_thread(self._load), self.ttl / 3)}
        except Exception as exc:
            log.warning("stopping: cameras not read (%s); ending their tracks", type(exc).__name__)
            return set()
        running = {cid: entry.conductor.camera for cid, entry in self.running.items()}
        return {cid for cid, now in running.items() if cid in listed and listed[cid].differs_at_runtime_only(now)}

    async def _tick(self) -> None:
        self._expire_overdue()  # first: after a pause the loop may wake up long after a deadline
        await self._restart_dead()
        if time.monotonic() >= self._next_round:
            self._next_round = time.monotonic() + self.ttl / 3
            await self._round()

    def _next_wake(self) -> float:
        due = [c.restart_at for c in self.running.values() if c.restart_at is not None]
        return min([self._next_round, *due])

    async def _round(self) -> None:
        self.cameras = {c.id: c for c in await asyncio.to_thread(self._load)}
        for notes in (self._free_rounds, self._start_errors):  # (a camera gone: its notes too)
            for cid in [c for c in notes if c not in self.cameras]:
                del notes[cid]
        # the cameras to stop stop together, in the background (one after another, a camera whose
        # reader is stuck held the others' stops for up to ~20 s each; awaited here, it held this
        # round's claims of other cameras as long): one restarted is claimed again in the round
        # its stop's end brings forward (`_finish_stop`)
        for cid in [c for c in self.running if c not in self.cameras]:
            log.warning("camera %s: removed; stopping here", cid)
            self._stop_soon(cid, lost=False)
        for cid, entry in list(self.running.items()):
            new, now = self.cameras[cid], entry.conductor.camera
            if new == now:
                if entry.conductor.read_to_end and entry.task.done() and \
                        not await asyncio.to_thread(self._read_to_its_end, new):
                    log.info("camera %s: added again since its file was read to its end; reading it again", cid)
                    self._stop_soon(cid, lost=False)
                continue
            if new.differs_at_runtime_only(now):
                log.info("camera %s: zones/lines changed; applied without a restart", cid)
                entry.conductor.reconfigure(new)
            elif new._added_ms != now._added_ms:  # removed and added again between two rounds
                log.warning("camera %s: removed and added again; restarting it", cid)
                self._stop_soon(cid, lost=False)
            else:  # its settings changed (a new URL, fps, …: a new config)
                log.warning("camera %s: its settings changed; restarting it with them", cid)
                self._stop_soon(cid, lost=False)
        await self._hand_over_surplus()
        await self._after_an_outage()
        await self._claim()
        self._outage.reached(time.monotonic())
        if self._end_removed is not None and (self._sweep is None or self._sweep.done()):
            self._sweep = asyncio.create_task(self._sweep_removed())

    async def _sweep_removed(self) -> None:
        try:
            await asyncio.to_thread(self._end_removed, f"{self.owner}:removed")
        except Exception as exc:  # (redis away: the next round tries again)
            log.warning("removed cameras not swept (%s); next round", type(exc).__name__)

    async def _hand_over_surplus(self) -> None:
        """At least as many replicas run as the config says (the deployment scaled up, or a dead
        replica's replacement started): one camera above this replica's share is stopped and its
        lease released, for a replica below its share to claim (its open tracks go on there:
        `track_state.leave_tracks`). While fewer run, the cameras a failover gathered stay."""
        if self._live_replicas is None:
            return
        was, self._live = self._live, await asyncio.to_thread(self._live_replicas)
        # two rounds in a row (a replica that just died, or one of an earlier run, counts a few
        # seconds at most) at least the configured number: a scale-up, or the replacement of a
        # replica whose cameras a failover gathered here (while it is missing, they stay)
        if min(was, self._live) >= self.replicas and len(self.running) > self.fair_share:
            # a camera still reading (one that ended would not be read again by anyone)
            cid = next((c for c in reversed(self.running) if not self.running[c].task.done()),
                       next(reversed(self.running)))
            log.warning("camera %s: %d cameras here, above this replica's share (%d, %d replicas); handing it over",
                        cid, len(self.running), self.fair_share, max(self.replicas, self._live))
            await self._stop_camera(cid, hand_over=True)

    async def _claim(self) -> None:
        for cid, cam in self.cameras.items():
            if self._stop.is_set():  # asked to stop during this round: start nothing more
                return
            if cid in self.running or cid in self._stopping or self._outage.others_wait(cid, time.monotonic()):
                continue
            key = self.keys.lease(cid)
            if len(self.running) >= self.fair_share and self._free_rounds.get(cid, 0) < 2:
                if not await asyncio.to_thread(self.client.exists, key):
                    self._free_rounds[cid] = self._free_rounds.get(cid, 0) + 1
                else:  # held again: free rounds count in a row (two handovers hours apart are not two rounds)
                    self._free_rounds.pop(cid, None)
                    self._start_errors.pop(cid, None)  # (another replica has it: not failed here)
                continue
            if await asyncio.to_thread(self._read_to_its_end, cam):
                continue
            lease = await asyncio.to_thread(acquire, self.client, key, cid, ttl=self.ttl, token=self.owner)
            self._free_rounds.pop(cid, None)
            self._outage.expired_here.discard(cid)
            if lease is None:
                self._start_errors.pop(cid, None)  # (another replica has it: not failed here)
                continue
            if self._stop.is_set():
                await asyncio.to_thread(release, lease)
                return
            log.info("camera %s: lease acquired by %s", cid, self.owner)
            await self._start(cid, cam, lease)

    def _read_to_its_end(self, cam: CameraConfig) -> bool:
        """A file camera (not looping) whose file a replica read to its end: not read again, also
        once its lease is free (an outage past the TTL, a handover). Its hash says so."""
        mark = ended_mark(cam)
        return mark is not None and self.client.hget(self.keys.camera(cam.id), ENDED_FIELD) == mark.encode()

    async def _start(self, cid: str, cam: CameraConfig, lease: Lease) -> None:
        if self.publisher is not None:
            self.publisher.fence(cid, lease.lock.name, self.owner, hold_s=2 * self.ttl)
        self._held[cid] = lease
        try:
            conductor = await self.start_camera(cam)
        except Exception as exc:
            await asyncio.to_thread(release, lease)
            if self.publisher is not None:
                self.publisher.unfence(cid)  # what follows lands unless another replica holds the lease
            error = redact(f"could not start: {type(exc).__name__}: {exc}", cam.secrets)
            if self._start_errors.get(cid) != error:  # said once per error, tried again each round
                self._start_errors[cid] = error
                log.error("camera %s: %s", cid, error)
                if self.publisher is not None:
                    self.publisher.camera_state(cid, "failed", error=error, url=cam.shown_url)
            return
        finally:  # (also when cancelled: a lease nobody runs is never renewed on)
            self._held.pop(cid, None)
        if lease.overdue():  # the start took longer than the lease lasts: another replica may run it
            log.warning("camera %s: starting took longer than its lease; leaving it for the next round", cid)
            await asyncio.to_thread(release, lease)
            if self.publisher is not None:
                self.publisher.unfence(cid)
            return
        self._start_errors.pop(cid, None)
        entry = RunningCamera(conductor, self._run_task(conductor), lease, time.monotonic(), Backoff(0.5, 10.0))
        self.running[cid] = entry
        self._arm(cid, entry)

    def _run_task(self, conductor: CameraConductor) -> "asyncio.Task[None]":
        task = asyncio.create_task(conductor.run())
        task.add_done_callback(lambda _: self._wake.set())  # a dead camera is noticed at once
        return task

    # --- stopping ----------------------------------------------------------------------------------

    async def _stop_camera(self, cid: str, *, lost: bool = False, hand_over: bool = False) -> None:
        task = self._stop_soon(cid, lost=lost, hand_over=hand_over)
        if task is not None:
            await task

    def _stop_soon(self, cid: str, *, lost: bool, hand_over: bool = False) -> "asyncio.Task[None] | None":
        entry = self.running.pop(cid, None)
        if entry is None:
            return None
        self._stopping.add(cid)
        if not lost:
            self._held[cid] = entry.lease
        if entry.timer is not None:
            entry.timer.cancel()
        task = asyncio.create_task(self._finish_stop(cid, entry, lost=lost, hand_over=hand_over))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _finish_stop(self, cid: str, entry: RunningCamera, *, lost: bool, hand_over: bool) -> None:
        try:
            # a lease lost (not renewed in time: a slow Redis, an outage) leaves the tracks too: if
            # the lease is still ours, or taken back, this replica continues them; else their next
            # owner does, from the snapshot the lease check lets through. Ending them here wrote
            # track_end and "closed" wherever the lease had not gone yet: every car a new track.
            await entry.conductor.stop(keep_tracks=hand_over or lost)
            await asyncio.wait([entry.task], timeout=15)
            if not entry.task.done():
                entry.task.cancel()
            elif not entry.task.cancelled() and entry.task.exception() is not None and not (lost or hand_over) \
                    and cid not in self.cameras and self.publisher is not None:
                # removed while it waited to restart (its reader crashed): nobody says it stopped,
                # and its hash kept "reconnecting … (restart in 1.0 s)" for good
                self.publisher.camera_state(cid, "stopped", url=entry.conductor.camera.shown_url)
            left = entry.lease.deadline - time.monotonic()
            if self.publisher is not None and not lost and left > 0:
                # what the camera published last lands while the lease is still ours
                await asyncio.to_thread(self.publisher.flush, min(5.0, left), camera=cid)
            await asyncio.to_thread(release, entry.lease)
        finally:
            if self._held.get(cid) is entry.lease:
                del self._held[cid]
            if self.publisher is not None:
                self.publisher.unfence(cid)
            self._stopping.discard(cid)
            if hand_over and cid in self.cameras:
                # for a replica below its share: the one that gave it up takes it back only after
                # more free rounds in a row than usual (its own rounds, the first brought forward,
                # saw it free twice at once: it took it back a round after letting it go, before
                # a replica busy starting another camera had claimed it, and handed it over again)
                self._free_rounds[cid] = -HANDED_OVER_ROUNDS
            elif not lost and cid in self.cameras:  # still listed (its settings changed, added again): claimed now
                self._next_round = min(self._next_round, time.monotonic())
            self._wake.set()

    def status(self) -> dict[str, Any]:
        cameras = {}
        for cid, entry in self.running.items():
            cameras[cid] = entry.conductor.status()
            if entry.restart_at is not None:
                cameras[cid]["restart_in_s"] = round(max(0.0, entry.restart_at - time.monotonic()), 1)
        out: dict[str, Any] = {"owner": self.owner, "pid": os.getpid(), "cameras": cameras}
        if self.publisher is not None:
            stats = self.publisher.stats
            out["fencing"] = {"fenced": dict(stats.fenced), "fenced_other": dict(stats.fenced_other),
                              "duplicates": dict(stats.duplicates)}
        return out
