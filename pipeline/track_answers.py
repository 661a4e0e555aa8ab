"""A camera's classifier answers by track and label (`TrackAttributeCache`): a track classified
once (or again every ``reclassify_every`` frames) reuses its answer on later frames while the
detector gives it the same label; an answer still under way is awaited, not asked for twice; a
failed one is dropped at once, the track's earlier answer standing meanwhile
(pipeline/classify.py)."""

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
    """(track id, label) → the classifier's answer (as a future, so a track seen again while its crop is
    still being classified waits for that answer instead of classifying twice). A failed answer
    (an error, or no answer within the classify timeout) is dropped as soon as it fails, so the
    track is classified again on its next frame instead of reusing the failure; a track's earlier
    answer stays its answer meanwhile (a box too small now, or beyond the frame's limit, keeps
    it: a reclassification that failed once lost it for good). The tracker matches boxes within
    a category, not a label: a sign lost and found again as another sign at the same place (a
    dashcam passing sign after sign) continued the track, and the first sign's class was
    published on the second until its fresh look was due; an answer holds for the label it was
    given for only, with ``per_label`` (a sign classifier's; a vehicle's answer is the vehicle's,
    whether the detector calls it a car or a truck this frame: without it, labels are ignored)."""

    def __init__(self, *, reclassify_every: int, forget_after: int, per_label: bool = True):
        self.reclassify_every = reclassify_every
        self.forget_after = forget_after
        self.per_label = per_label
        self._entries: dict[tuple[int, str | None], _Entry] = {}

    def _entry(self, key: tuple[int, str | None]) -> "tuple[tuple[int, str | None], _Entry | None]":
        """The answer for this label, else one carried from before the cache (any label's)."""
        key = key if self.per_label else (key[0], None)
        entry = self._entries.get(key)
        if entry is None and key[1] is not None:
            key = (key[0], None)
            entry = self._entries.get(key)
        return key, entry

    def get(self, track_id: int, frame: int, label: str | None = None) -> "asyncio.Future[Mapping[str, Any]] | None":
        key, entry = self._entry((track_id, label))
        if entry is None:
            return None
        entry.seen = frame
        if entry.future.done():
            if self._failed(entry.future):
                self._fall_back(key, entry)
                return None
            if entry.frame == CARRIED or (self.reclassify_every and frame - entry.frame >= self.reclassify_every):
                return None  # due for a fresh look (a carried answer: at once)
        return entry.future

    def last(self, track_id: int, label: str | None = None) -> "asyncio.Future[Mapping[str, Any]] | None":
        """The track's last answer for this label, due for a fresh look or not (None: none, or
        not yet in)."""
        _, entry = self._entry((track_id, label))
        if entry is None:
            return None
        if entry.future.done() and not self._failed(entry.future):
            return entry.future
        return entry.good[0] if entry.good is not None else None

    def put(self, track_id: int, frame: int, future: "asyncio.Future[Mapping[str, Any]]",
            label: str | None = None) -> None:
        key = (track_id, label if self.per_label else None)
        before = self._entries.get(key)
        if before is None and key[1] is not None:  # a carried answer becomes this label's earlier one
            before = self._entries.pop((track_id, None), None)
        good = None
        if before is not None:
            came = before.future.done() and not self._failed(before.future)
            good = (before.future, before.frame) if came else before.good
        self._entries[key] = _Entry(future, frame, frame, good)
        future.add_done_callback(lambda done: self._forget_failed(key, done))

    def seed(self, track_id: int, frame: int, answer: Mapping[str, Any]) -> None:
        """An answer given before this cache (by a camera's previous decoder, maybe by another
        model): the track's answer until a fresh look at it comes, which is due at once (its
        first frame where the box is big enough and it gets a place). Call it on the event loop."""
        future = asyncio.get_running_loop().create_future()
        future.set_result(dict(answer))
        self._entries[(track_id, None)] = _Entry(future, CARRIED, frame, None)

    def _forget_failed(self, key: tuple[int, str | None], future: "asyncio.Future[Mapping[str, Any]]") -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.future is future and self._failed(future):
            self._fall_back(key, entry)

    def _fall_back(self, key: tuple[int, str | None], entry: _Entry) -> None:
        """A failed answer: the track's earlier one again (still due for a fresh look), or none."""
        if entry.good is None:
            del self._entries[key]
        else:
            entry.future, entry.frame = entry.good
            entry.good = None

    @staticmethod
    def _failed(future: "asyncio.Future[Any]") -> bool:
        return future.cancelled() or future.exception() is not None

    def prune(self, frame: int) -> None:
        stale = [key for key, e in self._entries.items() if frame - e.seen > self.forget_after]
        for key in stale:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
