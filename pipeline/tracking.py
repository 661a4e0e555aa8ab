"""Per-camera object tracking (ultralytics' ByteTrack) and classify-once-per-track caching.

Tracking is stateful, so it lives with the camera in the decoder, not in the stateless
detector. It fills ``track_id`` and lets classifiers run once per track (again every
``reclassify_every`` frames) instead of on every object of every frame — the DeepStream way of
keeping secondary classifiers cheap. All per-track state is bounded: tracks not seen for
``track_buffer`` frames are forgotten.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .config import TrackerConfig
from .schema import Detections


class ObjectTracker:
    """ByteTrack over `Detections`; returns the same detections with ``track_ids`` filled
    (None for detections the tracker did not confirm). Ids start above ``id_offset`` (the highest
    id this camera's stream has had), so they never repeat when a camera restarts or moves."""

    def __init__(self, cfg: TrackerConfig, categories: Mapping[str, int] | None = None, *, id_offset: int = 0):
        from ultralytics.trackers.byte_tracker import BYTETracker
        from ultralytics.utils import IterableSimpleNamespace

        args = IterableSimpleNamespace(
            tracker_type="bytetrack",
            track_high_thresh=cfg.track_high_thresh,
            track_low_thresh=cfg.track_low_thresh,
            new_track_thresh=cfg.new_track_thresh,
            track_buffer=cfg.track_buffer,
            match_thresh=cfg.match_thresh,
            fuse_score=True,
        )
        self._tracker = BYTETracker(args)
        self.track_buffer = cfg.track_buffer
        self._class_ids: dict[str, int] = dict(categories or {})
        self.id_offset = id_offset  # ByteTrack numbers each tracker's tracks from 1
        self.track_id_max = id_offset

    def update(self, dets: Detections, frame_shape: tuple[int, int]) -> Detections:
        from ultralytics.engine.results import Boxes

        cls = np.array([self._class_ids.setdefault(lab, len(self._class_ids)) for lab in dets.labels], np.float32)
        data = np.concatenate([dets.xyxy, dets.scores[:, None], cls[:, None]], axis=1) if len(dets) else np.zeros((0, 6), np.float32)
        tracked = self._tracker.update(Boxes(data, frame_shape))
        ids: list[int | None] = [None] * len(dets)
        for row in tracked:
            idx = int(row[-1])
            if 0 <= idx < len(dets):
                ids[idx] = int(row[4]) + self.id_offset
                self.track_id_max = max(self.track_id_max, ids[idx])
        return dets.with_track_ids(ids)

    def alive_ids(self) -> set[int]:
        """Ids of the tracks ByteTrack still holds (tracked or lost): a track not among them has
        ended for good — ByteTrack never brings a dropped track back, and never reuses its id."""
        t = self._tracker
        return {int(s.track_id) + self.id_offset for s in (*t.tracked_stracks, *t.lost_stracks)}


@dataclass
class _Entry:
    future: "asyncio.Future[Mapping[str, Any]]"
    frame: int
    seen: int


class TrackAttributeCache:
    """track id → the classifier's answer (as a future, so a track seen again while its crop is
    still being classified waits for that answer instead of classifying twice). A failed answer
    (an error, or no answer within the classify timeout) is dropped as soon as it fails, so the
    track is classified again on its next frame instead of reusing the failure."""

    def __init__(self, *, reclassify_every: int, forget_after: int):
        self.reclassify_every = reclassify_every
        self.forget_after = forget_after
        self._entries: dict[int, _Entry] = {}

    def get(self, track_id: int, frame: int) -> "asyncio.Future[Mapping[str, Any]] | None":
        entry = self._entries.get(track_id)
        if entry is None:
            return None
        entry.seen = frame
        if entry.future.done():
            if self._failed(entry.future):
                del self._entries[track_id]
                return None
            if self.reclassify_every and frame - entry.frame >= self.reclassify_every:
                return None  # due for a fresh look
        return entry.future

    def put(self, track_id: int, frame: int, future: "asyncio.Future[Mapping[str, Any]]") -> None:
        self._entries[track_id] = _Entry(future, frame, frame)
        future.add_done_callback(lambda done: self._forget_failed(track_id, done))

    def _forget_failed(self, track_id: int, future: "asyncio.Future[Mapping[str, Any]]") -> None:
        entry = self._entries.get(track_id)
        if entry is not None and entry.future is future and self._failed(future):
            del self._entries[track_id]

    @staticmethod
    def _failed(future: "asyncio.Future[Any]") -> bool:
        return future.cancelled() or future.exception() is not None

    def prune(self, frame: int) -> None:
        stale = [tid for tid, e in self._entries.items() if frame - e.seen > self.forget_after]
        for tid in stale:
            del self._entries[tid]

    def __len__(self) -> int:
        return len(self._entries)
