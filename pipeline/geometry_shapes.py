"""Whether a zone's points make a simple polygon (pipeline/geometry.py's zone type): not all on
one line, no corner listed twice, no edge touching or crossing another. Each fault is said
naming the points, as the config error shows it."""

from __future__ import annotations

import numpy as np


def polygon_fault(xy: np.ndarray) -> str | None:
    """What is wrong with a zone of these points (n × 2, n ≥ 3), or None."""
    if _on_one_line(xy):
        return "a zone needs an area: its points are all on one line"
    same = _repeated_point(xy)
    if same is not None:
        return (f"a zone's points must all differ: point {same[1]} repeats point {same[0]} "
                "(list each corner once, in order around the zone)")
    touching = _point_on_edge(xy)
    if touching is not None:
        return (f"a zone's edges must not touch: point {touching[1]} lies on the edge from point {touching[0]} "
                "(list the points in order around the zone)")
    crossing = _crossing_edges(xy)
    if crossing is not None:
        return (f"a zone's edges must not cross: the edge from point {crossing[0]} crosses the edge from point "
                f"{crossing[1]} (list the points in order around the zone)")
    return None


def _on_one_line(xy: np.ndarray) -> bool:
    d = xy - xy[0]
    far = d[np.argmax((d * d).sum(axis=1))]  # the point farthest from the first
    return bool(np.abs(d[:, 0] * far[1] - d[:, 1] * far[0]).max() <= 1e-12 * max(float(far @ far), 1e-12))


def _repeated_point(xy: np.ndarray) -> tuple[int, int] | None:
    """The first (i, j), i < j, of two equal points, or None (an outline listed twice: every point
    of it is outside by the even-odd rule)."""
    same = np.triu((xy[:, None, :] == xy[None, :, :]).all(axis=2), 1)
    i, j = np.nonzero(same)
    return (int(i[0]), int(j[0])) if len(i) else None


def _point_on_edge(xy: np.ndarray) -> tuple[int, int] | None:
    """The first (edge i, point j) of a point lying on an edge it is not an end of (two edges
    that touch or overlap: a bowtie crossing at a corner), or None. Call with no repeated point."""
    a, d = xy, np.roll(xy, -1, axis=0) - xy  # edge i: from a[i] along d[i]
    r = xy[None, :, :] - a[:, None, :]  # [i, j]: point j from edge i's start
    cross = d[:, None, 0] * r[..., 1] - d[:, None, 1] * r[..., 0]
    along = (r * d[:, None, :]).sum(axis=2)
    length2 = (d * d).sum(axis=1)[:, None]
    on = (np.abs(cross) <= 1e-9 * length2) & (along >= 0) & (along <= length2)
    n = len(xy)
    ends = np.arange(n)
    on[ends, ends] = on[ends, (ends + 1) % n] = False
    i, j = np.nonzero(on)
    return (int(i[0]), int(j[0])) if len(i) else None


def _crossing_edges(xy: np.ndarray) -> tuple[int, int] | None:
    """The first two edges of a closed polygon (edge i: point i → i+1) that cross each other
    properly (a bowtie), or None; edges that only touch or overlap are not counted."""
    a, b = xy, np.roll(xy, -1, axis=0)
    ex, ey = (b - a)[:, 0:1], (b - a)[:, 1:2]  # edge i's direction, as a column

    def side(r: np.ndarray) -> np.ndarray:  # [i, j]: the side of edge i that point r[j] is on (-1, 0, 1)
        return np.sign(ex * (r[None, :, 1] - a[:, 1:2]) - ey * (r[None, :, 0] - a[:, 0:1]))

    straddles = side(a) * side(b) < 0  # [i, j]: edge j's ends on both sides of edge i's line
    crosses = straddles & straddles.T
    n = len(xy)
    i, j = np.nonzero(np.triu(crosses, 2))  # neither an edge with itself nor with the next
    keep = ~((i == 0) & (j == n - 1))  # the first and last edges share point 0
    return (int(i[keep][0]), int(j[keep][0])) if keep.any() else None
