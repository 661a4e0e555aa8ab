"""Video sources: an explicit state machine per camera, with reconnects and a keep-latest slot.

States: ``connecting → online → reconnecting → online …``; ``failed`` when retrying cannot help
(a file that does not exist or is not video); ``stopped`` at the end of a non-looping file or on
`stop()`. Every change emits a `StatusEvent`. Network sources reconnect forever with exponential
backoff (0.5 s → 10 s). `seq` is strictly increasing per camera across reconnects and loops, and
the caller passes ``seq_start`` so it is never reused across restarts either.

`open_capture` (pipeline/capture.py) is the factory that touches the world (OpenCV/FFmpeg); `VideoSource` receives an
opener and a clock so it is testable without a camera.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from .redact import redact
from .sampling import FpsSampler, next_phase
from .schema import FrameMeta

log = logging.getLogger("percept.sources")


class SourceState(str, Enum):
    CONNECTING = "connecting"
    ONLINE = "online"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    STOPPED = "stopped"


_ALLOWED: dict[SourceState, set[SourceState]] = {
    SourceState.CONNECTING: {SourceState.ONLINE, SourceState.RECONNECTING, SourceState.FAILED, SourceState.STOPPED},
    SourceState.ONLINE: {SourceState.RECONNECTING, SourceState.FAILED, SourceState.STOPPED},
    SourceState.RECONNECTING: {SourceState.ONLINE, SourceState.FAILED, SourceState.STOPPED},
    SourceState.FAILED: {SourceState.STOPPED},
    SourceState.STOPPED: set(),
}


class InvalidTransition(RuntimeError):
    pass


class SourceError(RuntimeError):
    """A camera could not be opened or read. ``retryable`` is False when reconnecting cannot help."""

    def __init__(self, camera: str, message: str, *, retryable: bool):
        self.camera = camera
        self.retryable = retryable
        super().__init__(f"camera {camera}: {redact(message)}")


@dataclass(frozen=True)
class StatusEvent:
    camera: str
    state: SourceState
    previous: SourceState | None
    error: str | None
    ts: float


@dataclass(frozen=True, eq=False)
class Frame:
    meta: FrameMeta
    image: np.ndarray  # BGR uint8, full resolution (crops and the live view are cut from it)
    decode_ms: float = 0.0  # reader-thread time for this frame: colour conversion and `prepared`
    prepared: Any = None  # what the source's ``prepare`` made of it in the reader thread (the detector's input)


class Capture(Protocol):
    def grab(self) -> bool: ...
    def retrieve(self) -> tuple[bool, np.ndarray | None]: ...
    def get(self, prop: int) -> float: ...
    def release(self) -> None: ...


class Backoff:
    """Exponential backoff: initial, ×factor per failure, capped; `reset()` after a success."""

    def __init__(self, initial: float = 0.5, cap: float = 10.0, factor: float = 2.0):
        if initial <= 0 or cap < initial or factor < 1:
            raise ValueError("backoff needs 0 < initial <= cap and factor >= 1")
        self.initial, self.cap, self.factor = initial, cap, factor
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * self.factor)
        return delay

    def reset(self) -> None:
        self._next = self.initial


class LatestFrameSlot:
    """Keep-latest hand-off between a reader thread and its consumer: never blocks the reader,
    a newer frame replaces an older unsent one and the replaced one is counted as dropped.

    Demand: the consumer says with `want` whether it can take a frame now, or from when it
    expects to; the reader asks `wants_frame` for each sampled frame before colour-converting it
    (and making the detector's letterboxed input, `VideoSource`'s ``prepare``, in the reader thread).
    So frames nobody will take are not converted (the frame read just before the consumer expects
    to be free is, so it is ready then), and a frame the slot still holds once a newer one was
    read and skipped is dropped: what the consumer takes is always the newest frame read, never
    one that waited in the slot while the consumer was busy."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self._wanted = False
        self._wanted_at: float | None = None  # time.monotonic() from when the consumer expects to take one
        self._last_ask: float | None = None
        self._interval = 0.0  # between the reader's last two sampled frames
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The newest frame, or None on timeout or once closed and empty."""
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame

    def want(self, wanted: bool, *, at: float | None = None) -> None:
        """Consumer: whether it can take a frame now; if not, ``at`` (time.monotonic()) is when it
        expects to (None: unknown, convert nothing until it says so)."""
        with self._cond:
            self._wanted = wanted
            self._wanted_at = None if wanted else at
            self._cond.notify_all()

    def wait_for_demand(self, timeout: float) -> bool:
        """Reader, ``backpressure: wait``: block until the consumer can take a frame and the slot
        is empty (so nothing is dropped), or it is closed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or (self._wanted and self._frame is None), timeout)

    def wants_frame(self) -> bool:
        """Reader, for each sampled frame: convert and put it? Yes while the consumer can take
        one, or when the next frame would come after the consumer expects to be free. Otherwise
        no, and the frame still held (if any) is older than this skipped one: dropped."""
        now = time.monotonic()
        with self._cond:
            if self._last_ask is not None:
                self._interval = min(now - self._last_ask, 1.0)
            self._last_ask = now
            wanted = self._wanted or (self._wanted_at is not None and now + self._interval >= self._wanted_at)
            if not wanted and self._frame is not None:
                self._frame = None
                self.dropped += 1
            return wanted

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def is_file_url(url: str) -> bool:
    return "://" not in url and not url.startswith("device:") or url.startswith("file://")


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
        native_fps: float | None = None,
        watchdog_s: float = 10.0,
        backoff: Backoff | None = None,
        seq_start: int = 0,
        on_status: Callable[[StatusEvent], None] | None = None,
        wants_frame: Callable[[], bool] | None = None,
        wait_for_demand: Callable[[float], bool] | None = None,
        prepare: Callable[[np.ndarray, FrameMeta], Any] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.camera = camera
        self._open = open_capture
        # a live camera keeps its frames on its own phase of the period (pipeline/sampling.py)
        self._sampler = FpsSampler(fps, phase=None if is_file else next_phase())
        self._is_file = is_file
        self._loop = loop
        self._realtime = realtime and is_file
        self._native_fps = native_fps
        self._watchdog_s = watchdog_s
        self._backoff = backoff or Backoff()
        self._next_seq = seq_start
        self._on_status = on_status or (lambda event: None)
        # Asked before colour-converting a sampled frame: False (the consumer cannot take a frame
        # now) skips the conversion and counts the frame as skipped.
        self._wants_frame = wants_frame
        self._wait_for_demand = wait_for_demand
        # Runs in the reader thread on each frame that goes on (after ``wants_frame``): the
        # detector's letterboxed input is made there, off the consumer's event loop.
        self._prepare = prepare
        self.skipped = 0
        self.converted = 0  # frames colour-converted (and prepared): those the consumer was to take
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._state = SourceState.CONNECTING
        self._stop = threading.Event()
        self.frames_read = 0
        self.last_error: str | None = None
        self.last_frame_at: float | None = None
        self._pace_origin: tuple[float, float] | None = None  # (wall, pts) when pacing a file

    @property
    def state(self) -> SourceState:
        return self._state

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def _transition(self, state: SourceState, error: str | None = None) -> None:
        with self._lock:
            previous = self._state
            if state == previous and error is None:
                return
            if state != previous and state not in _ALLOWED[previous]:
                raise InvalidTransition(f"camera {self.camera}: {previous.value} → {state.value} not allowed")
            self._state = state
            if error is not None:
                self.last_error = redact(error)
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
            silent = self._clock() - last
            if silent > self._watchdog_s:
                self._transition(SourceState.RECONNECTING, f"no frame for {silent:.1f} s (watchdog)")
                return True
        return False

    def stop(self) -> None:
        self._stop.set()

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
        while not self._stop.is_set():
            try:
                cap = self._open()
            except SourceError as exc:
                if not exc.retryable:
                    self._transition(SourceState.FAILED, str(exc))
                    return
                self._transition(SourceState.RECONNECTING, str(exc))
                self._wait(self._backoff.next())
                continue
            try:
                outcome, last_pts = yield from self._read(cap, pts_offset)
            finally:
                cap.release()
            if outcome == "failed":
                return
            if outcome == "eof":
                if not self._loop:
                    break
                # Rewind by reopening; pts keep increasing across loops so sampling stays even.
                pts_offset = last_pts + (1.0 / self._native_fps if self._native_fps else 0.04)
                continue
            if outcome == "lost":
                self._wait(self._backoff.next())
        if self._state != SourceState.FAILED:
            self._transition(SourceState.STOPPED)

    def _pace(self, now: float, pts: float) -> float:
        """Waits until a file's frame at ``pts`` is due on the wall clock; returns the time then."""
        if self._pace_origin is None:
            self._pace_origin = (now, pts)
        wall0, pts0 = self._pace_origin
        ahead = wall0 + (pts - pts0) - now
        if ahead <= 0:
            return now
        self._wait(ahead)
        return self._clock()

    def _read(self, cap: Capture, pts_offset: float) -> Iterator[Frame]:
        """Yields frames from one open capture; returns (outcome, last pts): outcome is
        'eof' (file ended), 'lost' (stream broke or timed out), 'failed' or 'stopped'."""
        last_pts = pts_offset
        got_any = False
        while not self._stop.is_set():
            ok = cap.grab()
            now = self._clock()
            if not ok:
                if not self._is_file:
                    self._transition(SourceState.RECONNECTING, "stream ended or read timed out")
                    return "lost", last_pts
                if not got_any and pts_offset == 0.0:
                    self._transition(SourceState.FAILED, "no decodable video frames in file")
                    return "failed", last_pts
                return "eof", last_pts
            if not got_any:
                got_any = True
                self._backoff.reset()
            self.last_frame_at = now
            if self._state != SourceState.ONLINE:  # first frame, or frames back after a stall
                self._transition(SourceState.ONLINE)
            self.frames_read += 1
            pos_ms = cap.get(_CAP_PROP_POS_MSEC)
            pts = pts_offset + pos_ms / 1000.0 if pos_ms is not None and pos_ms >= 0 else None
            if pts is not None:
                last_pts = pts
            if self._realtime and pts is not None:  # pace a file like a live camera, across loops
                now = self._pace(now, pts)
            timeline = pts if (self._is_file and pts is not None) else now
            if not self._sampler.accept(timeline):
                continue
            if self._wait_for_demand is not None:  # backpressure: wait (files): nothing is skipped
                while not self._stop.is_set() and not self._wait_for_demand(0.25):
                    pass
            if self._wants_frame is not None and not self._wants_frame():
                self.skipped += 1
                continue
            t_decode = time.perf_counter()
            ok, image = cap.retrieve()
            if not ok or image is None:
                continue
            meta = FrameMeta(
                camera=self.camera,
                seq=self._next_seq,
                frame_ts=now,
                pts=pts,
                width=int(image.shape[1]),
                height=int(image.shape[0]),
            )
            self._next_seq += 1
            prepared = self._prepare(image, meta) if self._prepare is not None else None
            self.converted += 1
            yield Frame(meta, image, (time.perf_counter() - t_decode) * 1000, prepared)
        return "stopped", last_pts


_CAP_PROP_POS_MSEC = 0  # cv2.CAP_PROP_POS_MSEC
