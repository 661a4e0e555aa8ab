"""The model sections of the config: the detectors, the classifiers and how Serve runs them
(weights, card, device, batching, replicas). Strict like the rest of `pipeline.config`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from .config_errors import error_at

# attributes.unclassified: classifier → why an object got none of its answers; no model writes it
RESERVED_ATTRIBUTE = "unclassified"
RESERVED_WHY = (f"{RESERVED_ATTRIBUTE!r} is reserved (what an object too small for a classifier says why under): "
                "name the attribute otherwise")

DEFAULT_CATEGORIES: dict[str, list[str]] = {
    "vehicle": ["car", "truck", "bus", "motorcycle", "bicycle"],
    "pedestrian": ["person"],
    "sign": ["stop sign", "traffic light"],
}

MAX_UNITS = 4096  # CPUs, GPUs or replicas per deployment: beyond, a typo (1e308 made Ray's arithmetic overflow)


def _ray_resources(v: dict[str, float]) -> dict[str, float]:
    """Custom resources as Ray takes them: not its own (each has a field of its own), none below 0
    (Ray refused both only when the graph was deployed, naming no field)."""
    own = sorted(set(v) & {"CPU", "GPU", "memory", "object_store_memory"})
    if own:
        raise ValueError(f"{', '.join(own)}: not a custom resource (use num_cpus / num_gpus)")
    negative = sorted(k for k, q in v.items() if not 0 <= q <= 1e12)  # (NaN and inf too)
    if negative:
        raise ValueError(f"{', '.join(negative)}: a quantity must be from 0 to 1e12")
    return v


Resources = Annotated[dict[str, float], AfterValidator(_ray_resources)]


class Strict(BaseModel):
    # allow_inf_nan=False: ".inf" or ".nan" for a number is refused naming the field (both passed
    # most bounds, and int(inf) raised OverflowError out of a validator)
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, data: Any) -> Any:
        """``fps: yes`` (YAML's true) ran the camera at 1 fps: pydantic reads a boolean as 1 or 0
        where a number goes. A number field given one is refused, naming it."""
        if isinstance(data, Mapping):
            for name, value in data.items():
                field = cls.model_fields.get(name) if isinstance(value, bool) else None
                if field is not None and _number_not_bool(field.annotation):
                    raise error_at((name,), f"must be a number, got {str(value).lower()} (YAML reads yes/no, on/off "
                                            "and true/false as booleans)")
        return data


def _number_not_bool(annotation: Any) -> bool:
    """Whether a field takes an int or a float (alone or in a union) and no bool."""
    members, stack = set(), [annotation]
    while stack:
        item = stack.pop()
        args = get_args(item)
        if args and get_origin(item) is not Literal:
            stack.extend(args[:1] if get_origin(item) is Annotated else args)
        else:
            members.add(item)
    return bool(members & {int, float}) and bool not in members


class BatchConfig(Strict):
    max_size: int = Field(8, ge=1, le=256)
    wait_ms: float = Field(20.0, ge=0, le=10_000)


USER_CONFIG_KEYS = {"max_batch_size": "max_size", "batch_wait_ms": "wait_ms"}  # Serve's user_config → BatchConfig


def batch_from_user_config(user_config: Mapping[str, Any], current: BatchConfig) -> BatchConfig:
    """A model replica's batch settings from Serve's ``user_config`` (``max_batch_size``,
    ``batch_wait_ms``; a key left out keeps its current value), validated as the config's
    ``batch`` is; `ConfigError` naming the key (nothing applied: a half-applied change, or one
    that raised in a replica's start, crash-looped the deployment)."""
    from pydantic import ValidationError

    from .config_errors import ConfigError, format_validation_error

    unknown = sorted(set(user_config) - set(USER_CONFIG_KEYS))
    if unknown:
        raise ConfigError([f"user_config.{k}: unknown key (takes {', '.join(USER_CONFIG_KEYS)})" for k in unknown])
    merged = current.model_dump()
    merged.update({USER_CONFIG_KEYS[k]: v for k, v in user_config.items()})
    try:
        return BatchConfig.model_validate(merged)
    except ValidationError as exc:  # (its paths as the user_config's keys)
        names = {v: k for k, v in USER_CONFIG_KEYS.items()}
        raise ConfigError([f"user_config.{names.get(field, field)}:{rest}"
                           for field, _, rest in (line.partition(":") for line in format_validation_error(exc))]) from None


class AutoscaleConfig(Strict):
    """Replicas scale on what users feel: how old frames are when they reach the model."""

    min: int = Field(1, ge=1, description="a model deployment keeps one replica at least (no scale to zero)")
    max: int = Field(4, ge=1, le=MAX_UNITS)
    # (floors: 1e-320 made lag / target infinite, and the policy raised in Serve's controller at every call)
    target_lag_s: float = Field(0.5, ge=0.01, description="frame age at the model (capture → batch) to hold")
    target_waiting: float = Field(16.0, ge=0.1, description="frames waiting per replica to hold")
    target_ongoing_requests: float = Field(8.0, ge=0.1, description="Serve's own signal, used as a floor")
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(30.0, ge=0)

    @model_validator(mode="after")
    def _order(self) -> "AutoscaleConfig":
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class ModelServerConfig(Strict):
    """What the detector and every classifier share: weights, device and how Serve runs them."""

    weights: str = Field(min_length=1, description="path, file in PERCEPT_MODELS_DIR or ultralytics name")
    imgsz: int = Field(640, ge=32, le=4096, multiple_of=32, description="input size, a multiple of the models' stride 32")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps|\d+)$")
    half: bool | None = Field(None, description="FP16; default: on for CUDA")
    threads: int | None = Field(None, ge=1, le=256, description="CPU threads of the model per replica (torch, OpenVINO); default: num_cpus")
    batch: BatchConfig = BatchConfig()
    replicas: int | AutoscaleConfig = Field(1, description="a count, or {min, max} to autoscale")
    num_cpus: float = Field(1.0, ge=0, le=MAX_UNITS)
    num_gpus: float | Literal["auto"] = Field(
        "auto", description="per replica; auto: with GPUs, the detector and the classifiers on auto share one "
        "(detector 0.5, the classifiers the rest), without GPUs 0")
    resources: Resources = Field(default_factory=dict, description="Ray custom resources per replica (node placement)")

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, v: int | AutoscaleConfig) -> int | AutoscaleConfig:
        if isinstance(v, int) and not 1 <= v <= MAX_UNITS:
            raise ValueError(f"must be from 1 to {MAX_UNITS}, got {v}")
        return v

    @field_validator("num_gpus")
    @classmethod
    def _gpus(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and not 0 <= v <= MAX_UNITS:
            raise ValueError(f"must be from 0 to {MAX_UNITS} or 'auto', got {v}")
        if not isinstance(v, str) and v > 1 and v != int(v):
            raise ValueError(f"above 1 GPU Ray takes whole GPUs only (a fraction of one GPU up to 1), got {v}")
        return v


NAME = r"^[a-z0-9][a-z0-9-]{0,39}$"


class DetectorConfig(ModelServerConfig):
    weights: str = Field("yolo11n.pt", min_length=1, description="path, file in PERCEPT_MODELS_DIR or ultralytics name")
    name: str | None = Field(
        None, pattern=NAME, description="deployment detector-<name>; default: the first detector is 'detector', "
        "the others are named after their weights")
    card: str | None = Field(None, description="model card (YAML) of a plain network; shipped models need none")
    backend: Literal["auto", "ultralytics", "openvino"] = Field(
        "auto", description="auto: OpenVINO's runtime for ultralytics' OpenVINO exports on CPU, else ultralytics")
    conf: float = Field(0.25, ge=0, le=1)
    iou: float = Field(0.7, ge=0, le=1, description="NMS IoU; a network with a card runs at its card's nms_iou "
                       "(another value here is not used, with a warning at load)")
    max_det: int = Field(300, ge=1)
    rect: bool = Field(True, description="OpenVINO exports: run each frame at the stride-aligned rectangle around it "
                       "(as ultralytics runs .pt models) instead of the padded imgsz square; false: the square")
    categories: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_CATEGORIES))

    @field_validator("categories")
    @classmethod
    def _categories(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        seen: dict[str, str] = {}
        if not v:
            raise ValueError("no category: every detection would be dropped (give at least one, e.g. vehicle: [car])")
        for category, labels in v.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]+", category):  # (match's $ lets a trailing newline through)
                raise ValueError(f"category name {category!r} must match [A-Za-z0-9_-]+")
            if not labels:
                raise ValueError(f"{category}: no labels (a category needs at least one detector label, or '*')")
            for label in labels:
                if label == "*" and len(v) > 1:
                    raise ValueError(f"{category}: '*' (every label of the model) needs to be the only category")
                if label == "*" and len(labels) > 1:  # (then it would be taken for a label named '*')
                    raise ValueError(f"{category}: '*' (every label of the model) needs to be its only label")
                if label in seen:
                    raise ValueError(f"label {label!r} is in both {seen[label]!r} and {category!r}")
                seen[label] = category
        return v


