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

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from .config_errors import CONFIG_ERROR_EXIT_CODE, ConfigError, error_at, format_validation_error  # noqa: F401 (API)
from .config_errors import as_written, camera_ids_of
from .config_models import (  # noqa: F401 (the config's API)
    DEFAULT_CATEGORIES, AutoscaleConfig, BatchConfig, ClassifierConfig, DetectorConfig, ModelSection, ModelServerConfig,
    MAX_UNITS, DetectorList, Resources, Strict, classifier_sections, detector_sections, duplicate_names,
    labels_never_classified,
)
from .config_tracker import TrackerConfig
from .config_view import PrivacyConfig, ViewConfig
from .config_redis import OutageBufferConfig, RedisConfig  # noqa: F401 (the config's API)
from .config_yaml import config_from_yaml
from .geometry import LINES_HELP, ZONES_HELP, Anchor, Lines, Zones, check_units
from .config_serve import HttpConfig, SecurityConfig  # noqa: F401 (the config's API)
from .config_urls import ENV_REF, camera_url_problem
from .config_credentials import camera_env_errors, camera_var_prefix, inline_password_error  # noqa: F401 (API)
from .redact import redact, redact_url, url_secrets
from .source_types import is_file_url

ENV_MODELS_DIR = "PERCEPT_MODELS_DIR"
MIN_FPS = 1 / 3600  # a camera sampled at all: at least a frame an hour
RUNTIME_FIELDS = ("zones", "lines", "anchor", "line_margin", "zone_margin")  # what PUT /cameras/{id} changes (no restart)


CAMERA_ID = r"^[A-Za-z0-9_-]+$"  # a camera id (at most 64 characters)


