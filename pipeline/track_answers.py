"""A camera's classifier answers by track (`TrackAttributeCache`): a track classified once (or
again every ``reclassify_every`` frames) reuses its answer on later frames; an answer still
under way is awaited, not asked for twice; a failed one is dropped at once, the track's earlier
answer standing meanwhile (pipeline/classify.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Mapping

CARRIED = -(2**62)  # `_Entry.frame` of an answer from before the cache (`TrackAttributeCache.seed`)


@dataclass
class _Entry:
    future: "asyncio.Future[Mapping[str, Any]]"
    frame: int
    seen: int
    # the last answer that came and its frame, while a fresh look is under way or after it failed
    good: "tuple[asyncio.Future[Mapping[str, Any]], int] | None" = None


class TrackAttributeCache:
    """track id → the classifier's answer (as a future, so a track seen again while its crop is
    still being classified waits for that answer instead of classifying twice). A failed answer
    (an error, or no answer within the classify timeout) is dropped as soon as it fails, so the
    track is classified again on its next frame instead of reusing the failure; a track's earlier
    answer stays its answer meanwhile (a box too small now, or beyond the frame's limit, keeps
    it: a reclassification that failed once lost it for good)."""

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
                self._fall_back(track_id, entry)
                return None
            if entry.frame == CARRIED or (self.reclassify_every and frame - entry.frame >= self.reclassify_every):
                return None  # due for a fresh look (a carried answer: at once)
        return entry.future

    def last(self, track_id: int) -> "asyncio.Future[Mapping[str, Any]] | None":
        """The track's last answer, due for a fresh look or not (None: none, or not yet in)."""
        entry = self._entries.get(track_id)
        if entry is None:
            return None
        if entry.future.done() and not self._failed(entry.future):
            return entry.future
        return entry.good[0] if entry.good is not None else None

    def put(self, track_id: int, frame: int, future: "asyncio.Future[Mapping[str, Any]]") -> None:
        before = self._entries.get(track_id)
        good = None
        if before is not None:
            came = before.future.done() and not self._failed(before.future)
            good = (before.future, before.frame) if came else before.good
        self._entries[track_id] = _Entry(future, frame, frame, good)
        future.add_done_callback(lambda done: self._forget_failed(track_id, done))

    def seed(self, track_id: int, frame: int, answer: Mapping[str, Any]) -> None:
        """An answer given before this cache (by a camera's previous decoder, maybe by another
        model): the track's answer until a fresh look at it comes, which is due at once (its
        first frame where the box is big enough and it gets a place). Call it on the event loop."""
        future = asyncio.get_running_loop().create_future()
        future.set_result(dict(answer))
        self._entries[track_id] = _Entry(future, CARRIED, frame, None)

    def _forget_failed(self, track_id: int, future: "asyncio.Future[Mapping[str, Any]]") -> None:
        entry = self._entries.get(track_id)
        if entry is not None and entry.future is future and self._failed(future):
            self._fall_back(track_id, entry)

    def _fall_back(self, track_id: int, entry: _Entry) -> None:
        """A failed answer: the track's earlier one again (still due for a fresh look), or none."""
        if entry.good is None:
            del self._entries[track_id]
        else:
            entry.future, entry.frame = entry.good
            entry.good = None

    @staticmethod
    def _failed(future: "asyncio.Future[Any]") -> bool:
        return future.cancelled() or future.exception() is not None

    def prune(self, frame: int) -> None:
        stale = [tid for tid, e in self._entries.items() if frame - e.seen > self.forget_after]
        for tid in stale:
            del self._entries[tid]

    def __len__(self) -> int:
        return len(self._entries)
