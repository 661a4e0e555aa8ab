"""The one message model that flows end to end: frame → detections → classified objects → JSON.

- `FrameMeta`: who and when (camera, seq, capture time, pts, size).
- `Detections`: a columnar, validated result (boxes N×4, scores, labels, categories, track ids,
  attributes). Operations return new objects; nothing here mutates its arguments.
- `FrameResult`: one processed frame, the unit published to Redis as schema
  ``percept.detections/v1``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import orjson

SCHEMA = "percept.detections/v1"
SCHEMA_VERSION = "1"
DUPLICATE_IOU = 0.7  # two detectors' objects of one category this much overlapped are one object (`Detections.concat`)
# what a published object's numbers are rounded to: box corners to 0.1 px, the score to 1e-4
_ROUNDING = np.array([10, 10, 10, 10, 10_000], np.float64)
Rounded = tuple[list[list[float]], list[float]]  # `rounded_numbers`: boxes, scores
RoundedRun = tuple[Iterator[list[float]], Iterator[float]]  # several results' `Rounded`, drawn in order


@dataclass(frozen=True)
class FrameMeta:
    camera: str
    seq: int
    frame_ts: float  # capture wall time, seconds since the epoch
    pts: float | None  # stream presentation time, seconds
    width: int
    height: int
    # the capture time on the reader's steady clock (not stepped by NTP; its own zero): what the
    # tracker measures the interval between one reader's frames on; not published
    steady_ts: float | None = field(default=None, compare=False)

    @property
    def message_id(self) -> str:
        """Unique per (camera, seq): what subscribers deduplicate on."""
        return f"{self.camera}:{self.seq}"

    def time_on(self, file_time: bool) -> float:
        """The frame's time for tracking and event durations: its capture time, or with
        ``file_time`` (a file read faster than real time) the file's own time, as published
        (to 0.1 ms)."""
        # (a pts that is not finite, as a file may give: the capture time, never NaN in durations)
        return round(self.pts, 4) if file_time and self.pts is not None and math.isfinite(self.pts) else self.frame_ts


@dataclass(frozen=True, eq=False)
class Detections:
    """Objects of one frame as parallel columns. Boxes are xyxy in original-frame pixels."""

    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    labels: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    track_ids: tuple[int | None, ...] | None = None
    attributes: tuple[Mapping[str, Any], ...] | None = None
    # the detector model(s) that produced these objects (weights file names, as the message's
    # ``model`` names them), set by the replica that ran the batch; not part of `to_objects`
    model_names: tuple[str, ...] = ()
    # the detector replica's time on the batch this frame ran in (inference and reading its
    # output, ms), set by the replica like `model_names`: the message's ``latency_ms.infer``
    infer_ms: float | None = None

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        n = len(xyxy)
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "categories", tuple(self.categories))
        object.__setattr__(self, "model_names", tuple(self.model_names))
        object.__setattr__(self, "track_ids", tuple(self.track_ids) if self.track_ids is not None else (None,) * n)
        object.__setattr__(
            self, "attributes", tuple(dict(a) for a in self.attributes) if self.attributes is not None else ({},) * n
        )
        for name in ("scores", "labels", "categories", "track_ids", "attributes"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Detections.{name} has {len(getattr(self, name))} items, xyxy has {n}")

    def __len__(self) -> int:
        return len(self.xyxy)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Detections):
            return NotImplemented
        return (
            len(self) == len(other)  # (allclose of two lengths raises)
            and np.allclose(self.xyxy, other.xyxy, atol=1e-3, equal_nan=True)
            and np.allclose(self.scores, other.scores, atol=1e-4, equal_nan=True)
            and (self.labels, self.categories, self.track_ids, self.attributes)
            == (other.labels, other.categories, other.track_ids, other.attributes)
        )

    def __getitem__(self, index: np.ndarray | Sequence[int] | slice) -> "Detections":
        """Select with a boolean mask, indices or a slice; returns a new object."""
        idx = np.arange(len(self))[index]
        return Detections(
            xyxy=self.xyxy[idx],
            scores=self.scores[idx],
            labels=tuple(self.labels[i] for i in idx),
            categories=tuple(self.categories[i] for i in idx),
            track_ids=tuple(self.track_ids[i] for i in idx),
            attributes=tuple(self.attributes[i] for i in idx),
            model_names=self.model_names,
            infer_ms=self.infer_ms,
        )

    def named(self, *model_names: str, infer_ms: float | None = None) -> "Detections":
        """A copy that names the model(s) that produced it (and the replica's time on it)."""
        return replace(self, model_names=tuple(model_names), infer_ms=infer_ms)

    def indices_of(self, category: str) -> list[int]:
        return [i for i, c in enumerate(self.categories) if c == category]

    def with_attribute(self, name: str, values: Mapping[int, Mapping[str, Any]]) -> "Detections":
        """A copy where object ``i`` gets ``attributes[name] = values[i]`` for each i given."""
        attrs = tuple({**a, name: dict(values[i])} if i in values else a for i, a in enumerate(self.attributes))
        return replace(self, attributes=attrs)

    def with_attributes(self, values: Mapping[int, Mapping[str, Any]]) -> "Detections":
        """A copy where object ``i`` gets every attribute of ``values[i]`` (added or replaced)."""
        attrs = tuple({**a, **{k: dict(v) for k, v in values[i].items()}} if i in values else a
                      for i, a in enumerate(self.attributes))
        return replace(self, attributes=attrs)

    @classmethod
    def concat(cls, parts: Sequence["Detections"]) -> "Detections":
        """The objects of several detectors on one frame, in order (with every part's model names).
        An object of a category an earlier part already has at the same place (box IoU ≥
        `DUPLICATE_IOU`: a stop sign found by a COCO detector and a sign detector) is left out:
        one object, the earlier detector's."""
        names = tuple(n for p in parts for n in p.model_names)
        # the detectors run side by side: the frame waited for the slowest
        infer_ms = max((p.infer_ms for p in parts if p.infer_ms is not None), default=None)
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls(model_names=names, infer_ms=infer_ms)
        if len(parts) == 1:
            return replace(parts[0], model_names=names, infer_ms=infer_ms)
        kept = [parts[0]]
        for part in parts[1:]:
            for earlier in kept:
                part = part.not_in(earlier)
            if len(part):
                kept.append(part)
        parts = kept
        if len(parts) == 1:
            return replace(parts[0], model_names=names, infer_ms=infer_ms)
        return cls(
            xyxy=np.concatenate([p.xyxy for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            labels=tuple(x for p in parts for x in p.labels),
            categories=tuple(x for p in parts for x in p.categories),
            track_ids=tuple(x for p in parts for x in p.track_ids),
            attributes=tuple(x for p in parts for x in p.attributes),
            model_names=names,
            infer_ms=infer_ms,
        )

    def not_in(self, other: "Detections", iou: float | None = None) -> "Detections":
        """The objects that do not repeat one of ``other``'s: same category, box IoU ≥ ``iou``
        (`DUPLICATE_IOU`)."""
        if not len(self) or not len(other):
            return self
        a, b = self.xyxy[:, None, :], other.xyxy[None, :, :]
        inter = (np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
                 * np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None))
        areas_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
        areas_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
        union = areas_a + areas_b - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)
        same = np.array([[c == d for d in other.categories] for c in self.categories], bool)
        repeats = ((overlap >= (DUPLICATE_IOU if iou is None else iou)) & same).any(axis=1)
        return self if not repeats.any() else self[~repeats]

    def with_track_ids(self, track_ids: Sequence[int | None]) -> "Detections":
        return replace(self, track_ids=tuple(track_ids))

    def to_objects(self) -> list[dict[str, Any]]:
        """The objects as plain data of their own (their attributes' answers copied too)."""
        return [{**o, "attributes": copy.deepcopy(o["attributes"])} for o in self._objects()]

    def _objects(self, rounded: RoundedRun | None = None) -> list[dict[str, Any]]:
        """The objects as JSON-ready dicts (sharing this object's attribute dicts: for encoding);
        ``rounded``: `rounded_numbers` of several results at once, as iterators, this object's
        next: it takes as many as it has objects (zip draws them last, so none past its own)."""
        if not len(self.labels):
            return []
        boxes, scores = rounded_numbers([self]) if rounded is None else rounded
        return [
            {"category": category, "label": label, "score": score, "bbox": box, "track_id": track_id,
             "attributes": attributes}
            for category, label, track_id, attributes, score, box in zip(
                self.categories, self.labels, self.track_ids, self.attributes, scores, boxes)
        ]

    @classmethod
    def from_objects(cls, objects: Sequence[Mapping[str, Any]]) -> "Detections":
        return cls(
            xyxy=np.array([o["bbox"] for o in objects], np.float32).reshape(-1, 4),
            scores=np.array([o["score"] for o in objects], np.float32),
            labels=tuple(o["label"] for o in objects),
            categories=tuple(o["category"] for o in objects),
            track_ids=tuple(o.get("track_id") for o in objects),
            attributes=tuple(o.get("attributes") or {} for o in objects),
        )


@dataclass(frozen=True)
class FrameResult:
    """One processed frame: what is published, one Redis entry per frame (also with no objects)."""

    meta: FrameMeta
    objects: Detections
    models: Mapping[str, Any]
    latency_ms: Mapping[str, float]

    @property
    def message_id(self) -> str:
        return self.meta.message_id

    def to_payload(self) -> dict[str, Any]:
        """The message as plain data of its own (nothing shared with this result)."""
        payload = self._payload()
        payload["objects"] = self.objects.to_objects()
        payload["model"] = dict(self.models)
        return payload

    def _payload(self, rounded: RoundedRun | None = None) -> dict[str, Any]:
        m = self.meta
        return {
            "schema": SCHEMA,
            "id": m.message_id,
            "camera": m.camera,
            "seq": m.seq,
            "frame_ts": m.frame_ts,
            "pts": None if m.pts is None or not math.isfinite(m.pts) else round(m.pts * 10_000) / 10_000,
            "width": m.width,
            "height": m.height,
            "model": self.models if type(self.models) is dict else dict(self.models),
            "objects": self.objects._objects(rounded),
            # round(v * 100) / 100: the float nearest v in hundredths, as round(v, 2) at half its cost
            "latency_ms": {k: round(float(v) * 100) / 100 for k, v in self.latency_ms.items()},
        }

    def to_json(self) -> str:
        """Compact JSON (orjson: ~10× the stdlib encoder; numpy scalars allowed)."""
        return self.to_json_bytes().decode()

    def to_json_bytes(self) -> bytes:
        """`to_json` as UTF-8 bytes, what is written to Redis."""
        return FrameResult.many_to_json_bytes([self])[0]

    @staticmethod
    def many_to_json_bytes(results: Sequence["FrameResult"]) -> list[bytes]:
        """Each result's JSON (what `to_json_bytes` gives it alone), their numbers rounded together
        (`rounded_numbers`: one numpy pass for all, ~4 µs a result less than one pass each)."""
        boxes, scores = rounded_numbers([r.objects for r in results])
        rounded = (iter(boxes), iter(scores))  # each result takes its objects' from the front
        return [orjson.dumps(r._payload(rounded), option=orjson.OPT_SERIALIZE_NUMPY) for r in results]

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "FrameResult":
        """The message read back; ValueError naming the field that is not as `to_payload` writes it."""
        if not isinstance(payload, Mapping):
            raise ValueError(f"a {SCHEMA} message is a JSON object, got {type(payload).__name__}")
        if payload.get("schema") != SCHEMA:
            raise ValueError(f"unsupported schema {payload.get('schema')!r}; expected {SCHEMA!r}")
        check_payload(payload)
        meta = FrameMeta(
            camera=payload["camera"],
            seq=int(payload["seq"]),
            frame_ts=float(payload["frame_ts"]),
            pts=payload.get("pts"),
            width=int(payload["width"]),
            height=int(payload["height"]),
        )
        return cls(
            meta=meta,
            objects=Detections.from_objects(payload.get("objects", [])),
            models=payload.get("model", {}),
            latency_ms=payload.get("latency_ms", {}),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "FrameResult":
        return cls.from_payload(orjson.loads(text))


def rounded_numbers(parts: Sequence[Detections]) -> Rounded:
    """Every object's box corners (``[x1, y1, x2, y2]``) and score, in order, rounded as
    published: in one float64 array as np.round does it (× 10^d, rint, ÷ 10^d), into plain Python
    floats. Per-value round() was most of the publisher's cost; one array for many results saves
    numpy's per-call overhead too (~0.5 µs a call, 7 calls); boxes and scores come out as lists
    apart, so that no object's box is sliced out of a row (~0.7 µs a result of 10 objects)."""
    n = sum(len(p.labels) for p in parts)
    if not n:
        return [], []
    rows = np.empty((n, 5), np.float64)
    rows[:, :4] = np.concatenate([p.xyxy for p in parts])
    rows[:, 4] = np.concatenate([p.scores for p in parts])
    rows *= _ROUNDING
    np.rint(rows, out=rows)
    rows /= _ROUNDING
    return rows[:, :4].tolist(), rows[:, 4].tolist()


def _number(value: Any, where: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")


def _integer(value: Any, where: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer, got {value!r}")


def _of_type(value: Any, kind: type, where: str, *, optional: bool = False) -> None:
    if not (isinstance(value, kind) or (optional and value is None)):
        raise ValueError(f"{where}: expected {'a JSON object' if kind is dict else kind.__name__}, got {value!r}")


def check_payload(payload: Mapping[str, Any]) -> None:
    """ValueError naming the first field of a ``percept.detections/v1`` message that is not as
    published (a JSON list, ``objects: null``, a 2-number bbox, a ``seq`` of 1.9: a KeyError or a
    column length, or taken in as it was)."""
    _of_type(payload.get("camera"), str, "camera")
    _integer(payload.get("seq"), "seq")
    _number(payload.get("frame_ts"), "frame_ts")
    _number(payload.get("pts"), "pts", optional=True)
    for name in ("width", "height"):
        _integer(payload.get(name), name)
    _of_type(payload.get("model", {}), dict, "model")
    _of_type(payload.get("latency_ms", {}), dict, "latency_ms")
    objects = payload.get("objects", [])
    _of_type(objects, list, "objects")
    for i, obj in enumerate(objects):
        where = f"objects[{i}]"
        _of_type(obj, dict, where)
        box = obj.get("bbox")
        if not isinstance(box, list) or len(box) != 4:
            raise ValueError(f"{where}.bbox: expected 4 numbers (x1, y1, x2, y2), got {box!r}")
        # (null: a NaN, as the publisher wrote one before it dropped non-finite detections; read as NaN)
        for k, v in enumerate(box):
            _number(v, f"{where}.bbox[{k}]", optional=True)
        _number(obj.get("score"), f"{where}.score", optional=True)
        _of_type(obj.get("label"), str, f"{where}.label")
        _of_type(obj.get("category"), str, f"{where}.category")
        _integer(obj.get("track_id"), f"{where}.track_id", optional=True)
        _of_type(obj.get("attributes"), dict, f"{where}.attributes", optional=True)