class CameraConfig(Strict):
    id: str = Field(pattern=CAMERA_ID, max_length=64, description="unique camera id")
    url: str = Field(min_length=1, max_length=4096, description="rtsp://, http(s)://, a file path or device:N")
    fps: float = Field(5.0, ge=0, le=240, description="max frames sampled per second; 0 = every frame")
    loop: bool = Field(False, description="files only: loop forever")
    realtime: bool = Field(True, description="files only: read at the file's own frame rate")
    open_timeout_s: float = Field(5.0, gt=0, le=120)
    read_timeout_s: float = Field(2.0, gt=0, le=120)
    watchdog_s: float = Field(10.0, gt=0, le=600, description="no frame for this long: reconnect")
    max_inflight: int | None = Field(None, ge=1, le=64, description="default: decoder.max_inflight")
    backpressure: Literal["latest", "wait"] = Field(
        "latest", description="latest: the newest frame goes on, older ones are dropped (live cameras); "
        "wait: files only, the reader waits for the pipeline so no sampled frame is dropped")
    zones: Zones = Field(default_factory=dict, description=ZONES_HELP)
    lines: Lines = Field(default_factory=dict, description=LINES_HELP)
    anchor: Anchor = Field("bottom_center", description="the point of a box that zones and lines test")
    line_margin: float = Field(0.1, ge=0, le=2, description="hysteresis at lines: within this fraction of its "
                               "box (across the line) from a line, an anchor is on neither side; 0: off")
    zone_margin: float = Field(0.1, ge=0, le=2, description="hysteresis at zone edges: within this fraction of "
                               "its box (across the edge) from a zone's edge, a track stays in or out as it was; 0: off")
    decode: Literal["all", "reference", "keyframes"] = Field(
        "all", description="all: every frame is decoded, fps samples them; reference: frames no other frame "
        "depends on (most B-frames) are skipped (FFmpeg skip_frame nonref, with PyAV): about half the frames "
        "of a stream with B-frames left undecoded (none of one without: keep all there), for a camera sampled at or "
        "below the rate of what is left; keyframes: only "
        "keyframes are decoded (skip_frame nokey): far less decoder CPU for a camera sampled at or below its "
        "keyframe rate. Both cap the camera's frame rate at what they decode")

    _written_url: str | None = PrivateAttr(None)  # the URL as written, before `resolve_camera`
    _env_values: tuple[str, ...] = PrivateAttr(())  # what its ${VAR}s were expanded to
    _added_ms: int | None = PrivateAttr(None)  # when the API added it: added again, another camera

    @property
    def secrets(self) -> tuple[str, ...]:
        """Scrubbed from anything shown of the camera: its URL's password, its ``${VAR}``s' values."""
        return tuple(dict.fromkeys((*url_secrets(self.url), *self._env_values)))

    @property
    def shown_url(self) -> str:
        """The URL as shown (hash, status, logs): as written, ``${VAR}``s unexpanded, redacted
        (its own password; not the variables' values, which the text as written does not hold:
        with ``CAM_PW=local``, ``rtsp://admin:${CAM_PW}@cam.local/`` was shown ``…@cam.***``)."""
        written = self._written_url or self.url
        return redact(redact_url(written), url_secrets(written))

    def differs_at_runtime_only(self, running: "CameraConfig") -> bool:
        """Whether this camera is ``running`` but for fields that change without a restart
        (`RUNTIME_FIELDS`: zones, lines, …)."""
        return self.model_copy(update={name: getattr(running, name) for name in RUNTIME_FIELDS}) == running

    @field_validator("fps")
    @classmethod
    def _fps_period(cls, v: float) -> float:
        if 0 < v < MIN_FPS:  # 1e-310: a period of inf, and the sampler's grid NaN
            raise ValueError(f"must be 0 (every frame) or at least {MIN_FPS:g} (a frame an hour), got {v:g}")
        return v

    @field_validator("url")
    @classmethod
    def _url_shape(cls, v: str) -> str:
        if v.startswith("device:") and not re.fullmatch(r"[0-9]+", v.removeprefix("device:")):  # (isdigit: "²")
            raise ValueError(f"device: takes the camera's index (device:0 for /dev/video0), got {v!r}")
        problem = camera_url_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _one_unit(self) -> "CameraConfig":
        check_units(self.zones, self.lines)  # all pixels or all 0..1; the error names the zone/line
        if problem := self.source_problem():
            raise error_at((problem[0],), problem[1])
        return self

    def source_problem(self) -> tuple[str, str] | None:
        """(field, what is wrong) when a setting is not for this kind of source (a file's on a live
        camera); checked again once a ``${VAR}`` URL is expanded (`config_env.resolve_camera`)."""
        if self.backpressure == "wait" and not is_file_url(self.url):
            return "backpressure", "wait is for files; a live camera cannot be paused (use latest)"
        if not is_file_url(self.url) and (self.loop or not self.realtime):  # (they did nothing, without a word)
            field, what = ("loop", "true") if self.loop else ("realtime", "false")
            return field, f"{what} is for files; a live camera is read as it comes (leave {field} out)"
        if self.decode != "all" and self.url.startswith("device:"):
            return "decode", f"{self.decode} needs an encoded stream or file; a device: camera gives raw frames"
        return None


class DecoderConfig(Strict):
    replicas: int | None = Field(None, ge=1, le=MAX_UNITS, description="default: one per 8 cameras")
    cameras_per_replica: int = Field(8, ge=1)
    num_cpus: float = Field(0.25, ge=0, le=MAX_UNITS)
    resources: Resources = Field(default_factory=dict, description="Ray custom resources per replica (node placement)")
    max_inflight: int = Field(2, ge=1, le=64, description="frames per camera in flight downstream")
    shared_memory: bool = Field(
        True, description="frames to detectors on the same machine through shared memory, not Ray's object store "
        "(detectors elsewhere get the pixels)")
    transport: Literal["grpc", "actor"] = Field(
        "grpc", description="how frames and crops go to detectors and classifiers: grpc, Serve's direct channel to the "
        "replica (pickled, by value; ~2-6 ms less per frame than actor and less CPU on both sides); actor, Ray actor calls")
    lease_ttl_s: float = Field(10.0, ge=1, le=86_400, description="a dead replica's cameras move after this")
    detect_timeout_s: float = Field(30.0, gt=0)
    classify_timeout_s: float = Field(
        10.0, gt=0, description="a classifier request's whole time, its one retry included"
    )


