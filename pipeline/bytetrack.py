"""ultralytics' ByteTrack, made to hold at the few fps a camera is sampled at (see pipeline/tracking.py).

- `ByteTrack` (pipeline/bytetrack_class.py, imported on first use: importing ultralytics takes
  a second): a `BYTETracker` that matches by buffered IoU (boxes grown by ``buffer``
  of their size, set per frame from the time since the previous one) and only within a category
  (``category_of``: class id → category; a person getting out of a parked car never continues
  the car's track), confirms new tracks with
  the same rule (waiting a frame longer for their second sighting), steps its Kalman filter by ``steps`` usual frame intervals and scales its
  velocity noise to the interval (`scale_velocity`);
- `Boxes`: detections as ByteTrack reads them (ultralytics' `Boxes` without torch);
- `merge_duplicates`: one object per group of same-category boxes that overlap (NMS is per label).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

MAX_BUFFER = 1.0  # boxes grow by at most their own size on each side


def buffered_iou(a: np.ndarray, b: np.ndarray, buffer: float) -> np.ndarray:
    """IoU of every box of ``a`` (N×4 xyxy) with every box of ``b`` (M×4), each grown by
    ``buffer`` of its width and height on every side first."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)

    def grow(x: np.ndarray) -> np.ndarray:
        pad = np.stack([x[:, 2] - x[:, 0], x[:, 3] - x[:, 1]], axis=1) * buffer
        return np.concatenate([x[:, :2] - pad, x[:, 2:] + pad], axis=1)

    a, b = grow(a), grow(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


class Boxes:
    """The detections as ByteTrack reads them (ultralytics' `Boxes` without torch)."""

    def __init__(self, data: np.ndarray, shape: tuple[int, int]):
        self.data, self.orig_shape = data, shape

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, mask: Any) -> "Boxes":
        return Boxes(self.data[mask], self.orig_shape)

    @property
    def conf(self) -> np.ndarray:
        return self.data[:, 4]

    @property
    def cls(self) -> np.ndarray:
        return self.data[:, 5]

    @property
    def xywh(self) -> np.ndarray:
        xy = self.data[:, :4]
        return np.stack([(xy[:, 0] + xy[:, 2]) / 2, (xy[:, 1] + xy[:, 3]) / 2, xy[:, 2] - xy[:, 0],
                         xy[:, 3] - xy[:, 1]], axis=1)

    @property
    def xyxy(self) -> np.ndarray:
        return self.data[:, :4]


def merge_duplicates(xyxy: np.ndarray, scores: np.ndarray, categories: Sequence[str],
                     merge_iou: float) -> tuple[list[int], list[int]]:
    """(heads, head of each box): within a category, a box overlapping a better-scored one by
    more than ``merge_iou`` is the same object (its head); heads are their own."""
    n = len(xyxy)
    head_of = list(range(n))
    if n < 2 or merge_iou >= 1:
        return list(range(n)), head_of
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    ious = buffered_iou(xyxy, xyxy, 0.0)
    heads: list[int] = []
    for i in order:
        head = next((h for h in heads if categories[h] == categories[i] and ious[h, i] > merge_iou), None)
        if head is None:
            heads.append(i)
        else:
            head_of[i] = head
    return sorted(heads), head_of
