"""What drove a detection: a heat map over the camera frame for one detected object (Ray-free;
`deployments/explain.py` serves it, `percept explain` writes it).

Model-agnostic methods, for every backend (anything with ``detect_batch``):

- ``rise`` (D-RISE, Petsiuk et al. 2021): ``masks`` random low-resolution binary grids, upsampled
  smoothly with a random shift, grey out parts of the detector's input; each masked input is
  re-scored against the object (`target_score`: the best IoU × score among the detections of its
  label). A pixel's heat is how much the object's score goes with the pixel being visible (the
  covariance of score and mask over the masks), clipped at 0.
- ``occlusion``: a grey patch slides over the input in a ``grid`` × ``grid`` raster (half
  overlapping); a pixel's heat is the mean drop of the object's score while it is covered.

For ultralytics ``.pt`` models `pipeline.explain_cam` adds ``eigencam`` (one forward and backward
pass instead of hundreds of detector calls).

Masks are laid over the frame's part of the letterboxed square (`prepare_frame`), so the detector
sees exactly what the pipeline gives it, and the heat is mapped back to frame pixels. The detector
should keep faint detections (a low ``conf``, see `explainer_config`) so that a weakened object
still counts. Deterministic for a given ``seed``. Cost: one detector call per mask (``masks`` for
rise, ``grid``² for occlusion) at the detector's input size, batched by ``batch``.

`deletion_check` is the sanity number: the object's score after greying the hottest ``fraction``
of the frame's pixels, against greying as many random ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .explain_target import (  # noqa: F401 (API)
    ExplainError,
    Target,
    content_region,
    iou,
    target_score,
    to_frame,
)
from .models import DetectorInput, prepare_frame
from .schema import Detections

GREY = 114  # the letterbox's padding colour: what a masked pixel becomes
METHODS = ("rise", "occlusion", "eigencam")
EXPLAIN_CONF = 0.05  # the detector keeps detections this faint while explaining


class BatchDetector(Protocol):
    def detect_batch(self, inputs: Sequence[DetectorInput]) -> list[Detections | Exception]: ...


@dataclass(frozen=True)
class Explanation:
    heat: np.ndarray  # float32, the frame's height × width, in [0, 1]
    target: Target
    method: str
    calls: int  # forward passes run
    elapsed_ms: float


@dataclass(frozen=True)
class DeletionCheck:
    """The object's score (`target_score`) on the frame as it is, with the hottest ``fraction`` of
    pixels greyed, and with as many random pixels greyed."""

    fraction: float
    original: float
    hottest: float
    random: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in vars(self).items()}


# --- scoring -----------------------------------------------------------------------------------------

def scores_of(detector: BatchDetector, inputs: list[DetectorInput], target: Target) -> np.ndarray:
    return np.array([target_score(d, target) for d in detector.detect_batch(inputs)], np.float32)


# --- the letterboxed input ------------------------------------------------------------------------

def masked_inputs(base: DetectorInput, region: tuple[int, int, int, int],
                  masks: np.ndarray) -> list[DetectorInput]:
    """``base`` once per mask (content-sized, 1 = visible, 0 = grey), the frame region blended."""
    top, left, h, w = region
    crop = base.image[top:top + h, left:left + w].astype(np.float32)
    out = []
    for m in masks:
        image = base.image.copy()
        m3 = m[:, :, None]
        image[top:top + h, left:left + w] = (crop * m3 + GREY * (1.0 - m3)).astype(np.uint8)
        out.append(DetectorInput(image, base.orig_shape))
    return out


# --- RISE ------------------------------------------------------------------------------------------

def rise_masks(rng: np.random.Generator, n: int, shape: tuple[int, int], cells: int, p: float) -> np.ndarray:
    """``n`` smooth masks of ``shape``: a ``cells``-wide random grid (each cell visible with
    probability ``p``), upsampled bilinearly one cell larger and cut at a random shift."""
    import cv2

    h, w = shape
    cell = int(np.ceil(max(h, w) / cells))
    grid_h, grid_w = int(np.ceil(h / cell)), int(np.ceil(w / cell))
    out = np.empty((n, h, w), np.float32)
    for i in range(n):
        grid = (rng.random((grid_h + 1, grid_w + 1)) < p).astype(np.float32)
        up = cv2.resize(grid, ((grid_w + 1) * cell, (grid_h + 1) * cell), interpolation=cv2.INTER_LINEAR)
        dy, dx = rng.integers(0, cell, 2)
        out[i] = up[dy:dy + h, dx:dx + w]
    return out


def rise(detector: BatchDetector, image: np.ndarray, target: Target, *, imgsz: int, masks: int = 400,
         cells: int = 16, p: float = 0.5, seed: int = 0, batch: int = 16) -> tuple[np.ndarray, int]:
    """D-RISE heat (frame size) and the number of detector calls."""
    base = prepare_frame(image, imgsz)
    region = content_region(base.orig_shape, imgsz)
    rng = np.random.default_rng(seed)
    weighted = np.zeros(region[2:], np.float64)
    mask_sum = np.zeros(region[2:], np.float64)
    score_sum = 0.0
    for start in range(0, masks, batch):
        chunk = rise_masks(rng, min(batch, masks - start), region[2:], cells, p)
        scores = scores_of(detector, masked_inputs(base, region, chunk), target)
        weighted += np.tensordot(scores, chunk, axes=1)
        mask_sum += chunk.sum(axis=0)
        score_sum += float(scores.sum())
    covariance = weighted / masks - (score_sum / masks) * (mask_sum / masks)
    return to_frame(covariance, base.orig_shape), masks


# --- occlusion ---------------------------------------------------------------------------------------

def occlusion_patches(shape: tuple[int, int], grid: int) -> Iterator[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of a ``grid`` × ``grid`` raster of patches two strides wide (half overlapping)."""
    h, w = shape
    sy, sx = h / grid, w / grid
    for gy in range(grid):
        for gx in range(grid):
            y0, x0 = round((gy - 0.5) * sy), round((gx - 0.5) * sx)
            yield max(0, y0), min(h, round(y0 + 2 * sy)), max(0, x0), min(w, round(x0 + 2 * sx))


