"""A live camera that sends no frame for longer than its tracks outlive a gap (reconnecting after
an outage, or every frame failing at the detector) ends them then, at their last frame, not at
its next frame: a car parked in a zone when the camera went down kept the zone occupied (no
``zone_exit``, no ``track_end``) for the whole outage, and for good when the camera never came
back. The same decision the tracker takes at the next frame (`ObjectTracker.quiet_ends_tracks`),
on time."""

from __future__ import annotations

import logging

from .events import EventEngine
from .publish import Publisher
from .track_state import TrackSnapshots, end_tracks
from .tracking import ObjectTracker

log = logging.getLogger("percept.tracking")


def end_quiet_tracks(tracker: ObjectTracker, events: EventEngine, publisher: Publisher, camera_id: str,
                     snapshots: TrackSnapshots | None, last: tuple[int, float] | None, quiet_s: float) -> int:
    """The open tracks ended (``track_end``, zones left; their ``ts`` the last frame's, ``last``:
    seq and frame_ts), when the camera has been quiet ``quiet_s`` for long enough; how many.
    Call it only when every frame tracked was published (the events follow the frames)."""
    open_tracks = len(events.open_tracks)
    if last is None or not open_tracks or not tracker.quiet_ends_tracks(quiet_s):
        return 0
    tracker.end_all()
    log.info("camera %s: no frame for %.0f s: its %d open track(s) end at its last frame", camera_id, quiet_s,
             open_tracks)
    end_tracks(publisher, camera_id, events, last, snapshots)
    return open_tracks
