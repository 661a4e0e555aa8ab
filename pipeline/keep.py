"""The keep buffer: per camera, the last few published frames (the camera image and its
`FrameResult`) in the decoder replica's memory, so that ``percept explain`` can look at a frame
the service has published (Ray-free; `deployments/decoder.py` answers `kept_frame` from it).

The conductor hands each published frame over (`KeptFrames.keep`, a deque append on the event
loop, whether or not anyone watches the live view). Only references are kept, never copies:
the images are the reader's own arrays, which nothing writes after the frame is published. The
memory is bounded by ``size`` frames per camera (a 1080p frame: 6 MB; 8 of them: 50 MB)."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from .schema import FrameResult

DEFAULT_SIZE = 8


@dataclass(frozen=True)
class KeptFrame:
    """A published frame: the image (BGR, camera size), its result, and every seq kept now."""

    image: np.ndarray
    result: FrameResult
    kept: tuple[int, ...]


@dataclass(frozen=True)
class NotKept:
    """No such frame here: ``running`` False when this replica does not run the camera; else
    ``kept`` names the seqs there are (``seq`` is gone, or nothing is published yet)."""

    camera: str
    seq: int | None
    running: bool
    kept: tuple[int, ...] = ()

    @property
    def message(self) -> str:
        if not self.running:
            return f"camera {self.camera!r} does not run on this decoder"
        if not self.kept:
            return f"camera {self.camera!r} has published no frame yet"
        return (f"frame {self.seq} of camera {self.camera!r} is no longer kept; kept: "
                f"{', '.join(map(str, self.kept))}")


class KeptFrames:
    """Per camera, a bounded deque of (image, result), newest last."""

    def __init__(self, size: int = DEFAULT_SIZE):
        self.size = max(0, int(size))
        self._frames: dict[str, deque[tuple[np.ndarray, FrameResult]]] = {}
        self._lock = threading.Lock()  # keep() runs on the event loop, reads may come from threads

    def keep(self, image: np.ndarray, result: FrameResult) -> None:
        if self.size == 0:
            return
        camera = result.meta.camera
        with self._lock:
            frames = self._frames.get(camera)
            if frames is None:
                frames = self._frames[camera] = deque(maxlen=self.size)
            frames.append((image, result))

    def seqs(self, camera: str) -> tuple[int, ...]:
        with self._lock:
            return tuple(r.meta.seq for _, r in self._frames.get(camera, ()))

    def get(self, camera: str, seq: int | None = None) -> KeptFrame | NotKept:
        """Frame ``seq`` of ``camera`` (the newest when None), or what is kept instead."""
        with self._lock:
            frames = list(self._frames.get(camera, ()))
        kept = tuple(r.meta.seq for _, r in frames)
        for image, result in reversed(frames):
            if seq is None or result.meta.seq == seq:
                return KeptFrame(image, result, kept)
        return NotKept(camera, seq, True, kept)

    def forget(self, camera: str) -> None:
        with self._lock:
            self._frames.pop(camera, None)

    def cameras(self) -> list[str]:
        with self._lock:
            return sorted(self._frames)