def occlusion(detector: BatchDetector, image: np.ndarray, target: Target, *, imgsz: int, grid: int = 16,
              batch: int = 16) -> tuple[np.ndarray, int]:
    """Occlusion heat (frame size) and the number of detector calls."""
    base = prepare_frame(image, imgsz)
    region = content_region(base.orig_shape, imgsz)
    original = scores_of(detector, [base], target)[0]
    patches = list(occlusion_patches(region[2:], grid))
    drop = np.zeros(region[2:], np.float64)
    covered = np.zeros(region[2:], np.float64)
    for start in range(0, len(patches), batch):
        chunk = patches[start:start + batch]
        masks = np.ones((len(chunk), *region[2:]), np.float32)
        for m, (y0, y1, x0, x1) in zip(masks, chunk):
            m[y0:y1, x0:x1] = 0.0
        scores = scores_of(detector, masked_inputs(base, region, masks), target)
        for s, (y0, y1, x0, x1) in zip(scores, chunk):
            drop[y0:y1, x0:x1] += original - s
            covered[y0:y1, x0:x1] += 1
    return to_frame(drop / np.maximum(covered, 1), base.orig_shape), len(patches) + 1


# --- the entry point -------------------------------------------------------------------------------

def explain(detector: Any, image: np.ndarray, target: Target, *, imgsz: int, method: str = "rise",
            masks: int = 400, grid: int = 16, seed: int = 0, batch: int = 16) -> Explanation:
    """The heat map of ``target`` on ``image`` (a BGR camera frame) by ``method``. ExplainError
    when the detector does not find the object on the frame as it is (a model swapped since the
    frame was published, another ``imgsz``): its heat map would be empty, read as perfect."""
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ExplainError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    if scores_of(detector, [prepare_frame(image, imgsz)], target)[0] <= 0:
        raise ExplainError(f"the detector explaining does not find this {target.label} on the frame "
                           f"({getattr(detector, 'name', 'its model')}, imgsz {imgsz}): nothing to explain")
    if (settle := getattr(detector, "wait_compiling", None)) is not None:  # (a new frame size: its masks at
        settle(60.0)  # its rectangle, as the check above will be, not some in the square: `openvino_sizes`)
    if method == "rise":
        heat, calls = rise(detector, image, target, imgsz=imgsz, masks=masks, seed=seed, batch=batch)
    elif method == "occlusion":
        heat, calls = occlusion(detector, image, target, imgsz=imgsz, grid=grid, batch=batch)
    else:
        from .explain_cam import eigencam

        heat, calls = eigencam(detector, image, target, imgsz=imgsz)
    return Explanation(heat, target, method, calls, (time.perf_counter() - t0) * 1000)


