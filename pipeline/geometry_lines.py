"""Counting lines at runtime (numpy): which movements cross a segment and in which direction,
each anchor's distance from a line and the hysteresis band around it, and whether a line can be
crossed at all in a frame (`through_anchors`). The config side and the directions' meaning are in
pipeline/geometry.py's docstring."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

Direction = Literal["in", "out"]
ANCHOR_INSET = 0.5  # anchors are kept this far inside the frame's outer pixels' centres (`Geometry.anchors`)


def cross_2d(ax: np.ndarray, ay: np.ndarray, bx: np.ndarray, by: np.ndarray) -> np.ndarray:
    return ax * by - ay * bx


def line_crossings(prev: np.ndarray, points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """(N,) int8 for N movements prev[i] → points[i] against one segment: +1 ``in`` (right-hand
    side of point 1 → point 2 to its left, image coordinates), -1 ``out``, 0 no crossing. A point
    on the line counts as right-hand side; the movement must intersect the segment itself."""
    a = np.asarray(prev, np.float64).reshape(-1, 2)
    b = np.asarray(points, np.float64).reshape(-1, 2)
    p1, p2 = np.asarray(line, np.float64).reshape(2, 2)
    dx, dy = p2 - p1
    left_before = cross_2d(dx, dy, a[:, 0] - p1[0], a[:, 1] - p1[1]) < 0
    left_after = cross_2d(dx, dy, b[:, 0] - p1[0], b[:, 1] - p1[1]) < 0
    mx, my = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
    s1 = cross_2d(mx, my, p1[0] - a[:, 0], p1[1] - a[:, 1])
    s2 = cross_2d(mx, my, p2[0] - a[:, 0], p2[1] - a[:, 1])
    on_segment = np.sign(s1) * np.sign(s2) <= 0  # the line's end points are on both sides of the movement
    moved = left_before != left_after
    out = np.zeros(len(a), np.int8)
    out[moved & on_segment & left_after] = 1
    out[moved & on_segment & ~left_after] = -1
    return out


def line_offsets(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """(N,) signed distance in pixels of N points from the line through the segment (negative:
    its left-hand side, see the module doc)."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    p1, p2 = np.asarray(line, np.float64).reshape(2, 2)
    dx, dy = p2 - p1
    return cross_2d(dx, dy, pts[:, 0] - p1[0], pts[:, 1] - p1[1]) / math.hypot(dx, dy)


def line_bands(xyxy: np.ndarray, line: np.ndarray, margin: float) -> np.ndarray:
    """(N,) half-width in pixels of the band around the line in which each box's anchor has no
    side: ``margin`` × the box's extent across the line (along the line's normal)."""
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    p1, p2 = np.asarray(line, np.float64).reshape(2, 2)
    dx, dy = p2 - p1
    length = math.hypot(dx, dy)
    return margin * (abs(dy) * (b[:, 2] - b[:, 0]) + abs(dx) * (b[:, 3] - b[:, 1])) / length


def line_crossing(prev_point: Sequence[float], point: Sequence[float], line: np.ndarray | Sequence[Sequence[float]]
                  ) -> Direction | None:
    """``in``, ``out`` or None for one movement ``prev_point`` → ``point`` against a segment."""
    k = int(line_crossings(np.asarray([prev_point]), np.asarray([point]), np.asarray(line))[0])
    return "in" if k > 0 else "out" if k < 0 else None


def through_anchors(segment: np.ndarray, width: int, height: int) -> bool:
    """Whether a segment passes through the inside of the rectangle the anchors are kept in
    (`Geometry.anchors`), so that an anchor can be on either side of it."""
    return _through((ANCHOR_INSET, ANCHOR_INSET), (width - 1 - ANCHOR_INSET, height - 1 - ANCHOR_INSET), segment)


def off_the_edges(relative: np.ndarray) -> bool:
    """Whether a segment in relative coordinates (0..1) passes through the frame's inside, not
    along one of its edges."""
    return _through((0.0, 0.0), (1.0, 1.0), relative)


def pulled_inside(segment: np.ndarray, width: int, height: int) -> np.ndarray:
    """A segment off the frame's edges that falls in the outer pixels' band at this size, where no
    anchor is: its points moved inside that band, so that it stays crossable."""
    inset = ANCHOR_INSET + 0.01
    return np.clip(segment, inset, (width - 1 - inset, height - 1 - inset))


def _through(lo: tuple[float, float], hi: tuple[float, float], segment: np.ndarray) -> bool:
    """Whether a segment passes through the open rectangle ``lo``..``hi`` (Liang–Barsky clipping)."""
    (x0, y0), (x1, y1) = segment
    t0, t1 = 0.0, 1.0
    for start, delta, low, high in ((x0, x1 - x0, lo[0], hi[0]), (y0, y1 - y0, lo[1], hi[1])):
        if delta == 0:
            if not low < start < high:
                return False
            continue
        a, b = (low - start) / delta, (high - start) / delta
        t0, t1 = max(t0, min(a, b)), min(t1, max(a, b))
    return t0 < t1
