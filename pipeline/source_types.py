"""What a video source (pipeline/sources.py) is made of and says: its states and allowed
transitions, its errors, its status events and frames, the capture it reads, and file URLs."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from .redact import redact
from .schema import FrameMeta


class SourceState(str, Enum):
    CONNECTING = "connecting"
    ONLINE = "online"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    STOPPED = "stopped"


ALLOWED: dict[SourceState, set[SourceState]] = {
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


def is_file_url(url: str) -> bool:
    """A path, or a ``file://`` or FFmpeg's ``file:`` URL (its scheme in any case, as any URL's);
    FFmpeg's other colon forms (``unix:/run/cam.sock``, ``zmq:tcp://…``) are network cameras (they
    were looked up as files named ``unix:/…``, the camera failed for good)."""
    if url[:5].lower() == "file:":
        return True
    return "://" not in url and not url.startswith("device:") and url[:5].lower() != "unix:"


def is_hls_url(url: str) -> bool:
    """An HLS playlist (a path ending in ``.m3u8``, or ``hls`` in the scheme): its video comes in
    whole segments of seconds each, as fast as they download, and new ones only every segment."""
    try:
        parts = urlsplit(url)
    except ValueError:  # (a host that is no address, from a ${VAR}: its open says so)
        return False
    return parts.scheme.lower().startswith("hls") or parts.path.lower().endswith(".m3u8")


def file_path_of(url: str) -> str:
    """A file camera's path: its URL without ``file://`` or ``file:`` (in any case)."""
    return url[7:] if url[:7].lower() == "file://" else url[5:] if url[:5].lower() == "file:" else url


def camera_file(camera: str, url: str) -> Path:
    """The file a file camera's URL names, there to be opened: a `SourceError` when it is not
    (final), or when it cannot even be looked at (a network share gone away, no permission:
    retried; a name too long for the system: final) — never an `OSError` that crashes the reader."""
    path = Path(file_path_of(url))
    try:
        there = path.is_file()
    except OSError as exc:
        raise SourceError(camera, f"cannot look at {path}: {exc.strerror or exc}",
                          retryable=exc.errno != errno.ENAMETOOLONG) from None
    if not there:
        raise SourceError(camera, f"file not found: {path}", retryable=False)
    return path
