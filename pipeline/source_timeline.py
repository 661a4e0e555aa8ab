"""A camera's timeline (pipeline/sources.py): a frame's pts from its capture's position, made to
increase across a file's passes and past its gaps, and when a paced frame is due.

A file's timeline is its timestamps, made to increase: a file without any (raw H.264) or whose
timestamps start again (joined MPEG-TS recordings) goes on at its frame rate. A live camera's
frames are sampled on the clock; one read at its own timestamps' pace (``paced``: HLS) is
paced as a realtime file is.
"""

from __future__ import annotations

from typing import Callable

GAP_OVER_STEP = 4  # `decode: keyframes`: a file's gap this many times its longest step is closed (`pts`)


class Timeline:
    """One camera's pts and pacing; ``pass_started`` at each open of its capture."""

    def __init__(self, *, is_file: bool, realtime: bool, watchdog_s: float, closes_gaps: bool,
                 native_fps: float | Callable[[], float | None] | None):
        self.is_file = is_file
        self.realtime = realtime  # paced: a realtime file, or a live stream read at its own pace
        self.watchdog_s = watchdog_s
        # (False: a capture of keyframes alone, its frames seconds apart by design: a paced
        # file's gap past ``watchdog_s`` is closed only when it is far longer than its steps)
        self.closes_gaps = closes_gaps
        self.native_fps = native_fps  # a file's frame rate, or what probes it (`probe`)
        self.pace_origin: tuple[float, float] | None = None  # (monotonic, pts) when pacing
        self.shift = 0.0  # added to a file's positions so its timeline keeps increasing (`pts`)
        self.step: float | None = None  # this pass: the longest step between two frames' positions

    def probe(self, log_failure: Callable[[], None]) -> None:
        """The file's frame rate asked of what probes it (in the reader thread, before the first
        open); a probe that fails leaves none (paced at 25 fps: `frame_s`)."""
        if callable(self.native_fps):
            try:
                self.native_fps = self.native_fps()
            except Exception:
                log_failure()
                self.native_fps = None

    def pass_started(self) -> None:
        self.shift, self.step = 0.0, None

    def repace(self) -> None:
        """Paced again from the next frame (after a wait or a reopen), not caught up on."""
        self.pace_origin = None

    @property
    def frame_s(self) -> float:
        """A file's frame interval (its frame rate; 25 fps when it has none)."""
        return 1.0 / self.native_fps if self.native_fps and not callable(self.native_fps) else 0.04

    def ahead(self, now: float, pts: float) -> float:
        """Seconds until the paced frame at ``pts`` is due (monotonic ``now``; 0 or less: now)."""
        if self.pace_origin is None:
            self.pace_origin = (now, pts)
        wall0, pts0 = self.pace_origin
        ahead = wall0 + (pts - pts0) - now
        if not self.is_file and abs(ahead) > self.watchdog_s:
            # a live stream's timestamps that jumped (a discontinuity, its encoder restarted) by
            # more than the watchdog's time: paced from this frame on, neither waited out (silent
            # and shown online, the watchdog held off) nor, jumped back, read flat out (ahead of
            # its live edge: reconnecting, its last segments read again)
            self.pace_origin = (now, pts)
            return 0.0
        return ahead

    def pts(self, pos_ms: float | None, pts_offset: float, last_pts: float | None) -> float | None:
        """A frame's pts: the capture's position plus ``pts_offset`` (loops) and the shift that
        keeps a file's timeline increasing, and a paced one's without gaps longer than
        ``watchdog_s`` (a frame at or before the last one, or that far after it, comes one frame
        interval after it — with keyframes alone, one step of its keyframes: a file without
        timestamps, whose timestamps start again, or recordings joined). A file's frame without a
        position (raw H.264) comes one frame interval after the last."""
        if pos_ms is None or pos_ms < 0:
            if not self.is_file:
                return None  # (a live camera's frames are sampled on the clock)
            return pts_offset if last_pts is None else last_pts + self.frame_s
        pts = pts_offset + self.shift + pos_ms / 1000.0
        if not self.is_file or last_pts is None:
            return pts
        gap, step = pts - last_pts, self.step
        # a gap longer than the watchdog's (joined recordings) is closed too where the file is
        # paced (the reader would wait it out, silent, and the watchdog take the camera for lost):
        # any such gap when every frame is decoded; with keyframes alone (seconds apart by
        # design), one over GAP_OVER_STEP times the pass's longest step so far (a scene cut's
        # extra keyframe does not make a long GOP look like a gap), which then stands for it
        if gap <= 0 or (self.realtime and gap > self.watchdog_s and (
                self.closes_gaps or (step is not None and gap > GAP_OVER_STEP * step))):
            gap = self.frame_s if self.closes_gaps or step is None else max(step, self.frame_s)
            self.shift += last_pts + gap - pts
            return last_pts + gap
        self.step = gap if step is None else max(step, gap)
        return pts
