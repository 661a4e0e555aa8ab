"""``decode: keyframes`` and ``decode: reference``: a camera read with PyAV (FFmpeg's libraries)
whose decoder skips frames (FFmpeg's ``-skip_frame``): ``nokey``, every frame that is not a
keyframe; ``nonref``, every frame no other frame depends on (the non-reference B-frames: about
half the frames of an H.264 stream encoded with B-frames, none of one without). OpenCV's FFmpeg
backend has no such switch. A ``udp://``, ``srt://``, ``rtp://``, ``tcp://``, … camera is read here
too, every frame decoded: OpenCV opens one input at a time per process, and such a camera that sends nothing
would hold the others' opens for its whole open timeout (nothing can be asked of it before).

`SkippingCapture` is a `Capture` (pipeline/sources.py: ``grab`` decodes the next frame kept,
``retrieve`` converts it to BGR, ``get`` answers the position and frame rate), so `VideoSource`
reads it like the OpenCV one: files and network streams (RTSP over TCP, with the same open and
read timeouts as `open_capture`). A camera sampled faster than the rate of the frames kept would
get frames only at that rate: `DecodedRate` warns once per camera when that happens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from .camera_probe import DIAGNOSED
from .redact import redact, redact_url
from .source_types import Capture, SourceError, camera_file, is_file_url

log = logging.getLogger("percept.capture")

_POS_MSEC, _FRAME_WIDTH, _FRAME_HEIGHT, _FPS = 0, 3, 4, 5  # cv2.CAP_PROP_* numbers `VideoSource` asks for
RTSP_OPTIONS = {"rtsp_transport": "tcp", "analyzeduration": "0", "probesize": "32"}  # as open_capture's


RESTART_S = 2.0  # a packet this far before the furthest one: the file's timestamps start again there
SKIP_FRAME = {"keyframes": "NONKEY", "reference": "NONREF"}  # decode mode → the decoder's skip_frame
WHAT_IS_KEPT = {"keyframes": "its keyframe rate", "reference": "the rate of its reference frames"}


class DecodedRate:
    """A camera's rate of decoded frames (keyframes, or reference frames), from the times between
    them (across reopens and file loops), and one warning when the camera is sampled faster
    (``fps`` above the rate, or ``fps: 0``: every frame) — unless nothing is skipped (the rate is
    the stream's own: a stream without B-frames in ``reference``). Reference frames come at uneven
    steps (I B P B P …): their rate is judged over more of them."""

    def __init__(self, camera: str, fps: float, *, decode: str = "keyframes", min_intervals: int | None = None,
                 window: int = 16):
        if min_intervals is None:
            min_intervals = 2 if decode == "keyframes" else 12
        self.camera, self.fps, self.decode, self.min_intervals = camera, fps, decode, min_intervals
        self.intervals: deque[float] = deque(maxlen=window)
        self._last: float | None = None
        self.nominal = 0.0  # the stream's frame rate, when it says (`reopened`)
        self.warned = False
        self.gop_warned = False  # (`keyframes_too_far`)

    def decoded(self, t: float) -> None:
        if self._last is not None and t > self._last:  # not across a loop or a restarted clock
            self.intervals.append(t - self._last)
        self._last = t
        rate = self.rate
        if rate is None or self.warned or not (self.fps == 0 or self.fps > 1.1 * rate):
            return
        if self.nominal and rate >= 0.9 * self.nominal:  # every frame is kept: decode: all gives no more
            return
        self.warned = True
        wanted = "every frame (fps: 0)" if self.fps == 0 else f"fps {self.fps:g}"
        log.warning("camera %s: decode: %s gives %.2f frames/s (%s) but it is sampled at %s: it gets frames "
                    "only at that rate; use decode: all for more", self.camera, self.decode, rate,
                    WHAT_IS_KEPT[self.decode], wanted)

    def keyframes_too_far(self, timeout_s: float) -> None:
        """Video came for ``timeout_s`` without a keyframe: said once (the camera reconnects at
        every such gap, shown ``reconnecting`` between its keyframes)."""
        if self.gop_warned:
            return
        self.gop_warned = True
        log.warning("camera %s: decode: keyframes, and no keyframe came in %.3g s of video: the camera is taken "
                    "for lost and reopened between its keyframes; set cameras[].watchdog_s above twice its "
                    "keyframe interval (or decode: all)", self.camera, timeout_s)

    def reopened(self, nominal_fps: float = 0.0) -> None:
        self._last = None
        self.nominal = nominal_fps or self.nominal

    @property
    def rate(self) -> float | None:
        """Decoded frames per second over the last intervals seen, once there are enough."""
        if len(self.intervals) < self.min_intervals:
            return None
        return len(self.intervals) / sum(self.intervals)


_rates: dict[str, DecodedRate] = {}
_rates_lock = threading.Lock()


def decoded_rate(camera: str, fps: float, decode: str = "keyframes") -> DecodedRate:
    """The camera's `DecodedRate` in this process: kept across its reopens, so it warns once."""
    with _rates_lock:
        rate = _rates.get(camera)
        if rate is None or rate.fps != fps or rate.decode != decode:
            rate = _rates[camera] = DecodedRate(camera, fps, decode=decode)
        return rate


class SkippingCapture:
    """The frames one opened PyAV container's decoder keeps (its ``skip_frame``), as a `Capture`."""

    def __init__(self, container: Any, stream: Any, rate: DecodedRate | None = None, *,
                 read_timeout_s: float | None = None, frame_timeout_s: float | None = None,
                 clock: Any = time.monotonic, secrets: tuple[str, ...] = ()):
        self.secrets = secrets  # the camera's credentials: out of what FFmpeg's errors quote
        self.container = container
        self.stream = stream
        self.rate = rate
        if rate is not None:
            nominal = stream.average_rate or stream.guessed_rate
            rate.reopened(float(nominal) if nominal else 0.0)
        # every stream's packets, so that a video stall while audio flows is seen: PyAV restarts
        # its read timeout on each packet of any stream, and demux(stream) skips the others inside
        self._packets = container.demux()
        self._read_timeout_s = read_timeout_s
        # video packets that decode to nothing kept (no keyframe comes, every packet damaged):
        # after this long without a frame the stream counts as broken (None: a file, read to its end)
        self._frame_timeout_s = frame_timeout_s
        self._clock = clock
        self.stopping: Callable[[], bool] | None = None  # the reader's stop: a grab reading packets ends at it
        self.first_frame: Callable[[], None] | None = None  # called at the first frame decoded
        self._decoded: list[Any] = []
        self._frame: Any = None
        self._start_s = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
        # a stream without timestamps: each packet stamped one frame interval (in time_base ticks)
        # after the last, so that the frames kept (a GOP apart with keyframes) keep their place
        rate = stream.average_rate or stream.guessed_rate
        self._tick = round(1 / (rate * stream.time_base)) if rate and stream.time_base else 0
        self.decoded = 0
        self.packets = 0
        # where the video read so far ends, in seconds from the stream's start: a looping file's
        # next pass starts there, not one frame after the last frame kept (with keyframes alone,
        # seconds before the end: each pass was cut short, and its first keyframe sampled away)
        self.end_s: float | None = None

    def grab(self) -> bool:
        """Decodes up to the next frame kept; False at the end, on a read timeout or a broken stream."""
        import av

        since = started = self._clock()
        while not self._decoded:
            if self.stopping is not None and self.stopping():  # (keyframes only: a grab reads a GOP of packets)
                return False
            try:
                packet = next(self._packets)
            except StopIteration:
                return False
            except av.error.FFmpegError as exc:  # read timeout (interrupted), connection lost
                log.debug("demux stopped: %s", redact(str(exc), self.secrets))
                return False
            if packet.stream_index != self.stream.index:  # audio, data: only time passes
                if self._read_timeout_s is not None and self._clock() - since > self._read_timeout_s:
                    log.debug("no video for %.1f s while other streams flow", self._read_timeout_s)
                    return False
                continue
            since = self._clock()
            if packet.pts is None and self._tick:  # (raw H.264): its place in the stream, as its time
                packet.pts = self.packets * self._tick
            self.packets += 1
            if packet.size and packet.pts is not None and packet.time_base:  # (not the empty one that flushes)
                end = float((packet.pts + (packet.duration or self._tick)) * packet.time_base) - self._start_s
                # the furthest so far; where the timestamps start again (recordings joined), the
                # last part's own: a next pass goes on from where that ends (the first part's end
                # put a silent gap of the difference into the timeline at every loop)
                restarted = self.end_s is not None and end < self.end_s - RESTART_S
                self.end_s = end if self.end_s is None or restarted else max(self.end_s, end)
            try:
                self._decoded = list(self.stream.codec_context.decode(packet))
                if not self._decoded and packet.is_keyframe and self._keyframes_only():
                    self._decoded = self._drained(packet)
            except av.error.InvalidDataError:  # one damaged packet: the next keyframe recovers
                pass
            except av.error.FFmpegError as exc:
                log.debug("decode failed: %s", redact(str(exc), self.secrets))
                return False
            if not self._decoded and self._frame_timeout_s is not None and since - started > self._frame_timeout_s:
                log.debug("video packets but no frame kept for %.1f s (no keyframe?)", self._frame_timeout_s)
                if self.rate is not None and self._keyframes_only():
                    self.rate.keyframes_too_far(self._frame_timeout_s)
                return False
        self._frame = self._decoded.pop(0)
        self.decoded += 1
        if self.decoded == 1 and self.first_frame is not None:
            self.first_frame()
        if self.rate is not None:
            t = self._frame.time
            self.rate.decoded(t if t is not None else time.monotonic())
        return True

    def _keyframes_only(self) -> bool:
        return str(self.stream.codec_context.skip_frame) == SKIP_FRAME["keyframes"]

    def _drained(self, keyframe: Any) -> list[Any]:
        """A keyframe the decoder holds back (a stream with B-frames reorders: it came out only with
        the next keyframe, a whole GOP late; with a GOP longer than the frame timeout, never):
        the decoder drained of it, then ready for the next packet; the frame keeps its packet's time."""
        ctx = self.stream.codec_context
        out = list(ctx.decode(None))
        ctx.flush_buffers()
        for frame in out[-1:]:
            if frame.pts is None:
                frame.pts = keyframe.pts
            if frame.time_base is None:  # (a drained frame has none)
                frame.time_base = keyframe.time_base
        return out

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        if self._frame is None:
            return False, None
        image = self._frame.to_ndarray(format="bgr24")
        turns = self._turns()  # (a phone's or body cam's recording: OpenCV turns it upright, so must this)
        return True, np.ascontiguousarray(np.rot90(image, turns)) if turns else image

    def _turns(self) -> int:
        """Quarter turns (counter-clockwise) that show the frame upright, from its display matrix."""
        return round((getattr(self._frame, "rotation", 0) or 0) / 90) % 4 if self._frame is not None else 0

    def get(self, prop: int) -> float:
        if prop == _POS_MSEC:  # from the stream's start, as OpenCV gives it (a file may start at 601.4 s)
            t = self._frame.time if self._frame is not None else None
            return (t - self._start_s) * 1000.0 if t is not None else -1.0
        if prop == _FPS:
            rate = self.stream.average_rate or self.stream.guessed_rate
            return float(rate) if rate else 0.0
        if prop in (_FRAME_WIDTH, _FRAME_HEIGHT):  # (as shown: a quarter turn swaps them)
            size = (self.stream.codec_context.width, self.stream.codec_context.height)
            return float(size[(prop == _FRAME_HEIGHT) != (self._turns() % 2 == 1)])
        return 0.0

    def release(self) -> None:
        self._decoded.clear()
        self._frame = None
        self.container.close()


def open_skipping(camera: str, url: str, *, decode: str = "keyframes", open_timeout_s: float = 5.0,
                  read_timeout_s: float = 2.0, frame_timeout_s: float = 10.0, rate: DecodedRate | None = None,
                  diagnose: Callable[..., str] | None = None, secrets: tuple[str, ...] = ()) -> Capture:
    """Open a file or network stream with PyAV, its decoder set to skip what ``decode`` leaves out
    (`SKIP_FRAME`: non-keyframes, or non-reference frames). Errors as
    `open_capture`'s: a missing or undecodable file is final, a stream that does not open is retried
    (``diagnose(url, timeout_s=…)``: why an RTSP or HTTP(S) URL does not open, `pipeline.camera_probe.diagnose_open`)."""
    import av
    import av.logging

    # FFmpeg's own log lines quote URLs whole ("Error when loading first segment 'http://u:pw@…'"):
    # off, as OpenCV's are (OPENCV_FFMPEG_LOGLEVEL), whatever a PyAV release defaults to
    av.logging.set_level(None)
    safe = redact_url(redact(url, secrets))  # (its expanded variables first: a value with a ; or a space)
    if url.startswith("device:"):
        raise SourceError(camera, f"decode: {decode} needs an encoded stream or file, not a device", retryable=False)
    is_file = is_file_url(url)
    if is_file:
        path = camera_file(camera, url)
        target, options = str(path), {}
    else:
        target, options = url, dict(RTSP_OPTIONS) if url.lower().startswith(("rtsp://", "rtsps://")) else {}
    try:
        container = av.open(target, options=options, timeout=(open_timeout_s, read_timeout_s))
    except av.error.ProtocolNotFoundError:
        scheme = url.split("://", 1)[0] if "://" in url else "this"
        raise SourceError(camera, f"cannot open {safe}: this FFmpeg build has no {scheme}:// protocol",
                          retryable=False) from None
    except (av.error.FFmpegError, OSError) as exc:
        if is_file:
            raise SourceError(camera, f"{target} is not a video FFmpeg can decode ({type(exc).__name__})",
                              retryable=False) from None
        asked = url.lower().startswith(DIAGNOSED) and diagnose is not None
        # else FFmpeg's reason alone: PyAV's text quotes the URL as Python does (a quote or
        # backslash in the password escaped, so no longer the secret)
        why = diagnose(url, timeout_s=min(open_timeout_s, 3.0)) if asked else (
            getattr(exc, "strerror", None) or type(exc).__name__)
        raise SourceError(camera, f"cannot open {safe}: {why}", retryable=True) from None
    if not container.streams.video:
        container.close()
        raise SourceError(camera, f"{safe if not is_file else target} has no video stream", retryable=not is_file)
    stream = container.streams.video[0]
    ctx = stream.codec_context
    ctx.skip_frame = SKIP_FRAME.get(decode, "DEFAULT")  # decode: all (udp://, srt://, …: `capture.unasked`)
    if not is_file:
        ctx.thread_count = 1  # as open_capture's live streams: one decoder thread, no frame delay
    return SkippingCapture(container, stream, rate, read_timeout_s=None if is_file else read_timeout_s,
                           frame_timeout_s=None if is_file else max(read_timeout_s, frame_timeout_s), secrets=secrets)
