"""Per-camera object tracking (ultralytics' ByteTrack) and classify-once-per-track caching.

Tracking is stateful, so it lives with the camera in the decoder, not in the stateless
detector. It fills ``track_id`` and lets classifiers run once per track (again every
``reclassify_every`` frames) instead of on every object of every frame — the DeepStream way of
keeping secondary classifiers cheap. All per-track state is bounded: tracks not seen for
``track_buffer`` frame intervals are forgotten.

ByteTrack as shipped matches a track to a detection by the IoU of its predicted box, weighed by
the detection's score. That holds at 25 fps; at the few fps a camera is usually sampled at, a car
moves more than its own width between frames and never matches again (46 % of the cars of
traffic.mp4 carried an id at 4 fps, tests/test_tracking.py). So here (pipeline/bytetrack.py):

- boxes are matched by **buffered IoU**: both are grown by ``match_buffer`` of their size per
  second since the previous frame, so the tolerance follows the sampling rate (0.3 at 4 fps,
  0.05 at 24 fps), and a new track is confirmed on its second frame with the same rule;
- the score does not weigh the match unless ``fuse_score`` (a faint car still continues its track);
- the Kalman filter steps by the **real time** between frames, in units of the usual interval
  (a frame dropped under backpressure is a step of two), its velocity noise grows with that
  interval (ultralytics' is meant for 30 fps: at 4 fps a car moves 7.5 times as far per frame),
  and a lost track expires after ``track_buffer`` such intervals of time, not frames processed;
- detections of one category overlapping more than ``merge_iou`` are one object (the detector's
  NMS is per label: a car is sometimes also a truck): the tracker follows the best-scored one and
  gives the others the same id.

Inputs are rounded as the published message rounds them (0.1 px, 4 decimals), so a tracker
restored from a snapshot (`snapshot`, `restore`) and fed the published frames since then
computes exactly what the first one did (pipeline/track_state.py).
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Any, Mapping, Sequence

import numpy as np

from .bytetrack import MAX_BUFFER, Boxes, merge_duplicates
from .config import TrackerConfig
from .schema import Detections, FrameMeta

STATE_SCHEMA = "percept.tracker-state/v1"
REFERENCE_FPS = 30  # ultralytics' motion noise is meant for frames this far apart
# tracked and lost tracks kept by a snapshot: the confirmed first (the tracks the event engine has
# open), the most recently seen
MAX_SNAPSHOT_TRACKS = 512
# removed tracks kept: ByteTrack keeps 1000 (~7 MB a camera) and reads only their ids, to take the
# tracks a frame removed out of its lost ones at the next frame; those of the last frame are always
# kept (a stall that expires 80 tracks at once ends all 80)
REMOVED_KEPT = 50
_INTERVALS = 15  # recent frame intervals the usual one is the median of
MIN_PERIOD_S = 1 / 60  # the usual interval between frames is never taken as shorter (`_Clock.period`)
# a live camera's pause after which no track goes on (an outage: the scene is another one); a
# shorter stall (a detector retry, a replica restart, a quick reconnect) keeps them, as ever
PAUSE_ENDS_TRACKS_S = 30.0
# a camera taken over from a snapshot: the longest handover after which its tracks go on (a
# failover's lease TTL and restart); longer, the whole service was down (the scene is another one)
HANDOVER_PAUSE_S = 300.0


class _Clock:
    """The time between frames, in seconds and in usual intervals (the median of the recent ones)."""

    def __init__(self, default_period: float):
        self.last: float | None = None
        self.last_steady: float | None = None  # the previous frame's `FrameMeta.steady_ts` (this owner's reader)
        self.intervals: deque[float] = deque(maxlen=_INTERVALS)
        self.default = default_period

    @property
    def period(self) -> float:
        # never below a 60 fps camera's: a reader catching up (frames 1 ms apart) made the usual
        # interval 1 ms, and the next 40 ms gap 40 steps, which lost a moving car (a new id)
        return max(statistics.median(self.intervals), MIN_PERIOD_S) if self.intervals else self.default

    def tick(self, ts: float | None, steady: float | None = None) -> tuple[float, float]:
        """(seconds, steps) since the previous frame; a clock going backwards or no time counts
        as one usual interval. ``steady``: the frame's time on its reader's steady clock, which
        measures the interval when the previous frame had one too (a step of the wall clock is
        no gap); ``last`` stays on the clock of ``ts``, which a snapshot carries to the next owner."""
        if steady is not None and self.last_steady is not None:
            dt: float | None = steady - self.last_steady
        else:
            dt = None if ts is None or self.last is None else ts - self.last
        self.last_steady = steady
        if ts is not None:
            self.last = ts
        if dt is None or not dt > 0:
            return self.period, 1.0
        steps = dt / self.period
        self.intervals.append(dt)
        return dt, steps


class ObjectTracker:
    """ByteTrack over `Detections`; returns the same detections with ``track_ids`` filled
    (None for detections the tracker did not confirm). Ids start above ``id_offset`` (the highest
    id this camera's stream has had), so they never repeat when a camera restarts or moves.
    ``ts``: the frame's time in seconds (`time_of`); without it every frame is one interval of
    ``1 / fps`` (4 fps if 0). ``file_time``: the camera is a file read faster than real time."""

    def __init__(self, cfg: TrackerConfig, categories: Mapping[str, int] | None = None, *, id_offset: int = 0,
                 fps: float = 0.0, file_time: bool = False):
        from ultralytics.utils import IterableSimpleNamespace

        args = IterableSimpleNamespace(
            tracker_type="bytetrack",
            track_high_thresh=cfg.track_high_thresh,
            track_low_thresh=cfg.track_low_thresh,
            new_track_thresh=cfg.new_track_thresh,
            track_buffer=cfg.track_buffer,
            match_thresh=cfg.match_thresh,
            fuse_score=cfg.fuse_score,
        )
        from .bytetrack_class import ByteTrack  # on first use: importing ultralytics takes a second

        self._tracker = ByteTrack(args)
        self.cfg = cfg
        self.track_buffer = cfg.track_buffer
        self._class_ids: dict[str, int] = dict(categories or {})
        self.id_offset = id_offset
        self.track_id_max = id_offset
        self._set_next_id(id_offset + 1)
        self._clock = _Clock(1.0 / fps if fps > 0 else 0.25)
        self.file_time = file_time
        self.origins: dict[int, list[float]] = {}  # after `update`: see there
        self.shape: tuple[int, int] | None = None  # (height, width) of the frames tracked
        self._across_pause = 0.0  # the longest pause the next frame may find tracks after (`resume_across_pause`)
        self._heads: list[int] = []  # after `update`: each detection's row in ByteTrack's input (`adopt_ids`)
        self._vouched: set[int] = set()  # ids known to be their objects' (`restore`, `adopt_ids`)

    def time_of(self, meta: FrameMeta) -> float:
        """The frame's time on this tracker's clock: its capture time, or the file's own time (as
        published, to 0.1 ms) for a file read faster than real time."""
        return meta.time_on(self.file_time)

    def _set_next_id(self, first: int) -> None:
        def numbers():  # BYTETracker numbers its tracks from this iterator
            n = first
            while True:
                self._next_id = n + 1
                yield n
                n += 1

        self._next_id = first
        self._tracker._ids = numbers()  # ids are ints here: ByteTrack's output rows are float32

    def resume_across_pause(self, lease_ttl_s: float = 0.0) -> None:
        """The next frame may continue tracks seen up to `HANDOVER_PAUSE_S` + ``lease_ttl_s`` before it (a camera
        taken over from a snapshot: its pause is the handover's; a longer one is the whole
        service down); otherwise, after a pause longer than ``track_buffer`` intervals and
        `PAUSE_ENDS_TRACKS_S`, every track ends before it (a live camera back after an outage)."""
        self._across_pause = HANDOVER_PAUSE_S + lease_ttl_s  # (a dead owner's cameras wait out its lease)

    def update(self, dets: Detections, frame_shape: tuple[int, int], ts: float | None = None,
               steady_ts: float | None = None) -> Detections:
        """Track ids for one frame's detections. ``ts``: `time_of` the frame; ``steady_ts``: its
        time on its reader's steady clock (`FrameMeta.steady_ts`; not for a file on its own time)."""
        t = self._tracker
        dt, steps = self._clock.tick(ts, None if self.file_time else steady_ts)
        if self._pause_ends_tracks(dt, steps):
            self.end_all()  # an outage: whoever is there now is someone new
        self._across_pause = 0.0
        shape = (int(frame_shape[0]), int(frame_shape[1]))
        if self.shape is not None and shape != self.shape:
            self._rescale(self.shape, shape)  # the camera came back at another resolution
        self.shape = shape
        # a frame or two dropped widen the match; a longer gap does not (the boxes would meet anything)
        t.buffer = min(MAX_BUFFER, self.cfg.match_buffer * min(dt, 2 * self._clock.period))
        t.steps = steps
        t.scale_velocity(max(1.0, self._clock.period * REFERENCE_FPS))
        t.frame_id += max(0, round(steps) - 1)  # lost tracks expire by time, not frames processed
        rows = self._rows(dets)
        heads, head_of = merge_duplicates(rows[:, :4], rows[:, 4], dets.categories, self.cfg.merge_iou)
        t.update(Boxes(rows[heads], frame_shape))
        del t.removed_stracks[:-max(REMOVED_KEPT, len(t.removed_stracks_frame))]
        by_head = {int(s.idx): int(s.track_id) for s in t.tracked_stracks if s.is_activated and s.frame_id == t.frame_id}
        position = {head: k for k, head in enumerate(heads)}
        self._heads = [position[head_of[i]] for i in range(len(dets))]
        ids: list[int | None] = [by_head.get(k) for k in self._heads]
        self.track_id_max = max([self.track_id_max, *(i for i in ids if i is not None)])
        # tracks confirmed on this frame: the box they were first seen at (pipeline/events.py)
        self.origins = {int(s.track_id): [float(v) for v in (*s._tlwh[:2], *(s._tlwh[:2] + s._tlwh[2:]))]
                        for s in t.tracked_stracks if s.is_activated and s.tracklet_len == 1 and s.frame_id == t.frame_id}
        return dets.with_track_ids(ids)

    def quiet_ends_tracks(self, quiet_s: float) -> bool:
        """Whether the next frame, ``quiet_s`` after the last, would end every track (`update`: a
        live camera's pause longer than ``track_buffer`` intervals and `PAUSE_ENDS_TRACKS_S`, or
        than a handover's); never for a file read on its own time."""
        return not self.file_time and self._pause_ends_tracks(quiet_s, quiet_s / self._clock.period)

    def _pause_ends_tracks(self, dt: float, steps: float) -> bool:
        """A pause of ``dt`` s, ``steps`` usual intervals, longer than ``track_buffer`` intervals
        and `PAUSE_ENDS_TRACKS_S` (or a handover's): no track goes on across it."""
        return round(steps) > self.track_buffer and dt > max(PAUSE_ENDS_TRACKS_S, self._across_pause)

    def end_all(self) -> None:
        """Every track ends (an outage, a camera quiet for `quiet_ends_tracks`): the next frame starts afresh."""
        t = self._tracker
        for s in (*t.tracked_stracks, *t.lost_stracks):
            s.mark_removed()
        t.tracked_stracks, t.lost_stracks = [], []

    def _rescale(self, old: tuple[int, int], new: tuple[int, int]) -> None:
        """Every track's box, motion and uncertainty in the new frame's pixels (the same scene at
        another resolution: a camera's other stream after a reconnect)."""
        sy, sx = new[0] / old[0], new[1] / old[1]
        scale = np.array([sx, sy, sx / sy, sy] * 2)  # Kalman state: x, y, aspect, height, their speeds
        t = self._tracker
        for s in (*t.tracked_stracks, *t.lost_stracks):
            s.mean = s.mean * scale
            s.covariance = s.covariance * np.outer(scale, scale)
            s._tlwh = (s._tlwh * np.array([sx, sy, sx, sy])).astype(s._tlwh.dtype)

    def _rows(self, dets: Detections) -> np.ndarray:
        """ByteTrack's input: boxes, scores and class ids, rounded as the message publishes them."""
        # a class is a label within its category: two detectors may give one label two categories
        # (keyed by label alone, the second took over the class, and its objects the first's tracks)
        classes = [self._class_ids.setdefault(f"{category}/{label}", len(self._class_ids))
                   for label, category in zip(dets.labels, dets.categories)]
        rows = [[*(round(float(v), 1) for v in dets.xyxy[i]), round(float(dets.scores[i]), 4), classes[i]]
                for i in range(len(dets))]
        for cls, category in zip(classes, dets.categories):  # matching stays within a category
            self._tracker.category_of[cls] = category
        return np.array(rows, np.float64).reshape(-1, 6)

    def alive_ids(self) -> set[int]:
        """Ids of the tracks ByteTrack still holds (tracked or lost): a track not among them has
        ended for good — ByteTrack never brings a dropped track back, and never reuses its id."""
        t = self._tracker
        return {int(s.track_id) for s in (*t.tracked_stracks, *t.lost_stracks) if s.is_activated}

    # --- state that survives a change of owner --------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The tracker's state as JSON-able data (floats exact), bounded to the
        `MAX_SNAPSHOT_TRACKS` most recently seen tracked and lost tracks (kept in their order)."""
        from ultralytics.trackers.basetrack import TrackState

        t = self._tracker
        # confirmed tracks first (those the event engine has open), the most recently seen, then
        # the newest unconfirmed; not one ByteTrack removed on this frame (it leaves the lost pool
        # only at the next): restored as lost, it ended a frame late at the next owner, after a
        # replay of that frame, and its zone_exit and track_end were published twice
        live = [s for s in (*t.tracked_stracks, *t.lost_stracks) if s.state != TrackState.Removed]
        keep = {id(s) for s in sorted(live, key=lambda s: (not s.is_activated, -s.frame_id, s.track_id))
                [:MAX_SNAPSHOT_TRACKS]}
        return {
            "schema": STATE_SCHEMA, "frame_id": t.frame_id, "next_id": self._next_id,
            "track_id_max": self.track_id_max, "classes": dict(self._class_ids),
            "categories": {str(k): v for k, v in t.category_of.items()},
            "shape": list(self.shape) if self.shape is not None else None,
            "clock": {"last": self._clock.last, "intervals": list(self._clock.intervals)},
            **{pool: [{k: _plain(getattr(s, k)) for k in _STRACK_FIELDS} for s in getattr(t, f"{pool}_stracks")
                      if id(s) in keep] for pool in ("tracked", "lost")},
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any], cfg: TrackerConfig, *, id_offset: int = 0,
                fps: float = 0.0, file_time: bool = False) -> "ObjectTracker":
        """A tracker that continues ``state`` (a `snapshot`): the same tracks, motion and clock;
        new ids above ``id_offset`` and above every id the snapshot gave. ValueError when the
        state is not a tracker snapshot."""
        if not isinstance(state, Mapping) or state.get("schema") != STATE_SCHEMA:
            raise ValueError(f"unsupported tracker state; expected {STATE_SCHEMA!r}")
        from ultralytics.trackers.basetrack import TrackState
        from ultralytics.trackers.byte_tracker import STrack

        tracker = cls(cfg, id_offset=id_offset, fps=fps, file_time=file_time)
        t = tracker._tracker
        try:
            t.frame_id = int(state["frame_id"])
            tracker._class_ids = {str(k): int(v) for k, v in state["classes"].items()}
            # (a snapshot from before these were kept has neither: categories are learnt again)
            t.category_of = {int(k): str(v) for k, v in (state.get("categories") or {}).items()}
            shape = state.get("shape")
            tracker.shape = (int(shape[0]), int(shape[1])) if shape else None
            if tracker.shape is not None and min(tracker.shape) <= 0:
                raise ValueError(f"frame shape {tracker.shape}")
            tracker._clock.last = None if state["clock"]["last"] is None else float(state["clock"]["last"])
            tracker._clock.intervals.extend(float(x) for x in state["clock"]["intervals"])
            for pool, kind in (("tracked", TrackState.Tracked), ("lost", TrackState.Lost)):
                for data in state[pool]:
                    s = STrack(np.array([0.0, 0.0, 1.0, 1.0, 0.0]), 0.0, 0.0)
                    for k in _STRACK_FIELDS:
                        setattr(s, k, data[k])
                    s.track_id, s.frame_id, s.start_frame = int(s.track_id), int(s.frame_id), int(s.start_frame)
                    s.mean, s.covariance = np.array(data["mean"], np.float64), np.array(data["covariance"], np.float64)
                    s._tlwh = np.array(data["_tlwh"], np.float32)
                    if (s.mean.shape, s.covariance.shape, s._tlwh.shape) != ((8,), (8, 8), (4,)):
                        raise ValueError(f"track {s.track_id}: Kalman state of shapes {s.mean.shape}, "
                                         f"{s.covariance.shape}, box {s._tlwh.shape}")
                    s.state, s.kalman_filter = kind, t.kalman_filter
                    getattr(t, f"{pool}_stracks").append(s)
            tracker._vouched = {int(s.track_id) for s in (*t.tracked_stracks, *t.lost_stracks)}
            tracker.track_id_max = max(id_offset, int(state["track_id_max"]))
            tracker._set_next_id(max(int(state["next_id"]), id_offset + 1))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed tracker state: {exc!r}") from None
        return tracker

    def adopt_ids(self, ours: Sequence[int | None], published: Sequence[int | None]) -> int:
        """Replaying frames another owner published: where this tracker numbered an object
        otherwise than the published frame, its track takes the published id (swapping with a
        track that had it); so does a track seen once here (unconfirmed, so unnumbered in ``ours``)
        of an object published with an id. Returns how many objects differed."""
        t = self._tracker
        tracks = {s.track_id: s for s in (*t.tracked_stracks, *t.lost_stracks)}  # by their ids before any rename
        renames: dict[int, int] = {}  # old id → published id
        differed = 0
        once = {int(s.idx): s for s in t.tracked_stracks if not s.is_activated and s.frame_id == t.frame_id}
        heads = self._heads if len(self._heads) == len(ours) else [-1] * len(ours)
        for mine, theirs, unconfirmed in zip(ours, published, (once.get(k) for k in heads)):
            if mine == theirs:
                if theirs is not None:
                    self._vouched.add(theirs)
                continue
            differed += 1
            if mine is None and unconfirmed is not None and theirs is not None:
                # confirmed there, seen once here: its track takes the id now, not a number of ours
                mine = unconfirmed.track_id
                unconfirmed.is_activated = True  # confirmed there: it lives as long as a confirmed track
            if mine is not None and theirs is not None and mine in tracks and mine not in renames:
                renames[mine] = theirs  # (a second box of the same object: renamed already)
        # a track holding a published id that is not renamed itself takes an id given up
        freed = [old for old in renames if old not in renames.values()]
        displaced = [new for new in renames.values() if new in tracks and new not in renames]
        moves = {**renames, **dict(zip(displaced, freed))}
        for old, new in moves.items():
            tracks[old].track_id = new
        if moves:  # a track dropped here under an id given now to a live one: ByteTrack takes a lost
            # track out with any removed one of its id, so the live one would go at its first miss
            given, taken = {id(tracks[old]) for old in moves}, set(moves.values())
            t.removed_stracks = [s for s in t.removed_stracks if s.track_id not in taken or id(s) in given]
        self._vouched.update(renames.values())
        self._vouched.difference_update(freed)  # (given to a displaced track: another object's id)
        self.origins = {moves.get(tid, tid): box for tid, box in self.origins.items()}  # (read by the engine next)
        self.track_id_max = max([self.track_id_max, *(i for i in published if i is not None)])
        if self._next_id <= self.track_id_max:  # the next new object of the replay must not take an adopted id
            self._set_next_id(self.track_id_max + 1)
        return differed

    def raise_next_id(self, floor: int) -> None:
        """New tracks get ids above ``floor`` (the highest id a previous owner published), and so
        does a track the replay numbered at or below ``floor`` by itself (an id the previous owner
        may have published for another object): every track whose id is neither the snapshot's
        nor one `adopt_ids` saw published for it."""
        self.id_offset = max(self.id_offset, floor)
        self.track_id_max = max(self.track_id_max, floor)
        if self._next_id <= floor:
            self._set_next_id(floor + 1)
        t = self._tracker
        for s in (*t.tracked_stracks, *t.lost_stracks):  # numbered in the replay: maybe published for another
            if s.track_id <= floor and s.track_id not in self._vouched:
                s.track_id = next(t._ids)


_STRACK_FIELDS = ("track_id", "is_activated", "score", "start_frame", "frame_id", "tracklet_len", "cls", "idx",
                  "mean", "covariance", "_tlwh")


def _plain(value: Any) -> Any:
    """Numbers and arrays as JSON data (Python floats: their repr is exact)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return value
