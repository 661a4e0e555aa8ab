"""``eigencam`` for ultralytics ``.pt`` detectors (Ray-free; `pipeline.explain` calls it): one
forward and one backward pass through the torch model instead of hundreds of masked detector calls.

The object's objective is the class score of its label at every anchor of the head whose box
overlaps the object's box (IoU ≥ 0.5, weighted by the IoU; the best anchor when none does). Its
gradient reaches the three feature maps the Detect head reads (strides 8, 16, 32). Each map's
heat is the first principal component of its gradient-weighted activations (Eigen-Grad-CAM:
EigenCAM, Muhammad & Yeasin 2020, of activation × gradient, so that it shows this object rather
than whatever dominates the scene), signed to agree with the map's Grad-CAM and clipped at 0. The
maps are brought to the input size and summed (a map counts as much as its gradient-weighted
activations: the level that carries the object weighs most), cut to the frame's part of the
letterboxed square and mapped back to frame pixels.

Plain Grad-CAM (channel weights = mean gradient) was tried on traffic.mp4 and spread onto other
cars and lane marks (inside/outside ratio 0.4–11 against 2–2000 for this): it is not offered.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .explain_target import ExplainError, Target, content_region, iou, to_content, to_frame
from .models import prepare_frame


def torch_model(detector: Any) -> Any:
    """The torch DetectionModel behind an ultralytics backend; `ExplainError` for other backends."""
    import torch

    model = getattr(getattr(detector, "model", None), "model", None)
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "model"):
        name = getattr(detector, "name", type(detector).__name__)
        raise ExplainError(f"eigencam needs an ultralytics .pt model; {name} is not one "
                           "(use method rise or occlusion)")
    return model


def head_inputs(model: Any, x: Any) -> tuple[Any, list[Any]]:
    """The model's raw output (batch × (4 + classes) × anchors, xywh in input pixels) and the
    feature maps its Detect head reads."""
    captured: list[Any] = []
    hook = model.model[-1].register_forward_pre_hook(lambda _m, args: captured.extend(args[0]))
    try:
        out = model(x)
    finally:
        hook.remove()
    return (out[0] if isinstance(out, (list, tuple)) else out), captured


def objective(raw: Any, box: np.ndarray, class_id: int) -> Any:
    """Σ IoU × class score over the anchors whose box overlaps ``box`` (input pixels) by ≥ 0.5."""
    import torch

    xywh = raw[0, :4].detach().float().cpu().numpy().T
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
    overlap = iou(box, boxes)
    scores = raw[0, 4 + class_id]
    picked = np.flatnonzero(overlap >= 0.5)
    if not len(picked):
        picked = np.array([int(np.argmax(overlap * scores.detach().float().cpu().numpy()))])
    weights = torch.as_tensor(overlap[picked], dtype=scores.dtype, device=scores.device)
    return (scores[torch.as_tensor(picked, device=scores.device)] * weights).sum()


def eigen_grad_map(act: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """(C, H, W) activations and gradients → (H, W): the first principal component of
    activation × gradient, signed like the Grad-CAM (channels weighted by their mean gradient)."""
    weighted = (act * grad).reshape(act.shape[0], -1).T  # pixels × channels
    centred = weighted - weighted.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    projection = (centred @ vt[0]).reshape(act.shape[1:])
    gradcam = np.tensordot(grad.mean(axis=(1, 2)), act, axes=1)
    return -projection if float((projection * gradcam).sum()) < 0 else projection


def class_id_of(names: Any, label: str) -> int:
    for idx, name in dict(names).items():
        if name == label:
            return int(idx)
    raise ExplainError(f"label {label!r} is not a class of this model")


def eigencam(detector: Any, image: np.ndarray, target: Target, *, imgsz: int) -> tuple[np.ndarray, int]:
    """The object's map (frame size, [0, 1]) and the passes run (1: a forward and a backward)."""
    import cv2
    import torch

    model = torch_model(detector)
    base = prepare_frame(image, imgsz)
    top, left, h, w = content_region(base.orig_shape, imgsz)
    box = to_content(target.box, base.orig_shape, imgsz)
    param = next(model.parameters())
    x = torch.from_numpy(np.ascontiguousarray(base.image[:, :, ::-1].transpose(2, 0, 1)))[None]
    x = (x.to(param.device, param.dtype) / 255).requires_grad_(True)
    with torch.enable_grad():
        raw, feats = head_inputs(model, x)
        grads = torch.autograd.grad(objective(raw, box, class_id_of(detector.names, target.label)), feats)
    total = np.zeros((imgsz, imgsz), np.float32)
    for feat, grad in zip(feats, grads):
        level = np.clip(eigen_grad_map(feat[0].detach().float().cpu().numpy(), grad[0].float().cpu().numpy()), 0, None)
        total += cv2.resize(level.astype(np.float32), (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)
    return to_frame(total[top:top + h, left:left + w], base.orig_shape), 1
