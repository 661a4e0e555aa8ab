"""The ``ultralytics`` backend: anything ``YOLO()`` loads (.pt, ultralytics exports, TensorRT
engines); ultralytics letterboxes, runs NMS and rescales. Used for models without a card."""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from ..config import ClassifierConfig, DetectorConfig
from ..models import (CategoryMap, DetectorInput, ModelError, choose_device, field_key, load_yolo, model_name,
                      model_threads, set_threads)
from ..schema import Detections
from .base import Attributes, in_chunks, per_item, refuse_failed_warmup, warm_up_detector

MAX_CROPS = 64  # crops one classifier `predict` takes at most

log = logging.getLogger("percept.models")


def existing_device(cfg: Any, field: str) -> tuple[str, bool]:
    """`choose_device`, a CUDA device this machine does not have refused naming the field (it
    failed the warm-up, said against the weights over several lines)."""
    device, half = choose_device(cfg.device, cfg.half)
    if half and device == "cpu" and str(cfg.weights).endswith((".pt", ".torchscript")):
        # ultralytics turns FP16 off for PyTorch weights on the CPU: said, and logged as it runs
        log.warning("%s: not applied: ultralytics runs PyTorch weights on the CPU in FP32", field_key(field, "half"))
        half = False
    if device.startswith("cuda"):
        import torch

        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise ModelError(f"{field_key(field, 'device')}: {cfg.device} asked for; this machine has {count} CUDA GPU(s)")
    if device == "mps":  # (taken where there is none, and run on the CPU under its name)
        import torch

        if not torch.backends.mps.is_available():
            raise ModelError(f"{field_key(field, 'device')}: mps asked for; this machine has no Apple GPU (MPS)")
    return device, half


def load_detector(cfg: DetectorConfig, *, card: Any, weights: str, models_dir: str | None, field: str,
                  warmup: bool = True) -> "Detector":
    set_threads(cfg)
    device, half = existing_device(cfg, field)
    model = load_yolo(cfg, models_dir=models_dir, field=field_key(field, "weights"), task="detect")
    limit_onnx_threads(model, model_threads(cfg))
    det = Detector(model, cfg=cfg, device=device, half=half, name=model_name(cfg), field=field)
    if warmup:
        warm_up_detector(det, cfg.imgsz, field, weights)
    log.info("detector %s on %s (fp16=%s, ultralytics)", det.name, device, half)
    return det


def load_classifier(cfg: ClassifierConfig, *, card: Any, weights: str, models_dir: str | None, field: str,
                    warmup: bool = True) -> "Classifier":
    set_threads(cfg)
    device, half = existing_device(cfg, field)
    model = load_yolo(cfg, models_dir=models_dir, field=field_key(field, "weights"), task="classify")
    limit_onnx_threads(model, model_threads(cfg))
    clf = Classifier(model, cfg=cfg, device=device, half=half, name=model_name(cfg), field=field)
    if warmup:
        refuse_failed_warmup(clf.classify_batch([np.zeros((cfg.imgsz, cfg.imgsz, 3), np.uint8)]), field, weights)
    return clf


def limit_onnx_threads(model: Any, threads: int) -> None:
    """An ONNX export runs on ``threads`` (`model_threads`) like any other model: ultralytics opens
    its ONNX Runtime session with default options, a thread per core of the machine (and a busy
    spin between runs) whatever the replica reserves. The session is opened again on the CPU
    with the replica's threads before the first inference (``on_predict_start``, once the
    predictor has loaded it); a session on a GPU is left as ultralytics made it."""

    def limit(predictor: Any) -> None:
        backend = getattr(getattr(predictor, "model", None), "backend", None)
        session = getattr(backend, "session", None)
        if session is None or getattr(backend, "_percept_threads", None) == threads:
            return
        import onnxruntime

        if not isinstance(session, onnxruntime.InferenceSession) or session.get_providers() != ["CPUExecutionProvider"]:
            return
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        backend.session = onnxruntime.InferenceSession(session._model_path, options, providers=["CPUExecutionProvider"])
        backend._percept_threads = threads

    model.add_callback("on_predict_start", limit)


