"""Open tracks that survive a change of owner: the camera's tracker and event engine in Redis.

When a decoder replica dies, the camera's next owner continues its tracks: a car seen on both
sides keeps its id, ends once (``track_end`` from the new owner), and crosses a line once.

- **What**: every ``tracker.snapshot_every`` tracked frames, the tracker's state (ByteTrack's
  tracked and lost tracks with their Kalman mean and covariance, its frame count, next id and
  clock) taken right after that frame was tracked, and the event engine's state taken right
  after the same frame was published — so both describe exactly the frames published up to it.
  JSON only (``percept.track-state/v1``), bounded (`MAX_STATE_BYTES`; each part bounds its
  tracks), in the hash ``<prefix>:trackstate:<camera>`` (``v``, ``seq``, ``json``).
- **How**: through the publisher's queue, after the frame it describes (so it never lands before
  that frame), with the same lease check as the camera hash (`pipeline/lease.py` FENCED_HSET): a
  replica that lost the camera cannot overwrite its new owner's state.
- **Restore**: `track_restore` (at camera start: the snapshot, then the frames published after
  it replayed). A camera that stops cleanly ends its tracks (``track_end``) and leaves a
  ``closed`` state: its next owner starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlsplit

import redis

from .event_handover import fitted_json
from .events import EventEngine, events_json
from .redact import redact_url
from .schema import FrameMeta
from .tracking import ObjectTracker

if TYPE_CHECKING:
    from .config import CameraConfig
    from .publish import Publisher

log = logging.getLogger("percept.track_state")

STATE_SCHEMA = "percept.track-state/v1"
MAX_STATE_BYTES = 2 * 2**20  # a bigger snapshot is not written (logged): the last one stays


class TrackSnapshots:
    """Writes one camera's snapshots (see the module doc); used by its conductor, in seq order."""

    def __init__(self, publisher: Publisher, camera: str, *, every: int, resumed: tuple[int, float] | None = None,
                 hands_over: bool = True, source: str | None = None):
        self.publisher = publisher
        self.camera = camera
        self.every = every
        self.source = source  # `source_of` the camera: tracks go on only from the same source
        # (seq, frame_ts) of the newest frame the restored state describes (None: started afresh)
        self.resumed = resumed
        # a handover keeps the open tracks (a live camera with snapshots on; a file restarts elsewhere)
        self.hands_over = hands_over and every > 0
        self.written = 0
        self._frames = 0
        self._held: dict[int, dict[str, Any]] = {}  # seq → tracker state taken when it was tracked
        self._skip_logged = False
        self._trim_logged = False
        self._soon = False  # the next frame tracked is snapshotted (`geometry_changed`)

    def tracked(self, seq: int, tracker: ObjectTracker) -> None:
        """Frame ``seq`` was just tracked: the first and every ``every``-th one (with ``every``
        0 the first only), and the first after a zone or line change, keep the tracker's state
        (the first: an owner killed before the ``every``-th frame, or with none, leaves its
        tracks to the next, not open for good)."""
        self._frames += 1
        if self._frames == 1 or self._soon or (self.every and self._frames % self.every == 0):
            self._held[seq] = tracker.snapshot()
            self._soon = False

    def geometry_changed(self) -> None:
        """The zones or lines changed: the next frame tracked is snapshotted, so that a next owner
        replays the frames after it under the new ones and those before under the old (the
        snapshot's own, `restore_tracking`)."""
        self._soon = True

    def published(self, meta: FrameMeta, events: EventEngine) -> None:
        """Frame ``meta.seq`` was just handed to the publisher, after every frame before it."""
        for seq in [s for s in self._held if s < meta.seq]:  # frames that failed: never published
            del self._held[seq]
            self._soon = True  # its snapshot (the first, one after a zone change) is taken of the next frame
        tracker = self._held.pop(meta.seq, None)
        if tracker is not None:
            self._write(meta.seq, {"frame_ts": meta.frame_ts, "tracker": tracker, "events": events.snapshot()})

    def handed_over(self, seq: int, frame_ts: float, tracker: ObjectTracker, events: EventEngine) -> bool:
        """The camera stops here to move to another replica, ``seq`` the newest frame tracked
        and published: a snapshot of both as they are, which its next owner continues from;
        False if it could not be written (too big, not JSON)."""
        self._held.clear()
        return self._write(seq, {"frame_ts": frame_ts, "tracker": tracker.snapshot(), "events": events.snapshot()})

    def closed(self, seq: int, events: EventEngine | None = None) -> None:
        """The camera stopped here and ended its tracks: its next owner starts afresh, its pixel
        zones and lines still in the frame size they were set in (``events``: `pixel_frames`)."""
        self._held.clear()
        self._soon = True  # (tracks ended with the camera quiet, it goes on: its next tracked frame's snapshot)
        self._write(seq, {"closed": True, **({"events": pixel_frames(events)} if events is not None else {})})

    def _write(self, seq: int, body: Mapping[str, Any]) -> bool:
        try:
            source = {"source": self.source} if self.source is not None and "closed" not in body else {}
            doc = {"schema": STATE_SCHEMA, "camera": self.camera, "seq": seq, **source, **body}
            text, kept = fitted_json(doc, MAX_STATE_BYTES)  # (a crowd's ~2800 open tracks: none was written)
            if kept is not None and not self._trim_logged:
                log.warning("camera %s: track state holds %d of its open tracks, to fit %d bytes (the others end "
                            "without track_end at a next owner)", self.camera, kept, MAX_STATE_BYTES)
                self._trim_logged = True
        except ValueError as exc:  # a NaN somewhere: the last good snapshot stays
            return self._skip(f"not JSON ({exc})")
        if len(text) > MAX_STATE_BYTES:
            return self._skip(f"{len(text)} bytes (limit {MAX_STATE_BYTES})")
        self.publisher.fenced_hset(self.camera, self.publisher.keys.trackstate(self.camera),
                                   {"v": "1", "seq": str(seq), "json": text})
        self.written += 1
        return True

    def _skip(self, why: str) -> bool:
        if not self._skip_logged:
            log.warning("camera %s: track state not saved: %s", self.camera, why)
            self._skip_logged = True
        return False


