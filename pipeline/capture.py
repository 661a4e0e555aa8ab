"""Opening cameras with OpenCV/FFmpeg — the part of a source that touches the world: RTSP over
TCP with explicit timeouts, files, devices; why an RTSP open failed, in an operator's words;
a file's nominal frame rate. `VideoSource` (pipeline/sources.py) receives the opener. A camera
with ``decode: keyframes`` or ``reference`` is opened with PyAV instead (pipeline/capture_av.py)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .capture_av import SKIP_FRAME
from .redact import UNESCAPED_USERINFO, redact_url, url_credentials
from .sources import Capture, SourceError, is_file_url


# FFmpeg's options for an RTSP camera: TCP and no probing, first frame in ~0.2 s, not ~3 s. OpenCV
# reads them from the environment at every open, for every kind of input: set for an RTSP open
# only (a file or HTTP stream opened with them may decode nothing: a 32-byte probe misses an
# MPEG-TS file's video), unless the user set their own.
RTSP_OPTIONS = "rtsp_transport;tcp|analyzeduration;0|probesize;32"
_OPTIONS_VAR = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_USER_OPTIONS = os.environ.get(_OPTIONS_VAR)
_OPEN_LOCK = threading.Lock()  # (OpenCV opens one FFmpeg input at a time anyway)


def _ffmpeg_open(url: str, *params: object) -> object:
    """``cv2.VideoCapture(url, CAP_FFMPEG, …)`` with `RTSP_OPTIONS` in the environment for an
    RTSP URL and none for anything else."""
    import cv2

    with _OPEN_LOCK:
        if _USER_OPTIONS is None and url.lower().startswith(("rtsp://", "rtsps://")):
            os.environ[_OPTIONS_VAR] = RTSP_OPTIONS
        try:
            return cv2.VideoCapture(url, cv2.CAP_FFMPEG, *params)
        finally:
            if _USER_OPTIONS is None:
                os.environ.pop(_OPTIONS_VAR, None)


def open_capture(
    camera: str,
    url: str,
    *,
    open_timeout_s: float = 5.0,
    read_timeout_s: float = 2.0,
    decode: str = "all",
    fps: float = 0.0,
    frame_timeout_s: float = 10.0,
) -> Capture:
    """Open a camera with OpenCV/FFmpeg: RTSP over TCP with explicit timeouts, files, devices.
    ``decode: keyframes`` / ``reference``: with PyAV, decoding only the keyframes / the reference
    frames (``fps``, the camera's sampling rate, is compared with the rate of those: a warning
    when it is higher)."""
    if decode in SKIP_FRAME:
        from .capture_av import decoded_rate, open_skipping

        return open_skipping(camera, url, decode=decode, open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s,
                             frame_timeout_s=frame_timeout_s, rate=decoded_rate(camera, fps, decode),
                             diagnose=diagnose_rtsp)
    if decode != "all":
        raise ValueError(f"camera {camera}: decode must be one of {', '.join(['all', *SKIP_FRAME])}, not {decode!r}")
    import cv2

    safe = redact_url(url)
    if url.startswith("device:"):
        cap = cv2.VideoCapture(int(url.split(":", 1)[1]))
        if not cap.isOpened():
            raise SourceError(camera, f"cannot open {safe}", retryable=True)
        return cap
    if is_file_url(url):
        path = Path(url.removeprefix("file://"))
        if not path.is_file():
            raise SourceError(camera, f"file not found: {path}", retryable=False)
        cap = _ffmpeg_open(str(path))
        if not cap.isOpened():
            raise SourceError(
                camera, f"{path} is not a video FFmpeg can decode (wrong format, truncated or corrupt)", retryable=False
            )
        return cap
    if url.lower().startswith(tuple(_DEFAULT_PORTS)):
        unanswered = camera_unanswered(url, timeout_s=open_timeout_s)
        if unanswered is not None:  # failed here, outside the open lock: the other cameras open meanwhile
            raise SourceError(camera, f"cannot open {safe}: {unanswered}", retryable=True)
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000),
        cv2.CAP_PROP_N_THREADS, 1,
    ]
    cap = _ffmpeg_open(url, params)
    if not cap.isOpened():
        why = diagnose_rtsp(url, timeout_s=min(open_timeout_s, 3.0)) if url.startswith("rtsp://") else "no answer"
        raise SourceError(camera, f"cannot open {safe}: {why}", retryable=True)
    return cap


_DEFAULT_PORTS = {"rtsp://": 554, "rtsps://": 322, "http://": 80, "https://": 443}


def _rtsp_target(url: str) -> tuple[str, int, str, str] | str:
    """(host, port, how to name them, the URL without credentials) of a network camera's URL as
    FFmpeg reads it, or why they cannot be read (words for the operator, nothing of a password)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL": a [ or ] (in a password too) outside an address
        return "the URL's host cannot be read: a [ or ] outside an IPv6 address (percent-encode one in a password as %5B or %5D)"
    found, scrubbed = url_credentials(url), url_credentials(url, to_last_at=True)
    try:
        host, port = parts.hostname or "", parts.port or _DEFAULT_PORTS.get(f"{parts.scheme.lower()}://", 554)
    except ValueError:
        host, port = "", 0
    if found is not None and (found.hostport != parts.netloc.rpartition("@")[2] or not host):
        # "user:pa/ss@host": the "/" ends the host part, which is then a piece of the password
        return f"the URL's host cannot be read: {UNESCAPED_USERINFO}"
    if not host or not 0 < port < 65536:
        return "the URL's host and port cannot be read (rtsp://host[:port]/path, a port from 1 to 65535)"
    where = f"{host}:{port}"
    if scrubbed is not None and (found is None or scrubbed.hostport != found.hostport):
        # an "@" after the host part: FFmpeg's host may be a piece of a password ("user:Tr0ub@dor/horse@cam"):
        # tried as FFmpeg did, not named
        where = f"the URL's host, port {port} (not shown: if the password has / ? # or @ in it, percent-encode them)"
    clean = f"rtsp://{host}:{port}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
    return host, port, where, clean


