"""Open tracks of a camera removed while nobody ran it: their ends.

A replica that Serve stops while the service stays hands its cameras over with their open
tracks (`track_state.leave_tracks`), and the next owner continues them. A camera removed before
anyone took it over (the new config dropped it, or ``DELETE /cameras/{id}`` came during the
handover) has no next owner: its tracks would stay open forever (a ``track_start`` without its
``track_end``). The registry notes every removal (`CameraRegistry.removed_cameras`); each round,
every decoder replica's supervisor sweeps those notes (`end_removed_tracks`): for a camera still
absent whose lease is free, it takes the lease under a token of its own, restores the state as a
next owner would and ends every open track there, then forgets the note once those writes have
landed. A camera that stopped cleanly left a ``closed`` state: nothing to end, the note goes.
"""

from __future__ import annotations

import logging

from .config import TrackerConfig
from .lease import acquire, release
from .publish import Publisher
from .redact import redact
from .registry import CameraRegistry
from .track_state import end_left_tracks

log = logging.getLogger("percept.track_orphans")


def end_removed_tracks(registry: CameraRegistry, publisher: Publisher, cfg: TrackerConfig, *, token: str,
                       lease_ttl_s: float) -> dict[str, int]:
    """One sweep (see the module doc): the removed cameras dealt with now, each with how many
    tracks ended. A camera back in the registry is left to its owner; one whose lease is taken
    (its old owner is still stopping it) waits for a later sweep. Blocking: call it in a thread."""
    done: dict[str, int] = {}
    for camera in registry.removed_cameras():
        if camera.id in registry.listed():
            registry.forget_removed(camera.id)  # back: its owner continues or ends the tracks
            continue
        fence = publisher.fence_of(camera.id)
        if fence is not None and not fence.released:
            continue  # this replica still writes for it
        lease_key = publisher.keys.lease(camera.id)
        lease = acquire(publisher.client, lease_key, camera.id, ttl=lease_ttl_s, token=token)
        if lease is None:
            continue
        try:
            if camera.id in registry.listed():  # added back meanwhile
                registry.forget_removed(camera.id)
                continue
            publisher.fence(camera.id, lease_key, token, hold_s=lease_ttl_s)
            _, counters = publisher.resume_camera(camera.id)
            ended = end_left_tracks(publisher, camera, cfg, track_id_max=counters["track_id_max"])
            if publisher.flush(min(5.0, lease_ttl_s / 2), camera=camera.id):  # landed: the note can go
                registry.forget_removed(camera.id)
                done[camera.id] = ended
        except Exception as exc:  # Redis away, …: a later sweep tries again
            log.warning("camera %s: removed; its open tracks not ended yet: %s: %s", camera.id, type(exc).__name__,
                        redact(str(exc), camera.secrets))
        finally:
            publisher.unfence(camera.id)
            release(lease)
    return done