# A classifier restricted to some of its labels (``labels:``) answers only when the best of them
# has at least this probability under the whole model: an ImageNet model restricted to car types
# otherwise calls a bicycle "minivan 0.000". 0.1 is 100x chance among 1000 classes. Measured with
# yolov8n-cls and the 9 car types of configs/local-files.yaml on coco128-val's labelled boxes of
# 16 px and more: 0 of 10 bicycles, 0 of 6 motorcycles, 0 of 8 trucks, 2 of 6 buses and 3 of 17
# cars reach it; 25 of 156 of traffic.mp4's top-down dusk cars.
MIN_RESTRICTED_SCORE = 0.1


class ClassifierConfig(ModelServerConfig):
    imgsz: int = Field(224, ge=32, le=1024, multiple_of=32,  # (ultralytics rounds another up, warning every call)
                       description="ultralytics classifiers: square crop size, a multiple of 32 (a card sets its own)")
    name: str | None = Field(
        None, pattern=NAME, description="deployment classifier-<category>-<name>; default: the first of a "
        "category is classifier-<category>, the others are named after their weights")
    card: str | None = Field(None, description="model card (YAML) of a plain network; shipped models need none")
    on: list[str] | None = Field(None, min_length=1,
                                 description="only objects with these detector labels (default: every object of the category)")
    not_on: list[str] | None = Field(None, description="skip objects with these detector labels")

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        """YAML 1.1 reads an unquoted ``on:`` key as the boolean true: take it as ``on``."""
        if isinstance(data, Mapping) and True in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data
    attribute: str = Field("type", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                           description="ultralytics classifiers: the attribute the top label is written to")

    @field_validator("attribute")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v == RESERVED_ATTRIBUTE:
            raise ValueError(RESERVED_WHY)
        return v

    @model_validator(mode="after")
    def _on_or_not(self) -> "ClassifierConfig":
        both = sorted(set(self.on or ()) & set(self.not_on or ()))
        if both:
            raise error_at(("not_on",), f"{both[0]!r} is in on too: the classifier would run on nothing of it; "
                           "give it in one of the two")
        if self.labels is None and self.min_score != MIN_RESTRICTED_SCORE:  # (it did nothing, without a word)
            raise error_at(("min_score",), "applies with labels (the best of them must reach it); without labels "
                           "every answer stands: give labels, or leave min_score out")
        return self
    labels: list[str] | None = Field(None, min_length=1, description="restrict the answer to these model labels "
                                     "(omitted: every label)")
    min_score: float = Field(
        MIN_RESTRICTED_SCORE, ge=0, le=1, description="with labels: no answer (the attribute is left out) when the "
        "best of those labels has a probability below this under the whole model (a bicycle is no minivan)")
    min_box: int = Field(16, ge=1, description="skip objects whose box's shorter side is below this (pixels)")
    min_size: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="skip objects whose box is narrower or lower than [width, height] pixels (the detector's "
        "box, before the crop's context); default: the card's, else min_box")
    max_per_frame: int = Field(32, ge=1, description="classify at most this many objects per frame")
    reclassify_every: int = Field(
        15, ge=0, description="with tracking: classify a track again after this many frames (0: once per track)"
    )
    answer_per_label: bool | None = Field(
        None, description="with tracking: a track's answer holds for the detector label it was given for, and a "
        "track given another label is asked again at once; default: on for the sign category (a sign found again "
        "as another sign at the same place keeps its track), off elsewhere (a car also seen as a truck keeps one answer)")
    num_cpus: float = Field(0.25, ge=0, le=MAX_UNITS)
    batch: BatchConfig = BatchConfig(max_size=32, wait_ms=10)


