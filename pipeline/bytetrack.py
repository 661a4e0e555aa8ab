"""ultralytics' ByteTrack, made to hold at the few fps a camera is sampled at (see pipeline/tracking.py).

- `byte_tracker_class`: a `BYTETracker` that matches by buffered IoU (boxes grown by ``buffer``
  of their size, set per frame from the time since the previous one) and only within a category
  (``category_of``: class id → category; a person getting out of a parked car never continues
  the car's track), confirms new tracks with
  the same rule (waiting a frame longer for their second sighting), steps its Kalman filter by ``steps`` usual frame intervals and scales its
  velocity noise to the interval (`scale_velocity`);
- `Boxes`: detections as ByteTrack reads them (ultralytics' `Boxes` without torch);
- `merge_duplicates`: one object per group of same-category boxes that overlap (NMS is per label).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

MAX_BUFFER = 1.0  # boxes grow by at most their own size on each side


def buffered_iou(a: np.ndarray, b: np.ndarray, buffer: float) -> np.ndarray:
    """IoU of every box of ``a`` (N×4 xyxy) with every box of ``b`` (M×4), each grown by
    ``buffer`` of its width and height on every side first."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)

    def grow(x: np.ndarray) -> np.ndarray:
        pad = np.stack([x[:, 2] - x[:, 0], x[:, 3] - x[:, 1]], axis=1) * buffer
        return np.concatenate([x[:, :2] - pad, x[:, 2:] + pad], axis=1)

    a, b = grow(a), grow(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def byte_tracker_class() -> type:
    """The `BYTETracker` subclass (module doc)."""
    global _ByteTrack
    if _ByteTrack is not None:  # defined on first use: importing ultralytics takes a second
        return _ByteTrack
    from ultralytics.trackers.basetrack import TrackState
    from ultralytics.trackers.byte_tracker import BYTETracker
    from ultralytics.trackers.utils import matching
    from ultralytics.trackers.utils.kalman_filter import KalmanFilterXYAH

    class ByteTrack(BYTETracker):
        """ByteTrack with buffered-IoU association and a time-scaled Kalman step (module doc)."""

        def __init__(self, args: Any):
            super().__init__(args)
            self.buffer = 0.0  # this frame's box growth (fraction of the box size)
            self.steps = 1.0  # this frame's Kalman step, in usual frame intervals
            self._predictor = KalmanFilterXYAH()
            self._velocity_weight = self.kalman_filter._std_weight_velocity
            self.category_of: dict[int, str] = {}  # class id → category (set by ObjectTracker)

        def _one_category(self, cost: np.ndarray, tracks: list, detections: list) -> np.ndarray:
            """``cost`` with every track–detection pair of two categories at 1 (no match); a class
            whose category is not known yet (a track restored before its label was seen again)
            matches any."""
            if len(set(self.category_of.values())) < 2:
                return cost  # one category: nothing to keep apart
            cat = self.category_of.get
            theirs = np.array([cat(int(t.cls)) for t in tracks], object)[:, None]
            ours = np.array([cat(int(d.cls)) for d in detections], object)[None, :]
            cost[(theirs != ours) & (theirs != None) & (ours != None)] = 1.0  # noqa: E711 (elementwise)
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

        def _format_output(self) -> np.ndarray:
            return np.zeros((0, 8), np.float32)  # ObjectTracker reads the tracks (float32 would round big ids)

    _ByteTrack = ByteTrack
    return ByteTrack


_ByteTrack: type | None = None


class Boxes:
    """The detections as ByteTrack reads them (ultralytics' `Boxes` without torch)."""

    def __init__(self, data: np.ndarray, shape: tuple[int, int]):
        self.data, self.orig_shape = data, shape

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, mask: Any) -> "Boxes":
        return Boxes(self.data[mask], self.orig_shape)

    @property
    def conf(self) -> np.ndarray:
        return self.data[:, 4]

    @property
    def cls(self) -> np.ndarray:
        return self.data[:, 5]

    @property
    def xywh(self) -> np.ndarray:
        xy = self.data[:, :4]
        return np.stack([(xy[:, 0] + xy[:, 2]) / 2, (xy[:, 1] + xy[:, 3]) / 2, xy[:, 2] - xy[:, 0],
                         xy[:, 3] - xy[:, 1]], axis=1)

    @property
    def xyxy(self) -> np.ndarray:
        return self.data[:, :4]


def merge_duplicates(xyxy: np.ndarray, scores: np.ndarray, categories: Sequence[str],
                     merge_iou: float) -> tuple[list[int], list[int]]:
    """(heads, head of each box): within a category, a box overlapping a better-scored one by
    more than ``merge_iou`` is the same object (its head); heads are their own."""
    n = len(xyxy)
    head_of = list(range(n))
    if n < 2 or merge_iou >= 1:
        return list(range(n)), head_of
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    ious = buffered_iou(xyxy, xyxy, 0.0)
    heads: list[int] = []
    for i in order:
        head = next((h for h in heads if categories[h] == categories[i] and ious[h, i] > merge_iou), None)
        if head is None:
            heads.append(i)
        else:
            head_of[i] = head
    return sorted(heads), head_of
