"""The YAML configuration: strict pydantic models, one per domain, and `load_config`.

Every field has a default, a description and bounds; unknown keys are rejected. Errors name the
exact YAML path and the offending value (``cameras[1].fps: must be >= 0, got -2``). ``${VAR}`` in
any string value is replaced from the environment after parsing, so secrets stay out of files and
an environment value can never inject YAML structure.

This module and the CLI are the only places that read the environment (`PERCEPT_MODELS_DIR`).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_ERROR_EXIT_CODE = 2
ENV_MODELS_DIR = "PERCEPT_MODELS_DIR"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

DEFAULT_CATEGORIES: dict[str, list[str]] = {
    "vehicle": ["car", "truck", "bus", "motorcycle", "bicycle"],
    "pedestrian": ["person"],
    "sign": ["stop sign", "traffic light"],
}


class ConfigError(ValueError):
    """A configuration that cannot run. ``errors`` holds one ``path: message`` line per problem."""

    def __init__(self, errors: list[str], source: str | None = None):
        self.errors = errors
        self.source = source
        head = f"invalid config {source}" if source else "invalid config"
        super().__init__(head + ":\n" + "\n".join(f"  {e}" for e in errors))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class OutageBufferConfig(Strict):
    max_entries: int = Field(10_000, ge=1, description="results kept while Redis is unreachable")
    max_bytes: int = Field(64 * 2**20, ge=1024, description="bytes kept while Redis is unreachable")


class RedisConfig(Strict):
    url: str | None = Field(None, description="redis:// or rediss:// URL; omitted: a private redis-server")
    stream_prefix: str = Field("percept", pattern=r"^[A-Za-z0-9_.:-]+$", description="key prefix")
    maxlen: int = Field(100_000, ge=1, description="approximate entries kept per stream (MAXLEN ~)")
    password: str | None = Field(None, description="AUTH password; use ${ENV_VAR}")
    username: str | None = Field(None, description="ACL user (Redis 6+)")
    tls_ca_file: str | None = Field(None, description="CA bundle to verify a rediss:// server")
    buffer: OutageBufferConfig = OutageBufferConfig()

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(redis|rediss|unix)://", v):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v


class CameraConfig(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=64, description="unique camera id")
    url: str = Field(min_length=1, description="rtsp://, http(s)://, a file path or device:N")
    fps: float = Field(5.0, ge=0, le=240, description="max frames sampled per second; 0 = every frame")
    loop: bool = Field(False, description="files only: loop forever")
    realtime: bool = Field(True, description="files only: read at the file's own frame rate")
    open_timeout_s: float = Field(5.0, gt=0, le=120)
    read_timeout_s: float = Field(2.0, gt=0, le=120)
    watchdog_s: float = Field(10.0, gt=0, le=600, description="no frame for this long: reconnect")
    max_inflight: int | None = Field(None, ge=1, le=64, description="default: decoder.max_inflight")


class BatchConfig(Strict):
    max_size: int = Field(8, ge=1, le=256)
    wait_ms: float = Field(20.0, ge=0, le=10_000)


class AutoscaleConfig(Strict):
    """Replicas scale on what users feel: how old frames are when they reach the model."""

    min: int = Field(1, ge=0)
    max: int = Field(4, ge=1)
    target_lag_s: float = Field(0.5, gt=0, description="frame age at the model (capture → batch) to hold")
    target_waiting: float = Field(16.0, gt=0, description="frames waiting per replica to hold")
    target_ongoing_requests: float = Field(8.0, gt=0, description="Serve's own signal, used as a floor")
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
    imgsz: int = Field(640, ge=32, le=4096)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps|\d+)$")
    half: bool | None = Field(None, description="FP16; default: on for CUDA")
    threads: int | None = Field(None, ge=1, le=256, description="torch CPU threads per replica")
    batch: BatchConfig = BatchConfig()
    replicas: int | AutoscaleConfig = Field(1, description="a count, or {min, max} to autoscale")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float | Literal["auto"] = Field("auto", description="per replica; auto: 1 when the cluster has a GPU")
    resources: dict[str, float] = Field(default_factory=dict, description="Ray custom resources per replica (node placement)")

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, v: int | AutoscaleConfig) -> int | AutoscaleConfig:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v

    @field_validator("num_gpus")
    @classmethod
    def _gpus(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and v < 0:
            raise ValueError(f"must be >= 0 or 'auto', got {v}")
        return v


class DetectorConfig(ModelServerConfig):
    weights: str = "yolo11n.pt"
    conf: float = Field(0.25, ge=0, le=1)
    iou: float = Field(0.7, ge=0, le=1)
    max_det: int = Field(300, ge=1)
    categories: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_CATEGORIES))

    @field_validator("categories")
    @classmethod
    def _categories(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        seen: dict[str, str] = {}
        for category, labels in v.items():
            if not re.match(r"^[A-Za-z0-9_-]+$", category):
                raise ValueError(f"category name {category!r} must match [A-Za-z0-9_-]+")
            for label in labels:
                if label in seen:
                    raise ValueError(f"label {label!r} is in both {seen[label]!r} and {category!r}")
                seen[label] = category
        return v


class ClassifierConfig(ModelServerConfig):
    imgsz: int = Field(224, ge=32, le=1024)
    labels: list[str] | None = Field(None, description="restrict the answer to these model labels")
    min_box: int = Field(16, ge=1, description="skip boxes whose shorter side is below this (pixels)")
    max_per_frame: int = Field(32, ge=1, description="classify at most this many objects per frame")
    reclassify_every: int = Field(
        15, ge=0, description="with tracking: classify a track again after this many frames (0: once per track)"
    )
    num_cpus: float = Field(0.25, ge=0)
    batch: BatchConfig = BatchConfig(max_size=32, wait_ms=10)


class TrackerConfig(Strict):
    """ByteTrack (ultralytics) per camera: fills track_id; classifiers then run once per track."""

    enabled: bool = True
    track_high_thresh: float = Field(0.25, ge=0, le=1)
    track_low_thresh: float = Field(0.1, ge=0, le=1)
    new_track_thresh: float = Field(0.25, ge=0, le=1)
    track_buffer: int = Field(30, ge=1, le=10_000, description="frames a lost track is kept")
    match_thresh: float = Field(0.8, ge=0, le=1)


class DecoderConfig(Strict):
    replicas: int | None = Field(None, ge=1, description="default: one per 8 cameras")
    cameras_per_replica: int = Field(8, ge=1)
    num_cpus: float = Field(0.25, ge=0)
    resources: dict[str, float] = Field(default_factory=dict, description="Ray custom resources per replica (node placement)")
    max_inflight: int = Field(2, ge=1, le=64, description="frames per camera in flight downstream")
    lease_ttl_s: float = Field(10.0, ge=1, description="a dead replica's cameras move after this")
    detect_timeout_s: float = Field(30.0, gt=0)


class HttpConfig(Strict):
    host: str = Field("127.0.0.1", description="Serve HTTP bind address; 127.0.0.1 unless you mean it")
    port: int = Field(8000, ge=0, le=65535)
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] = "EveryNode"


class PerceptConfig(Strict):
    redis: RedisConfig = RedisConfig()
    http: HttpConfig = HttpConfig()
    cameras: list[CameraConfig] = Field(default_factory=list)
    detector: DetectorConfig = DetectorConfig()
    classifiers: dict[str, ClassifierConfig] = Field(default_factory=dict)
    tracker: TrackerConfig = TrackerConfig()
    decoder: DecoderConfig = DecoderConfig()
    models_dir: str | None = Field(None, description="where weights are looked up; env PERCEPT_MODELS_DIR")
    state_dir: str = Field(".percept", description="private redis-server data and other state")

    @model_validator(mode="after")
    def _cross_checks(self) -> "PerceptConfig":
        errors: list[str] = []
        seen: dict[str, int] = {}
        for i, cam in enumerate(self.cameras):
            if cam.id in seen:
                errors.append(f"cameras[{i}].id: duplicate camera id {cam.id!r} (also cameras[{seen[cam.id]}])")
            seen.setdefault(cam.id, i)
        for category in self.classifiers:
            if category not in self.detector.categories:
                errors.append(
                    f"classifiers.{category}: no such category; detector.categories has "
                    f"{sorted(self.detector.categories)}"
                )
        if errors:
            raise ValueError("\n".join(errors))
        return self

    @property
    def decoder_replicas(self) -> int:
        if self.decoder.replicas is not None:
            return self.decoder.replicas
        return max(1, math.ceil(len(self.cameras) / self.decoder.cameras_per_replica))

    def camera(self, camera_id: str) -> CameraConfig:
        for cam in self.cameras:
            if cam.id == camera_id:
                return cam
        raise KeyError(camera_id)


# --- loading -------------------------------------------------------------------------------

_UNION_MARKERS = {"int", "float", "str", "bool", "AutoscaleConfig", "literal['auto']"}


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_MARKERS or str(part).startswith("function-"):
            continue  # markers pydantic adds to locations inside unions and validators
        else:
            out += f".{part}" if out else str(part)
    return out


_MESSAGES = {
    "greater_than_equal": lambda c: f"must be >= {c['ge']:g}",
    "greater_than": lambda c: f"must be > {c['gt']:g}",
    "less_than_equal": lambda c: f"must be <= {c['le']:g}",
    "less_than": lambda c: f"must be < {c['lt']:g}",
    "string_pattern_mismatch": lambda c: f"must match {c['pattern']}",
    "string_too_short": lambda c: "must not be empty",
}


def format_validation_error(exc: ValidationError) -> list[str]:
    """One ``path: message, got value`` line per problem."""
    by_path: dict[str, list[dict[str, Any]]] = {}
    for err in exc.errors(include_url=False):
        by_path.setdefault(_path(err["loc"]), []).append(err)
    lines: list[str] = []
    for path, errs in by_path.items():
        # Several errors on one path come from union branches (replicas: int | {min, max}):
        # the branch whose type matched the input explains the problem best.
        specific = [e for e in errs if not e["type"].endswith(("_type", "_parsing"))]
        lines.extend(_format_one(path, (specific or errs)[0]))
    return lines


def _format_one(path: str, err: dict[str, Any]) -> list[str]:
    kind = err["type"]
    make = _MESSAGES.get(kind)
    msg = make(err.get("ctx") or {}) if make else err["msg"].removeprefix("Value error, ")
    msg = msg.replace("Input should be", "must be")
    if not path:
        return msg.splitlines()
    if kind == "extra_forbidden":
        return [f"{path}: unknown key"]
    if kind == "missing":
        return [f"{path}: required key is missing"]
    if kind == "value_error":
        return [f"{path}: {msg}"]
    return [f"{path}: {msg}, got {err.get('input')!r}"]


def _substitute_env(node: Any, env: Mapping[str, str], path: str, errors: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute_env(v, env, f"{path}.{k}" if path else str(k), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, env, f"{path}[{i}]", errors) for i, v in enumerate(node)]
    if isinstance(node, str):
        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                errors.append(f"{path}: environment variable {name} is not set")
                return m.group(0)
            return env[name]

        return _ENV_REF.sub(repl, node)
    return node


def parse_config(
    data: Mapping[str, Any] | None,
    *,
    env: Mapping[str, str] | None = None,
    source: str | None = None,
    base_dir: Path | None = None,
) -> PerceptConfig:
    """Validate an already-parsed mapping (``${VAR}`` substituted from ``env``)."""
    env = os.environ if env is None else env
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"top level: must be a mapping of keys, got {type(data).__name__}"], source)
    errors: list[str] = []
    data = _substitute_env(dict(data), env, "", errors)
    if errors:
        raise ConfigError(errors, source)
    if data.get("models_dir") is None and env.get(ENV_MODELS_DIR):
        data["models_dir"] = env[ENV_MODELS_DIR]
    try:
        config = PerceptConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc), source) from None
    if base_dir is not None:
        config = _resolve_relative_paths(config, base_dir)
    return config


def _resolve_relative_paths(config: PerceptConfig, base_dir: Path) -> PerceptConfig:
    """Camera file paths written relative to the config file are read relative to it."""
    cameras = []
    for cam in config.cameras:
        url = cam.url
        if "://" not in url and not url.startswith("device:") and not os.path.isabs(url):
            candidate = base_dir / url
            if candidate.exists():
                url = str(candidate.resolve())
        cameras.append(cam.model_copy(update={"url": url}))
    return config.model_copy(update={"cameras": cameras})


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> PerceptConfig:
    """Read, substitute and validate a YAML config file; raises `ConfigError` naming the path."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError([f"cannot read {p}: {exc.strerror}"], str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"YAML syntax error at {where}: {problem}"], str(p)) from None
    return parse_config(data, env=env, source=str(p), base_dir=p.parent)