def same_imgsz(detectors: list[DetectorConfig]) -> list[DetectorConfig]:
    """Every detector gets the frame the decoder letterboxed once, at the first one's imgsz
    (`prepare_frame`): another imgsz would be silently ignored, so it is refused."""
    first = detectors[0].imgsz if detectors else None
    for i, det in enumerate(detectors[1:], start=1):
        if det.imgsz != first:
            raise error_at((i, "imgsz"), "every detector runs on the same letterboxed frame: "
                           f"must equal detectors[0].imgsz ({first}), got {det.imgsz}")
    return detectors


DetectorList = Annotated[list[DetectorConfig], AfterValidator(same_imgsz)]


# --- the deployments the model sections make ---------------------------------------------------

@dataclass(frozen=True)
class ModelSection:
    """One model deployment: its Serve name, its config field (for errors) and its config."""

    deployment: str  # "detector", "detector-faces", "classifier-vehicle", "classifier-vehicle-colour"
    field: str  # "detector", "detectors[1]", "classifiers.vehicle", "classifiers.vehicle[1]"
    cfg: Any  # DetectorConfig | ClassifierConfig
    category: str | None = None  # classifiers: the category whose objects it gets


def _slug(weights: str) -> str:
    stem = Path(weights.rstrip("/")).stem.lower()
    return re.sub(r"[^a-z0-9]+", "-", stem).strip("-")[:40] or "model"


