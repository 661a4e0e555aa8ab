"""Ultralytics' YOLO OpenVINO exports: the folder read as a card (`export_card`), and the
network re-shaped to the rectangle around a frame, so it sees the letterboxed frame without the
square's grey bands.

The decoder letterboxes every frame into the ``imgsz`` square (`pipeline.models.letterbox`); a
16:9 camera fills 360 of its 640 rows. Ultralytics runs PyTorch models on the smallest
stride-aligned rectangle around the frame (``LetterBox(auto=True)``: 640×384 for 16:9) but an
export has a static square input, so every frame pays for the bands. Here the same export is
re-shaped per rectangle: the rows (or columns) of the square outside that rectangle are cut off
(`crop_window`: a view, no copy; the pixels are exactly those of ultralytics' rect letterbox) and
the network runs at that size — about 40 % less work for 16:9 frames.

An export's graph is not shape-free: its attention block reshapes to the square's grid and its
head holds the anchor points and strides of the square as constants. `reshape_export` rewrites
those for the new size after checking that they are what ultralytics' ``make_anchors`` gives for
the square (a graph it does not recognise raises `RectUnsupported`, and the detector keeps the
square). A network whose own input is a rectangle gets the frame letterboxed into it
(`letterbox_into`; `Fitted` says where a network's input came from in the square).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import DetectorConfig
from ..models import ModelError
from .card import CardInput, CardOutput, ModelCard
from .openvino_net import openvino_reason

STRIDES = (8, 16, 32)  # the detection head's levels (YOLOv8 / YOLO11)


# --- the folder ----------------------------------------------------------------

def export_files(weights: str) -> tuple[Path, Path] | None:
    """(metadata.yaml, model .xml) of an ultralytics OpenVINO export folder (or its .xml), else None."""
    p = Path(str(weights).rstrip("/")).expanduser()
    folder = p if p.is_dir() else p.parent
    meta = folder / "metadata.yaml"
    if not meta.is_file():
        return None
    if p.suffix == ".xml" and p.is_file():
        return meta, p
    xmls = sorted(folder.glob("*.xml")) if p.is_dir() else []
    return (meta, xmls[0]) if len(xmls) == 1 else None


def export_card(weights: str, cfg: DetectorConfig, field: str) -> tuple[ModelCard, str]:
    """An in-memory card for an ultralytics OpenVINO export, from its ``metadata.yaml``."""
    found = export_files(weights)
    if found is None:
        raise ModelError(f"{field}: backend openvino without a card needs an ultralytics OpenVINO export folder "
                         f"(metadata.yaml and one .xml); {weights!r} is not one (give a card: for a plain network)")
    meta_path, xml = found
    try:
        meta = yaml.safe_load(meta_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"{field}: cannot read {meta_path}: {exc}") from None
    if meta.get("task", "detect") != "detect":
        raise ModelError(f"{field}: {weights!r} is a {meta.get('task')} model; this stage needs a detect model")
    names = meta.get("names") or {}
    labels = [str(names[k]) for k in sorted(names, key=int)] if isinstance(names, dict) else [str(n) for n in names]
    size = meta.get("imgsz") or [cfg.imgsz, cfg.imgsz]
    size = (int(size[0]), int(size[-1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
    card = ModelCard(
        type="openvino", task="detect", files=[xml.name], nms_iou=cfg.iou,
        input=CardInput(size=size, layout="NCHW", color="RGB", scale=1 / 255),
        outputs=[CardOutput(name="output0", kind="detections", layout="yolov8", labels=labels)],
    )
    return card.model_copy(update={"path": str(meta_path)}), str(xml)


# --- the rectangle ---------------------------------------------------------------------------------

class RectUnsupported(RuntimeError):
    """The network cannot be re-shaped safely; the square input stays."""


@dataclass
class Fitted:
    """A frame as a detector network takes it, and where it came from in the letterboxed square."""

    image: np.ndarray  # what the network takes (uint8 HWC)
    size: tuple[int, int]  # the network input size it runs at
    offset: tuple[int, int]  # (top, left) in the letterboxed square of what the network sees
    scale: float = 1.0  # network pixels per square pixel
    pad: tuple[int, int] = (0, 0)  # (top, left) of that in the network's input (grey around it)
    runner: Any = None  # the network compiled at ``size`` it runs on (None: the detector's own at that size)


def letterbox_into(square: np.ndarray, orig_shape: tuple[int, int], size: tuple[int, int]) -> Fitted:
    """The frame's part of the letterboxed square, letterboxed into a rectangular network input
    (one scale, grey padding, centred as ultralytics does)."""
    import cv2

    from ..models import PAD_VALUE, letterbox_geometry

    (new_w, new_h), top, left = letterbox_geometry(orig_shape[0], orig_shape[1], square.shape[0])
    h, w = size
    r = min(h / new_h, w / new_w)
    rw, rh = max(round(new_w * r), 1), max(round(new_h * r), 1)
    pad_top, pad_left = round((h - rh) / 2 - 0.1), round((w - rw) / 2 - 0.1)
    canvas = np.full((h, w, 3), PAD_VALUE, np.uint8)
    cv2.resize(square[top : top + new_h, left : left + new_w], (rw, rh),
               dst=canvas[pad_top : pad_top + rh, pad_left : pad_left + rw], interpolation=cv2.INTER_LINEAR)
    return Fitted(canvas, (h, w), (top, left), r, (pad_top, pad_left))


def crop_window(orig_shape: tuple[int, int], square: int, stride: int = 32) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the stride-aligned rectangle around the frame in the
    ``square`` letterbox: what ``LetterBox(auto=True)`` would have made of the frame."""
    from ..models import letterbox_geometry

    (new_w, new_h), top, left = letterbox_geometry(orig_shape[0], orig_shape[1], square)
    h = min(square, -(-new_h // stride) * stride)
    w = min(square, -(-new_w // stride) * stride)
    top_r = round((h - new_h) / 2 - 0.1)  # LetterBox's centring of the frame in its rectangle
    left_r = round((w - new_w) / 2 - 0.1)
    return top - top_r, left - left_r, h, w


def anchor_points(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """([1, 2, A] cell centres in grid units, [1, 1, A] strides) as ultralytics' ``make_anchors``
    lays them out for an input of this size (level by level, row-major, +0.5 offset)."""
    points, strides = [], []
    for s in STRIDES:
        gy, gx = np.meshgrid(np.arange(height // s, dtype=np.float32) + 0.5,
                             np.arange(width // s, dtype=np.float32) + 0.5, indexing="ij")
        points.append(np.stack([gx.ravel(), gy.ravel()]))
        strides.append(np.full(gx.size, s, np.float32))
    return np.concatenate(points, 1)[None], np.concatenate(strides)[None, None]


def reshape_export(model: Any, size: tuple[int, int], input_index: int = 0) -> Any:
    """``model`` (an ``openvino.Model`` of an ultralytics YOLO detect export at the square
    ``(h, w)`` of its input) rewritten in place for an input of ``size`` (height, width, each a
    multiple of 32). Raises `RectUnsupported` when the graph is not one it recognises."""
    import openvino as ov

    dims = list(model.inputs[input_index].get_partial_shape().to_shape())
    h0, w0 = int(dims[2]), int(dims[3])
    h, w = size
    if h % STRIDES[-1] or w % STRIDES[-1] or h0 % STRIDES[-1] or w0 % STRIDES[-1]:
        raise RectUnsupported(f"sizes {size} / {(h0, w0)} are not multiples of {STRIDES[-1]}")
    if (h, w) == (h0, w0):
        return model
    old_points, old_strides = anchor_points(h0, w0)
    new_points, new_strides = anchor_points(h, w)
    grids = {(h0 // s, w0 // s): (h // s, w // s) for s in STRIDES}
    counts = {a * b: c * d for (a, b), (c, d) in grids.items()} | {old_points.shape[-1]: new_points.shape[-1]}
    replaced = {"points": 0, "strides": 0}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Reshape" and op.input_value(1).get_node().get_type_name() == "Constant":
            _retarget(op, grids, counts)
        elif kind == "Constant" and list(op.get_output_shape(0)) in ([1, 2, old_points.shape[-1]],
                                                                      [1, 1, old_points.shape[-1]]):
            data = op.get_data()
            which = "points" if data.shape[1] == 2 else "strides"
            expected = old_points if which == "points" else old_strides
            if not np.allclose(data, expected):
                raise RectUnsupported(f"a [{data.shape}] constant is not the square's anchor {which}")
            _swap(op, ov.op.Constant((new_points if which == "points" else new_strides).astype(data.dtype)))
            replaced[which] += 1
    if replaced != {"points": 1, "strides": 1}:
        raise RectUnsupported(f"expected the head's anchor points and strides once each, found {replaced}")
    try:
        param = model.inputs[input_index].get_node()
        param.set_partial_shape(ov.PartialShape([int(dims[0]), int(dims[1]), h, w]))
        model.validate_nodes_and_infer_types()
    except Exception as exc:
        raise RectUnsupported(f"reshape to {size}: {openvino_reason(exc)[:200]}") from None
    out = list(model.outputs[0].get_partial_shape().to_shape())
    if out[-1] != new_points.shape[-1]:
        raise RectUnsupported(f"output {out} does not hold {new_points.shape[-1]} anchors")
    return model


def _retarget(op: Any, grids: dict[tuple[int, int], tuple[int, int]], counts: dict[int, int]) -> None:
    """A Reshape's constant target shape, its grid-derived dims set for the new grids: a trailing
    (rows, columns) pair of a level's grid, else one dim holding a level's (or all levels') cell
    count (as -1, so no channel count that happens to equal one is touched twice)."""
    import openvino as ov

    const = op.input_value(1).get_node()
    target = [int(v) for v in const.get_data().ravel()]
    new = list(target)
    if len(target) == 4 and (target[2], target[3]) in grids:
        new[2:] = grids[(target[2], target[3])]
    else:
        hits = [i for i, v in enumerate(target) if i > 0 and v in counts]
        if len(hits) == 1 and -1 not in target:
            new[hits[0]] = counts[target[hits[0]]]
    if new != target:
        op.input(1).replace_source_output(ov.op.Constant(np.array(new, const.get_data().dtype)).output(0))


def _swap(old: Any, new: Any) -> None:
    for target in list(old.output(0).get_target_inputs()):
        target.replace_source_output(new.output(0))
