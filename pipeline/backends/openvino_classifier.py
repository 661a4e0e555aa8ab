"""The ``openvino`` classifier: a plain network (IR .xml, .onnx, .pb, .tflite) described by a card,
run by the OpenVINO runtime on CPU.

Each card output is a head: ``softmax`` writes one attribute (the card's ``attribute``, else the
output name) as ``{"label", "score"}`` (restricted by the config's ``labels``: none when the
best of them scores below ``min_score``); ``sigmoid`` writes one attribute per label as ``{"value",
"probability"}``; ``ignore`` writes nothing. Everything the card says is checked against the
network at load: a wrong label count, a restrict-to label the model lacks, two heads writing the
same attribute — each a `ModelError` naming the config field and the card file.

Compiled once per replica with the THROUGHPUT hint; a batch is split across its streams (one
synchronous request would use one stream, i.e. a fraction of the replica's threads). A network
with a dynamic batch runs power-of-two batches only (`bucket_size`, blank crops padding the
rest; more crops than the config's ``batch.max_size``, as a Serve batch of several frames'
crops may hold, in several calls), each run once at load. OpenVINO's CPU plugin keeps ~5-10 MB
of state for every input shape it has run: batches of every size from 1 to 32 grew a
person-attributes replica (2 threads) from ~210 to ~410 MB over its first hundred batches; the
six buckets hold it at ~275 MB from the start, for ~10 % more time a crop (the padding).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import ClassifierConfig
from ..config_errors import ConfigError
from ..models import ModelError, field_key, letterbox_crop, model_name
from .base import Attributes, per_item, refuse_failed_warmup, warn_cpu_only
from .card import CardInput, CardOutput, ModelCard, read_labels
from .openvino_net import Network, infer, open_network, to_tensor

log = logging.getLogger("percept.models")


@dataclass(frozen=True)
class Head:
    """One decoded output: its card entry, labels and (first softmax head) the allowed classes."""

    output: CardOutput
    labels: tuple[str, ...]
    allowed: np.ndarray | None = None  # class indices the answer is restricted to
    min_score: float = 0.0  # restricted: no answer when the best allowed class is below this


def load_classifier(cfg: ClassifierConfig, *, card: ModelCard | None, weights: str, models_dir: str | None,
                    field: str, warmup: bool = True) -> OpenVinoClassifier:
    """Compile the network once for this replica (THROUGHPUT hint, the replica's CPUs as threads)."""
    if card is None:
        raise ModelError(f"{field_key(field, 'card')}: {weights!r} is a plain network and needs a model card "
                         "(card: path/to/card.yaml describing its input and outputs)")
    warn_cpu_only(cfg, field, "openvino")
    threads = cfg.threads or max(1, round(cfg.num_cpus))
    net = open_network(weights, card, field=field, threads=threads, hint="THROUGHPUT")
    heads = _heads(cfg, card, net, weights, field)
    clf = OpenVinoClassifier(net, card, heads, name=model_name(cfg), min_size=cfg.min_size or card.min_size,
                             max_batch=cfg.batch.max_size)
    if warmup:  # every batch shape it will run (`bucket_size`): its memory is taken now, not under load
        w, h = card.crop_size
        blank = np.zeros((h, w, 3), np.uint8)
        for n in bucket_sizes(clf.max_batch) if net.dynamic_batch else (1,):
            refuse_failed_warmup(clf.classify_batch([blank] * n), field, weights)
    log.info("classifier %s (openvino, %d thread(s), card %s): %s", clf.name, threads, card.where(),
             ", ".join(clf.attributes))
    return clf


def bucket_size(n: int) -> int:
    """The batch a network with a dynamic batch runs ``n`` crops in: the next power of two."""
    return 1 << max(0, n - 1).bit_length()


def bucket_sizes(max_size: int) -> list[int]:
    """Every batch a classifier whose batches hold up to ``max_size`` crops runs: 1, 2, 4, …"""
    return [1 << k for k in range(bucket_size(max(1, max_size)).bit_length())]


def _classes(port: Any) -> int | None:
    """The number of classes an output holds per item ([N,C] or [N,C,1,1]); None when dynamic."""
    dims = list(port.get_partial_shape())[1:]
    if not all(d.is_static for d in dims):
        return None
    return int(np.prod([d.get_length() for d in dims])) if dims else 1


def _heads(cfg: ClassifierConfig, card: ModelCard, net: Network, weights: str, field: str) -> list[Head]:
    where = f"{field} (card {card.where()})"
    heads: list[Head] = []
    written: dict[str, int] = {}
    for i, out in enumerate(card.outputs):
        if out.kind == "ignore":
            continue
        try:
            labels = tuple(read_labels(out, card, weights))
        except ConfigError as exc:
            raise ModelError(f"{field}: " + "; ".join(exc.errors)) from None
        classes = _classes(net.outputs[out.name])
        if classes is not None and len(labels) != classes:
            raise ModelError(f"{where}: outputs[{i}].labels: {len(labels)} labels but the network's output "
                             f"{out.name!r} has {classes} classes")
        names = [out.attribute_name] if out.kind == "softmax" else list(labels)
        for name in names:
            if name in written:
                raise ModelError(f"{where}: outputs[{i}]: attribute {name!r} is also written by "
                                 f"outputs[{written[name]}]; give each head its own attribute")
            written[name] = i
        heads.append(Head(out, labels))
    if cfg.labels:
        heads = _restrict(cfg.labels, heads, card, field, min_score=cfg.min_score)
    return heads


def _restrict(wanted: Sequence[str], heads: list[Head], card: ModelCard, field: str, *,
              min_score: float) -> list[Head]:
    """``labels:`` in the config restricts the first softmax head's answer to those labels, given
    only when the best of them has at least ``min_score`` (``classifiers.<c>.min_score``)."""
    first = next((k for k, h in enumerate(heads) if h.output.kind == "softmax"), None)
    if first is None:
        raise ModelError(f"{field_key(field, 'labels')}: restricting labels needs a softmax output; card {card.where()} has none")
    head = heads[first]
    index = {label: j for j, label in enumerate(head.labels)}
    for i, label in enumerate(wanted):
        if label not in index:
            raise ModelError(f"{field_key(field, 'labels')}[{i}]: {label!r} is not a label of the card's output "
                             f"{head.output.name!r} (card {card.where()}; "
                             f"it has e.g. {list(head.labels)[:8]})")
    allowed = np.array([index[label] for label in wanted])
    return heads[:first] + [Head(head.output, head.labels, allowed, min_score)] + heads[first + 1:]


def fit_crop(crop: np.ndarray, size: tuple[int, int], spec: CardInput) -> np.ndarray:
    """A uint8 BGR crop at ``size`` (width, height): unchanged when it already is, else
    letterboxed (``resize: letterbox``) or stretched (the decoder's crops already are: `prepare_crop`)."""
    import cv2

    if crop.ndim == 2:
        crop = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
    w, h = size
    ch, cw = crop.shape[:2]
    if (cw, ch) == (w, h):
        return crop
    if spec.resize != "letterbox":
        return cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if cw > w else cv2.INTER_LINEAR)
    return letterbox_crop(crop, (w, h), spec.pad_value)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class OpenVinoClassifier:
    """A carded network on batches of crops; one ``{attribute: value}`` mapping per crop."""

    device = "cpu"
    half = False

    def __init__(self, net: Network, card: ModelCard, heads: list[Head], *, name: str,
                 min_size: tuple[int, int] | None, max_batch: int = 32):
        self.net = net
        self.max_batch = bucket_size(max_batch)  # crops a network call takes at most (the largest bucket)
        self.card = card
        self.heads = heads
        self.name = name
        self.crop_size: tuple[int, int] = card.crop_size
        self.crop_context = card.crop_context
        self.crop_fit = card.input.resize
        self.min_size = tuple(min_size) if min_size else None
        self.attributes: tuple[str, ...] = tuple(
            a for h in heads for a in ([h.output.attribute_name] if h.output.kind == "softmax" else h.labels))
        self._lock = threading.Lock()  # one batch at a time through the requests below
        # THROUGHPUT compiles several streams (threads split between them); one synchronous request
        # would use only one, so a batch is cut into one chunk per stream, run together.
        self._streams = int(net.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if net.dynamic_batch else 1
        # one request per stream, waited on in turn (no callback: OpenVINO's threads never run
        # Python, so they never wait for the GIL, which a thread dropping the network holds)
        self._requests = [net.compiled.create_infer_request() for _ in range(self._streams)] if self._streams > 1 else []

    def classify_batch(self, crops: Sequence[np.ndarray]) -> list[Attributes | Exception]:
        return per_item(self._classify, crops)

    def _classify(self, crops: Sequence[np.ndarray]) -> list[Attributes | Exception]:
        images = [fit_crop(np.asarray(c, np.uint8), self.crop_size, self.card.input) for c in crops]
        out: list[dict[str, Any]] = [{} for _ in images]
        step = self.max_batch if self.net.dynamic_batch else len(images)  # a Serve batch of frames holds more
        for at in range(0, len(images), step):
            part = images[at:at + step]
            n = len(part)
            pad = bucket_size(n) - n if self.net.dynamic_batch else 0
            tensor = to_tensor(part + [np.zeros_like(part[0])] * pad, self.card.input)
            with self._lock:
                raw = self._infer(tensor)
            for head in self.heads:
                self._decode(head, raw[head.output.name][:n].reshape(n, -1).astype(np.float32), out[at:at + n])
        return out

    def _infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """The batch through the network, split across the streams when there are several."""
        parts = min(self._streams, len(tensor))
        if not self._requests or parts < 2:
            return infer(self.net, tensor)
        requests = self._requests[:parts]
        # each request reads its chunk in place (alive until its wait): copied into the request's
        # own input instead, resized as batches grew, a sequence like 1, 2, 8 crashed the process
        for request, chunk in zip(requests, np.array_split(tensor, parts)):
            request.start_async({self.net.input: chunk}, share_inputs=True)
        failed = None
        for request in requests:  # every one waited for, even after a failure: none left busy
            try:
                request.wait()
            except Exception as exc:  # noqa: BLE001 -- raised below, once all are done
                failed = failed or exc
        if failed is not None:
            raise failed
        return {name: np.concatenate([r.get_tensor(port).data.copy() for r in requests])
                for name, port in self.net.outputs.items()}

    @staticmethod
    def _decode(head: Head, values: np.ndarray, out: list[dict[str, Any]]) -> None:
        spec = head.output
        if spec.kind == "softmax":
            probs = _softmax(values) if spec.logits else values
            if head.allowed is not None:
                best = head.allowed[np.argmax(probs[:, head.allowed], axis=1)]
            else:
                best = np.argmax(probs, axis=1)
            for item, p, k in zip(out, probs, best):
                if head.allowed is not None and p[k] < head.min_score:
                    continue  # none of the restricted labels fits: this head gives no answer
                item[spec.attribute_name] = {"label": head.labels[int(k)], "score": round(float(p[k]), 4)}
        elif spec.kind == "sigmoid":
            probs = _sigmoid(values) if spec.logits else values
            for item, p in zip(out, probs):
                for label, q in zip(head.labels, p):
                    item[label] = {"value": bool(q >= spec.threshold), "probability": round(float(q), 4)}
