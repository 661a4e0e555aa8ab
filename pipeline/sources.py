"""Video sources: an explicit state machine per camera, with reconnects and a keep-latest slot.

States: ``connecting → online → reconnecting → online …``; ``failed`` when retrying cannot help
(a file that does not exist or is not video); ``stopped`` at the end of a non-looping file or on
`stop()`. Every change emits a `StatusEvent`. Network sources reconnect forever with exponential
backoff (0.5 s → 10 s). `seq` is strictly increasing per camera across reconnects and loops, and
the caller passes ``seq_start`` so it is never reused across restarts either.

`open_capture` (pipeline/capture.py) is the factory that touches the world (OpenCV/FFmpeg); `VideoSource` receives an
opener and clocks so it is testable without a camera. Sampling, pacing, the watchdog and backoff
run on the monotonic clock (a wall clock stepped by NTP neither starves nor floods a camera);
only ``frame_ts`` is wall time; pts and pacing: pipeline/source_timeline.py. After `stop()` the
source reports nothing but its end: a reader still opening when its camera was replaced cannot
write the old camera's state over the new one's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .backoff import Backoff
from .redact import redact
from .sampling import FpsSampler, next_phase
from .schema import FrameMeta
from .source_timeline import Timeline
from .source_types import ALLOWED, Capture, Frame, InvalidTransition, SourceError, SourceState, StatusEvent

log = logging.getLogger("percept.sources")


class VideoSource:
    """Reads one camera forever (or to the end of a file) and yields sampled frames."""

    def __init__(
        self,
        camera: str,
        open_capture: Callable[[], Capture],
        *,
        fps: float,
        is_file: bool,
        loop: bool = False,
        realtime: bool = True,
        native_fps: float | Callable[[], float | None] | None = None,
        watchdog_s: float = 10.0,
        backoff: Backoff | None = None,
        seq_start: int = 0,
        on_status: Callable[[StatusEvent], None] | None = None,
        wants_frame: Callable[[], bool] | None = None,
        wait_for_demand: Callable[[float], bool] | None = None,
        prepare: Callable[[np.ndarray, FrameMeta], Any] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] | None = None,
        secrets: tuple[str, ...] = (),
        sparse: bool = False,
        paced: bool = False,
        read_timeout_s: float | None = None,
    ):
        self.camera = camera
        # ``sparse``: a capture that skips frames (keyframes only), its frames seconds apart by
        # design: a paced file's gap past ``watchdog_s`` is not closed (`Timeline.pts`), and a live
        # one keeps each frame that comes (on its phase of the period, pipeline/sampling.py, it
        # waited for its grid point and passed over its first keyframe: a GOP late, or none)
        self._read_timeout_s = read_timeout_s  # (the capture's: named when a slow camera's frames come near it)
        self._open = open_capture
        self._sampler = FpsSampler(fps, phase=None if is_file or sparse else next_phase())
        self._is_file = is_file
        self._loop = loop
        # ``paced``: a live stream read at its own timestamps' pace, as a realtime file is (HLS: its
        # segments download whole, seconds of video at once; read as they came, a camera's frames
        # came in bursts a segment apart, and the reader, waiting a segment for the next, timed
        # out, reconnected and read the last segments again: the same video published twice)
        # a file's frame rate, or what probes it (called in the reader thread, before the first open)
        self._timeline = Timeline(is_file=is_file, realtime=(realtime and is_file) or paced, watchdog_s=watchdog_s,
                                  closes_gaps=not sparse, native_fps=native_fps)
        self._watchdog_s = watchdog_s
        self._backoff = backoff or Backoff()
        self._next_seq = seq_start
        self._on_status = on_status or (lambda event: None)
        self.detached = False  # `detach`: its owner moved on, nothing of this reader is said
        # Asked before colour-converting a sampled frame: False (the consumer cannot take a frame
        # now) skips the conversion and counts the frame as skipped.
        self._wants_frame = wants_frame
        self._wait_for_demand = wait_for_demand
        # Runs in the reader thread on each frame that goes on (after ``wants_frame``): the
        # detector's letterboxed input is made there, off the consumer's event loop.
        self._prepare = prepare
        self.skipped = 0
        self.converted = 0  # frames colour-converted (and prepared): those the consumer was to take
        self._clock = clock  # wall time: frame_ts and status events
        self._monotonic = monotonic or (time.monotonic if clock is time.time else clock)
        self._sleep = sleep
        self._secrets = secrets  # what errors are scrubbed of besides URL credentials (the camera's ${VAR}s)
        self._lock = threading.Lock()
        self._saying = threading.RLock()  # held across a state change and its status event
        self._state = SourceState.CONNECTING
        self._stop = threading.Event()
        self.frames_read = 0
        self.last_error: str | None = None
        self.last_frame_at: float | None = None  # monotonic
        self._pass_frames = 0  # frames grabbed in the current pass over a file
        # `FrameMeta.steady_ts`: a clock NTP does not step, that counts a suspended machine's time
        self._steady_clock = monotonic or (_boottime if clock is time.time else clock)

    @property
    def state(self) -> SourceState:
        return self._state

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def _transition(self, state: SourceState, error: str | None = None, *, only_from: SourceState | None = None) -> None:
        # one change said at a time, in the order made: the watchdog's (the event loop) and the
        # reader's could commit in one order and reach the status hook in the other, leaving the
        # camera's hash `reconnecting` while it streamed
        with self._saying:
            self._change(state, error, only_from)

    def _change(self, state: SourceState, error: str | None, only_from: SourceState | None = None) -> None:
        with self._lock:
            previous = self._state
            if only_from is not None and previous != only_from:
                return  # (the watchdog's change, the reader's own made meanwhile: no longer what it was for)
            if state == previous and error is None:
                return
            if self._stop.is_set() and state not in (SourceState.STOPPED, SourceState.FAILED):
                return  # a late open or read after stop(): the camera's owner has moved on
            if state != previous and state not in ALLOWED[previous]:
                raise InvalidTransition(f"camera {self.camera}: {previous.value} → {state.value} not allowed")
            said = None if error is None else redact(error, self._secrets)
            if state == previous and said == self.last_error:
                log.debug("camera %s: %s again (%s)", self.camera, state.value, said)
                return  # a reconnect failing as the last one did: nothing new to say (one entry a try before)
            self._state = state
            if error is not None:
                self.last_error = said
            elif state == SourceState.ONLINE:
                self.last_error = None  # (back: `/status` showed the last failure beside "online")
        if error:
            log.warning("camera %s: %s (%s)", self.camera, state.value, self.last_error)
        else:
            log.info("camera %s: %s", self.camera, state.value)
        try:
            self._on_status(StatusEvent(self.camera, state, previous, self.last_error if error else None, self._clock()))
        except Exception:  # a failing status hook never stops the camera
            log.exception("camera %s: status handler failed", self.camera)

    def check_watchdog(self) -> bool:
        """Called periodically by the owner: an online camera with no frame for ``watchdog_s`` is
        reported as reconnecting at once, while its reader waits out the read timeout and reopens."""
        last = self.last_frame_at
        if self._state == SourceState.ONLINE and last is not None:
            silent = self._monotonic() - last
            if silent > self._watchdog_s:
                # (only from online: the reader may have failed or stopped the camera since the check)
                self._transition(SourceState.RECONNECTING, f"no frame for {silent:.1f} s (watchdog)",
                                 only_from=SourceState.ONLINE)
                return True
        return False

    def stop(self) -> None:
        self._stop.set()

    def detach(self) -> None:
        """Report nothing more (the owner stopped waiting for this source's end)."""
        with self._lock:
            self._on_status = lambda event: None
            self.detached = True

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self._sleep is time.sleep:
            self._stop.wait(seconds)  # wakes at once on stop()
        else:
            self._sleep(seconds)

    def frames(self) -> Iterator[Frame]:
        """Blocking generator of sampled frames; returns when stopped, failed or a file ends."""
        pts_offset = 0.0
        # (no rate known: paced at 25 fps; the open says what is wrong)
        self._timeline.probe(lambda: log.exception("camera %s: probing the file's frame rate failed", self.camera))
        while not self._stop.is_set():
            try:
                cap = self._open()
            except SourceError as exc:
                if self._stop.is_set():
                    break
                # a looping file read before that cannot be opened now is being replaced (or the
                # share it is on went away): tried again with backoff, not failed for good
                if not exc.retryable and not (self._loop and pts_offset > 0):
                    self._transition(SourceState.FAILED, str(exc))
                    return
                self._transition(SourceState.RECONNECTING, str(exc))
                self._wait(self._backoff.next())
                self._timeline.repace()  # a file paced again from its next frame, not caught up on
                continue
            if hasattr(cap, "stopping"):  # (PyAV's: it reads many packets a grab, a stop ends that too)
                cap.stopping = self._stop.is_set
            try:
                outcome, last_pts = yield from self._read(cap, pts_offset)
            finally:
                cap.release()
            if outcome == "failed":
                return
            if outcome == "eof":
                if not self._loop:
                    break
                # Rewind by reopening; pts keep increasing across loops so sampling stays even. A
                # still image (one frame a pass) stands for a sampling period, not a frame interval
                # (it was reopened and decoded 25 times a second to give 2 frames), and for at most
                # half the watchdog's time (an image at fps 0.05 would go silent for 20 s a pass); so
                # does any pass shorter than that (2 frames at 1000 fps: reopened 1600 times a second).
                short = self._pass_frames == 1 or last_pts + self._timeline.frame_s - pts_offset < self._sampler.period
                step = min(self._sampler.period, self._watchdog_s / 2) if short else 0.0
                pts_offset = max(last_pts + self._timeline.frame_s, pts_offset + step)
                self._backoff.reset()  # a whole pass read: the file is back
                continue
            if outcome == "empty":  # a looping file that gave no frame this time (being rewritten?)
                self._wait(self._backoff.next())
                self._timeline.repace()
                # its frames were read (not decoded): the timeline goes on after them, else the
                # sampler, past them already, took nothing of the next passes until they caught up
                pts_offset = max(last_pts + self._timeline.frame_s, pts_offset)
            if outcome == "lost":
                self._wait(self._backoff.next())
                self._timeline.repace()  # (a paced stream: its positions start again at the next open)
        if self._state != SourceState.FAILED:
            self._transition(SourceState.STOPPED)

    def _pace(self, now: float, pts: float) -> float:
        """Waits until a paced frame at ``pts`` is due (monotonic ``now``); returns the time then."""
        ahead = self._timeline.ahead(now, pts)
        if ahead <= 0:
            return now
        self.last_frame_at = now + ahead  # held back by the file's own time, not silent: no watchdog
        self._wait(ahead)
        return self._monotonic()

    def _grab_past_damage(self, cap: Capture) -> bool:
        """A file's grab() tried again after one that failed, up to `FILE_GRAB_RETRIES` times
        within a second (at the true end each fails at once; a capture slow to say so is not
        waited on for long)."""
        until = self._monotonic() + 1.0
        for _ in range(FILE_GRAB_RETRIES):
            if self._stop.is_set() or self._monotonic() > until:
                return False
            if cap.grab():
                return True
        return False

    def _read(self, cap: Capture, pts_offset: float) -> Iterator[Frame]:
        """Yields frames from one open capture; returns (outcome, last pts): outcome is
        'eof' (file ended), 'empty' (a file's later pass gave no frame that decodes), 'lost'
        (stream broke or timed out, or its frames could not be decoded), 'failed' or 'stopped'."""
        self._timeline.pass_started()
        self._pass_frames = 0  # frames grabbed in this pass
        run = _Pass(last_pts=pts_offset)
        while not self._stop.is_set():
            ok = cap.grab()
            if not ok and self._stop.is_set():  # (a grab cut short by the stop)
                break
            if not ok and self._is_file:  # a damaged packet: OpenCV says False, the frames after it read
                ok = self._grab_past_damage(cap)
            now = self._monotonic()
            if not ok:
                return self._ended(cap, run, pts_offset), run.last_pts
            self._grabbed(run, now)
            pts = self._timeline.pts(cap.get(_CAP_PROP_POS_MSEC), pts_offset, run.last_pts if run.got_any else None)
            run.got_any = True
            if pts is not None:
                run.last_pts = pts
            if self._timeline.realtime and pts is not None:  # pace a file like a live camera, across loops
                now = self._pace(now, pts)
            timeline = pts if (self._is_file and pts is not None) else now
            if not self._sampler.accept(timeline) or not self._demanded():
                continue
            t_decode = time.perf_counter()
            ok, image = cap.retrieve()
            if not ok or image is None:
                self.skipped += 1  # sampled, but not decodable: counted like a frame not taken
                run.undecodable, run.undecodable_seen = run.undecodable + 1, True
                if run.undecodable >= MAX_UNDECODABLE and not self._is_file:  # (a file is read on past them)
                    self._transition(SourceState.RECONNECTING,
                                     f"{run.undecodable} sampled frames in a row could not be decoded")
                    return "lost", run.last_pts
                continue
            run.undecodable, run.decoded = 0, True
            if self._state != SourceState.ONLINE:  # (its first decoded frame)
                self._transition(SourceState.ONLINE)
            yield self._frame(image, pts, t_decode)
        return "stopped", run.last_pts

    def _ended(self, cap: Capture, run: "_Pass", pts_offset: float) -> str:
        """The outcome of a pass whose grab() failed (`_read`'s; ``run.last_pts`` moved to where
        a file's video ends when its capture knows)."""
        if not self._is_file:
            self._transition(SourceState.RECONNECTING, "stream ended or read timed out" + self._slow_hint(run.gaps))
            return "lost"
        nothing = not run.got_any or (run.undecodable_seen and not run.decoded)  # no frame, or none that decodes
        if nothing and pts_offset == 0.0:
            self._transition(SourceState.FAILED, "no decodable video frames in file")
            return "failed"
        if not nothing and getattr(cap, "end_s", None) is not None:  # (PyAV's: where the video ends)
            run.last_pts = max(run.last_pts, pts_offset + self._timeline.shift + cap.end_s - self._timeline.frame_s)
        return "empty" if nothing else "eof"

    def _grabbed(self, run: "_Pass", now: float) -> None:
        """A frame grabbed at monotonic ``now``: its gap kept, the backoff reset once the stream has
        stayed up, the camera online again after a stall (from its first decoded frame on)."""
        if run.grabbed_at is not None:
            run.gaps.append(now - run.grabbed_at)
        run.grabbed_at = now
        if run.connected_at is None:
            run.connected_at = now
        elif run.decoded and now - run.connected_at >= self._backoff.cap:  # up that long: a new drop is a new fault
            self._backoff.reset()
        self.last_frame_at = now
        # online from its first decoded frame (a stream whose packets came and never decoded
        # was `online` ~98 % of the time, reconnecting every 30 sampled frames), and when
        # frames come back after a stall
        if run.decoded and self._state != SourceState.ONLINE:
            self._transition(SourceState.ONLINE)
        self.frames_read += 1
        self._pass_frames += 1

    def _demanded(self) -> bool:
        """Whether a sampled frame goes on to be decoded: a file waits for demand (nothing is
        skipped); a live camera's frame the consumer cannot take now is skipped (and counted)."""
        if self._wait_for_demand is not None:  # backpressure: wait (files): nothing is skipped
            while not self._stop.is_set() and not self._wait_for_demand(0.25):
                self.last_frame_at = self._monotonic()  # held back, not silent: no watchdog
            # (with `wait`, demand was seen above: the consumer may have withdrawn it since, after
            # its take filled its last place, but this frame waits in the empty slot, not skipped)
            return True
        if self._wants_frame is not None and not self._wants_frame():
            self.skipped += 1
            return False
        return True

    def _frame(self, image: np.ndarray, pts: float | None, t_decode: float) -> Frame:
        """A decoded frame as it goes on: its metadata (the next seq), prepared, its decode time."""
        meta = FrameMeta(
            camera=self.camera,
            seq=self._next_seq,
            frame_ts=self._clock(),
            pts=pts,
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            steady_ts=self._steady_clock(),
        )
        self._next_seq += 1
        prepared = self._prepare(image, meta) if self._prepare is not None else None
        self.converted += 1
        return Frame(meta, image, (time.perf_counter() - t_decode) * 1000, prepared)

    def _slow_hint(self, gaps: Sequence[float]) -> str:
        """What to change when a live camera's frames came so far apart (a timelapse, a still
        scene's dynamic frame rate) that the read timeout, not a fault, cut it: its last frames' usual
        gap (the median of the last five: one stall in an hour of video is not it) half of it or more."""
        limit = self._read_timeout_s
        usual = sorted(gaps)[len(gaps) // 2] if gaps else 0.0
        if limit is None or usual < 0.5 * limit:
            return ""
        return (f" (its frames came {usual:.1f} s apart: a camera this slow needs "
                f"cameras[{self.camera}].read_timeout_s above that, now {limit:g} s)")


_CAP_PROP_POS_MSEC = 0  # cv2.CAP_PROP_POS_MSEC


@dataclass
class _Pass:
    """What `VideoSource._read` knows of one pass over an open capture."""

    last_pts: float  # the last frame's pts (the pass's offset before any)
    got_any: bool = False  # a frame grabbed
    decoded: bool = False  # a retrieve() succeeded
    undecodable_seen: bool = False  # a retrieve() failed
    undecodable: int = 0  # sampled frames in a row whose retrieve() failed
    connected_at: float | None = None  # the backoff starts afresh once the stream has stayed up
    grabbed_at: float | None = None  # the last frame grabbed, and the gaps before the last ones
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=5))


def _boottime() -> float:
    """Seconds on CLOCK_BOOTTIME (monotonic, counting suspend) where there is one."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()
FILE_GRAB_RETRIES = 16  # a file's grab() that failed is tried again this many times before it is its end
MAX_UNDECODABLE = 30  # a live camera's sampled frames in a row that grab() read and retrieve() could not decode
