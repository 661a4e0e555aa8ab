"""`ByteTrack`: ultralytics' `BYTETracker` made to hold at the few fps a camera is sampled at
(pipeline/bytetrack.py's doc says how). pipeline/tracking.py imports this module on first use:
importing ultralytics takes a second."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from ultralytics.trackers.basetrack import TrackState
from ultralytics.trackers.byte_tracker import BYTETracker
from ultralytics.trackers.utils import matching
from ultralytics.trackers.utils.kalman_filter import KalmanFilterXYAH
from ultralytics.trackers.utils.stracks import remove_duplicate_stracks

from .bytetrack import buffered_iou

# the cost of a track–detection pair of two categories: above any match threshold (an IoU cost is
# at most 1, and a threshold of 1 would take a cost of 1 as a match)
NO_MATCH = 1e6
DUPLICATE_COST = 0.15  # ultralytics' `remove_duplicate_stracks`: a tracked and a lost track at IoU > 0.85 are one


class ByteTrack(BYTETracker):
    """ByteTrack with buffered-IoU association and a time-scaled Kalman step (module doc)."""

    def __init__(self, args: Any):
        super().__init__(args)
        self.buffer = 0.0  # this frame's box growth (fraction of the box size)
        self.steps = 1.0  # this frame's Kalman step, in usual frame intervals
        self._predictor = KalmanFilterXYAH()
        self._velocity_weight = self.kalman_filter._std_weight_velocity
        self.category_of: dict[int, str] = {}  # class id → category (set by ObjectTracker)
        self._merging: tuple[list, list] = ([], [])  # this frame's activated and refound tracks
        self._lost_now: list = []  # the tracks lost this frame
        self._held_out: list = []  # lost tracks kept out of ultralytics' duplicate check (`_remove_stale_lost`)

    def _one_category(self, cost: np.ndarray, tracks: list, detections: list) -> np.ndarray:
        """``cost`` with every track–detection pair of two categories at `NO_MATCH`; a class
        whose category is not known yet (a track restored before its label was seen again)
        matches any."""
        if len(set(self.category_of.values())) < 2:
            return cost  # one category: nothing to keep apart
        cat = self.category_of.get
        theirs = np.array([cat(int(t.cls)) for t in tracks], object)[:, None]
        ours = np.array([cat(int(d.cls)) for d in detections], object)[None, :]
        cost[(theirs != ours) & (theirs != None) & (ours != None)] = NO_MATCH  # noqa: E711 (elementwise)
        return cost

    def scale_velocity(self, factor: float) -> None:
        """The velocity noise of the motion model (initial, process) times ``factor``."""
        self.kalman_filter._std_weight_velocity = self._velocity_weight * factor

    def get_dists(self, tracks: list, detections: list) -> np.ndarray:
        if not tracks or not detections:
            return np.zeros((len(tracks), len(detections)), np.float32)
        ious = buffered_iou(np.array([t.xyxy for t in tracks]), np.array([d.xyxy for d in detections]), self.buffer)
        cost = self._one_category((1 - ious).astype(np.float32), tracks, detections)
        return matching.fuse_score(cost, detections) if self.args.fuse_score else cost

    def _second_association(self, strack_pool, u_track, detections_second, activated, refind, lost) -> None:
        """ByteTrack's second pass (tracks left over against the low-score detections, plain
        IoU, 0.5), within a category; a track still unmatched is lost."""
        self._lost_now = lost
        remaining = [strack_pool[i] for i in u_track if strack_pool[i].state == TrackState.Tracked]
        unmatched: Sequence[int] = range(len(remaining))
        if remaining and detections_second:
            dists = self._one_category(matching.iou_distance(remaining, detections_second), remaining,
                                       detections_second)
            matches, unmatched, _ = matching.linear_assignment(dists, thresh=0.5)
            self._apply_matches(matches, remaining, detections_second, activated, refind)
        for k in unmatched:
            remaining[k].mark_lost()
            lost.append(remaining[k])

    def multi_predict(self, tracks: list) -> None:
        if not tracks:
            return
        kf, base = self._predictor, self.kalman_filter
        steps = min(self.steps, float(self.max_frames_lost))
        kf._motion_mat = np.eye(8)
        kf._motion_mat[range(4), range(4, 8)] = steps
        kf._std_weight_position = base._std_weight_position * steps**0.5
        kf._std_weight_velocity = base._std_weight_velocity * steps**0.5
        mean = np.asarray([t.mean for t in tracks])
        cov = np.asarray([t.covariance for t in tracks])
        mean[[t.state != TrackState.Tracked for t in tracks], 7] = 0  # as STrack.multi_predict
        mean, cov = kf.multi_predict(mean, cov)
        for t, m, c in zip(tracks, mean, cov):
            t.mean, t.covariance = m, c

    def _unconfirmed_association(self, unconfirmed, u_detection, detections, activated, removed):
        """As ByteTrack's, with ``match_thresh`` on the buffered IoU instead of a fixed 0.7 on
        the plain one (a new car at 4 fps has moved by half its width when seen again), the
        new track's motion stepped (so its confirmation learns its speed), and one more frame
        to wait for its second sighting before it is dropped."""
        detections = [detections[i] for i in u_detection]
        if not unconfirmed:
            return list(range(len(detections))), detections
        # ByteTrack leaves them unpredicted: they stay put (no velocity yet), but without the
        # step their confirmation would not learn how fast they move
        self.multi_predict(unconfirmed)
        dists = self.get_dists(unconfirmed, detections)
        matches, u_unconfirmed, u_detection = matching.linear_assignment(dists, thresh=self.args.match_thresh)
        for itracked, idet in matches:
            unconfirmed[itracked].update(detections[idet], self.frame_id)
            activated.append(unconfirmed[itracked])
        for it in u_unconfirmed:
            if self.frame_id - unconfirmed[it].frame_id < 2:
                continue  # missed once: a detection near the threshold flickers
            unconfirmed[it].mark_removed()
            removed.append(unconfirmed[it])
        return u_detection, detections

    def _init_new_tracks(self, u_detection, detections, activated, refind=None) -> None:
        super()._init_new_tracks(u_detection, detections, activated, refind)
        self._merging = (activated, refind or [])

    def _remove_stale_lost(self, removed: list) -> None:
        """As ByteTrack's; then, just before it merges the pools, the lost tracks overlapping a
        track of another category are held out of its duplicate check, which knows no
        categories: a person standing where a bicycle's track was lost was dropped as that
        track's duplicate frame after frame, without an id for as long as the lost track lived."""
        super()._remove_stale_lost(removed)
        activated, refind = self._merging
        tracked = [t for t in (*self.tracked_stracks, *activated, *refind) if t.state == TrackState.Tracked]
        self._held_out = []
        for pool in (self.lost_stracks, self._lost_now):
            held = self._across_categories([s for s in pool if s.state == TrackState.Lost], tracked)
            if held:
                self._held_out += held
                pool[:] = [s for s in pool if all(s is not h for h in held)]

    def _across_categories(self, lost: list, tracked: list) -> list:
        """The ``lost`` tracks a track of another category in ``tracked`` duplicates (both known)."""
        if not lost or not tracked or len(set(self.category_of.values())) < 2:
            return []
        cat = self.category_of.get
        theirs = np.array([cat(int(t.cls)) for t in lost], object)[:, None]
        ours = np.array([cat(int(t.cls)) for t in tracked], object)[None, :]
        other = (theirs != ours) & (theirs != None) & (ours != None)  # noqa: E711 (elementwise)
        return [lost[i] for i in np.flatnonzero(((matching.iou_distance(lost, tracked) < DUPLICATE_COST) & other).any(1))]

    def _restore_held_out(self) -> None:
        """The lost tracks held out (`_remove_stale_lost`) back in the lost pool, checked for
        duplicates against the tracked ones of their own category (or one not known yet)."""
        back, self._held_out = [s for s in self._held_out if s.state == TrackState.Lost], []
        if not back:
            return
        cat = self.category_of.get
        for category in {cat(int(s.cls)) for s in back}:
            mine = [s for s in back if cat(int(s.cls)) == category]
            peers = [t for t in self.tracked_stracks if cat(int(t.cls)) in (category, None)]
            kept_peers, kept = remove_duplicate_stracks(peers, mine)
            dropped = [t for t in peers if all(t is not k for k in kept_peers)]
            self.tracked_stracks = [t for t in self.tracked_stracks if all(t is not d for d in dropped)]
            self.lost_stracks.extend(kept)

    def _format_output(self) -> np.ndarray:
        self._restore_held_out()  # (called after the pools are merged)
        return np.zeros((0, 8), np.float32)  # ObjectTracker reads the tracks (float32 would round big ids)
