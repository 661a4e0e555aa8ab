"""Zones and counting lines: their config types (pydantic) and their runtime geometry (numpy).

Config, per camera (``cameras[].zones`` / ``lines`` / ``anchor``):

- ``zones: {name: [[x, y], [x, y], [x, y], ...]}`` — a polygon of at least 3 points;
- ``lines: {name: [[x1, y1], [x2, y2]]}`` — a segment of two different points;
- ``anchor: bottom_center | center`` — the point of an object's box that zones and lines test
  (default ``bottom_center``: where the object touches the ground).

Names match ``[A-Za-z0-9_-]+``. Coordinates are image coordinates (x to the right, y down), either
all relative (every value in 0..1, scaled by the frame's width and height) or all pixels: a zone or
line is in pixels when any of its values is > 1, and one camera's zones and lines must all use the
same unit. Pixel points beyond the frame can only be found once the frame size is known:
`resolve_geometry` raises `GeometryError` then.

Direction of a line: walking from point 1 to point 2 (as drawn on the image, y down), an object
whose anchor crosses from the right-hand side to the left-hand side is ``in``; from left to right
is ``out``. Example: ``[[0, 0.6], [1, 0.6]]`` (drawn left to right across the frame): the right-hand
side is the lower part of the image, so an object moving up the image crosses ``in`` and one moving
down crosses ``out``; swap the two points to swap the directions. A point exactly on the line
counts as the right-hand side. Only a movement that intersects the segment itself counts (passing
beside its end does not).

Hysteresis (``cameras[].line_margin``, default 0.1): around each line runs a band as wide on each
side as that fraction of the object's box measured across the line (its height for a level
line, its width for an upright one): an anchor inside the band is on neither side. A crossing
counts when the track's next point outside the band is on the other side from its last one and
its path went over the segment itself (pipeline/events.py), so an anchor jittering on the line,
or an object that steps onto it and back, counts nothing; 0 turns it off.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BeforeValidator, Field

from .config_errors import error_at
from .geometry_lines import ANCHOR_INSET, cross_2d, off_the_edges, pulled_inside, through_anchors
from .geometry_shapes import polygon_fault

Anchor = Literal["bottom_center", "center"]
MAX_ZONE_POINTS = 256
MAX_COORDINATE = 65536  # no frame is wider or taller (a pixel zone beyond its frame is refused by the frame itself)
MIN_RELATIVE_LINE = 1e-3  # a relative line at least this long: 2 px across a 1920 px frame
MAX_PER_CAMERA = 64  # zones, and lines, per camera
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class GeometryError(ValueError):
    """Zones or lines that cannot be used with this frame (pixel points outside it)."""


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _named(what: str):
    def check(name: str) -> str:
        if not _NAME.fullmatch(name):  # (match's $ lets a trailing newline through)
            raise ValueError(f"a {what} name must match [A-Za-z0-9_-]+ (at most 64), got {name[:80]!r}")
        return name

    return check


def _point(p: list[float]) -> list[float]:
    if len(p) != 2:
        raise ValueError(f"a point is [x, y], got {_fmt(p)}")
    if not all(math.isfinite(v) for v in p):
        raise ValueError(f"coordinates must be finite numbers, got {_fmt(p)}")
    if min(p) < 0:
        raise ValueError(f"coordinates must be >= 0, got {_fmt(p)}")
    if max(p) > MAX_COORDINATE:  # (1e308 overflowed the shape checks: "all on one line")
        raise ValueError(f"coordinates must be at most {MAX_COORDINATE:g} (pixels of the largest frame), got {_fmt(p)}")
    return p


def _polygon(points: list[list[float]]) -> list[list[float]]:
    if len(points) < 3:
        raise ValueError(f"a zone needs at least 3 points, got {len(points)}")
    fault = polygon_fault(np.asarray(points, np.float64))
    if fault is not None:
        raise ValueError(fault)
    return points


def _segment(points: list[list[float]]) -> list[list[float]]:
    if len(points) != 2:
        raise ValueError(f"a line needs exactly 2 points, got {len(points)}")
    if points[0] == points[1]:
        raise ValueError(f"a line needs two different points (zero length), got {_fmt(points[0])} twice")
    shortest = 1.0 if is_pixels(points) else MIN_RELATIVE_LINE  # (shorter: no pixel apart, its band divides by 0)
    if math.hypot(points[1][0] - points[0][0], points[1][1] - points[0][1]) < shortest:
        raise ValueError(f"a line must be at least {shortest:g} {'px' if shortest == 1.0 else '(of the frame)'} long, "
                         f"got {_fmt(points[0])} → {_fmt(points[1])}")
    edges = (0.0,) if shortest == 1.0 else (0.0, 1.0)  # (the far edges in pixels: `resolve_geometry`)
    if any(points[0][axis] == points[1][axis] == edge for axis in (0, 1) for edge in edges):
        raise ValueError(f"{_fmt(points[0])} → {_fmt(points[1])} runs along the frame's edge, which no object "
                         "can be beyond: it would never be crossed; draw it inside the frame")
    return points


def _at_most(limit: int, message: str):
    """A count checked before the items are (a request with a million points is refused at once)."""
    def check(items: Any) -> Any:
        if isinstance(items, (dict, list)) and len(items) > limit:
            raise ValueError(message.format(limit=limit, n=len(items)))
        return items

    return check


def _no_booleans(p: Any) -> Any:
    """``[true, false]`` was read as ``[1, 0]`` (and refused as a shape, not as what it is)."""
    if isinstance(p, (list, tuple)) and any(isinstance(v, bool) for v in p):
        shown = ", ".join(str(v).lower() if isinstance(v, bool) else repr(v) for v in p)
        raise ValueError(f"coordinates are numbers, got [{shown}]")
    return p


# (inf / nan pass the number check so that `_point` names the whole point: the config refuses them elsewhere)
Point = Annotated[list[Annotated[float, Field(allow_inf_nan=True)]], BeforeValidator(_no_booleans), AfterValidator(_point)]
ZonePolygon = Annotated[list[Point], AfterValidator(_polygon),
                        BeforeValidator(_at_most(MAX_ZONE_POINTS, "a zone has at most {limit} points, got {n}"))]
LineSegment = Annotated[list[Point], AfterValidator(_segment),
                        BeforeValidator(_at_most(2, "a line needs exactly 2 points, got {n}"))]
Zones = Annotated[dict[Annotated[str, AfterValidator(_named("zone"))], ZonePolygon],
                  BeforeValidator(_at_most(MAX_PER_CAMERA, "at most {limit} zones per camera, got {n}"))]
Lines = Annotated[dict[Annotated[str, AfterValidator(_named("line"))], LineSegment],
                  BeforeValidator(_at_most(MAX_PER_CAMERA, "at most {limit} lines per camera, got {n}"))]
ZONES_HELP = "name → polygon [[x, y], ...] (>= 3 points), in pixels or all in 0..1"
LINES_HELP = "name → [[x1, y1], [x2, y2]]; crossing from the right of 1→2 to its left is 'in'"


def is_pixels(points: Sequence[Sequence[float]]) -> bool:
    """A zone or line is in pixels when any of its values is > 1 (else relative, 0..1)."""
    return any(v > 1 for p in points for v in p)


def in_frame_pixels(shapes: Mapping[str, Sequence[Sequence[float]]], kind: str,
                    sizes: Mapping[str, tuple[int, int]], width: int, height: int) -> dict[str, list[list[float]]]:
    """Pixel shapes (``kind``: "zones" or "lines") in pixels of a ``width`` × ``height`` frame,
    each scaled from the frame size it is in (``sizes``, keyed ``"<kind>:<name>"``; one not
    there is in this frame's pixels already; `rescaled`). A line that anchors could cross at
    its own size stays crossable: scaled into the outer pixels' band, where no anchor is
    (`Geometry.anchors`), it is pulled inside that band."""
    out = {}
    for name, points in shapes.items():
        w0, h0 = sizes.get(f"{kind}:{name}", (width, height))
        if (w0, h0) == (width, height) or min(w0, h0) <= 0:  # (no size: `resolve_geometry` says so)
            out[name] = [list(p) for p in points]
            continue
        scaled = [[rescaled(x, w0, width), rescaled(y, h0, height)] for x, y in points]
        if kind == "lines" and len(points) == 2 and not through_anchors(np.asarray(scaled), width, height) \
                and through_anchors(np.asarray(points, np.float64), w0, h0):
            scaled = pulled_inside(np.asarray(scaled), width, height).tolist()
        out[name] = scaled
    return out


def rescaled(v: float, old: int, new: int) -> float:
    """A pixel coordinate of an axis ``old`` pixels long on one ``new`` long, kept in 0..new: in
    proportion (``v·new/old``), but for the last ``_EDGE`` pixels, which keep their distance
    to the far edge, so a shape drawn to the last pixel's index (``height - 1``, as many
    annotation tools give it) stays on the side of a clipped box's anchor (`Geometry.anchors`,
    1.5 px from that edge) it was on: 719 of 720 was 1078.5 of 1080, no longer holding such an
    anchor, and a car cut off by the frame's bottom was never counted. Between the two, a span
    of ``_EDGE·max(1, old/new)`` pixels is stretched to join them (in order, whatever the scale)."""
    edge = old - _EDGE
    span = _EDGE * max(1.0, old / new)
    start = edge - span
    if start <= 0 or v <= start:  # (a frame a few pixels across: all in proportion)
        out = v * new / old  # (not v·(new/old): the old edge lands on the new one exactly)
    elif v >= edge:
        out = new - (old - v)
    else:
        joined = start * new / old
        out = joined + (v - start) * (new - _EDGE - joined) / span
    return min(max(out, 0.0), float(new))


_EDGE = 1 + ANCHOR_INSET  # the far edge's pixels beyond the anchors' centre (`rescaled`)


def restored_pixel_sizes(snapshot: Mapping[str, Any], zones: Mapping[str, Any],
                         lines: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """The frame sizes a snapshot's pixel zones and lines were in (`in_frame_pixels`), for those
    the config still has with the same points (one changed since: the next frame's). An older
    snapshot's one ``pixel_size`` for all counts only when every shape is the same."""
    before = {"zones": snapshot.get("zones", zones) or {}, "lines": snapshot.get("lines") or {}}
    now = {"zones": zones, "lines": lines}
    sizes = snapshot.get("pixel_sizes")
    if sizes is None:
        one = snapshot.get("pixel_size")
        same = before["zones"] == zones and before["lines"] == lines
        sizes = {f"{kind}:{name}": one for kind in now for name in now[kind]} if one and same else {}
    out = {}
    for key, size in (sizes.items() if isinstance(sizes, Mapping) else ()):  # (else not as percept writes it)
        kind, _, name = str(key).partition(":")
        try:
            if kind in now and name in now[kind] and before[kind].get(name) == now[kind][name]:
                out[key] = (int(size[0]), int(size[1]))
        except (TypeError, ValueError, IndexError, KeyError, AttributeError, OverflowError):
            continue
    return out


def is_pixels_geometry(zones: Mapping[str, Sequence[Sequence[float]]], lines: Mapping[str, Sequence[Sequence[float]]]) -> bool:
    """Whether a camera's zones and lines are in pixels (they are all one or the other)."""
    return any(is_pixels(p) for p in (*zones.values(), *lines.values()))


def _relative_but_for(points: Sequence[Sequence[float]]) -> str | None:
    """Why a zone read as pixels was surely meant as relative (0..1) with a typo: two or more of its
    points, and at least as many as the rest, inside the frame's first pixel (``[0, 10]`` among
    fractions made it a sliver 1 px wide at the frame's edge), else None."""
    def relative(p: Sequence[float]) -> bool:
        return all(0 <= v <= 1 for v in p)

    inside = [p for p in points if relative(p)]
    outside = [p for p in points if not relative(p)]
    if not outside or len(inside) < 2 or len(inside) < len(outside):
        return None
    shown = ", ".join(f"[{', '.join(f'{v:g}' for v in p)}]" for p in outside)
    return (f"{len(inside)} of its points are relative (0..1) but {shown} {'is' if len(outside) == 1 else 'are'} "
            f"not, which makes it pixels (a sliver in the frame's first pixel): give every point as a fraction of "
            f"the frame (0..1), or every point in pixels")


def check_units(zones: Mapping[str, Any], lines: Mapping[str, Any]) -> None:
    """Raise (a pydantic error located at the offending zone or line) when one camera's zones and
    lines mix pixel and relative coordinates. For `CameraConfig`'s model validator."""
    items = [("zones", n, p) for n, p in zones.items()] + [("lines", n, p) for n, p in lines.items()]
    for kind, name, points in items:
        top = max((v for p in points for v in p), default=0.0)
        if 1 < top <= 2:  # read as pixels it would be a shape of 2 px at most: surely meant as 0..1
            raise error_at((kind, name), f"a value of {top:g} makes it pixels, at most 2 px across: relative "
                                         "coordinates are 0..1 (for the frame's edge write 1)")
        typo = _relative_but_for(points)
        if typo:
            raise error_at((kind, name), typo)
    if not items:
        return
    first_kind, first_name, first_points = items[0]
    first_px = is_pixels(first_points)
    for kind, name, points in items[1:]:
        if is_pixels(points) != first_px:
            first = f"{first_kind}.{first_name}"
            what = (f"relative (all values in 0..1) but {first} is in pixels" if first_px
                    else f"in pixels (a value > 1) but {first} is relative (all values in 0..1)")
            raise error_at((kind, name), f"{what}: one camera's zones and lines must all use the same unit")


# --- runtime --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """A camera's zones and lines in pixels of one frame size."""

    width: int
    height: int
    anchor: Anchor
    zones: Mapping[str, np.ndarray]  # name → (k, 2) float64 polygon
    lines: Mapping[str, np.ndarray]  # name → (2, 2) float64 segment, point 1 then point 2

    def anchors(self, xyxy: np.ndarray) -> np.ndarray:
        """The boxes' anchor points, inside the frame's outer pixels' centres at most: a box the
        detector clipped at the bottom or right edge has its anchor on the frame's edge, where a
        zone drawn to that edge (to ``height``, or to ``height - 1``, the last pixel's index as
        many annotation tools give it) would otherwise not count it as inside."""
        points = anchor_point(xyxy, self.anchor)
        return np.clip(points, ANCHOR_INSET, [self.width - 1 - ANCHOR_INSET, self.height - 1 - ANCHOR_INSET])


def resolve_geometry(
    zones: Mapping[str, Sequence[Sequence[float]]],
    lines: Mapping[str, Sequence[Sequence[float]]],
    anchor: Anchor,
    width: int,
    height: int,
    *,
    where: str = "camera",
) -> Geometry:
    """Zones and lines in pixels of a ``width``×``height`` frame: relative coordinates are scaled,
    pixel ones checked to lie inside the frame (``GeometryError`` naming ``where.zones.<name>[i]``)."""
    if width <= 0 or height <= 0:
        raise GeometryError(f"{where}: frame size {width}x{height} is not usable")
    shapes = [("zones", n, p) for n, p in zones.items()] + [("lines", n, p) for n, p in lines.items()]
    pixels = any(is_pixels(p) for _, _, p in shapes)
    if pixels and not all(is_pixels(p) for _, _, p in shapes):
        raise GeometryError(f"{where}: zones and lines mix pixel and relative (0..1) coordinates")
    out: dict[str, dict[str, np.ndarray]] = {"zones": {}, "lines": {}}
    for kind, name, points in shapes:
        xy = np.asarray(points, np.float64).reshape(-1, 2)
        if pixels:
            for i, (x, y) in enumerate(xy):
                if not (0 <= x <= width and 0 <= y <= height):
                    raise GeometryError(
                        f"{where}.{kind}.{name}[{i}]: {_fmt((x, y))} is outside the {width}x{height} frame "
                        f"(pixel coordinates: x in 0..{width}, y in 0..{height})"
                    )
        else:  # (one off the edges in the outer pixels' band at this size, as 0.997 at 480 px: pulled in)
            xy = xy * (width, height)
            if kind == "lines" and not through_anchors(xy, width, height) and off_the_edges(xy / (width, height)):
                xy = pulled_inside(xy, width, height)
        if kind == "lines" and math.hypot(*(xy[1] - xy[0])) < 1.0:  # (a tiny frame): its band would divide by 0
            raise GeometryError(f"{where}.lines.{name}: shorter than a pixel on the {width}x{height} frame")
        if kind == "lines" and not through_anchors(xy, width, height):
            raise GeometryError(f"{where}.lines.{name}: {_fmt(xy[0])} → {_fmt(xy[1])} runs along the edge of the "
                                f"{width}x{height} frame, which no object's anchor is beyond (x {ANCHOR_INSET:g}.."
                                f"{width - 1 - ANCHOR_INSET:g}, y {ANCHOR_INSET:g}..{height - 1 - ANCHOR_INSET:g}): "
                                "it would never be crossed; draw it inside the frame")
        out[kind][name] = xy
    return Geometry(width, height, anchor, out["zones"], out["lines"])


def anchor_point(xyxy: np.ndarray | Sequence[float], anchor: Anchor = "bottom_center") -> np.ndarray:
    """The anchor of each box: (2,) for one xyxy box, (N, 2) for N boxes."""
    boxes = np.asarray(xyxy, np.float64)
    b = boxes.reshape(-1, 4)
    x = (b[:, 0] + b[:, 2]) / 2
    y = b[:, 3] if anchor == "bottom_center" else (b[:, 1] + b[:, 3]) / 2
    out = np.stack([x, y], axis=1)
    return out[0] if boxes.ndim == 1 else out


def points_in_polygon(points: np.ndarray | Sequence[Sequence[float]], polygon: np.ndarray) -> np.ndarray:
    """(N,) bool: which of N points lie inside the polygon (even-odd ray casting, vectorised).
    A point exactly on an edge may fall either way (deterministically)."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    poly = np.asarray(polygon, np.float64).reshape(-1, 2)
    x, y = pts[:, 0:1], pts[:, 1:2]  # (N, 1) against (1, k) edges
    x1, y1 = poly[:, 0][None, :], poly[:, 1][None, :]
    x2, y2 = np.roll(poly[:, 0], -1)[None, :], np.roll(poly[:, 1], -1)[None, :]
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    hits = straddles & (x < x_cross)
    return (np.count_nonzero(hits, axis=1) % 2) == 1


def clear_of_edges(points: np.ndarray, xyxy: np.ndarray, polygon: np.ndarray, margin: float,
                   frame: tuple[int, int] | None = None) -> np.ndarray:
    """(N,) bool: which of N anchor points lie at least their band away from every edge of the
    polygon (zone hysteresis: closer, the anchor is on neither side of it). An edge's band is
    ``margin`` × the point's box across that edge, as `line_bands` measures it, at most a
    quarter of the zone's width across it there (`_thickness`: a strip narrower than two bands,
    alone or as the narrow arm of a wider zone, still has an inside that counts). An edge on the border of the ``frame`` (width, height) has no band:
    nothing in view crosses it, and a box cut off at the bottom has its anchor there."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    poly = np.asarray(polygon, np.float64).reshape(-1, 2)
    d = np.roll(poly, -1, axis=0) - poly  # (k, 2) edges
    length = np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)
    rel = pts[:, None, :] - poly[None, :, :]  # (N, k, 2)
    t = np.clip((rel * d).sum(-1) / length ** 2, 0.0, 1.0)
    dist = np.hypot(*(rel - t[..., None] * d).transpose(2, 0, 1))  # (N, k): to each edge segment
    extent = np.abs(cross_2d(d[:, None, 0], d[:, None, 1], (poly[None, :, 0] - poly[:, None, 0]),
                           (poly[None, :, 1] - poly[:, None, 1]))).max(axis=1) / length  # (k,): across each edge
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    across = (np.abs(d[:, 1])[None, :] * (b[:, 2] - b[:, 0])[:, None]
              + np.abs(d[:, 0])[None, :] * (b[:, 3] - b[:, 1])[:, None]) / length  # (N, k)
    band = np.minimum(margin * across, extent[None, :] / 4)
    near = np.nonzero(dist < band)  # other pairs are clear whatever the width there (it only narrows a band)
    if len(near[0]):  # (the width costs k a pair: for the anchors near an edge, across that edge only)
        band[near] = np.minimum(band[near], _thickness(pts[near[0]], near[1], poly, d, length) / 4)
    if frame is not None:
        ends = np.stack([poly, np.roll(poly, -1, axis=0)], axis=1)  # (k, 2 ends, 2)
        width, height = frame
        on_border = ((ends[..., 0] <= 1.0).all(1) | (ends[..., 0] >= width - 1.0).all(1)  # (the last pixel's
                     | (ends[..., 1] <= 1.0).all(1) | (ends[..., 1] >= height - 1.0).all(1))  # index counts too)
        band[:, on_border] = 0.0
    return (dist >= band).all(axis=1)


