"""What every backend offers the rest of the pipeline (one backend per module, keyed by ``type``).

- A detector backend takes `DetectorInput`s (the camera frame letterboxed to a square of the
  detector's ``imgsz``, uint8 BGR) and returns `Detections` in camera pixels, one per input,
  an exception in place of a failed item (one bad frame never fails a batch).
- A classifier backend takes crops cut by the decoder at its ``crop_size`` (width, height;
  uint8 BGR) and returns one mapping per crop: attribute name → value, where a softmax head
  gives ``{"label": str, "score": float}`` and each sigmoid attribute ``{"value": bool,
  "probability": float}``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from ..schema import Detections
from ..models import DetectorInput, ModelError
from ..redact import redact

Attributes = Mapping[str, Mapping[str, Any]]

log = logging.getLogger("percept.backends")


class DetectorBackend(Protocol):
    name: str  # the weights' file name, as published in the message's ``model``
    names: Mapping[int, str]  # class id → label
    device: str
    half: bool

    def detect_batch(self, inputs: Sequence[DetectorInput]) -> list[Detections | Exception]: ...


class ClassifierBackend(Protocol):
    name: str
    crop_size: tuple[int, int]  # (width, height) the decoder cuts crops at
    crop_context: float  # the box is grown by this before cropping
    crop_fit: str  # how the box becomes the input: context, stretch or letterbox (`prepare_crop`)
    min_size: tuple[int, int] | None  # smallest box (width, height) the model is meant for
    attributes: tuple[str, ...]  # the attribute names it writes
    device: str
    half: bool

    def classify_batch(self, crops: Sequence[np.ndarray]) -> list[Attributes | Exception]: ...


SYSTEMIC = 4  # a first half of at least this many items failing one and all: the model fails, not an item


def per_item(run, items: Sequence[Any]) -> list[Any]:
    """``run(items)`` as a whole; when it raises, each half again (down to one item), so only
    the bad item fails, in about 2 × log2(n) runs rather than n (a big batch of crops retried
    one by one ran past the frames' classify timeout). When every item of a first half of
    `SYSTEMIC` or more fails too, one item of the rest is run alone: if it fails as well (a device
    lost, out of memory) the rest fail with it unrun; if it answers, the first half's items were
    bad (one frame's crops, first in a batch of many cameras'), and the rest are run."""
    if not items:
        return []
    try:
        return run(items)
    except Exception as exc:
        if len(items) == 1:
            return [exc]
        half = len(items) // 2
        first = per_item(run, items[:half])
        if half >= SYSTEMIC and all(isinstance(r, Exception) for r in first):
            probe = per_item(run, items[half:half + 1])  # the model, or the first half's items?
            if isinstance(probe[0], Exception):
                return first + probe * (len(items) - half)
            return first + probe + per_item(run, items[half + 1:])
        return first + per_item(run, items[half:])


def in_chunks(run, items: Sequence[Any], size: int) -> list[Any]:
    """`per_item` over ``items`` ``size`` at a time (a batch of frames' crops can hold a thousand)."""
    return [r for i in range(0, len(items), size) for r in per_item(run, items[i:i + size])]


def refuse_failed_warmup(answers: Sequence[Any], field: str, weights: str) -> None:
    """A warm-up whose blank input fails (`per_item` answers the exception) means every input
    will: the model is refused at load (`ModelError`, exit 2) instead of a replica that reports
    ready and publishes nothing."""
    failed = next((a for a in answers if isinstance(a, Exception)), None)
    if failed is not None:
        raise ModelError(f"{field}: {weights}: a blank input fails, so every input would: "
                         f"{type(failed).__name__}: {str(failed)[:300]}")


def warm_up_detector(det: Any, imgsz: int, field: str, weights: str) -> None:
    """A blank frame through a detector backend at load (its memory taken now, not under load);
    one that fails refuses the model (`refuse_failed_warmup`)."""
    blank = DetectorInput(np.zeros((imgsz, imgsz, 3), np.uint8), (imgsz, imgsz))
    refuse_failed_warmup(det.detect_batch([blank]), field, weights)


def warn_cpu_only(cfg: Any, field: str, backend: str) -> None:
    """A device or FP16 asked of a backend that runs on the CPU in the card's precision: said, not ignored."""
    if str(cfg.device).startswith(("cuda", "mps")) or str(cfg.device).isdigit():
        log.warning("%s: device %s: the %s backend runs on the CPU", field, cfg.device, backend)
    if cfg.half:
        log.warning("%s: half: not applied: the %s backend runs the network in the precision OpenVINO chooses for "
                    "this CPU (bf16 where the CPU has it, else the network's own)", field, backend)


class FailingBatches:
    """Whether a replica's model fails everything it is given (a GPU lost to a device reset, a
    model that can no longer run): ``batches`` batches in a row whose every item failed, over at
    least ``seconds``. Its replica's ``check_health`` then fails and Serve restarts it: it stayed
    in rotation, every frame sent to it retried once and then lost, its cameras `online`. Any
    batch with one answer starts the count again, so a few bad frames never add up to it."""

    def __init__(self, batches: int = 3, seconds: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 item: str = "frame"):
        self.batches, self.seconds, self._clock, self.item = batches, seconds, clock, item
        self._count, self._since, self._last = 0, 0.0, None

    def saw(self, results: Sequence[Any]) -> None:
        """One batch's results (an exception each item that failed)."""
        failed = [r for r in results if isinstance(r, BaseException)]
        if not results:
            return
        if len(failed) < len(results):
            self._count, self._last = 0, None
            return
        if self._count == 0:
            self._since = self._clock()
        self._count += 1
        self._last = failed[0]

    def problem(self) -> str | None:
        """Why the replica is unhealthy (None: it is not)."""
        if self._count < self.batches or self._clock() - self._since < self.seconds:
            return None
        return (f"every {self.item} of the last {self._count} batches failed, for {self._clock() - self._since:.0f} s: "
                f"{type(self._last).__name__}: {redact(str(self._last))[:300]}")