def _rtsp_ask(host: str, port: int, where: str, request: str | None, timeout_s: float) -> tuple[str, str | None]:
    """One request without credentials (None: connect only): (the status line it got, or "" if
    none; why there was no connection or answer, or None)."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            if request is None:
                return "", None
            sock.settimeout(timeout_s)
            sock.sendall((request + "\r\n").encode())
            return sock.recv(256).split(b"\r\n", 1)[0].decode(errors="replace"), None
    except ConnectionRefusedError:
        return "", f"connection refused by {where} (camera or server down?)"
    except socket.gaierror:
        return "", f"unknown host: {where}" if where.startswith("the URL") else f"unknown host {host!r}"
    except (TimeoutError, socket.timeout):
        return "", f"no answer from {where} within {timeout_s:.0f} s (unreachable or hung)"
    except OSError as exc:
        return "", f"{where} unreachable ({exc.strerror or exc})"


def camera_unanswered(url: str, *, timeout_s: float) -> str | None:
    """Why a network camera cannot be opened now — no connection within ``timeout_s``, or for
    ``rtsp://`` no answer to an OPTIONS request either — or None (it answered, or its URL is left
    to FFmpeg). Asked before FFmpeg opens it: OpenCV opens one input at a time, so a camera that
    does not answer would otherwise hold every other camera's (re)connect in its process for its
    whole ``open_timeout_s``. No credentials are sent."""
    target = _rtsp_target(url)
    if isinstance(target, str):
        return None
    host, port, where, clean = target
    ask = f"OPTIONS {clean} RTSP/1.0\r\nCSeq: 1\r\n" if url.lower().startswith("rtsp://") else None
    return _rtsp_ask(host, port, where, ask, timeout_s)[1]


def diagnose_rtsp(url: str, *, timeout_s: float = 3.0) -> str:
    """Why an RTSP open failed, in words a camera operator can act on: one DESCRIBE request and
    the status line it gets. It carries no credentials: FFmpeg sends them only when the server
    asks, Digest when offered; this request, sent on every failed open to whatever host the URL
    now reaches, never sends the password (a 401 says the camera wants them)."""
    from urllib.parse import urlsplit

    target = _rtsp_target(url)
    if isinstance(target, str):
        return target
    host, port, where, clean = target
    status, why = _rtsp_ask(host, port, where, f"DESCRIBE {clean} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n",
                            timeout_s)
    if why is not None:
        return why
    code = status.split(" ", 2)[1] if status.count(" ") >= 1 else ""
    if code == "401":  # (asked without credentials: a camera that wants them says so)
        if urlsplit(url).username is None:  # (it splits: _rtsp_target did)
            return "401 Unauthorized: the camera wants a user and password in its URL"
        return "401 Unauthorized: the camera wants credentials; check the user and password in the camera URL"
    if code == "404":
        return "404 Not Found: check the stream path in the camera URL"
    if code.startswith("2"):
        return f"server answered {status!r} but no video could be decoded (codec or transport problem)"
    return f"server answered {status!r}" if status else "server closed the connection"


def probe_fps(url: str) -> float | None:
    """The nominal frame rate of a file (for realtime pacing), or None. Read with PyAV: OpenCV's
    FFmpeg options are process-wide (``OPENCV_FFMPEG_CAPTURE_OPTIONS``, set for RTSP cameras
    above), and with their tiny probe an MPEG-TS file reports twice its frame rate."""
    import av

    try:
        with av.open(url.removeprefix("file://")) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
    except (av.error.FFmpegError, OSError):
        return None
    return float(rate) if rate and rate > 0 else None
