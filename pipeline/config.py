"""The YAML configuration: strict pydantic models, one per domain, and `load_config`.

Every field has a default, a description and bounds; unknown keys are rejected. Errors name the
exact YAML path and the offending value (``cameras[1].fps: must be >= 0, got -2``). ``${VAR}`` in
any string value is replaced from the environment after parsing, so secrets stay out of files and
an environment value can never inject YAML structure.

Camera URLs are the exception: they keep their ``${VAR}`` as written, so the camera registry in
Redis never holds the camera passwords; each decoder replica expands them from its own environment
(`resolve_camera`) just before opening the camera. `load_config` still checks that those variables
are set, and a password written inline in a camera URL is refused unless
``security.allow_inline_credentials`` is on.

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

from .config_errors import CONFIG_ERROR_EXIT_CODE, ConfigError, format_validation_error  # noqa: F401 (API)
from .geometry import LINES_HELP, ZONES_HELP, Anchor, Lines, Zones, check_units

ENV_MODELS_DIR = "PERCEPT_MODELS_DIR"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

DEFAULT_CATEGORIES: dict[str, list[str]] = {
    "vehicle": ["car", "truck", "bus", "motorcycle", "bicycle"],
    "pedestrian": ["person"],
    "sign": ["stop sign", "traffic light"],
}


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


class CameraEnvError(ValueError):
    """A camera URL names an environment variable the decoder's environment lacks."""


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
    zones: Zones = Field(default_factory=dict, description=ZONES_HELP)
    lines: Lines = Field(default_factory=dict, description=LINES_HELP)
    anchor: Anchor = Field("bottom_center", description="the point of a box that zones and lines test")

    @model_validator(mode="after")
    def _one_unit(self) -> "CameraConfig":
        check_units(self.zones, self.lines)  # all pixels or all 0..1; the error names the zone/line
        return self


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
    num_gpus: float | Literal["auto"] = Field(
        "auto", description="per replica; auto: with GPUs, the detector and the classifiers on auto share one "
        "(detector 0.5, the classifiers the rest), without GPUs 0")
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
        if not isinstance(v, str) and v > 1 and v != int(v):
            raise ValueError(f"above 1 GPU Ray takes whole GPUs only (a fraction of one GPU up to 1), got {v}")
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
    classify_timeout_s: float = Field(
        10.0, gt=0, description="a classifier request's whole time, its one retry included"
    )


class SecurityConfig(Strict):
    allow_inline_credentials: bool = Field(
        False,
        description="accept camera URLs with an inline password (stored in Redis in clear); "
        "default: refused, write rtsp://user:${VAR}@host/... instead",
    )


class HttpConfig(Strict):
    host: str = Field("127.0.0.1", description="Serve HTTP bind address; 127.0.0.1 unless you mean it")
    port: int = Field(8000, ge=0, le=65535)
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] = "EveryNode"


class PerceptConfig(Strict):
    redis: RedisConfig = RedisConfig()
    http: HttpConfig = HttpConfig()
    security: SecurityConfig = SecurityConfig()
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
            if not self.security.allow_inline_credentials:
                inline = inline_password_error(cam, f"cameras[{i}].url")
                if inline:
                    errors.append(inline)
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


# --- camera credentials --------------------------------------------------------------------

_URL_NETLOC = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://(?P<netloc>[^/?#]*)")


def inline_password_error(camera: CameraConfig, field: str) -> str | None:
    """The refusal of a password typed inline in the camera URL (``rtsp://user:secret@host``),
    saying how to write it as a variable; None when the password (if any) is only ``${VAR}``."""
    m = _URL_NETLOC.match(camera.url)
    if not m or "@" not in m.group("netloc"):
        return None
    netloc = m.group("netloc")
    userinfo, _, hostport = netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not colon or not _ENV_REF.sub("", password):
        return None
    var = "CAM_" + re.sub(r"[^A-Za-z0-9]", "_", camera.id).upper() + "_PASSWORD"
    url = camera.url
    example = url[: m.start("netloc")] + f"{user}:${{{var}}}@{hostport}" + url[m.end("netloc"):]
    return (
        f"{field}: inline password refused; write {example} and set {var} in the decoder's environment, "
        "or set security.allow_inline_credentials: true to store it in Redis in clear"
    )


def camera_env_vars(config: PerceptConfig) -> set[str]:
    """The environment variables the config's camera URLs name: the decoder replicas need them."""
    return {name for cam in config.cameras for name in _ENV_REF.findall(cam.url)}


def camera_env_errors(config: PerceptConfig, env: Mapping[str, str]) -> list[str]:
    """One ``cameras[i].url: environment variable X is not set`` line per variable ``env`` lacks."""
    return [
        f"cameras[{i}].url: environment variable {name} is not set"
        for i, cam in enumerate(config.cameras)
        for name in dict.fromkeys(_ENV_REF.findall(cam.url))
        if name not in env
    ]


def resolve_camera(camera: CameraConfig, env: Mapping[str, str]) -> CameraConfig:
    """The camera with ``${VAR}`` in its URL expanded from ``env`` (the decoder's environment).
    Raises `CameraEnvError` naming the field and the variable when one is not set."""
    names = list(dict.fromkeys(_ENV_REF.findall(camera.url)))
    if not names:
        return camera
    missing = [n for n in names if n not in env]
    if missing:
        raise CameraEnvError(
            f"cameras[{camera.id}].url: environment variable {', '.join(missing)} is not set "
            "in the decoder's environment"
        )
    return camera.model_copy(update={"url": _ENV_REF.sub(lambda m: env[m.group(1)], camera.url)})


# --- loading -------------------------------------------------------------------------------

_CAMERA_URL_PATH = re.compile(r"^cameras\[\d+\]\.url$")


def _substitute_env(node: Any, env: Mapping[str, str], path: str, errors: list[str]) -> Any:
    if _CAMERA_URL_PATH.match(path):
        return node  # kept as written: the decoder expands it (`resolve_camera`)
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
    """Validate an already-parsed mapping (``${VAR}`` substituted from ``env``, except in camera
    URLs: those are kept as written and expanded by the decoder, see `resolve_camera`)."""
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
        config = _resolve_relative_paths(config, base_dir, env)
    return config


def _resolve_relative_paths(config: PerceptConfig, base_dir: Path, env: Mapping[str, str]) -> PerceptConfig:
    """Camera file paths written relative to the config file are read relative to it (a path with
    ``${VAR}`` keeps the variable, prefixed with the config's directory)."""
    cameras = []
    for cam in config.cameras:
        url = cam.url
        expanded = _ENV_REF.sub(lambda m: env[m.group(1)] if m.group(1) in env else m.group(0), url)
        if "://" not in expanded and not expanded.startswith("device:") and not os.path.isabs(expanded):
            candidate = base_dir / expanded
            if candidate.exists():
                url = str(candidate.resolve()) if expanded == url else os.path.join(base_dir.resolve(), url)
        cameras.append(cam.model_copy(update={"url": url}))
    return config.model_copy(update={"cameras": cameras})


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> PerceptConfig:
    """Read, substitute and validate a YAML config file; raises `ConfigError` naming the path.

    The variables camera URLs name must be set in ``env`` too, although the URLs keep them."""
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
    env = os.environ if env is None else env
    config = parse_config(data, env=env, source=str(p), base_dir=p.parent)
    errors = camera_env_errors(config, env)
    if errors:
        raise ConfigError(errors, str(p))
    return config
