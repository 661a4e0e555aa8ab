"""Open tracks of a camera that was removed while nobody ran it: their ends.

A replica that Serve stops while the service stays hands its cameras over with their open
tracks (`track_state.leave_tracks`); the next owner continues them. When the new version of the
service no longer has the camera (its config dropped it: `CameraRegistry.seed` removed it), no
owner comes, and its tracks would stay open forever (a ``track_start`` without its
``track_end``). The replica that removed it takes the camera's lease once it is free (the old
owner may still be handing it over), restores the state as a next owner would (the snapshot and
the frames published since) and ends every open track there. A camera that stopped cleanly
left a ``closed`` state: nothing to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection

from .config import CameraConfig, TrackerConfig
from .lease import acquire, release
from .publish import Publisher
from .redact import redact
from .track_state import TrackSnapshots, end_tracks, restore_tracking

log = logging.getLogger("percept.track_orphans")


def end_removed_cameras_tracks(cameras: Collection[CameraConfig], *, publisher: Publisher, cfg: TrackerConfig,
                               owner: str, lease_ttl_s: float, listed: Callable[[], Collection[str]],
                               wait_s: float = 60.0, poll_s: float = 0.5) -> dict[str, int]:
    """End the open tracks of each removed camera (see the module doc): how many per camera.
    A camera listed again (``listed``: the registry's ids now) is left to its owner; one whose
    lease stays taken for ``wait_s`` is left too (logged). Blocking: call it in a thread."""
    ended: dict[str, int] = {}
    deadline = time.monotonic() + wait_s
    for camera in cameras:
        lease_key = publisher.keys.lease(camera.id)
        while True:
            if camera.id in listed():
                break  # back in the registry: its owner continues or ends them
            try:
                lease = acquire(publisher.client, lease_key, camera.id, ttl=lease_ttl_s, token=owner)
                if lease is not None:
                    try:
                        publisher.fence(camera.id, lease_key, owner, hold_s=lease_ttl_s)
                        ended[camera.id] = _end_left_tracks(publisher, camera, cfg)
                        publisher.flush(min(5.0, lease_ttl_s / 2), camera=camera.id)
                    finally:
                        publisher.unfence(camera.id)
                        release(lease)
                    break
            except Exception as exc:  # Redis away, a state that cannot be replayed, …
                log.warning("camera %s: removed; its open tracks not ended: %s: %s", camera.id, type(exc).__name__,
                            redact(str(exc), camera.secrets))
                break
            if time.monotonic() > deadline:
                log.warning("camera %s: removed, its lease still taken after %.0f s: its open tracks are left",
                            camera.id, wait_s)
                break
            time.sleep(poll_s)  # the old owner is still handing it over: try again shortly
    return ended


def _end_left_tracks(publisher: Publisher, camera: CameraConfig, cfg: TrackerConfig) -> int:
    _, counters = publisher.resume_camera(camera.id)
    _, events, restored = restore_tracking(publisher, camera, cfg, track_id_max=counters["track_id_max"],
                                           file_time=False)
    if restored.last is None:  # no snapshot, a closed one, or one that cannot be read
        return 0
    n = len(events.open_tracks)
    end_tracks(publisher, camera.id, events, restored.last[0], TrackSnapshots(publisher, camera.id, every=0))
    log.info("camera %s: removed; the %d open tracks it left ended", camera.id, n)
    return n
