"""Opening cameras with OpenCV/FFmpeg — the part of a source that touches the world: RTSP over
TCP with explicit timeouts, files, devices; why an RTSP open failed, in an operator's words;
a file's nominal frame rate. `VideoSource` (pipeline/sources.py) receives the opener. A camera
with ``decode: keyframes`` or ``reference``, and a network camera with nothing to ask before
the open (``udp://``, ``srt://``, ``rtp://``, ``tcp://``, …), is opened with PyAV instead (pipeline/capture_av.py)."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path

from .camera_probe import DEFAULT_PORTS, camera_unanswered, diagnose_open, with_address
from .capture_av import SKIP_FRAME
from .redact import redact, redact_url
from .source_types import Capture, SourceError, camera_file, file_path_of, is_file_url


# FFmpeg's options for an RTSP camera: TCP and no probing, first frame in ~0.2 s, not ~3 s. OpenCV
# reads them from the environment at every open, for every kind of input: set for an RTSP open
# only (a file or HTTP stream opened with them may decode nothing: a 32-byte probe misses an
# MPEG-TS file's video), unless the user set their own. Outside an RTSP open the variable is
# empty (OpenCV: no options), never removed: setting a variable that exists replaces one
# pointer, while adding or removing one reallocates the environment under another thread's
# getenv (every log line's localtime reads TZ). An empty value found at start is ours (a parent
# process that opened a camera), not the user's.
RTSP_OPTIONS = "rtsp_transport;tcp|analyzeduration;0|probesize;32"
_OPTIONS_VAR = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_USER_OPTIONS = os.environ.get(_OPTIONS_VAR) or None
_OPEN_LOCK = threading.Lock()  # (OpenCV opens one FFmpeg input at a time anyway)
# FFmpeg's own log lines, which OpenCV writes to stderr (a Ray worker's log), quote URLs it made
# from the camera's (an HLS playlist's segments and keys, the credentials copied into them):
# off, unless the user sets the level (read once, at OpenCV's first FFmpeg open)
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
# network inputs asked before FFmpeg's open (`camera_probe`): every other one (udp://, srt://,
# rtp://, tcp://, rist://, …) has no request to answer first, and one that sends nothing would
# hold every other camera's OpenCV open for its whole open timeout: those are read with PyAV
ASKED = tuple(DEFAULT_PORTS)
# a camera that answers (RTSP's OPTIONS and DESCRIBE, SETUP and PLAY; an HTTP GET) but sends no
# video holds OpenCV's open, and so every other camera's, for its whole open timeout: one whose
# OpenCV open took that long is opened with PyAV (camera, URL), outside the lock, until video
# comes again (PyAV decodes an RTSP stream at more CPU: its next reconnect is OpenCV's again)
MUTE_OPEN_SHARE = 0.9  # an open this share of the open timeout or longer: FFmpeg waited for video
_opened_with_pyav: set[tuple[str, str]] = set()
_open_took = threading.local()  # ``.s``: how long this thread's last OpenCV open took, its wait for the lock left out
log = logging.getLogger("percept.capture")


def unasked(url: str) -> bool:
    """A network URL with no request `camera_probe` can ask before the open."""
    return not is_file_url(url) and not url.startswith("device:") and not url.lower().startswith(ASKED)


def _ffmpeg_open(url: str, *params: object) -> object:
    """``cv2.VideoCapture(url, CAP_FFMPEG, …)`` with `RTSP_OPTIONS` in the environment for an
    RTSP URL and none for anything else."""
    import cv2

    with _OPEN_LOCK:
        if _USER_OPTIONS is None:
            os.environ[_OPTIONS_VAR] = RTSP_OPTIONS if url.lower().startswith(("rtsp://", "rtsps://")) else ""
        started = time.monotonic()
        try:
            return cv2.VideoCapture(url, cv2.CAP_FFMPEG, *params)
        finally:
            _open_took.s = time.monotonic() - started
            if _USER_OPTIONS is None:
                os.environ[_OPTIONS_VAR] = ""


def open_capture(
    camera: str,
    url: str,
    *,
    open_timeout_s: float = 5.0,
    read_timeout_s: float = 2.0,
    decode: str = "all",
    fps: float = 0.0,
    frame_timeout_s: float = 10.0,
    secrets: tuple[str, ...] = (),
) -> Capture:
    """Open a camera with OpenCV/FFmpeg: RTSP over TCP with explicit timeouts, files, devices.
    ``decode: keyframes`` / ``reference``: with PyAV, decoding only the keyframes / the reference
    frames (``fps``, the camera's sampling rate, is compared with the rate of those: a warning
    when it is higher)."""
    if decode in SKIP_FRAME:
        from .capture_av import decoded_rate, open_skipping

        return open_skipping(camera, url, decode=decode, open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s,
                             frame_timeout_s=frame_timeout_s, rate=decoded_rate(camera, fps, decode),
                             diagnose=diagnose_open, secrets=secrets)
    if decode != "all":
        raise ValueError(f"camera {camera}: decode must be one of {', '.join(['all', *SKIP_FRAME])}, not {decode!r}")
    mute = (camera, url)
    if unasked(url) or mute in _opened_with_pyav:  # PyAV's, outside OpenCV's open lock
        from .capture_av import open_skipping

        cap = open_skipping(camera, url, decode="all", open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s,
                            frame_timeout_s=frame_timeout_s, diagnose=diagnose_open, secrets=secrets)
        if mute in _opened_with_pyav:
            cap.first_frame = lambda: _opened_with_pyav.discard(mute)
        return cap
    import cv2

    safe = redact_url(redact(url, secrets))  # (its expanded variables first: a value with a ; or a space)
    if url.startswith("device:") or is_file_url(url):
        return _open_local(camera, url, safe)
    opened = url
    if url.lower().startswith(ASKED):
        peer: list[str] = []
        unanswered = camera_unanswered(url, timeout_s=open_timeout_s, peer=peer)
        if unanswered is not None:  # failed here, outside the open lock: the other cameras open meanwhile
            raise SourceError(camera, f"cannot open {safe}: {unanswered}", retryable=True)
        if peer:  # FFmpeg opens the address that answered: no name looked up under the open lock
            opened = with_address(url, peer[0])
    params = [
        # (at least 1 ms: OpenCV reads 0 as no timeout at all)
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, max(1, math.ceil(open_timeout_s * 1000)),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(1, math.ceil(read_timeout_s * 1000)),
        cv2.CAP_PROP_N_THREADS, 1,
    ]
    _open_took.s = 0.0
    cap = _ffmpeg_open(opened, params)
    if _open_took.s >= MUTE_OPEN_SHARE * open_timeout_s:  # (not the time another camera's open held the lock)
        _opened_with_pyav.add(mute)
        log.warning("camera %s: answered but sent no video for %.3g s (its open timeout): opened with PyAV until "
                    "video comes, so that its opens do not hold the other cameras' (OpenCV opens one at a time)",
                    camera, open_timeout_s)
    if not cap.isOpened():
        why = diagnose_open(url, timeout_s=min(open_timeout_s, 3.0))
        raise SourceError(camera, f"cannot open {safe}: {why}", retryable=True)
    return cap


def _open_local(camera: str, url: str, safe: str) -> Capture:
    """A device (``device:N``) or a file, opened with OpenCV."""
    import cv2

    if url.startswith("device:"):
        cap = cv2.VideoCapture(int(url.split(":", 1)[1]))
        if not cap.isOpened():
            raise SourceError(camera, f"cannot open {safe}", retryable=True)
        return cap
    path = camera_file(camera, url)
    cap = _ffmpeg_open(str(path))
    if not cap.isOpened():
        raise SourceError(
            camera, f"{path} is not a video FFmpeg can decode (wrong format, truncated or corrupt)", retryable=False
        )
    return cap


def probe_fps(url: str) -> float | None:
    """The nominal frame rate of a file (for realtime pacing), or None. Read with PyAV: OpenCV's
    FFmpeg options are process-wide (``OPENCV_FFMPEG_CAPTURE_OPTIONS``, set for RTSP cameras
    above), and with their tiny probe an MPEG-TS file reports twice its frame rate."""
    import av

    path = file_path_of(url)
    try:
        if not Path(path).is_file():  # (a named pipe would block the probe until a writer comes)
            return None
    except OSError:  # (a share gone away: the open says so)
        return None
    try:
        with av.open(path) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
    except (av.error.FFmpegError, OSError):
        return None
    return float(rate) if rate and rate > 0 else None
