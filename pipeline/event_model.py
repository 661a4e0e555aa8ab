"""What the event engine (`pipeline.events`) hands out and keeps: `Event` (schema
``percept.events/v1``, its payload and the counters it increments) and `OpenTrack`, one open
track's JSON-able state (what a snapshot carries to the camera's next owner)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np

EVENTS_SCHEMA = "percept.events/v1"
STATE_SCHEMA = "percept.events-state/v1"
EventKind = Literal["track_start", "track_end", "attributes", "zone_enter", "zone_exit", "line_cross"]
REPEATING = frozenset({"attributes", "zone_enter", "zone_exit", "line_cross"})
PATH_POINTS = 8  # points in a track_end's path
PATH_KEPT = 16  # points kept per open track (decimated by 2 when full)
# open tracks a snapshot keeps; above the tracker's 512 (`tracking.MAX_SNAPSHOT_TRACKS`, the confirmed
# ones first), so that those its tracker did not keep end at the next owner's first frame
MAX_SNAPSHOT_TRACKS = 4096
LINE_MARGIN = 0.1  # `CameraConfig.line_margin`'s default
ZONE_MARGIN = 0.1  # `CameraConfig.zone_margin`'s default
_FIELDS: dict[str, tuple[str, ...]] = {
    "track_start": ("bbox", "attributes"),
    "track_end": ("duration_s", "frames", "best_score", "attributes", "path"),
    "attributes": ("attributes",),
    "zone_enter": ("zone",),
    "zone_exit": ("zone", "dwell_s", "ended"),
    "line_cross": ("line", "direction"),
}


def json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def label_of(value: Any) -> Any:
    """What is compared of a classifier answer: its label (``{"label": .., "score": ..}``), or
    its value (a yes/no attribute, ``{"value": .., "probability": ..}``), not the scores."""
    if isinstance(value, Mapping):
        return value.get("label", value.get("value"))
    return value


class Sighting(NamedTuple):
    """One sighting of a track in a frame, in pixels rounded to 0.1 (what a snapshot keeps, so a
    restored engine computes exactly what the first one would have)."""

    index: int  # into the frame's detections
    box: list[float]
    anchor: list[float]
    centre: list[float]
    zones: list[str]  # the zones its anchor is in
    lines: list[tuple[str, int]]  # lines crossed since the last sighting: +1 in, -1 out
    sides: dict[str, list[float]]  # line → the point its side is judged from (`OpenTrack.sides`)
    through: list[str]  # lines whose segment its path went through inside the band (`OpenTrack.through`)


@dataclass(frozen=True)
class Event:
    kind: EventKind
    camera: str
    seq: int
    ts: float  # capture time of the frame that caused it
    track_id: int
    category: str
    label: str
    n: int = 0  # the how-manieth event of this kind for this track (from 1; kinds in REPEATING)
    bbox: tuple[float, float, float, float] | None = None
    attributes: Mapping[str, Any] | None = None
    duration_s: float | None = None
    frames: int | None = None
    best_score: float | None = None
    path: Mapping[str, Any] | None = None
    zone: str | None = None
    dwell_s: float | None = None
    ended: bool | None = None
    line: str | None = None
    direction: Literal["in", "out"] | None = None

    @property
    def id(self) -> str:
        base = f"{self.camera}:{self.track_id}:{self.kind}"
        return f"{base}:{self.n}" if self.kind in REPEATING else base

    def count_keys(self) -> list[str]:
        """The counters this event increments by one (see the module doc)."""
        if self.kind == "track_start":
            return [f"tracks:{self.category}"]
        if self.kind == "zone_enter":
            return [f"zone:{self.zone}:enter:{self.category}"]
        if self.kind == "zone_exit":
            return [f"zone:{self.zone}:exit:{self.category}"]
        if self.kind == "line_cross":
            return [f"line:{self.line}:{self.direction}:{self.category}"]
        return []

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": EVENTS_SCHEMA, "id": self.id, "camera": self.camera, "kind": self.kind,
            "ts": self.ts, "seq": self.seq, "track_id": self.track_id, "category": self.category,
            "label": self.label,
        }
        for name in _FIELDS[self.kind]:
            out[name] = json_safe(getattr(self, name))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_payload(), separators=(",", ":"))


@dataclass
class OpenTrack:
    """One open track's state; everything in it is JSON-able (see `EventEngine.snapshot`)."""

    id: int
    category: str
    labels: dict[str, int]  # detector label → frames seen with it (the track's label: the most frequent)
    first_ts: float
    last_ts: float
    last_frame: int
    frames: int
    best_score: float
    attributes: dict[str, Any]
    anchor: list[float] | None  # last anchor point, pixels (None: judge no crossing from it)
    first: list[float]  # first and last box centres
    last: list[float]
    path: list[list[float]]  # box centres of every `stride`-th sighting, at most PATH_KEPT
    stride: int = 1
    zones: dict[str, float] = field(default_factory=dict)  # zone → enter ts
    n: dict[str, int] = field(default_factory=dict)  # kind → events of that kind so far
    # line → the last anchor point outside the line's band (hysteresis), or the track's first
    # point while it has not been seen clear of the band: it gives the track's side of the line,
    # and crossings are judged from it (a snapshot's older ``seeded`` list is not needed)
    sides: dict[str, list[float]] = field(default_factory=dict)
    # lines whose segment itself the track's path (sighting to sighting) went through since its
    # side point, while inside the band: leaving the band on the other side counts only then (the
    # straight way from the side point may pass beside the segment's end, or cut across it)
    through: list[str] = field(default_factory=list)

    def forget_anchor(self) -> None:
        """Judge no crossing from the points known so far (the anchor changed)."""
        self.anchor, self.sides, self.through = None, {}, []

    def rescale(self, sx: float, sy: float) -> None:
        """The points crossings are judged from, in the pixels of another frame size (the same
        scene at another resolution, as the tracker rescales its boxes): a side taken clear of a
        line's band stays that side, not re-taken from wherever the track is next."""
        def scaled(p: list[float]) -> list[float]:
            return [p[0] * sx, p[1] * sy]

        self.anchor = scaled(self.anchor) if self.anchor is not None else None
        self.sides = {line: scaled(p) for line, p in self.sides.items()}
        # its path too: a track_end's path all in the new frame's pixels, not half in the old
        self.first, self.last = scaled(self.first), scaled(self.last)
        self.path = [scaled(p) for p in self.path]

    @property
    def label(self) -> str:
        return max(self.labels, key=lambda k: self.labels[k])  # first seen wins a tie

    def next_n(self, kind: str) -> int:
        self.n[kind] = self.n.get(kind, 0) + 1
        return self.n[kind]

    def add_centre(self, centre: list[float]) -> None:
        self.last = centre
        if (self.frames - 1) % self.stride == 0:
            self.path.append(centre)
            if len(self.path) > PATH_KEPT:
                self.path = self.path[::2]
                self.stride *= 2

    def path_summary(self) -> dict[str, Any]:
        points = self.path + ([self.last] if self.path[-1] != self.last else [])
        if len(points) > PATH_POINTS:
            points = [points[int(i)] for i in np.linspace(0, len(points) - 1, PATH_POINTS).round()]
        return {"first": self.first, "last": self.last, "points": points}
