"""The ``openvino`` detector backend: a plain detection network described by a card (YOLOv5 /
YOLOv8 / SSD outputs, see `decode`), and the native path for ultralytics' OpenVINO exports (a
folder with ``metadata.yaml`` and an ``.xml``: names and size from the metadata, RGB /255 NCHW,
YOLOv8 layout, NMS at the config's ``iou`` as ultralytics does). A carded network's NMS runs at
its card's ``nms_iou`` (`card_nms_iou`: a config ``iou`` that differs is not used, and says so).

Input is the decoder's letterboxed square (uint8 BGR at ``imgsz``); when the network takes
another size the square is resized to it, and boxes go back: network pixels → the square →
camera pixels (`scale_boxes`). The card's input recipe (colour, scale, layout) is built into the
network (`preprocess_inside`), which then takes the uint8 image itself. The network keeps its
static batch of 1 (reshaping the batch of ultralytics' exports compiles but fails at run time in
their attention block) and is compiled twice: a batch runs as parallel infer requests through an
`AsyncInferQueue` on the THROUGHPUT compilation, a single frame on the LATENCY one. With
``detector.rect`` an export runs each frame at the rectangle around it, compiled per size on
first use (`openvino_export`).

Measured (yolo11n int8 export, 640, 2 threads, 2 cores): 51 fps at batch 1 and 59 fps at batch
4 (one LATENCY request at a time: 51), against ultralytics' 39 / 38 fps on the same export.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DetectorConfig
from ..config_errors import ConfigError
from ..models import CategoryMap, DetectorInput, ModelError, card_nms_iou, field_key, model_name
from ..openvino_quiet import quiet_openvino
from ..schema import Detections
from .base import per_item, warm_up_detector, warn_cpu_only
from .card import CardInput, CardOutput, ModelCard, read_labels
from .decode import LAYOUTS, decode
from .openvino_export import Fitted, crop_window, export_card, letterbox_into, reshape_export
from .openvino_net import _dims, _find, check_input, openvino_reason, to_tensor
from .openvino_sizes import SizePlaces
from ..signal_stack import own_signal_stack

HINTS = ("THROUGHPUT", "LATENCY")  # batches, single frames
MAX_SIZES = 4  # input sizes compiled besides the square (`openvino_export`); others run in the square
INFER_TIMEOUT_S = 60.0  # a batch whose requests never complete fails (its frames are retried)

log = logging.getLogger("percept.backends")


def load_detector(cfg: DetectorConfig, *, card: ModelCard | None, weights: str, models_dir: str | None,
                  field: str, warmup: bool = True) -> OpenVinoDetector:
    if card is None:
        card, xml = export_card(weights, cfg, field)  # nms_iou: the config's iou, as ultralytics runs
        output_index: int | None = 0  # ultralytics' exports leave their one output unnamed
    else:
        xml, output_index = weights, None
        card_nms_iou(cfg, card, field=field)  # the card's nms_iou wins: a warning if iou says otherwise
    if card.type != "openvino" or card.task != "detect":
        raise ModelError(f"{field} (card {card.where()}): the openvino detector runs cards of "
                         "type: openvino, task: detect")
    warn_cpu_only(cfg, field, "openvino")
    threads = cfg.threads or max(1, round(cfg.num_cpus))
    net = open_detector(xml, card, field=field, threads=threads, output_index=output_index,
                        rect=cfg.rect and output_index is not None)
    det = OpenVinoDetector(net, card, cfg=cfg, name=model_name(cfg), field=field, weights=xml)
    if max(net.size) != cfg.imgsz:  # (frames are letterboxed to imgsz, then fitted to the network)
        log.warning("%s.imgsz %d: %s takes %dx%d frames: it runs at its own size (export it at %d for that)",
                    field, cfg.imgsz, Path(xml).name, net.size[1], net.size[0], cfg.imgsz)
    if warmup:
        warm_up_detector(det, cfg.imgsz, field, xml)
    log.info("detector %s on CPU (openvino, %d thread(s), %d infer requests)", det.name, threads, net.requests)
    return det


# --- the network ----------------------------------------------------------------------------------

@dataclass
class DetectorNet:
    compiled: Any  # openvino.CompiledModel, THROUGHPUT hint (batches)
    latency: Any  # the same network compiled with the LATENCY hint (single frames)
    input_index: int  # the image input among the network's inputs
    output_index: int  # the detections output among the network's outputs
    size: tuple[int, int]  # (height, width) of the network's input
    output_dims: list[int]
    requests: int  # parallel infer requests
    uint8: bool  # takes the uint8 BGR NHWC image as is (the card's recipe runs inside the network)
    at_size: Callable[[tuple[int, int]], DetectorNet] | None = None  # the network re-shaped (`openvino_export`)


def open_detector(weights: str, card: ModelCard, *, field: str, threads: int,
                  output_index: int | None = None, rect: bool = False) -> DetectorNet:
    """Read, check against the card (input shape, output name and layout), compile (`HINTS`).
    ``rect`` (ultralytics' exports): the net can be re-shaped to the rectangle around a frame."""
    quiet_openvino()
    import openvino as ov

    core = ov.Core()
    model = _read(core, weights, field)
    port = _input_port(model, card, field)
    check_input(card, _dims(port), field)
    if _dims(port)[0] > 1:  # (each frame is a request of its own: every inference would fail)
        raise ModelError(f"{field_key(field, 'weights')}: {weights} takes a fixed batch of {_dims(port)[0]}; this backend runs one frame "
                         "per request: export it with batch=1, or set backend: ultralytics")
    out_spec = detections_output(card)
    out_port = model.outputs[output_index] if output_index is not None else _find(model.outputs, out_spec.name)
    if out_port is None:
        names = sorted(n for p in model.outputs for n in p.get_names())
        raise ModelError(f"{field} (card {card.where()}): outputs: the network has no output {out_spec.name!r} "
                         f"(it has {names})")
    check_output(card, out_spec, _dims(out_port), field, weights)
    index = list(model.outputs).index(out_port)
    input_index = list(model.inputs).index(port)

    def compiled(model: Any, size: tuple[int, int]) -> DetectorNet:
        uint8 = preprocess_inside(model, input_index, card.input)
        config = {"INFERENCE_NUM_THREADS": int(threads)}
        try:
            throughput, latency = (core.compile_model(model, "CPU", {"PERFORMANCE_HINT": hint, **config}) for hint in HINTS)
        finally:  # (OpenVINO left a signal stack of its own on this thread, compiled or not: `pipeline.signal_stack`)
            own_signal_stack()
        requests = max(1, int(throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        return DetectorNet(throughput, latency, input_index, index, size, _dims(model.outputs[index]), requests, uint8)

    pristine = model.clone() if rect else None  # before the input recipe goes in: re-shaped per size

    def at_size(size: tuple[int, int]) -> DetectorNet:
        return compiled(reshape_export(pristine.clone(), size, input_index), size)

    net = compiled(model, tuple(card.input.size))
    net.at_size = at_size if rect else None
    return net


def preprocess_inside(model: Any, input_index: int, spec: CardInput) -> bool:
    """Build the card's input recipe into the network (OpenVINO's PrePostProcessor): it then takes
    the uint8 BGR NHWC image itself — no float tensor made in Python (~3 ms a 640 frame saved).
    GRAY inputs keep `to_tensor`; returns whether the recipe went in."""
    if spec.color == "GRAY":
        return False
    import openvino as ov
    from openvino.preprocess import ColorFormat, PrePostProcessor

    ppp = PrePostProcessor(model)
    port = ppp.input(input_index)
    port.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(ColorFormat.BGR)
    port.model().set_layout(ov.Layout(spec.layout))
    steps = port.preprocess().convert_element_type(ov.Type.f32)
    if spec.color == "RGB":
        steps.convert_color(ColorFormat.RGB)
    mean = [m / spec.scale for m in spec.mean]  # (x * scale - mean) / std == (x - mean/scale) / (std/scale)
    std = [v / spec.scale for v in spec.std]
    if any(mean):
        steps.mean(mean if len(mean) > 1 else mean[0])
    if any(v != 1 for v in std):
        steps.scale(std if len(std) > 1 else std[0])
    ppp.build()
    return True


def _read(core: Any, weights: str, field: str) -> Any:
    path = Path(weights)
    if not path.exists():
        raise ModelError(f"{field}: {weights!r} does not exist")
    if path.suffix == ".xml" and not path.with_suffix(".bin").exists():
        raise ModelError(f"{field}: {weights!r} has no weights file beside it "
                         f"({path.with_suffix('.bin').name} is missing)")
    try:
        return core.read_model(str(path))
    except Exception as exc:
        raise ModelError(f"{field}: OpenVINO cannot read {weights!r}: {openvino_reason(exc)}") from None


def _input_port(model: Any, card: ModelCard, field: str) -> Any:
    names = sorted(n for p in model.inputs for n in p.get_names())
    where = f"{field} (card {card.where()}): input.name"
    if card.input.name:
        port = _find(model.inputs, card.input.name)
        if port is None:
            raise ModelError(f"{where}: the network has no input {card.input.name!r} (it has {names})")
        return port
    if len(model.inputs) != 1:
        raise ModelError(f"{where}: the network has {len(model.inputs)} inputs {names}; name one")
    return model.inputs[0]


def detections_output(card: ModelCard) -> CardOutput:
    return next(o for o in card.outputs if o.kind == "detections")


def check_output(card: ModelCard, out: CardOutput, dims: list[int], field: str, weights: str) -> None:
    """The output's shape against its layout and the number of labels."""
    where = f"{field} (card {card.where()}): outputs.{out.name}"
    if out.layout not in LAYOUTS:
        raise ModelError(f"{where}.layout: {out.layout!r} is not decoded by the openvino detector "
                         f"({', '.join(LAYOUTS)})")
    try:
        n = len(read_labels(out, card, weights)) or None
    except ConfigError as exc:
        raise ModelError("; ".join(exc.errors)) from None
    if out.layout == "ssd":
        ok, expect = len(dims) == 4 and dims[-1] in (7, -1), "[1, 1, N, 7]"
    else:
        extra = 5 if out.layout == "yolov5" else 4
        channels = dims[-1] if out.layout == "yolov5" else dims[-2] if len(dims) >= 2 else 0
        ok = len(dims) == 3 and (channels == -1 or (channels > extra and n in (None, channels - extra)))
        expect = "[1, N, 5 + classes]" if out.layout == "yolov5" else "[1, 4 + classes, N]"
        expect += f" with {n} classes (its labels)" if n else ""
    if not ok:
        raise ModelError(f"{where}.layout: {out.layout} expects {expect}; the network gives {dims}")


# --- the backend ----------------------------------------------------------------------------------

class _Call:
    """One `_infer` call's outputs, filled by the queue's callbacks."""

    def __init__(self, n: int):
        self.results: list[Any] = [None] * n
        self.left = n
        self.lock = threading.Lock()
        self.done = threading.Event()


def _request_done(request: Any, userdata: tuple[_Call, int, int]) -> None:
    """An infer request's output into its call (a function, not the detector's method: OpenVINO
    holds the callback where Python's collector cannot see it, and a bound method kept the
    detector and every network it compiled alive after a swap)."""
    call, k, output_index = userdata
    try:
        call.results[k] = np.array(request.get_output_tensor(output_index).data)
    except Exception as exc:  # noqa: BLE001 -- handed to _infer, which raises it (else the call waited 60 s)
        call.results[k] = exc
    with call.lock:
        call.left -= 1
        if call.left == 0:
            call.done.set()


class _Runner:
    """The network compiled at one input size: its queue of THROUGHPUT requests, its LATENCY request."""

    def __init__(self, net: DetectorNet):
        import openvino as ov

        self.net = net
        self.queue = ov.AsyncInferQueue(net.compiled, net.requests)
        self.queue.set_callback(_request_done)
        self.single = net.latency.create_infer_request()


class OpenVinoDetector:
    """A detection network on batches of `DetectorInput`; boxes come back in camera pixels."""

    concurrent_batches = 2  # `detect_batch` may run in two threads at once (see `_infer`)

    def __init__(self, net: DetectorNet, card: ModelCard, *, cfg: DetectorConfig, name: str, field: str,
                 weights: str | None = None):
        self.net = net
        self.card = card
        self.cfg = cfg
        self.name = name
        self.device = "cpu"
        self.half = False
        self.output = detections_output(card)
        labels = read_labels(self.output, card, weights)
        if not labels:  # no labels in the card: class ids as names
            n = net.output_dims[-1] - 5 if self.output.layout == "yolov5" else net.output_dims[-2] - 4
            labels = [str(i) for i in range(max(n, 1))] if self.output.layout != "ssd" else []
        self.names: Mapping[int, str] = dict(enumerate(labels))
        self.categories = CategoryMap(cfg.categories, self.names, field=field_key(field, "categories"))
        self.classes = self.categories.class_ids or None
        first_of: dict[str, int] = {}  # class ids that are one label: one NMS group (`decode`)
        self.same_label = {idx: first_of.setdefault(name, idx) for idx, name in sorted(self.names.items())}
        self.same_label = {idx: g for idx, g in self.same_label.items() if g != idx} or None
        self._count_lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._running = 0  # `_infer` calls in progress
        self.sizes = SizePlaces(self.name, net.size, _Runner(net), lambda: MAX_SIZES)

    def detect_batch(self, inputs: Sequence[DetectorInput]) -> list[Detections | Exception]:
        return per_item(self._detect, inputs)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the network takes (frames letterboxed to ``imgsz`` are fitted to it)."""
        return self.net.size

    def wait_compiling(self, timeout_s: float | None = None) -> bool:
        """Until no frame size is being compiled (`SizePlaces`): for what times or compares the
        network at each frame's rectangle (`percept eval`, `models compare`, the bench)."""
        return self.sizes.wait_compiling(timeout_s)

    def _detect(self, inputs: Sequence[DetectorInput]) -> list[Detections | Exception]:
        out: list[Any] = [None] * len(inputs)
        good: list[tuple[int, Fitted]] = []
        for i, inp in enumerate(inputs):
            try:
                good.append((i, self._fit(inp)))
            except Exception as exc:  # this frame only
                out[i] = exc
        if good:
            fitted = [f for _, f in good]
            if self.net.uint8:  # each image as its own batch of one: no stacked copy
                tensors = [f.image[None] for f in fitted]
            else:
                stacked = to_tensor([f.image for f in fitted], self.card.input)
                tensors = [stacked[k : k + 1] for k in range(len(stacked))]
            raws = self._infer(tensors, [f.runner or self.sizes.runners[f.size] for f in fitted])
            for (i, f), raw in zip(good, raws):
                try:
                    out[i] = self._boxes(raw, inputs[i], f)
                except Exception as exc:
                    out[i] = exc
        return out

    def _fit(self, inp: DetectorInput) -> Fitted:
        """The letterboxed square cut to the rectangle around the frame (a re-shapeable export:
        `openvino_export`), or resized to the network's input when that differs."""
        import cv2

        image = inp.image
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3 and image.shape[0] == image.shape[1]):
            shape = getattr(image, "shape", None)
            raise ValueError(f"{self.name}: expects a square uint8 BGR image (the frame letterboxed to imgsz "
                             f"{self.cfg.imgsz}), got shape {shape} {getattr(image, 'dtype', type(image).__name__)}")
        side = image.shape[0]
        if self.net.at_size is not None and self.net.size == (side, side):
            top, left, h, w = crop_window(inp.orig_shape, side)
            runner = self._runner_at((h, w)) if (h, w) != (side, side) else None
            if runner is not None:
                window = image[top : top + h, left : left + w]  # rows only: still contiguous
                return Fitted(window if w == side else np.ascontiguousarray(window), (h, w), (top, left), runner=runner)
        h, w = self.net.size
        if h != w:  # a rectangular network: the frame letterboxed into it (stretching the square squashed it)
            return letterbox_into(image, inp.orig_shape, (h, w))
        if image.shape[:2] != (h, w):  # a square network of another size
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if w < side else cv2.INTER_LINEAR)
        return Fitted(image, (h, w), (0, 0), w / side)

    def _runner_at(self, size: tuple[int, int]) -> _Runner | None:
        """The network at this input size (`SizePlaces`: compiled in the background from its
        first frame, at most `MAX_SIZES`; None: the square, meanwhile or for good)."""
        return self.sizes.runner_at(size, self._compile_at)

    def _compile_at(self, size: tuple[int, int]) -> _Runner | None:
        started = time.monotonic()
        try:
            compiled = _Runner(self.net.at_size(size))
            # one blank frame through it first: a re-shape that compiles but fails at run time
            # stays the square's, not every frame of this size failing
            compiled.single.infer({self.net.input_index: np.zeros((1, *size, 3), np.uint8)})
        except Exception as exc:  # RectUnsupported, or a compile error: this size only
            log.warning("detector %s: runs the padded square (cannot re-shape to %s: %s)", self.name, size, exc)
            return None
        log.info("detector %s: compiled for %dx%d frames in %.1f s", self.name, size[1], size[0],
                 time.monotonic() - started)
        return compiled

    def _infer(self, tensors: list[np.ndarray], runners: list[_Runner]) -> list[np.ndarray]:
        """One infer request per image (each a batch of one, on the runner of its size), run in
        parallel; outputs in input order. A lone image with nothing else running takes the LATENCY
        compilation (both threads on it). Two calls may overlap (`concurrent_batches`): their
        requests share the queues, so the next batch's images start while the last ones of the
        batch before run."""
        with self._count_lock:
            alone = self._running == 0 and len(tensors) == 1
            self._running += 1
        try:
            if alone:
                single = runners[0].single
                single.infer({self.net.input_index: tensors[0]})
                return [np.array(single.get_output_tensor(self.net.output_index).data)]
            call = _Call(len(tensors))
            with self._submit_lock:  # a full queue blocks here until a request is free
                for k, (tensor, runner) in enumerate(zip(tensors, runners)):
                    runner.queue.start_async({self.net.input_index: tensor}, (call, k, self.net.output_index))
            if not call.done.wait(INFER_TIMEOUT_S):
                raise TimeoutError(f"{self.name}: no inference result within {INFER_TIMEOUT_S:.0f} s")
            failed = next((r for r in call.results if isinstance(r, Exception)), None)
            if failed is not None:
                raise failed
            return call.results
        finally:
            with self._count_lock:
                self._running -= 1

    def _boxes(self, raw: np.ndarray, inp: DetectorInput, fitted: Fitted) -> Detections:
        from ultralytics.utils.ops import scale_boxes

        h, w = fitted.size
        dec = decode(raw[0], self.output.layout, conf=self.cfg.conf, iou=self.card.nms_iou,
                     max_det=self.cfg.max_det, size=(h, w), classes=self.classes, logits=self.output.logits,
                     same=self.same_label)
        side = inp.image.shape[0]
        (pad_top, pad_left), (top, left) = fitted.pad, fitted.offset  # network pixels → the letterboxed square
        xyxy = (dec.xyxy - np.float32([pad_left, pad_top] * 2)) / np.float32(fitted.scale) + np.float32([left, top] * 2)
        xyxy = scale_boxes((side, side), xyxy, inp.orig_shape)
        return self.categories.detections(xyxy, dec.scores, dec.class_ids)