def deletion_check(detector: BatchDetector, image: np.ndarray, target: Target, heat: np.ndarray, *, imgsz: int,
                   fraction: float = 0.1, seed: int = 0, trials: int = 3) -> DeletionCheck:
    """The object's score with the hottest ``fraction`` of pixels greyed, and (the mean of
    ``trials`` draws) with as many pixels chosen at random greyed. Pixels of what the detector
    sees: the frame's part of its letterboxed input, the heat scaled to it (at the frame's size
    an 8K frame took 0.75 GB and 10 s, and single random pixels were averaged away by the
    letterbox's downscale)."""
    import cv2

    base = prepare_frame(image, imgsz)
    region = content_region(base.orig_shape, imgsz)
    h, w = region[2:]
    small = cv2.resize(np.ascontiguousarray(heat, np.float32), (w, h),
                       interpolation=cv2.INTER_AREA if h * w < heat.size else cv2.INTER_LINEAR)
    k = max(1, round(fraction * small.size))
    masks = np.ones((1 + trials, small.size), np.float32)  # 1 visible, 0 grey
    masks[0, np.argsort(small, axis=None, kind="stable")[-k:]] = 0.0
    rng = np.random.default_rng(seed)
    for t in range(trials):
        masks[1 + t, rng.choice(small.size, k, replace=False)] = 0.0
    inputs = [base, *masked_inputs(base, region, masks.reshape(-1, h, w))]
    scores = scores_of(detector, inputs, target)
    return DeletionCheck(fraction, float(scores[0]), float(scores[1]), float(scores[2:].mean()))


# --- the picture -----------------------------------------------------------------------------------

def overlay(image: np.ndarray, heat: np.ndarray, target: Target, *, method: str = "", alpha: float = 0.5) -> np.ndarray:
    """The frame with the heat map blended in (OpenCV's JET colours) and the object's box drawn."""
    import cv2

    colours = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)
    out = cv2.addWeighted(image, 1 - alpha, colours, alpha, 0)
    x1, y1, x2, y2 = (round(v) for v in target.box)
    thick = max(1, round(image.shape[1] / 480))
    cv2.rectangle(out, (x1, y1), (x2, y2), (0, 0, 0), thick + 2)
    cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 255), thick)
    text = f"{target.label} {target.score:.2f}" + (f"  {method}" if method else "")
    scale = 0.45 * max(1.0, image.shape[1] / 960)
    text_w = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick + 2)[0][0]
    org = (min(max(0, x1), max(0, image.shape[1] - text_w - 2)),
           y1 - 4 if y1 > 20 else min(image.shape[0] - 4, y2 + 16))
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def encode_png(image: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def inside_outside_ratio(heat: np.ndarray, box: Sequence[float]) -> float:
    """Mean heat inside ``box`` over the mean heat outside it (inf when nothing outside is warm)."""
    h, w = heat.shape
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x2, y2 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    inside = np.zeros(heat.shape, bool)
    inside[y1:y2, x1:x2] = True
    outside = float(heat[~inside].mean()) if (~inside).any() else 0.0
    mean_in = float(heat[inside].mean()) if inside.any() else 0.0
    return mean_in / outside if outside > 0 else float("inf")