class Detector:
    """A detection model on batches of `DetectorInput`; boxes come back in camera pixels."""

    def __init__(self, model: Any, *, cfg: DetectorConfig, device: str, half: bool, name: str, field: str = "detector"):
        self.model = model
        self.cfg = cfg
        self.device = device
        self.half = half
        self.name = name
        self.names: Mapping[int, str] = model.names
        self.categories = CategoryMap(cfg.categories, model.names, field=field_key(field, "categories"))

    def detect_batch(self, inputs: Sequence[DetectorInput]) -> list[Detections | Exception]:
        return per_item(self._detect, inputs)

    def _detect(self, inputs: Sequence[DetectorInput]) -> list[Detections | Exception]:
        from ultralytics.utils.ops import scale_boxes

        results = self.model.predict(
            [inp.image for inp in inputs],
            imgsz=self.cfg.imgsz,
            conf=self.cfg.conf,
            iou=self.cfg.iou,
            max_det=self.cfg.max_det,
            classes=self.categories.class_ids or None,
            device=self.device,
            verbose=False,
            **({"half": True} if self.half else {}),
        )
        out: list[Detections | Exception] = []
        for inp, res in zip(inputs, results):
            boxes = res.boxes
            xyxy = boxes.xyxy.cpu().numpy().astype(np.float32)
            xyxy = scale_boxes(inp.image.shape[:2], xyxy, inp.orig_shape)
            out.append(self.categories.detections(xyxy, boxes.conf.cpu().numpy(), boxes.cls.cpu().numpy().astype(int)))
        return out


class Classifier:
    """An image classifier on batches of square crops; the answer (attribute ``cfg.attribute``)
    is the top label, restricted to ``labels`` when the config lists some — and then only when
    that label's probability reaches ``min_score`` (otherwise the crop gets no answer)."""

    crop_context = 1.15
    crop_fit = "context"
    min_size = None

    def __init__(self, model: Any, *, cfg: ClassifierConfig, device: str, half: bool, name: str, field: str):
        self.model = model
        self.cfg = cfg
        self.device = device
        self.half = half
        self.name = name
        self.crop_size = (cfg.imgsz, cfg.imgsz)
        self.attributes = (cfg.attribute,)
        names: Mapping[int, str] = model.names
        if cfg.labels:
            by_label = {n: i for i, n in names.items()}
            missing = [(i, lab) for i, lab in enumerate(cfg.labels) if lab not in by_label]
            if missing:
                i, lab = missing[0]
                raise ModelError(f"{field_key(field, 'labels')}[{i}]: {lab!r} is not a class of {name}")
            self.allowed = np.array([by_label[lab] for lab in cfg.labels])
        else:
            self.allowed = None
        self.names = names

    def classify_batch(self, crops: Sequence[np.ndarray]) -> list[Attributes | Exception]:
        # (a batch of 32 frames of 32 crops each went into one predict: out of GPU memory)
        return in_chunks(self._classify, list(crops), MAX_CROPS)

    def _classify(self, crops: Sequence[np.ndarray]) -> list[Attributes | Exception]:
        results = self.model.predict(
            list(crops), imgsz=self.cfg.imgsz, device=self.device, verbose=False,
            **({"half": True} if self.half else {}),
        )
        out: list[Attributes | Exception] = []
        for res in results:
            probs = res.probs.data.float().cpu().numpy()
            if self.allowed is not None:
                k = int(self.allowed[int(np.argmax(probs[self.allowed]))])
                if probs[k] < self.cfg.min_score:  # none of the labels fits: no answer, not a forced one
                    out.append({})
                    continue
            else:
                k = int(np.argmax(probs))
            out.append({self.cfg.attribute: {"label": self.names[k], "score": round(float(probs[k]), 4)}})
        return out
