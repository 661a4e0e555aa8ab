"""Raw detection outputs → boxes, scores and class ids in the network's input pixels.

One function per output ``layout`` of a model card, then one NMS shared by all:

- ``yolov5`` [N, 5+C]: cx, cy, w, h (input px), objectness, C class probabilities; score =
  objectness × class probability (``logits``: sigmoid first).
- ``yolov8`` [4+C, N]: ultralytics YOLOv8/11 exports; cx, cy, w, h, C class scores, no objectness.
- ``ssd`` [N, 7]: image_id, label, confidence, x1, y1, x2, y2 normalised to 0..1 (OpenVINO's
  DetectionOutput; rows after an image_id of -1 are padding).

Each box takes its best class; boxes at or below ``conf`` and classes outside ``classes`` are
dropped before a class-aware NMS (torchvision's, as ultralytics uses), keeping ``max_det``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LAYOUTS = ("yolov5", "yolov8", "ssd")


@dataclass(frozen=True)
class Decoded:
    xyxy: np.ndarray  # (n, 4) float32, network input pixels
    scores: np.ndarray  # (n,) float32
    class_ids: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.scores)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _xywh2xyxy(xywh: np.ndarray) -> np.ndarray:
    half = xywh[:, 2:4] / 2
    return np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)


def yolov5(raw: np.ndarray, conf: float, *, logits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[N, 5+C] → candidates above ``conf`` (xyxy, score, class)."""
    raw = raw.reshape(-1, raw.shape[-1])
    obj = raw[:, 4]
    if logits:
        obj = _sigmoid(obj)
    keep = np.flatnonzero(obj > conf)  # score = obj × cls <= obj: nothing else can pass
    if keep.size == 0:
        return _empty()
    rows = raw[keep]
    cls = _sigmoid(rows[:, 5:]) if logits else rows[:, 5:]
    cls = cls * obj[keep, None]
    ids = cls.argmax(1)
    scores = cls[np.arange(len(ids)), ids]
    ok = scores > conf
    return _xywh2xyxy(rows[ok, :4]), scores[ok], ids[ok]


def yolov8(raw: np.ndarray, conf: float, *, logits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[4+C, N] → candidates above ``conf`` (xyxy, score, class)."""
    raw = raw.reshape(raw.shape[-2], raw.shape[-1])
    cls = raw[4:]
    scores = cls.max(0)  # a max along the class axis is ~7x cheaper than an argmax: argmax the candidates only
    if logits:
        scores = _sigmoid(scores)
    ok = np.flatnonzero(scores > conf)
    return _xywh2xyxy(raw[:4, ok].T), scores[ok], cls[:, ok].argmax(0)


def ssd(raw: np.ndarray, conf: float, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[N, 7] normalised rows → candidates above ``conf`` in pixels of an input of ``size`` (h, w)."""
    rows = raw.reshape(-1, 7)
    end = np.flatnonzero(rows[:, 0] < 0)
    if end.size:
        rows = rows[: end[0]]
    rows = rows[(rows[:, 2] > conf) & (rows[:, 1] >= 0)]
    h, w = size
    xyxy = rows[:, 3:7] * np.array([w, h, w, h], np.float32)
    return xyxy, rows[:, 2], rows[:, 1].astype(np.int64)


def nms(xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    """Indices kept by class-aware NMS, best score first, at most ``max_det``."""
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    import torch
    from torchvision.ops import batched_nms

    keep = batched_nms(torch.from_numpy(np.ascontiguousarray(xyxy, np.float32)),
                       torch.from_numpy(np.ascontiguousarray(scores, np.float32)),
                       torch.from_numpy(np.asarray(class_ids, np.int64)), float(iou))
    return keep[:max_det].numpy()


def decode(raw: np.ndarray, layout: str, *, conf: float, iou: float, max_det: int, size: tuple[int, int],
           classes: Sequence[int] | None = None, logits: bool = False,
           same: Mapping[int, int] | None = None) -> Decoded:
    """One image's raw output → `Decoded` in the pixels of the network's input (``size`` = h, w).
    NMS is per class; ``same`` maps class ids that are one label to one of them, so that one
    object is not kept once per id (names.yaml beside the sign detector names 9 and 10 alike)."""
    if layout == "yolov5":
        xyxy, scores, ids = yolov5(raw, conf, logits=logits)
    elif layout == "yolov8":
        xyxy, scores, ids = yolov8(raw, conf, logits=logits)
    elif layout == "ssd":
        xyxy, scores, ids = ssd(raw, conf, size)
    else:
        raise ValueError(f"unknown detections layout {layout!r} (known: {', '.join(LAYOUTS)})")
    if classes is not None:
        ok = np.isin(ids, np.asarray(list(classes), np.int64))
        xyxy, scores, ids = xyxy[ok], scores[ok], ids[ok]
    groups = ids
    if same:
        groups = ids.copy()
        for idx, group in same.items():
            groups[ids == idx] = group
    keep = nms(xyxy, scores, groups, iou, max_det)
    return Decoded(xyxy[keep].astype(np.float32), scores[keep].astype(np.float32), ids[keep].astype(np.int64))