def leave_tracks(publisher: Publisher, camera_id: str, events: EventEngine, snapshots: TrackSnapshots | None,
                 last: tuple[int, float], *, tracker: ObjectTracker | None, handing_over: bool = False) -> None:
    """A camera stops here, ``last`` (seq, frame_ts) the newest frame its tracks describe (the
    newest it published, or where it resumed them). Handed over to another replica (a scale-up:
    ``tracker`` given, every frame it tracked published, `TrackSnapshots.hands_over`): its open
    tracks go on there, from a snapshot taken now; handed over with frames tracked but not
    published, from the last snapshot written (its next owner replays what was published since,
    as after a crash). Otherwise — or if that snapshot cannot be written — they end here (``track_end``, zones left) and the state says ``closed``: its next
    owner starts afresh (``handing_over`` without ``tracker``: said in the log)."""
    seq, frame_ts = last
    if tracker is not None and snapshots is not None and snapshots.hands_over:
        if snapshots.handed_over(seq, frame_ts, tracker, events):
            return
        log.warning("camera %s: handed over without its tracks (their snapshot could not be written): they end",
                    camera_id)
    elif handing_over and snapshots is not None and snapshots.hands_over:
        if snapshots.written or snapshots.resumed is not None:
            # no snapshot of the frames it published alone, but an earlier one: its next owner
            # replays the frames published since, as after a crash (ending them here made every
            # car seen on both sides two tracks)
            log.info("camera %s: handed over with frames tracked but not published: its next owner continues "
                     "its tracks from their last snapshot", camera_id)
            return
        log.info("camera %s: handed over with frames tracked but not published: its tracks end", camera_id)
    end_tracks(publisher, camera_id, events, last, snapshots)


def end_tracks(publisher: Publisher, camera_id: str, events: EventEngine, last: tuple[int, float],
               snapshots: TrackSnapshots | None = None) -> None:
    """Every open track ends at ``last`` (seq, frame_ts: the newest frame they describe; the
    events' ``ts``, however long ago) with ``track_end`` and zones left; they are published now
    (their stream ids). The state (when ``snapshots`` writes one) says ``closed``: the camera's
    next owner starts afresh."""
    seq, frame_ts = last
    ended = events.close(seq, frame_ts)
    publisher.publish_events(camera_id, time.time(), events_json(ended), events.take_counts())
    if snapshots is not None:
        snapshots.closed(seq, events)


def pixel_frames(events: EventEngine) -> dict[str, Any]:
    """The part of an engine's snapshot that says which frame size its pixel zones and lines are
    in (`restored_pixel_sizes` reads it): a camera restarted after a change of resolution keeps
    them where they were drawn (they were read as pixels of its first frame again)."""
    state = events.snapshot()
    return {k: state[k] for k in ("pixel_sizes", "zones", "lines")}


def stored_pixel_frames(client: redis.Redis, keys: Any, camera_id: str) -> dict[str, Any]:
    """`pixel_frames` of the camera's last snapshot (what `EventEngine.seed_pixel_sizes` reads),
    {} when there is none or it cannot be read."""
    try:
        state = json.loads(client.hget(keys.trackstate(camera_id), "json") or b"{}")
        return dict(state.get("events") or {})
    except (TypeError, ValueError, AttributeError, redis.ResponseError):  # (WRONGTYPE: not percept's key)
        return {}


def source_of(camera: CameraConfig) -> str:
    """What a snapshot names as its camera's source: a digest of the URL as the replica opens it
    (``${VAR}``s expanded), credentials taken out first (`redact_url`), and the values of its
    variables too (`CameraConfig.secrets`: ``?pin=${CAM_DOCK_PIN}`` is no password name, and an
    unsalted digest of a 6-digit pin is undone in a second by anyone reading Redis), then with the
    host and port it names; a new password is the same source."""
    shown = redact_url(camera.url)
    scrubbed = shown
    for secret in sorted(camera.secrets, key=len, reverse=True):
        scrubbed = scrubbed.replace(secret, "***")
    if scrubbed != shown:  # (else as before: the digests of snapshots written earlier stay the same)
        try:
            where = urlsplit(shown).netloc.rpartition("@")[2]
        except ValueError:
            where = ""
        shown = f"{where} {scrubbed}"
    return hashlib.sha256(shown.encode()).hexdigest()[:16]
