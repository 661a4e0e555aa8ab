"""A plain network through the OpenVINO runtime (IR .xml, .onnx, TensorFlow .pb, .tflite),
checked against its card before use, and the card's input recipe applied to uint8 BGR images.

Shared by the OpenVINO classifier and detector backends. Every check raises `ModelError` naming
the config field and the card file: a card whose input size disagrees with the network, an
output name the network lacks, a ``.xml`` without its ``.bin``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..models import ModelError
from ..openvino_quiet import quiet_openvino
from .card import CardInput, ModelCard
from ..signal_stack import own_signal_stack

log = logging.getLogger("percept.backends")


@dataclass
class Network:
    """A compiled network: its input port and the output ports named by the card."""

    compiled: Any  # openvino.CompiledModel
    input: Any  # the input port
    outputs: dict[str, Any]  # card output name → output port
    dynamic_batch: bool  # the batch dimension accepts any N
    path: str


def _dims(port: Any) -> list[int]:
    """The port's shape with dynamic dimensions as -1."""
    return [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]


def _find(ports: Sequence[Any], name: str) -> Any | None:
    for port in ports:
        if name in port.get_names():
            return port
    return None


def check_input(card: ModelCard, dims: list[int], field: str) -> None:
    """The card's input size, layout and channels against the network's input shape."""
    where = f"{field} (card {card.where()})"
    if len(dims) != 4:
        raise ModelError(f"{where}: input: the network's input has shape {dims}; a 4-D image input is needed")
    if card.input.layout == "NCHW":
        c, h, w = dims[1], dims[2], dims[3]
    else:
        h, w, c = dims[1], dims[2], dims[3]
    want_h, want_w = card.input.size
    if (h != -1 and h != want_h) or (w != -1 and w != want_w):
        raise ModelError(
            f"{where}: input.size: the card says [{want_h}, {want_w}] (height, width) but the network "
            f"takes [{h}, {w}] ({card.input.layout}, shape {dims})")
    if c != -1 and c != card.input.channels:
        raise ModelError(
            f"{where}: input.color: {card.input.color} has {card.input.channels} channel(s) but the network "
            f"takes {c} ({card.input.layout}, shape {dims}); check input.layout")


def openvino_reason(exc: BaseException) -> str:
    """What an OpenVINO error says, without the source locations it starts with (its first
    line, all we showed, was ``Exception from src/inference/src/cpp/core.cpp:84:``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not (line.startswith("Exception from src/") or
                                           (line.startswith("Check '") and " failed at src/" in line))]
    return " ".join(said or lines[-1:])[:300] or type(exc).__name__


def open_network(weights: str, card: ModelCard, *, field: str, threads: int | None = None,
                 hint: str = "THROUGHPUT", device: str = "CPU") -> Network:
    """Read, check against the card, make the batch dynamic when the network allows it, compile."""
    quiet_openvino()
    import openvino as ov

    path = Path(weights)
    where = f"{field} (card {card.where()})"
    if not path.exists():
        raise ModelError(f"{where}: {weights!r} does not exist")
    if path.suffix == ".xml" and not path.with_suffix(".bin").exists():
        raise ModelError(f"{where}: {weights!r} has no weights file beside it ({path.with_suffix('.bin').name} is missing)")
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except Exception as exc:
        raise ModelError(f"{field}: OpenVINO cannot read {weights!r}: {openvino_reason(exc)}") from None
    if card.input.name is not None:
        port = _find(model.inputs, card.input.name)
        if port is None:
            names = sorted(n for p in model.inputs for n in p.get_names())
            raise ModelError(f"{where}: input.name: the network has no input {card.input.name!r} (it has {names})")
    elif len(model.inputs) == 1:
        port = model.inputs[0]
    else:
        names = sorted(n for p in model.inputs for n in p.get_names())
        raise ModelError(f"{where}: input.name: the network has {len(model.inputs)} inputs {names}; name one")
    check_input(card, _dims(port), field)
    outputs = {}
    for i, out in enumerate(card.outputs):
        found = _find(model.outputs, out.name)
        if found is None:
            names = sorted(n for p in model.outputs for n in p.get_names())
            raise ModelError(f"{where}: outputs[{i}].name: the network has no output {out.name!r} (it has {names})")
    input_name = port.get_any_name()
    dynamic = _dims(port)[0] == -1
    if not dynamic and len(model.inputs) == 1:
        try:
            shape = port.get_partial_shape()
            shape[0] = -1
            model.reshape({input_name: shape})
            dynamic = True
        except Exception:  # some networks fix the batch in a Reshape: run item by item
            model = core.read_model(str(path))
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        compiled = core.compile_model(model, device, config)
        if dynamic and not _batches(compiled, input_name, card):  # the batch is fixed inside (a Reshape)
            dynamic = False
            compiled = core.compile_model(core.read_model(str(path)), device, config)
    finally:  # (OpenVINO left a signal stack of its own on this thread, compiled or not: `pipeline.signal_stack`)
        own_signal_stack()
    in_port = _find(compiled.inputs, input_name) or compiled.inputs[0]
    for out in card.outputs:
        outputs[out.name] = _find(compiled.outputs, out.name)
    return Network(compiled, in_port, outputs, dynamic, str(path))


def _batches(compiled: Any, input_name: str, card: ModelCard) -> bool:
    """A trial batch of 2: a network whose batch is fixed inside fails it or merges the items
    into one output row; then it runs item by item."""
    port = _find(compiled.inputs, input_name) or compiled.inputs[0]
    shape = [2] + [d if d != -1 else 1 for d in _dims(port)[1:]]
    try:
        # keyed by index: a port object as the key keeps the whole compiled network alive after its
        # last reference goes (each classifier loaded, swapped or checked leaked ~50 MB and a file)
        result = compiled({port.get_index(): np.zeros(shape, np.float32)})
    except Exception:
        return False
    return all(np.asarray(result[out]).shape[:1] == (2,) for out in compiled.outputs)


def to_tensor(images: Sequence[np.ndarray], spec: CardInput) -> np.ndarray:
    """uint8 BGR images already at the card's size → the network's float32 batch tensor."""
    import cv2

    batch = np.stack(images)  # N, H, W, 3 (BGR)
    if spec.color == "RGB":
        batch = batch[..., ::-1]
    elif spec.color == "GRAY":
        batch = np.stack([cv2.cvtColor(im, cv2.COLOR_BGR2GRAY) for im in images])[..., None]
    x = batch.astype(np.float32)
    if spec.scale != 1.0:
        x *= np.float32(spec.scale)
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    if np.any(mean != 0):
        x -= mean
    if np.any(std != 1):
        x /= std
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def infer(net: Network, tensor: np.ndarray) -> dict[str, np.ndarray]:
    """One synchronous call (the whole batch when the batch is dynamic, else item by item);
    results by card output name, batch first."""
    if net.dynamic_batch or len(tensor) == 1:
        result = net.compiled({net.input.get_index(): tensor})  # (by index: see `_batches`)
        return {name: np.asarray(result[port]) for name, port in net.outputs.items()}
    parts = [infer(net, tensor[i : i + 1]) for i in range(len(tensor))]
    return {name: np.concatenate([p[name] for p in parts]) for name in net.outputs}
