"""Open tracks of a camera removed while nobody ran it: their ends.

A replica that Serve stops while the service stays hands its cameras over with their open
tracks (`track_state.leave_tracks`), and the next owner continues them. A camera removed before
anyone took it over (the new config dropped it, or ``DELETE /cameras/{id}`` came during the
handover) has no next owner: its tracks would stay open forever (a ``track_start`` without its
``track_end``). The registry notes every removal (`CameraRegistry.removed_cameras`); each round,
every decoder replica's supervisor sweeps those notes (`RemovedCameraSweeper.sweep`): for a
camera still absent whose lease is free, it takes the lease under a token of its own, restores
the state as a next owner would and ends every open track there, then forgets the note once
the camera's state says ``closed``. A camera that stopped cleanly left a ``closed`` state:
nothing to end, the note goes.

The sweeper writes through a publisher of its own (its fences and queue apart from the
cameras this replica runs), made on the first note it meets. Writes that did not land before
the lease's deadline keep the lease (it is not released: it expires, or the next sweep of
this replica takes it again with the same token and they land then).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from .config import TrackerConfig
from .lease import Lease, acquire, release
from .publish import Publisher
from .redact import redact
from .registry import CameraRegistry, RemovedCamera
from .streams import expire_removed_camera
from .track_restore import end_left_tracks

log = logging.getLogger("percept.track_orphans")


class RemovedCameraSweeper:
    def __init__(self, registry: CameraRegistry, make_publisher: Callable[[], Publisher], cfg: TrackerConfig, *,
                 lease_ttl_s: float, keep_s: float | None = None):
        self.registry = registry
        self.keep_s = keep_s  # `redis.removed_keep_s`: then the camera's data goes (None: kept)
        self.make_publisher = make_publisher
        self.cfg = cfg
        self.ttl = lease_ttl_s
        self.publisher: Publisher | None = None

    def sweep(self, token: str) -> dict[str, int]:
        """One sweep (see the module doc): the removed cameras dealt with now, each with how many
        tracks ended. A camera back in the registry (and valid) is left to its owner; one whose
        lease is taken (its old owner is still stopping it) waits for a later sweep. Blocking."""
        done: dict[str, int] = {}
        notes = self.registry.removed_cameras()
        runnable = self.registry.runnable_ids() if notes else set()
        for removed in notes:
            cid = removed.camera.id
            if cid in runnable:
                self.registry.forget_removed(cid, removed.note)  # back: its owner continues or ends them
                continue
            lease = acquire(self.registry.client, self.registry.keys.lease(cid), cid, ttl=self.ttl, token=token)
            if lease is None:
                continue
            try:
                ended = self._end(removed, lease, token)
            except Exception as exc:  # Redis away, …: a later sweep tries again
                log.warning("camera %s: removed; its open tracks not ended yet: %s: %s", cid, type(exc).__name__,
                            redact(str(exc), removed.camera.secrets))
                ended = None
            if ended is not None:
                done[cid] = ended
        return done

    def _end(self, removed: RemovedCamera, lease: Lease, token: str) -> int | None:
        """Under ``lease``: the camera's open tracks ended and its note forgotten (how many), or
        None (back in the registry, or not all written in time: a later sweep)."""
        cid, registry = removed.camera.id, self.registry
        if cid in registry.runnable_ids():  # added back meanwhile
            registry.forget_removed(cid, removed.note)
            release(lease)
            return None
        if self.publisher is None:
            self.publisher = self.make_publisher()
        publisher = self.publisher
        publisher.fence(cid, registry.keys.lease(cid), token, hold_s=2 * self.ttl)
        _, counters = publisher.resume_camera(cid)
        if lease.overdue():  # a slow start: nothing is written past the lease
            return None
        ended = end_left_tracks(publisher, removed.camera, self.cfg, track_id_max=counters["track_id_max"])
        left = lease.deadline - time.monotonic()
        # (a snapshot that cannot be continued is left open, the known gap: 0 ended, nothing to wait for)
        if left <= 0 or not publisher.flush(left, camera=cid) or lease.overdue() or (ended and not self._closed(cid)):
            return None  # the lease stays taken: it expires, or this replica's next sweep retakes it
        if self.keep_s is not None:  # (under the lease: an owner of the id added again persists them after)
            refused = expire_removed_camera(registry.client, registry.keys, cid, self.keep_s, (registry.keys.lease(cid), token))
            if refused is None:  # the lease went meanwhile (a stall): the camera may run again
                return None
            for why in refused:
                log.warning("camera %s: removed; its data is kept for good: redis refused its expiry (%s)", cid,
                            redact(why))
        publisher.unfence(cid)
        release(lease)
        registry.forget_removed(cid, removed.note)
        kept = "" if self.keep_s is None else f"; its streams, counters and state kept {self.keep_s:g} s"
        log.info("camera %s: removed; the %d open tracks it was left with ended%s", cid, ended, kept)
        return ended

    def _closed(self, cid: str) -> bool:
        """The camera's state says ``closed`` (or there is none): its tracks are ended."""
        raw = self.registry.client.hget(self.registry.keys.trackstate(cid), "json")
        return raw is None or bool(json.loads(raw).get("closed"))

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close(timeout=5)
