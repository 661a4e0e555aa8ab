"""Events a consumer can act on, made from one camera's tracked frames (schema ``percept.events/v1``).

`EventEngine.update` takes the camera's `FrameResult`s in seq order, tracked (``track_ids``
filled; objects without a track id are ignored), and returns the `Event`s each frame caused:

- ``track_start`` — the first frame with the track's id (bbox, attributes known so far);
- ``attributes`` — a classifier answer of the track changed (labels compared, not scores);
- ``zone_enter`` / ``zone_exit`` — the track's anchor point (`geometry`) went into / out of a zone;
  an open track that ends is also taken out of its zones (``ended: true``, ``dwell_s`` up to the
  last frame it was seen);
- ``line_cross`` — the anchor's movement between two consecutive sightings of the track crossed
  a line (direction ``in`` / ``out``, see `pipeline.geometry`); with a ``line_margin``, between
  the last two sightings outside the band around the line (hysteresis);
- ``track_end`` — the track has been missing for more than ``track_buffer`` processed frames (the
  frame on which ByteTrack drops it: until then it can still re-find the track), or the camera
  stopped (`close`). ts/seq are those of the frame on which it is declared ended.

Within a frame: track ends first, then the exits of zones removed since the last frame (track
id order), then each present track in track id order (start or attributes, zone exits, zone
enters, line crossings; zones and lines in config order).
Event ids are deterministic (``camera:track:kind``, plus ``:n`` for the kinds that repeat), so
processing the same frames again yields the same ids and a retried publish can be refused.

Counters (`EventEngine.counts`, `Event.count_keys`) are ``tracks:<category>``,
``zone:<zone>:enter:<category>``, ``zone:<zone>:exit:<category>`` and
``line:<line>:<in|out>:<category>``; names and categories match ``[A-Za-z0-9_-]+``, so the keys
split on ``:``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .event_model import (  # noqa: F401 (EVENTS_SCHEMA, PATH_*, REPEATING: the events' API)
    EVENTS_SCHEMA,
    LINE_MARGIN,
    PATH_KEPT,
    PATH_POINTS,
    REPEATING,
    ZONE_MARGIN,
    Event,
    EventKind,
    label_of,
    Sighting,
    OpenTrack,
)
from .event_handover import EngineHandover, kept_sides
from .geometry import (Anchor, Geometry, clear_of_edges, in_frame_pixels, is_pixels_geometry, points_in_polygon,
                       resolve_geometry, restored_pixel_sizes)
from .geometry_lines import line_bands, line_crossings, line_offsets
from .schema import FrameMeta, FrameResult

if TYPE_CHECKING:
    from .config import CameraConfig


class EventEngine(EngineHandover):
    """One camera's events. Not thread-safe; call `update` in seq order, `close` when it stops."""

    def __init__(
        self,
        camera: str,
        zones: Mapping[str, Sequence[Sequence[float]]] | None = None,
        lines: Mapping[str, Sequence[Sequence[float]]] | None = None,
        *,
        anchor: Anchor = "bottom_center",
        track_buffer: int = 30,
        line_margin: float = LINE_MARGIN,
        zone_margin: float = ZONE_MARGIN,
        file_time: bool = False,
    ):
        self.camera = camera
        self.file_time = file_time  # durations on a file's own time (read faster than real time)
        self.line_margin = line_margin
        self.zone_margin = zone_margin
        self.zones = {k: [list(p) for p in v] for k, v in (zones or {}).items()}
        self.lines = {k: [list(p) for p in v] for k, v in (lines or {}).items()}
        self.anchor: Anchor = anchor
        self.track_buffer = track_buffer
        self.counts: Counter[str] = Counter()  # deltas since the last take_counts()
        self._tracks: dict[int, OpenTrack] = {}
        self._frame = 0  # frames processed (the clock of track_buffer)
        self._geometry: Geometry | None = None
        self._size: tuple[int, int] | None = None  # (width, height) of the last frame: anchors are in its pixels
        # the frame size each pixel zone and line is in ("zones:<name>", "lines:<name>"): the first
        # frame's since it was set (the same scene at another resolution later: it is scaled to
        # it, as the tracks are; one changed at runtime: the next frame's, the others kept)
        self._pixel_sizes: dict[str, tuple[int, int]] = {}
        self._zones_removed = False  # zones went since the last frame (`reconfigure`, `restore`): tracks leave them
        # durations run on the frames' steady clock where they have one: (the last frame's time
        # on the durations' timeline, its steady_ts); a wall clock stepped by NTP is no dwell
        self._steady: tuple[float, float] | None = None
        # (the last frame's time on that timeline, its wall clock time): a frame of another reader
        # (a reconnect; the next owner, restored) goes on from it by the wall clock's gap, never back
        self._clock: tuple[float, float] | None = None
        self._now = 0.0  # this frame's time on that timeline

    @classmethod
    def for_camera(cls, camera: CameraConfig, *, track_buffer: int, file_time: bool = False) -> EventEngine:
        """The engine of a configured camera (``tracker.track_buffer`` as ``track_buffer``;
        ``file_time``: a file read faster than real time, its durations on the file's time)."""
        return cls(camera.id, camera.zones, camera.lines, anchor=camera.anchor, track_buffer=track_buffer,
                   file_time=file_time, **margins_of(camera))

    def reconfigure(self, zones: Mapping[str, Sequence[Sequence[float]]] | None,
                    lines: Mapping[str, Sequence[Sequence[float]]] | None, *, anchor: Anchor,
                    line_margin: float | None = None, zone_margin: float | None = None) -> None:
        """Zones, lines, the anchor or a margin changed at runtime: open tracks continue.
        A track inside a removed zone leaves it on the next frame (``zone_exit``, its dwell up to
        its last sighting: occupancy stays enter − exit); a track inside a new zone gets its
        ``zone_enter`` on its next sighting clear of the zone's edges; after an anchor change no
        crossing is judged between the old anchor point and the new one."""
        shapes_before = (self.zones, self.lines)
        self.zones = {k: [list(p) for p in v] for k, v in (zones or {}).items()}
        before, self.lines = self.lines, {k: [list(p) for p in v] for k, v in (lines or {}).items()}
        anchor_changed, self.anchor = anchor != self.anchor, anchor
        if line_margin is not None:
            self.line_margin = line_margin
        if zone_margin is not None:
            self.zone_margin = zone_margin
        self._geometry = None
        for kind, now, was in (("zones", self.zones, shapes_before[0]), ("lines", self.lines, shapes_before[1])):
            for name in set(now) | set(was):  # new points: in the next frame's pixels (the API checked
                if now.get(name) != was.get(name):  # them against the newest frame); the rest as they were
                    self._pixel_sizes.pop(f"{kind}:{name}", None)
        self._zones_removed = True
        for tr in self._tracks.values():
            tr.sides = kept_sides(tr.sides, before, self.lines)
            tr.through = [line for line in tr.through if line in tr.sides]  # (a moved line's mark too)
            if anchor_changed:
                tr.forget_anchor()

    def seed_pixel_sizes(self, snapshot: Mapping[str, Any]) -> None:
        """The frame sizes a snapshot's pixel zones and lines are in, for those still the same."""
        self._pixel_sizes, self._geometry = restored_pixel_sizes(snapshot, self.zones, self.lines), None

    @property
    def open_tracks(self) -> list[int]:
        return sorted(self._tracks)

    def track_attributes(self) -> dict[int, dict[str, Any]]:
        """Each open track's classifier answers so far (not why it has none)."""
        return {tid: {k: v for k, v in tr.attributes.items() if k != "unclassified"}
                for tid, tr in self._tracks.items() if tr.attributes}

    def geometry(self, width: int, height: int) -> Geometry:
        """Zones and lines in pixels of this frame size (resolved on first use; `GeometryError`
        names the zone or line when a pixel point lies outside the frame). Pixel zones and lines
        are in the pixels of the first frame since they were set, checked against it, and scaled
        to a later frame of another size."""
        geo = self._geometry
        if geo is None or (geo.width, geo.height) != (width, height):
            zones, lines = self.zones, self.lines
            pixels = is_pixels_geometry(zones, lines)
            if pixels:
                zones, lines = (in_frame_pixels(shapes, kind, self._pixel_sizes, width, height)
                                for kind, shapes in (("zones", zones), ("lines", lines)))
            geo = self._geometry = resolve_geometry(zones, lines, self.anchor, width, height,
                                                    where=f"cameras[{self.camera}]")
            if pixels:  # (checked against this frame: those new to it are in its pixels)
                for key in [f"zones:{n}" for n in self.zones] + [f"lines:{n}" for n in self.lines]:
                    self._pixel_sizes.setdefault(key, (width, height))
        return geo

    def take_counts(self) -> Counter[str]:
        """The counter increments since the last call (for ``HINCRBY``), and start afresh."""
        counts, self.counts = self.counts, Counter()
        return counts

    def _duration_time(self, meta: FrameMeta) -> float:
        """The frame's time for durations: its capture time (a file's own time with ``file_time``),
        or, after a frame of the same reader's steady clock, that frame's time plus the steady
        interval since it: an edge box whose clock NTP set 3 days (or 56 years) forward while a
        car stood in a zone gave it a dwell of 3 days (`test_zones::test_a_wall_clock_step_is_no_dwell`).
        A frame of another reader, or without a steady time, goes on from the last frame by the
        wall clock's gap (never back): the next owner of a camera whose clock was stepped
        continues the snapshot's timeline, not the wall clock's (a 3-day dwell at its first exit)."""
        t = wall = meta.time_on(self.file_time)
        if self.file_time:
            self._steady = self._clock = None
            return t
        if meta.steady_ts is not None and self._steady is not None and meta.steady_ts >= self._steady[1]:
            t = self._steady[0] + (meta.steady_ts - self._steady[1])
        elif self._clock is not None:
            t = self._clock[0] + max(0.0, wall - self._clock[1])
        self._steady = None if meta.steady_ts is None else (t, meta.steady_ts)
        self._clock = (t, wall)
        return t

    def _emit(self, events: list[Event], event: Event) -> None:
        events.append(event)
        self.counts.update(event.count_keys())

    def update(self, result: FrameResult, alive: "set[int] | None" = None,
               origins: "Mapping[int, Sequence[float]] | None" = None) -> list[Event]:
        """Events of one frame. ``alive``: the ids the tracker still holds after this frame
        (tracked or lost); a track ends when the tracker dropped it, so a track it brings back
        is never ended first. Without it, a track ends after ``track_buffer`` frames unseen.
        ``origins``: track id → the box where the tracker first saw a track it confirms now (a
        line crossed between those two sightings counts)."""
        meta, dets = result.meta, result.objects
        if meta.camera != self.camera:
            raise ValueError(f"EventEngine({self.camera!r}) got a frame of camera {meta.camera!r}")
        self._frame += 1
        self._now = self._duration_time(meta)
        # track id → its objects: overlapping boxes the tracker merged share one id (a car and a
        # truck box on one vehicle), listed in any order: the track's box is their mean and its
        # object the best scored, so its anchor does not jump between them frame to frame
        shared: dict[int, list[int]] = {}
        for i, tid in enumerate(dets.track_ids):
            if tid is not None:
                shared.setdefault(int(tid), []).append(i)
        present = {t: max(ix, key=lambda i: (dets.scores[i], -i)) for t, ix in shared.items()}
        geo = self.geometry(meta.width, meta.height)  # bad pixel zones fail before tracks change
        if self._size not in (None, (meta.width, meta.height)):  # anchors in the old pixels: into the new ones
            sx, sy = meta.width / self._size[0], meta.height / self._size[1]
            for tr in self._tracks.values():
                tr.rescale(sx, sy)
        self._size = (meta.width, meta.height)
        events: list[Event] = []
        for tid in sorted(self._tracks):
            if tid in present:
                continue
            if (tid not in alive) if alive is not None else self._frame - self._tracks[tid].last_frame > self.track_buffer:
                self._end(self._tracks.pop(tid), meta.seq, meta.frame_ts, events)
        if self._zones_removed:
            self._leave_removed_zones(meta, events)
        if not present:
            return events
        order = sorted(present)
        rows = [shared[t] for t in order]
        boxes = (dets.xyxy[[r[0] for r in rows]] if all(len(r) == 1 for r in rows)
                 else np.array([dets.xyxy[r].mean(axis=0) for r in rows])).astype(np.float64)
        boxes = np.round(boxes, 1)
        anchors = np.round(geo.anchors(boxes).reshape(-1, 2), 1)
        centres = np.round(np.stack([boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]], axis=1) / 2, 1)
        inside = {name: points_in_polygon(anchors, poly) for name, poly in geo.zones.items()}
        clear = {name: clear_of_edges(anchors, boxes, poly, self.zone_margin, (geo.width, geo.height)) for name, poly in geo.zones.items()}
        first = {t: np.round(geo.anchors(np.round(np.asarray(origins[t], np.float64), 1).reshape(1, 4)), 1).reshape(2)
                 for t in order if t not in self._tracks and origins and t in origins}
        crossed, sides, through = self._crossings(order, boxes, anchors, first, geo)
        for k, (tid, box, anchor, centre) in enumerate(zip(order, boxes.tolist(), anchors.tolist(), centres.tolist())):
            tr = self._tracks.get(tid)
            # hysteresis at zone edges: within its band of an edge, a track stays where it was
            # (a new track: where its anchor is)
            zones_in = [name for name, mask in inside.items()
                        if (mask[k] if tr is None or clear[name][k] else name in tr.zones)]
            seen = Sighting(present[tid], box, anchor, centre, zones_in, crossed[k], sides[k], through[k])
            self._sighting(tid, result, seen, events)
        return events

    def _crossings(self, order: list[int], boxes: np.ndarray, anchors: np.ndarray,
                   first: Mapping[int, np.ndarray], geo: Geometry
                   ) -> tuple[list[list[tuple[str, int]]], list[dict[str, list[float]]], list[list[str]]]:
        """For each present track (``order``): the lines it crossed since its last sighting
        outside each line's band (+1 in, -1 out) and its new `OpenTrack.sides`. A side, once
        known, holds until the track is seen clear of the band on the other side: the point it was
        judged from is not judged again against a later, larger box (an object coming closer
        would drop out of its own side). A new track's movement starts at its ``first`` point
        (where the tracker first saw it) or here; that point gives its side even inside the band,
        until it is seen clear of it. A change of side counts only when the track's path went
        through the segment itself (its step from the last sighting now, or one inside the band
        since the side point: `OpenTrack.through`), not beside its end."""
        crossed: list[list[tuple[str, int]]] = [[] for _ in order]
        sides: list[dict[str, list[float]]] = [{} for _ in order]
        through: list[list[str]] = [[] for _ in order]
        tracks = [self._tracks.get(t) for t in order]
        for name, seg in geo.lines.items():
            origins = [self._line_origin(t, name, first.get(t, anchors[k])) for k, t in enumerate(order)]
            prev = np.array([point for point, _ in origins])
            steps = np.array([tr.anchor if tr is not None and tr.anchor is not None else first.get(t, anchors[k])
                              for k, (t, tr) in enumerate(zip(order, tracks))], np.float64).reshape(-1, 2)
            bands = line_bands(boxes, seg, self.line_margin)
            off_now, off_prev = line_offsets(anchors, seg), line_offsets(prev, seg)
            clear_now = np.abs(off_now) >= bands
            clear_before = (np.abs(off_prev) >= bands) | np.array([seed for _, seed in origins])
            went = (line_crossings(steps, anchors, seg) != 0) | np.array(
                [tr is not None and name in tr.through for tr in tracks], bool)
            moved = (off_prev < 0) != (off_now < 0)  # (left of the line: negative; on it: the right)
            signs = np.where(off_now < 0, 1, -1) * (moved & went & clear_now & clear_before)
            for k in range(len(order)):
                if signs[k]:
                    crossed[k].append((name, int(signs[k])))
                if clear_now[k]:
                    sides[k][name] = anchors[k].tolist()
                elif clear_before[k]:  # inside the band: the side it had holds
                    sides[k][name] = prev[k].tolist()
                    if went[k]:
                        through[k].append(name)
        return crossed, sides, through

    def _line_origin(self, tid: int, line: str, first: np.ndarray) -> tuple[Any, bool]:
        """Where a track's movement against ``line`` starts, and whether that point gives a
        side (even inside the current band): its side point (`OpenTrack.sides`: clear of the band
        when it was taken, or its first point), else its last anchor point (no side yet); for a
        new track (or one whose anchor was forgotten) ``first``, which gives its side wherever it
        is, as long as the track is not seen clear of the band (a track that appears on a line
        and walks off it counts as before hysteresis)."""
        tr = self._tracks.get(tid)
        if tr is None or tr.anchor is None:
            return first, True
        if line in tr.sides:
            return tr.sides[line], True
        return tr.anchor, False

    def _sighting(self, tid: int, result: FrameResult, seen: Sighting, events: list[Event]) -> None:
        meta, dets, i = result.meta, result.objects, seen.index
        attrs = dict(dets.attributes[i])
        now = self._now  # durations on it; events stamped with the capture time
        tr = self._tracks.get(tid)
        if tr is None:
            tr = self._tracks[tid] = OpenTrack(
                id=tid, category=dets.categories[i], labels={dets.labels[i]: 1}, first_ts=now,
                last_ts=now, last_frame=self._frame, frames=1, best_score=float(dets.scores[i]),
                attributes=attrs, anchor=seen.anchor, first=seen.centre, last=seen.centre, path=[seen.centre],
                sides=seen.sides, through=seen.through,
            )
            self._emit(events, self._event(tr, "track_start", meta.seq, meta.frame_ts, bbox=tuple(seen.box),
                                           attributes=dict(attrs)))
        else:
            tr.labels[dets.labels[i]] = tr.labels.get(dets.labels[i], 0) + 1
            tr.last_ts, tr.last_frame, tr.frames = now, self._frame, tr.frames + 1
            tr.best_score = max(tr.best_score, float(dets.scores[i]))
            tr.anchor, tr.sides, tr.through = seen.anchor, seen.sides, seen.through
            tr.add_centre(seen.centre)
            # ("too small now" is no answer: an answer the track had is not changed by it)
            changed = any(name not in tr.attributes or label_of(tr.attributes[name]) != label_of(v)
                          for name, v in attrs.items() if name != "unclassified")
            if "unclassified" not in attrs:  # big enough now (or its answer kept): not "too small" any more
                tr.attributes.pop("unclassified", None)
            tr.attributes.update(attrs)  # an answer missing on this frame (failed) keeps the last one
            if changed:
                self._emit(events, self._event(tr, "attributes", meta.seq, meta.frame_ts,
                                               attributes=dict(tr.attributes)))
        for zone in [z for z in self.zones if z in tr.zones and z not in seen.zones]:  # (config order)
            self._exit(tr, zone, meta.seq, meta.frame_ts, now, False, events)
        for zone in [z for z in seen.zones if z not in tr.zones]:
            tr.zones[zone] = now
            self._emit(events, self._event(tr, "zone_enter", meta.seq, meta.frame_ts, zone=zone))
        for line, sign in seen.lines:
            self._emit(events, self._event(tr, "line_cross", meta.seq, meta.frame_ts, line=line,
                                           direction="in" if sign > 0 else "out"))

    def _leave_removed_zones(self, meta: FrameMeta, events: list[Event]) -> None:
        """Each track inside a zone no longer configured leaves it at this frame (its dwell up to
        its last sighting), in track id order."""
        self._zones_removed = False
        for tid in sorted(self._tracks):
            tr = self._tracks[tid]
            for zone in [z for z in tr.zones if z not in self.zones]:
                self._exit(tr, zone, meta.seq, meta.frame_ts, tr.last_ts, False, events)

    def _event(self, tr: OpenTrack, kind: EventKind, seq: int, ts: float, **fields: Any) -> Event:
        n = tr.next_n(kind) if kind in REPEATING else 0
        return Event(kind, self.camera, seq, ts, tr.id, tr.category, tr.label, n, **fields)

    def _exit(self, tr: OpenTrack, zone: str, seq: int, ts: float, until: float, ended: bool,
              events: list[Event]) -> None:
        enter_ts = tr.zones.pop(zone)
        dwell = round(max(0.0, until - enter_ts), 3)
        self._emit(events, self._event(tr, "zone_exit", seq, ts, zone=zone, dwell_s=dwell, ended=ended))

    def _end(self, tr: OpenTrack, seq: int, ts: float, events: list[Event]) -> None:
        for zone in list(tr.zones):
            self._exit(tr, zone, seq, ts, tr.last_ts, True, events)
        self._emit(events, self._event(
            tr, "track_end", seq, ts, duration_s=round(max(0.0, tr.last_ts - tr.first_ts), 3), frames=tr.frames,
            best_score=round(tr.best_score, 4), attributes=dict(tr.attributes), path=tr.path_summary(),
        ))

    def close(self, seq: int, ts: float) -> list[Event]:
        """The camera stops: every open track ends (its zones exited), at ``seq``/``ts``."""
        events: list[Event] = []
        for tid in sorted(self._tracks):
            self._end(self._tracks[tid], seq, ts, events)
        self._tracks.clear()
        return events


def events_json(events: Iterable[Event]) -> list[tuple[str, str]]:
    """``(kind, json)`` pairs, the form the publisher writes."""
    return [(e.kind, e.to_json()) for e in events]


def margins_of(camera: Any) -> dict[str, float]:
    """A camera's hysteresis settings as `EventEngine`'s keywords."""
    return {"line_margin": camera.line_margin, "zone_margin": camera.zone_margin}