def _thickness(pts: np.ndarray, edges: np.ndarray, poly: np.ndarray, d: np.ndarray, length: np.ndarray) -> np.ndarray:
    """(M,): the polygon's width at each point ``pts[m]`` across edge ``edges[m]`` — from that
    edge's line through the point, along the edge's normal, to the next edge beyond it (inf if
    none): a zone's narrow arm has a narrow inside there, though the zone is wide elsewhere."""
    de = d[edges]  # (M, 2): each pair's edge
    rel = pts - poly[edges]
    cross = cross_2d(de[:, 0], de[:, 1], rel[:, 0], rel[:, 1])  # (M,): which side, how far
    normal = np.stack([-de[:, 1], de[:, 0]], axis=1) / length[edges][:, None]
    u = np.where(cross[:, None] >= 0, 1.0, -1.0) * normal  # (M, 2): away from the edge
    to_f = poly[None, :, :] - pts[:, None, :]  # (M, k, 2): the point to each edge's start
    denom = cross_2d(u[:, None, 0], u[:, None, 1], d[None, :, 0], d[None, :, 1])  # (M, k)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = cross_2d(to_f[..., 0], to_f[..., 1], d[None, :, 0], d[None, :, 1]) / denom
        s = cross_2d(to_f[..., 0], to_f[..., 1], u[:, None, 0], u[:, None, 1]) / denom
    hit = (np.abs(denom) > 1e-12) & (t > 1e-9) & (s >= 0) & (s <= 1)
    beyond = np.where(hit, t, np.inf).min(axis=1)  # (M,)
    return np.abs(cross) / length[edges] + beyond
