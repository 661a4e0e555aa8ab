"""A live camera that sends no frame for longer than its tracks outlive a gap (reconnecting after
an outage, or every frame failing at the detector) ends them then, at their last frame, not at
its next frame: a car parked in a zone when the camera went down kept the zone occupied (no
``zone_exit``, no ``track_end``) for the whole outage, and for good when the camera never came
back. The same decision the tracker takes at the next frame (`ObjectTracker.quiet_ends_tracks`),
on time. And the conductor's part of a camera's tracks ending (`ConductorTracks`): at stop, or
quiet."""

from __future__ import annotations

import logging
import time

from .events import EventEngine
from .publish import Publisher
from .track_state import TrackSnapshots, end_tracks, leave_tracks
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


class ConductorTracks:
    """How `CameraConductor`'s open tracks end, or go on at its next owner (a mixin; its
    attributes: ``camera``, ``publisher``, ``tracker``, ``events``, ``track_state``, ``_last``,
    ``_tracked_seq``, ``_keep_tracks``, ``_quiet_since``, ``_taken_at``)."""

    def _leave_tracks(self) -> None:
        """The camera stops here: its open tracks end, or go on at its next owner (`leave_tracks`)."""
        last = self._tracks_last()
        if self.events is not None and last is not None:
            kept = self._keep_tracks and self._tracked_seq == (self._last.seq if self._last else None)  # all published
            leave_tracks(self.publisher, self.camera.id, self.events, self.track_state, last,
                         tracker=self.tracker if kept else None, handing_over=self._keep_tracks)

    def _end_quiet_tracks(self) -> None:
        """A live camera quiet for longer than its tracks outlive a gap ends them now, once every
        frame tracked was published and none is in flight (`track_quiet`); from the stats loop. A
        frame in flight is tracked on its own capture time, which the tracker judges: frames held
        behind one slow detection (a retry) ended the tracks they continue, and started new ones."""
        published = self._last.seq if self._last is not None else None
        if self.tracker is not None and self.events is not None and self._tracked_seq == published \
                and not self._taken_at:
            end_quiet_tracks(self.tracker, self.events, self.publisher, self.camera.id, self.track_state,
                             self._tracks_last(), time.monotonic() - self._quiet_since)

    def _tracks_last(self) -> tuple[int, float] | None:
        """(seq, frame_ts) of the newest frame the tracks describe: published, or where they resumed."""
        if self._last is not None:
            return self._last.seq, self._last.frame_ts
        return self.track_state.resumed if self.track_state is not None else None
