"""Reading a camera's streams back for its tracks' restore (pipeline/track_state.py): the frames
published after a snapshot (replayed), whether its events stream was trimmed past a time, and
the events published since (tracks ended there)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import redis

from .schema import FrameResult
from .streams import pages_from, parse_entry_id

if TYPE_CHECKING:
    from .publish import Publisher

REPLAY_PAGE = 200


def trimmed_after(publisher: Publisher, camera: str, ms: int) -> bool:
    """Whether the camera's events stream may have lost entries after ``ms`` (``MAXLEN ~``
    trims the oldest: when its first entry is later than ``ms``, what lay between is unknown)."""
    try:
        info = publisher.client.xinfo_stream(publisher.keys.events(camera))
    except redis.ResponseError:  # no such stream: no events at all
        return False
    first = info.get("first-entry")
    if not first or parse_entry_id(first[0]) <= (ms, 0):
        return False
    if "entries-added" in info:  # (Redis 7)
        return info["entries-added"] > info["length"]
    # Redis 6.2 says nothing of what was added (a KeyError: a crowd's camera never started again):
    # MAXLEN ~ trims only a stream longer than maxlen, and leaves it at least that long
    return info["length"] >= publisher.maxlen


def events_since(publisher: Publisher, camera: str, seq: int, since: float) -> Iterator[dict[str, Any]]:
    """The camera's events published after frame ``seq`` (read from its capture time ``since``), oldest first."""
    for page in pages_from(publisher.client, publisher.keys.events(camera), f"{int(since * 1000)}-0", REPLAY_PAGE):
        yield from (p for p in (event_payload(fields) for _, fields in page) if p and int(p.get("seq") or 0) > seq)


def ended_since(publisher: Publisher, camera: str, seq: int, since: float, ids: set[int]) -> list[dict[str, Any]]:
    """The ``track_end``s of these tracks published after frame ``seq`` (all of them as ended when
    the events stream was trimmed past the snapshot: none ends twice)."""
    if trimmed_after(publisher, camera, int(since * 1000)):
        return [{"kind": "track_end", "track_id": t, "ts": since} for t in ids]
    return [p for p in events_since(publisher, camera, seq, since)
            if p.get("kind") == "track_end" and p.get("track_id") in ids]


def event_payload(fields: Mapping[bytes, bytes]) -> dict[str, Any] | None:
    try:
        payload = json.loads(fields[b"json"])
    except (KeyError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def published_after(publisher: Publisher, camera: str, seq: int, since: float, *, limit: int) -> list[FrameResult]:
    """The camera's frames with a seq above ``seq``, oldest first (entry ids are
    ``<capture ms>-<seq>``, never below the capture time: reading starts at the snapshot's).
    ValueError when there are more than ``limit`` (the snapshot is too old to catch up from)."""
    out: list[FrameResult] = []
    for page in pages_from(publisher.client, publisher.keys.detections(camera), f"{int(since * 1000)}-0",
                           REPLAY_PAGE):
        out += [r for r in (FrameResult.from_json(fields[b"json"]) for _, fields in page) if r.meta.seq > seq]
        if len(out) > limit:
            raise ValueError(f"more than {limit} frames published since the snapshot")
    return out