class PerceptConfig(Strict):
    redis: RedisConfig = RedisConfig()
    http: HttpConfig = HttpConfig()
    security: SecurityConfig = SecurityConfig()
    cameras: list[CameraConfig] = Field(default_factory=list)
    detector: DetectorConfig = Field(DetectorConfig(), description="the detector (the first of detectors when that is given)")
    detectors: DetectorList | None = Field(
        None, min_length=1, description="several detectors, each its own deployment; their objects are merged")
    classifiers: dict[str, list[ClassifierConfig]] = Field(
        default_factory=dict, description="per category: one classifier (a mapping) or several (a list)")
    tracker: TrackerConfig = TrackerConfig()
    decoder: DecoderConfig = DecoderConfig()
    models_dir: str | None = Field(None, description="where weights are looked up; env PERCEPT_MODELS_DIR")
    state_dir: str = Field(".percept", description="private redis-server data and other state")
    view: ViewConfig = ViewConfig()
    privacy: PrivacyConfig = PrivacyConfig()

    _single: frozenset[str] = PrivateAttr(frozenset())  # categories written as one mapping (error paths)

    @field_validator("classifiers", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, Mapping):
            return {k: [c] if isinstance(c, Mapping) else c for k, c in v.items()}
        return v

    @model_validator(mode="before")
    @classmethod
    def _detector_or_detectors(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("detectors"), list) and data["detectors"] \
                and data.get("detector") is not None:  # (detectors as a mapping: its own error, below)
            first = data["detectors"][0]
            if first != data["detector"]:
                raise ValueError("detector and detectors: give one of them (detectors: [...] for several)")
        return data

    def model_post_init(self, context: Any) -> None:
        if self.detectors:
            object.__setattr__(self, "detector", self.detectors[0])

    @property
    def all_detectors(self) -> list[DetectorConfig]:
        return list(self.detectors) if self.detectors else [self.detector]

    def detector_sections(self) -> list[ModelSection]:
        return detector_sections(self.all_detectors, listed=bool(self.detectors))

    def classifier_sections(self) -> list[ModelSection]:
        return classifier_sections(self.classifiers, single=set(self._single))

    def categories(self) -> set[str]:
        return {c for det in self.all_detectors for c in det.categories}

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
            if not self.tracker.enabled and (cam.zones or cam.lines):  # events follow tracks
                errors.append(f"cameras[{i}].{'zones' if cam.zones else 'lines'}: zones and lines need the "
                              "tracker (tracker.enabled is false)")
        errors += self._low_pass_fed()
        categories = self.categories()
        for category in self.classifiers:
            if category not in categories:
                errors.append(f"classifiers.{category}: no such category; the detectors' categories are {sorted(categories)}")
        errors += duplicate_names(self.detector_sections() + self.classifier_sections())
        errors += labels_never_classified(self.classifier_sections(), self.all_detectors)
        if errors:
            raise ValueError("\n".join(errors))
        return self

    def _low_pass_fed(self) -> list[str]:
        """A ``tracker.track_low_thresh`` set while no detector keeps anything below
        ``track_high_thresh`` (each one's ``conf`` at or above it): ByteTrack's second pass gets no
        detection, the setting does nothing (the defaults are so: 0.25 and 0.25, said in the README)."""
        t = self.tracker
        if not t.enabled or t.track_low_thresh == TrackerConfig.model_fields["track_low_thresh"].default:
            return []
        lowest = min(d.conf for d in self.all_detectors)
        if lowest < t.track_high_thresh:
            return []
        return [f"tracker.track_low_thresh: {t.track_low_thresh:g} does nothing: the detector keeps no detection "
                f"below its conf {lowest:g}, at or above track_high_thresh {t.track_high_thresh:g}, so ByteTrack's "
                "second pass gets none; lower detector.conf (published objects then go down to it) or raise "
                "track_high_thresh"]

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

_CAMERA_URL_PATH = re.compile(r"^cameras\[\d+\]\.url$")


