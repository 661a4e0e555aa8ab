"""The keep buffer: per camera, the last few published frames (the camera image and its
`FrameResult`) in the decoder replica's memory, so that ``percept explain`` can look at a frame
the service has published (Ray-free; `deployments/decoder.py` answers `kept_frame` from it).

The conductor hands each published frame over (`KeptFrames.keep`, a deque append on the event
loop, whether or not anyone watches the live view). Only references are kept, never copies:
the images are the reader's own arrays, which nothing writes after the frame is published. The
memory is bounded by ``size`` frames per camera (a 1080p frame: 6 MB; 8 of them: 50 MB) and by
``max_bytes`` of images per camera (an 8K frame is 100 MB: 8 of them held 800 MB of a decoder's
memory, and a decoder killed for memory stops every camera it runs); the newest frame is always
kept."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from .schema import FrameResult

DEFAULT_SIZE = 8
DEFAULT_MAX_BYTES = 100 * 2**20  # `ViewConfig.keep_mb`


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
        if self.seq is not None and self.seq > self.kept[-1]:  # (it said "no longer kept" of a future frame)
            return f"frame {self.seq} of camera {self.camera!r} is not published yet; newest kept: {self.kept[-1]}"
        return (f"frame {self.seq} of camera {self.camera!r} is no longer kept; kept: "
                f"{', '.join(map(str, self.kept))}")


class KeptFrames:
    """Per camera, a bounded deque of (image, result), newest last."""

    def __init__(self, size: int = DEFAULT_SIZE, max_bytes: int = DEFAULT_MAX_BYTES):
        self.size = max(0, int(size))
        self.max_bytes = int(max_bytes)
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
            held = sum(kept.nbytes for kept, _ in frames)
            while len(frames) > 1 and held > self.max_bytes:  # the oldest go; the newest stays
                held -= frames.popleft()[0].nbytes

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