def detector_sections(detectors: list[DetectorConfig], *, listed: bool) -> list[ModelSection]:
    out = []
    for i, det in enumerate(detectors):
        name = "detector" if i == 0 and det.name is None else f"detector-{det.name or _slug(det.weights)}"
        out.append(ModelSection(name, f"detectors[{i}]" if listed else "detector", det))
    return out


def classifier_sections(classifiers: Mapping[str, list[ClassifierConfig]], *, single: set[str]) -> list[ModelSection]:
    out = []
    for category, entries in classifiers.items():
        for i, clf in enumerate(entries):
            suffix = clf.name if clf.name is not None else (None if i == 0 else _slug(clf.weights))
            name = f"classifier-{category}" + (f"-{suffix}" if suffix else "")
            field = f"classifiers.{category}" + ("" if category in single else f"[{i}]")
            out.append(ModelSection(name, field, clf, category))
    return out


def duplicate_names(sections: list[ModelSection]) -> list[str]:
    seen: dict[str, str] = {}
    errors = []
    for s in sections:
        if s.deployment in seen:
            errors.append(f"{s.field}.name: deployment name {s.deployment!r} is also {seen[s.deployment]}'s; "
                          "give one of them a name")
        seen.setdefault(s.deployment, s.field)
    return errors


def labels_never_classified(sections: list[ModelSection], detectors: list[DetectorConfig]) -> list[str]:
    """A classifier whose ``on`` names none of its category's labels, or whose ``not_on`` names
    them all, would never run: refused naming the field (a category some detector gives every
    label, ``*``, is not checked)."""
    errors = []
    for s in sections:
        labels = {label for det in detectors for label in det.categories.get(s.category or "", [])}
        if not labels or "*" in labels:
            continue
        if s.cfg.on is not None and not labels & set(s.cfg.on):
            errors.append(f"{s.field}.on: none of {sorted(s.cfg.on)} is a label of category {s.category} "
                          f"({', '.join(sorted(labels))}): the classifier would run on nothing")
        elif s.cfg.not_on is not None and labels <= set(s.cfg.not_on):
            errors.append(f"{s.field}.not_on: every label of category {s.category} ({', '.join(sorted(labels))}) "
                          "is in it: the classifier would run on nothing")
    return errors
