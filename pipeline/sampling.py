"""Which frames of a camera are kept: `FpsSampler` (at most ``fps`` frames per second of a
timeline) and the phases that spread live cameras over the sampling period.

Cameras at the same ``fps`` that start together would otherwise keep their frames at the same
instants, and the detector would get them as bursts (all cameras' frames at once, then nothing):
the latency of a burst is that of its last frame. A live camera's frames fall instead on its own
phase of a grid of the period; each live camera opened in a process takes the next phase of the
golden-ratio sequence (0, 0.618, 0.236, 0.854, …), which stays evenly spread for any number of
cameras. Files keep their first frame (their timeline is the file's)."""

from __future__ import annotations

import itertools
import math
import threading

GOLDEN = (math.sqrt(5) - 1) / 2
_opened = itertools.count()
_lock = threading.Lock()


def phase_of(k: int) -> float:
    """The ``k``-th phase of the sequence, a fraction of the period."""
    return (k * GOLDEN) % 1.0


def next_phase() -> float:
    """The phase for the next live camera opened in this process."""
    with _lock:
        return phase_of(next(_opened))


# how early a frame may be for its grid point on any timeline: a container's timestamps in whole
# milliseconds (MKV, WebM) put a 30 fps file's frames at 33, 67, 100 ms, each just before the grid
# of 1/30 s: a file sampled at its own rate lost up to a fifth of its frames
TIMESTAMP_SLACK_S = 0.0015


class FpsSampler:
    """Keeps at most ``fps`` frames per second of the given timeline (0 = keep all). With a
    ``phase``, the kept frames are the first at or after each point ``(k + phase) × period`` of
    the timeline; without one, the first frame is kept and the period counts from it."""

    def __init__(self, fps: float, phase: float | None = None):
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.phase = phase
        self._next: float | None = None
        self._last: float | None = None  # the timeline's previous frame (kept or not)
        self._interval: float | None = None  # the frames' mean interval (live: arrivals jitter)
        self._kept: float | None = None  # the last frame kept

    def _early_by(self, t: float) -> float:
        """How early a live camera's frame may come for its grid point: its arrival jitters, and
        at ``fps`` near the camera's own rate a frame a few ms early would be passed over for
        the next one a whole interval later (a 5 fps camera at fps 5, 10 ms of jitter: 3.6
        frames/s at worst). Up to half the frames' interval (never two frames for one point)
        and a quarter of the period."""
        last, self._last = self._last, t
        if last is not None and 0 < t - last <= 4 * self.period:
            self._interval = t - last if self._interval is None else 0.9 * self._interval + 0.1 * (t - last)
        if self.phase is None or self._interval is None:  # (a file's timeline is exact)
            return 0.0
        return min(0.25 * self.period, 0.5 * self._interval)

    def _grid_point(self, t: float) -> float:
        """The first point of the phase's grid at or after ``t``."""
        offset = (self.phase or 0.0) * self.period
        return offset + math.ceil((t - offset) / self.period - 1e-9) * self.period

    def accept(self, t: float) -> bool:
        if self.period == 0:
            return True
        early = self._early_by(t)
        if self._next is None:
            self._next = t if self.phase is None else self._grid_point(t)
        if early and self._kept is not None and t - self._kept < self.period - early:
            early = 0.0  # (right after a late frame: early, it would reach the detector beside it)
        if t < self._next - max(early, TIMESTAMP_SLACK_S):
            return False
        self._kept = t
        late = t - self._next > self.period  # a gap in the timeline: start again from here
        if not late:
            self._next += self.period
        elif self.phase is None:
            self._next = t + self.period
        else:  # the grid again, half a period on at least: a frame kept just before a point of
            # it had the next frame, a camera interval later, kept beside it (a burst)
            self._next = self._grid_point(t + 0.5 * self.period)
        return True

    def reset(self) -> None:
        self._next = self._last = self._interval = self._kept = None