def _substitute_env(node: Any, env: Mapping[str, str], path: str, errors: list[str],
                    used: dict[str, str] | None = None) -> Any:
    """``node`` with ``${VAR}`` replaced from ``env``; ``used``: value → name of each replaced."""
    used = {} if used is None else used
    if isinstance(node, str) and "${" in ENV_REF.sub("", node):
        errors.append(f"{path}: a \"${{\" that is no ${{NAME}}: percept expands ${{NAME}} only (letters, digits and _; "
                      "no ${NAME:-default}, no spaces)")
        return node
    if _CAMERA_URL_PATH.match(path):
        return node  # kept as written: the decoder expands it (`resolve_camera`)
    if isinstance(node, dict):
        return {k: _substitute_env(v, env, f"{path}.{k}" if path else str(k), errors, used) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, env, f"{path}[{i}]", errors, used) for i, v in enumerate(node)]
    if isinstance(node, str):
        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                errors.append(f"{path}: environment variable {name} is not set")
                return m.group(0)
            used.setdefault(env[name], name)
            return env[name]

        return ENV_REF.sub(repl, node)
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
    used: dict[str, str] = {}
    ids = camera_ids_of(data)  # (as written: an id from a ${VAR} is not quoted)
    data = _substitute_env(dict(data), env, "", errors, used)
    if errors:
        raise ConfigError(errors, source, ids)
    if data.get("models_dir") is None and env.get(ENV_MODELS_DIR):
        data["models_dir"] = env[ENV_MODELS_DIR]
    classifiers = data.get("classifiers")
    single = {k for k, v in classifiers.items() if isinstance(v, Mapping)} if isinstance(classifiers, Mapping) else set()
    try:
        config = PerceptConfig.model_validate(data)
    except ValidationError as exc:
        lines = format_validation_error(exc, written=used)
        for k in single:  # a category written as one mapping: its errors at classifiers.<k>.field
            lines = [line.replace(f"classifiers.{k}[0]", f"classifiers.{k}") for line in lines]
        raise ConfigError(as_written(lines, used), source, ids) from None
    config._single = frozenset(single)
    if base_dir is not None:
        config = _resolve_relative_paths(config, base_dir, env)
    return config


def _resolve_relative_paths(config: PerceptConfig, base_dir: Path, env: Mapping[str, str]) -> PerceptConfig:
    """Camera file paths written relative to the config file are read relative to it (a path with
    ``${VAR}`` keeps the variable, prefixed with the config's directory)."""
    cameras = []
    for cam in config.cameras:
        url = cam.url
        expanded = ENV_REF.sub(lambda m: env[m.group(1)] if m.group(1) in env else m.group(0), url)
        if "://" not in expanded and not expanded.startswith("device:") and not os.path.isabs(expanded):
            candidate = base_dir / expanded
            try:
                there = candidate.exists()
            except OSError:  # a name too long, no permission: left as written, the camera says why
                there = False
            if there:
                url = str(candidate.resolve()) if expanded == url else os.path.join(base_dir.resolve(), url)
        cameras.append(cam.model_copy(update={"url": url}))
    return config.model_copy(update={"cameras": cameras})


MAX_CONFIG_BYTES = 16 * 2**20


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None,
                camera_env: bool = True) -> PerceptConfig:
    """Read, substitute and validate a YAML config file; raises `ConfigError` naming the path.

    The variables camera URLs name must be set in ``env`` too, although the URLs keep them
    (``camera_env`` False: a reader of the streams, which never opens a camera, needs none)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:  # (at most MAX_CONFIG_BYTES: -c /dev/zero read until memory ran out)
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError([f"more than {MAX_CONFIG_BYTES // 2**20} MiB: not a config file"], str(p))
        text = raw.decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {p}: {exc.strerror}"], str(p)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not a UTF-8 text file (byte {exc.start}): a YAML config is text"], str(p)) from None
    data = config_from_yaml(text, str(p))
    if data is None:  # (it ran with every default and no camera, without a word)
        raise ConfigError(["no settings in the file (empty, or comments only): write at least `cameras: []`"], str(p))
    env = os.environ if env is None else env
    config = parse_config(data, env=env, source=str(p), base_dir=p.parent)
    errors = camera_env_errors(config, env) if camera_env else []
    if errors:
        raise ConfigError(errors, str(p), [c.id for c in config.cameras])
    return config
