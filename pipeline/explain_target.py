"""What every explanation method shares (Ray-free; `pipeline.explain` re-exports it): the object
explained (`Target`), how much of it a detector still finds (`target_score`), where the frame lies
in the letterboxed square (`content_region`) and how a heat map goes back to frame pixels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .models import letterbox_geometry
from .schema import Detections


class ExplainError(ValueError):
    """Bad input to an explanation (an object index, a method the model cannot run); the message
    names what is available."""


@dataclass(frozen=True)
class Target:
    """The object explained: its box (xyxy, frame pixels), label and score."""

    box: tuple[float, float, float, float]
    label: str
    score: float

    @classmethod
    def of(cls, detections: Detections, index: int) -> Target:
        """Object ``index`` of ``detections``; `ExplainError` naming how many there are."""
        n = len(detections)
        if not 0 <= index < n:
            have = f"objects 0..{n - 1}" if n else "no objects"
            raise ExplainError(f"object {index} is out of range: the frame has {have}")
        return cls(tuple(float(v) for v in detections.xyxy[index]), detections.labels[index],
                   float(detections.scores[index]))


def iou(box: Sequence[float], boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each row of ``boxes``."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    x1, y1 = np.maximum(box[0], b[:, 0]), np.maximum(box[1], b[:, 1])
    x2, y2 = np.minimum(box[2], b[:, 2]), np.minimum(box[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / np.maximum(area, 1e-6)


def target_score(detections: Detections | Exception, target: Target) -> float:
    """How much of the object the detector still finds: the best IoU × score among its label's
    detections (D-RISE's similarity with the class term reduced to the label); 0 when none."""
    if isinstance(detections, Exception):
        raise detections
    same = [i for i, label in enumerate(detections.labels) if label == target.label]
    if not same:
        return 0.0
    return float(np.max(iou(target.box, detections.xyxy[same]) * detections.scores[same]))


def content_region(orig_shape: tuple[int, int], imgsz: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the frame inside the letterboxed square (ultralytics'
    LetterBox, centred: its rounding)."""
    (new_w, new_h), top, left = letterbox_geometry(*orig_shape, imgsz)  # the same rounding, at least 1 px
    return top, left, new_h, new_w


def to_content(box: Sequence[float], orig_shape: tuple[int, int], imgsz: int) -> np.ndarray:
    """A box in frame pixels → in the letterboxed square, each axis at its own scale (the
    rounded content is not exactly the frame's aspect: a 4000×16 frame is 640×3 in it)."""
    top, left, h, w = content_region(orig_shape, imgsz)
    scale = np.array([w / orig_shape[1], h / orig_shape[0]] * 2, np.float32)
    return np.asarray(box, np.float32) * scale + np.array([left, top, left, top], np.float32)


def to_frame(heat: np.ndarray, orig_shape: tuple[int, int]) -> np.ndarray:
    """A content-sized heat map at frame size, scaled to [0, 1] (all zero stays zero)."""
    import cv2

    heat = np.clip(heat, 0, None).astype(np.float32)
    if heat.shape != tuple(orig_shape):
        heat = cv2.resize(heat, (orig_shape[1], orig_shape[0]), interpolation=cv2.INTER_LINEAR)
    top = float(heat.max())
    return heat / top if top > 0 else heat
