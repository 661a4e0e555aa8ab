"""What of an `EventEngine` (pipeline/events.py) survives a change of owner: its state as
bounded JSON (`snapshot`), an engine that continues it (`restore`), and the open tracks brought
up to events already published when the frames after a snapshot cannot be replayed
(`apply_published`). A mixin of `EventEngine`: these read and write its tracks and geometry."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self

from .event_model import MAX_SNAPSHOT_TRACKS, REPEATING, STATE_SCHEMA, OpenTrack, json_safe


def kept_sides(sides: Mapping[str, list[float]], before: Mapping[str, Any] | None,
               lines: Mapping[str, Any]) -> dict[str, list[float]]:
    """A track's side points of the lines that are still there, unmoved: a line moved (same name,
    other points) past a parked object judged it from a side it never left, and counted it;
    without its side the track's next movement is judged from its last point. ``before``: the
    lines the sides were taken against (None: not known, an older snapshot: kept)."""
    return {line: p for line, p in sides.items()
            if line in lines and (before is None or [list(q) for q in before.get(line, ())] == lines[line])}


class EngineHandover:
    """`EventEngine`'s state across owners (its attributes: ``camera``, ``zones``, ``lines``,
    ``anchor``, ``file_time``, ``_tracks``, ``_frame``, ``_size``; `seed_pixel_sizes`)."""

    def apply_published(self, payloads: Iterable[Mapping[str, Any]]) -> None:
        """Bring the open tracks up to events already published (the events stream after a
        snapshot whose frames cannot be replayed), so that ending them (`close`) ends each
        once: tracks that ended are dropped, tracks that started are opened from their
        ``track_start``, zones entered and left, attributes and event numbers follow. What a
        sighting without an event changed is not known: such a track keeps its snapshot's
        frames, path and best score, or, opened from its ``track_start``, has them unknown
        (``frames`` and ``best_score`` null at its end)."""
        for ev in payloads:
            try:
                kind, tid, ts = ev["kind"], int(ev["track_id"]), float(ev["ts"])
            except (KeyError, TypeError, ValueError):
                continue
            tr = self._tracks.get(tid)
            if kind == "track_end":
                self._tracks.pop(tid, None)
                continue
            if self.file_time:  # an event's ts is when it was read, not the file's time its tracks are on
                ts = max((t.last_ts for t in self._tracks.values()), default=0.0) if tr is None else tr.last_ts
            elif self._clock is not None:  # onto the durations' timeline (`_duration_time`), as a frame's
                ts = self._clock[0] + max(0.0, ts - self._clock[1])  # (raw: a clock step became a dwell)
            if tr is None and kind == "track_start":
                box = [float(v) for v in ev.get("bbox") or (0, 0, 0, 0)]
                centre = [round((box[0] + box[2]) / 2, 1), round((box[1] + box[3]) / 2, 1)]
                tr = self._tracks[tid] = OpenTrack(
                    id=tid, category=str(ev.get("category", "")), labels={str(ev.get("label", "")): 1}, first_ts=ts,
                    last_ts=ts, last_frame=self._frame, frames=None, best_score=math.nan,  # type: ignore[arg-type]
                    attributes=dict(ev.get("attributes") or {}), anchor=None, first=centre, last=centre, path=[centre])
            if tr is None:
                continue
            tr.last_ts = max(tr.last_ts, ts)
            if kind == "zone_enter" and ev.get("zone"):
                tr.zones[ev["zone"]] = ts
            elif kind == "zone_exit":
                tr.zones.pop(ev.get("zone"), None)
            elif kind == "attributes":
                tr.attributes = dict(ev.get("attributes") or {})
            if kind in REPEATING:  # its id ends in its number (``camera:track:kind:n``)
                n = str(ev.get("id", "")).rpartition(":")[2]
                tr.n[kind] = max(tr.n.get(kind, 0), int(n) if n.isdigit() else 0)

    def snapshot(self) -> dict[str, Any]:
        """This engine's state as JSON-able data, bounded: the open tracks only (the most recently
        seen `MAX_SNAPSHOT_TRACKS`), each with at most `PATH_KEPT` path points. Pending `counts`
        are not in it: they belong to the events already handed out."""
        tracks = sorted(self._tracks.values(), key=lambda t: (-t.last_frame, t.id))[:MAX_SNAPSHOT_TRACKS]
        return {
            "schema": STATE_SCHEMA, "camera": self.camera, "frame": self._frame, "file_time": self.file_time,
            "clock": list(self._clock) if self._clock is not None else None,  # the durations' timeline
            "size": list(self._size) if self._size is not None else None, "anchor": self.anchor,
            "pixel_sizes": {k: list(v) for k, v in self._pixel_sizes.items()},
            "lines": self.lines,  # what the tracks' sides were taken against
            # and the bands they were judged with (a margin changed as the camera failed over: the
            # frames since replayed under the new one counted a crossing already published again)
            "line_margin": self.line_margin, "zone_margin": self.zone_margin,
            "zones": self.zones,  # with lines: what pixel_sizes are the sizes of
            "tracks": [json_safe(vars(t)) for t in sorted(tracks, key=lambda t: t.id)],
        }

    @classmethod
    def restore(
        cls,
        snapshot: Mapping[str, Any],
        camera: str,
        zones: Mapping[str, Sequence[Sequence[float]]] | None = None,
        lines: Mapping[str, Sequence[Sequence[float]]] | None = None,
        **options: Any,
    ) -> Self:
        """An engine (``options``: `EventEngine`'s keywords, anchor, track_buffer, margins,
        file_time) that continues the open tracks of ``snapshot``: no second ``track_start``,
        event numbers (ids) continue, a crossing is judged from the last anchor point known.
        A track inside a zone the new config no longer has leaves it on the next frame (as after
        `reconfigure`); after a change of the anchor no crossing is judged between the last
        anchor point known and the next one."""
        if snapshot.get("schema") != STATE_SCHEMA:
            raise ValueError(f"unsupported event state {snapshot.get('schema')!r}; expected {STATE_SCHEMA!r}")
        if snapshot.get("camera") != camera:
            raise ValueError(f"event state of camera {snapshot.get('camera')!r} cannot continue camera {camera!r}")
        engine = cls(camera, zones, lines, **options)
        try:
            engine._frame = int(snapshot["frame"])
            clock = snapshot.get("clock")  # (older snapshots have none: the next frame's wall clock)
            engine._clock = (float(clock[0]), float(clock[1])) if clock and not engine.file_time else None
            size = snapshot.get("size")  # (older snapshots have neither: as before)
            engine._size = _positive_size(size) if size else None
            engine.seed_pixel_sizes(snapshot)
            anchor_changed = snapshot.get("anchor") not in (None, engine.anchor)
            for data in snapshot.get("tracks", []):
                tr = _checked(OpenTrack(**{k: data[k] for k in OpenTrack.__dataclass_fields__ if k in data}))
                tr.sides = kept_sides({line: [float(v) for v in p] for line, p in tr.sides.items()},
                                      snapshot.get("lines"), engine.lines)
                tr.through = [line for line in tr.through if line in tr.sides]
                if anchor_changed:
                    tr.forget_anchor()
                engine._tracks[tr.id] = tr
                engine._zones_removed |= any(z not in engine.zones for z in tr.zones)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed event state of camera {camera!r}: {exc!r}") from None
        return engine


def _positive_size(size: Sequence[Any]) -> tuple[int, int]:
    """A snapshot's frame size (width, height), both above 0 (ValueError else: a corrupted one
    divided by zero on every frame after it was restored)."""
    width, height = int(size[0]), int(size[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size {width}x{height}")
    return width, height


def _finite(value: Any, default: float | None = None) -> float:
    """A finite float; ``default`` for None or NaN where there is one (a track known only from its
    `track_start`: no score), else ValueError."""
    if value is None and default is not None:
        return default
    out = float(value)
    if not math.isfinite(out):
        if default is not None and math.isnan(out):
            return default
        raise ValueError(f"{value!r} is not a finite number")
    return out


def _point(value: Any) -> list[float]:
    x, y = value
    return [_finite(x), _finite(y)]


def _checked(tr: OpenTrack) -> OpenTrack:
    """An open track of a snapshot with every field of the type the engine works with: a damaged
    one (``best_score: null``, ``stride: 0``, ``path: []``) restored, then failed the camera's
    frames one by one (TypeError, ZeroDivisionError). What has a sensible value is given it; what
    has none is a ValueError or TypeError naming it."""
    tr.id, tr.last_frame = int(tr.id), int(tr.last_frame)
    tr.frames, tr.stride = max(1, int(tr.frames or 1)), max(1, int(tr.stride or 1))
    tr.first_ts, tr.last_ts, tr.best_score = _finite(tr.first_ts), _finite(tr.last_ts), _finite(tr.best_score, 0.0)
    tr.category = str(tr.category)
    tr.labels = {str(k): int(v) for k, v in dict(tr.labels).items()}
    if not tr.labels:
        raise ValueError(f"track {tr.id}: no label")
    tr.n = {str(k): int(v) for k, v in dict(tr.n).items()}
    tr.attributes = dict(tr.attributes)
    tr.zones = {str(z): _finite(t) for z, t in dict(tr.zones).items()}
    tr.first, tr.last = _point(tr.first), _point(tr.last)
    tr.anchor = None if tr.anchor is None else _point(tr.anchor)
    tr.path = [_point(p) for p in tr.path] or [list(tr.last)]
    return tr


def fitted_json(doc: dict[str, Any], limit: int) -> tuple[str, int | None]:
    """``doc`` (a track state, its ``events`` an engine's `snapshot`) as compact JSON of at most
    ``limit`` characters where leaving out the least recently seen open tracks makes it fit (the
    rest in the snapshot's order, by id); how many were kept, None when all were. ValueError: not
    JSON. (The snapshot lists its tracks by id: cut from its end, the newest tracks went, those
    still in view, and their next owner started them again.)"""
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    tracks = (doc.get("events") or {}).get("tracks") if isinstance(doc.get("events"), dict) else None
    if len(text) <= limit or not tracks:
        return text, None
    order = {id(t): k for k, t in enumerate(tracks)}
    recent = sorted(tracks, key=lambda t: -t.get("last_frame", 0))  # (stable: ties stay by id)
    while len(text) > limit and recent:
        del recent[int(len(recent) * limit / len(text) * 0.95) if len(recent) > 1 else 0:]
        tracks[:] = sorted(recent, key=lambda t: order[id(t)])
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    return text, len(tracks)
