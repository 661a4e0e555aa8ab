"""The Serve graph, bound once: HTTP API (ingress) → decoders → detectors → the classifiers of each category."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from ray import serve

from pipeline.backends import runs_on_cpu_only
from pipeline.config import ModelServerConfig, PerceptConfig, parse_config

from .api import CameraApi
from .autoscaling import POLICY
from .classifier import ClassifierDeployment
from .decoder import DecoderDeployment
from .detector import DetectorDeployment
from .transport import MESSAGE_ENV

DETECTOR_GPU_SHARE = 0.5  # num_gpus: auto → the detector's part of the GPU it shares with classifiers

# Serve runs each replica's code on the replica's own event loop, and a handle routes calls on the
# caller's loop, instead of one more thread for each (ray#61226 proposes both as Serve's default);
# every async method of the graph hands blocking work to a thread, so that loop stays free.
# Measured on the bench's latency phase (4 cameras at 50 % load, two same-minute A/B pairs):
# capture → publish p50 30.5 / 34.3 ms against 37.8 / 40.9 ms; detector only 55.5 / 52.9 fps
# against 49.3 / 51.6.
# MESSAGE_ENV: the gRPC transport's message limit (deployments/transport.py).
# RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO: a replica given no GPU (num_gpus 0) sees none
# (CUDA_VISIBLE_DEVICES ""); since Ray 2.60 it otherwise sees every GPU of its node, and a model
# on `device: auto` would load onto the GPU Ray gave another replica.
SERVE_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
             "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1", **MESSAGE_ENV}


def replica_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment every replica gets (Ray's runtime_env ``env_vars``): `SERVE_ENV`, then from
    ``environ`` ultralytics' settings (``YOLO_*``) and Serve's own (``RAY_SERVE_*``: a value set
    there wins over `SERVE_ENV`). Nothing that may hold a credential (camera variables,
    ``PERCEPT_REDIS_URL``, …): Ray writes a runtime env, values included, to its logs
    (runtime_env_agent.log). A local Ray's replicas inherit the driver's environment; a cluster's
    nodes resolve them from their own, as `percept build`'s config does."""
    own = {k: v for k, v in environ.items() if k.startswith(("YOLO_", "RAY_SERVE_"))}
    return {**SERVE_ENV, **own}


def _floor(gpus: float) -> float:
    """Down to Ray's resource precision (1e-4), so that shares never sum past what they split."""
    return math.floor(gpus * 10_000 + 1e-6) / 10_000


# Serve waits this long before a stopping replica first looks for requests still ongoing, then
# again until none is (default 2 s each): requests already routed to it reach it well within
# that; longer ones (a batch, an MJPEG stream, a camera's hand-over) are still waited for, up to
# graceful_shutdown_timeout_s. A stop, a redeploy and a scale-down take ~2 s less.
SHUTDOWN_WAIT_LOOP_S = 0.25
MIN_AUTO_SHARE = 0.05  # the least GPU a deployment on auto gets: below, those on auto take another GPU


def gpu_shares(config: PerceptConfig, *, gpu_available: bool) -> dict[str, float]:
    """GPUs per replica of the detector and of each classifier, by deployment name.

    Numbers in the config are used as they are. ``auto`` is 0 on a cluster without GPUs; with
    GPUs, the deployments on auto share what the numbers leave of one GPU (another GPU when the
    numbers take one or more): the detector half of it (all of it when no classifier is on auto),
    the classifiers on auto the rest in equal parts. A model that runs on the CPU whatever its
    share (`runs_on_cpu_only`: a card's network, ``backend: openvino``, an OpenVINO export) gets
    none on auto. One replica of each then fits on one GPU;
    every further replica needs its share again (a second detector replica: another half GPU)."""
    sections = {s.deployment: s.cfg for s in config.detector_sections() + config.classifier_sections()}
    shares = {name: float(s.num_gpus) for name, s in sections.items() if s.num_gpus != "auto"}
    # a model that runs on the CPU whatever it gets takes none on auto
    shares |= {name: 0.0 for name, s in sections.items()
               if name not in shares and runs_on_cpu_only(s, models_dir=config.models_dir)}
    auto = [name for name in sections if name not in shares]
    if not gpu_available or not auto:
        return {**{name: 0.0 for name in auto}, **shares}
    # what the numbers leave of the GPU they fill last (rounded to Ray's precision: 0.7 + 0.2 + 0.1
    # is 0.99999…, which left the auto ones 1e-16, floored to 0: the detector ran on the CPU)
    left = round(1.0 - round(sum(shares.values()), 4) % 1.0, 4)
    free = left if left >= MIN_AUTO_SHARE * len(auto) else 1.0  # (too little left: another GPU)
    detectors = [name for name in auto if name.startswith("detector")]
    classifiers = [name for name in auto if name not in detectors]
    if detectors:
        part = free * DETECTOR_GPU_SHARE if classifiers else free
        for name in detectors:
            shares[name] = _floor(part / len(detectors))
        free -= sum(shares[name] for name in detectors)
    for name in classifiers:
        shares[name] = _floor(free / len(classifiers))
    return shares


def model_server_options(cfg: ModelServerConfig, *, gpus: float) -> dict[str, Any]:
    """Serve options of a batched model deployment, from its config section and its GPU share."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": gpus, **_resources(cfg.resources)},
        # Room for one batch in inference and the next one filling (ray#43288: a cap below
        # the batch size means batches never fill).
        "max_ongoing_requests": max(32, 4 * cfg.batch.max_size),
        "user_config": {"max_batch_size": cfg.batch.max_size, "batch_wait_ms": cfg.batch.wait_ms},
        "graceful_shutdown_wait_loop_s": SHUTDOWN_WAIT_LOOP_S,
    }
    if isinstance(cfg.replicas, int):
        options["num_replicas"] = cfg.replicas
    else:
        auto = cfg.replicas
        options["autoscaling_config"] = {
            "min_replicas": auto.min,
            "max_replicas": auto.max,
            "target_ongoing_requests": auto.target_ongoing_requests,
            "upscale_delay_s": auto.upscale_delay_s,
            "downscale_delay_s": auto.downscale_delay_s,
            "metrics_interval_s": 1.0,
            "look_back_period_s": 5.0,
            "policy": {
                "policy_function": POLICY,
                "policy_kwargs": {"target_lag_s": auto.target_lag_s, "target_waiting": auto.target_waiting,
                                  "target_ongoing_requests": auto.target_ongoing_requests,
                                  "batch_size": cfg.batch.max_size},
            },
        }
    return options


def _resources(resources: dict[str, float]) -> dict[str, Any]:
    return {"resources": dict(resources)} if resources else {}


def decoder_options(config: PerceptConfig) -> dict[str, Any]:
    return {
        "num_replicas": config.decoder_replicas,
        "ray_actor_options": {"num_cpus": config.decoder.num_cpus, **_resources(config.decoder.resources)},
        "max_ongoing_requests": 100,
        # a stopping replica ends or hands over its cameras' tracks and flushes what they published
        # (`DecoderDeployment.__del__`): more than Serve's default 20 s before it is killed
        "graceful_shutdown_timeout_s": 60,
        # (its cameras pause from the stop until their next owner starts)
        "graceful_shutdown_wait_loop_s": SHUTDOWN_WAIT_LOOP_S,
    }


def deployment_options(config: PerceptConfig, *, gpu_available: bool) -> dict[str, dict[str, Any]]:
    """Serve options of every deployment by name: what `build_app` binds and `percept build` writes."""
    gpus = gpu_shares(config, gpu_available=gpu_available)
    options = {
        # long requests (MJPEG streams, swaps, explain) must not hold up the rest: Serve's default is 5;
        # view.max_streams of them at most, with 64 places left for everything else
        "api": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0},
                "max_ongoing_requests": max(256, config.view.max_streams + 64),
                "graceful_shutdown_wait_loop_s": SHUTDOWN_WAIT_LOOP_S},
        "decoder": decoder_options(config)}
    for section in config.detector_sections() + config.classifier_sections():
        options[section.deployment] = model_server_options(section.cfg, gpus=gpus[section.deployment])
    return options


def _replicas_to_start(options: Mapping[str, Any]) -> int:
    """Replicas a deployment starts with: its count, or an autoscaled one's minimum."""
    return int(options.get("num_replicas") or (options.get("autoscaling_config") or {}).get("min_replicas") or 0)


def logical_cpus(config: PerceptConfig) -> float:
    """Ray CPUs the graph reserves to start (every deployment's ``num_cpus`` × its replicas, the
    minimum of an autoscaled one): Serve waits forever when the cluster has fewer."""
    return sum(float(o["ray_actor_options"].get("num_cpus") or 0) * _replicas_to_start(o)
               for o in deployment_options(config, gpu_available=False).values())


def unmet_resources(config: PerceptConfig, have: Mapping[str, float], *, gpu_available: bool) -> list[str]:
    """What the deployments ask of a private local Ray (whose resources never change) that it has
    too little of — GPUs, a custom resource — one line per resource naming the fields: Serve
    would wait for it for ever (`serve.run` hung, its warning hidden), whether this Ray has none
    of it or less than the replicas take together (two replicas of one GPU each on a 1-GPU
    machine; a detector and a classifier on one GPU each)."""
    fields = {s.deployment: s.field for s in config.detector_sections() + config.classifier_sections()}
    asks: dict[str, list[tuple[str, str, float, int]]] = {}  # resource → (field, deployment, each, replicas)
    for name, options in deployment_options(config, gpu_available=gpu_available).items():
        actor = options["ray_actor_options"]
        asked = {"GPU": float(actor.get("num_gpus") or 0), **{k: float(v) for k, v in (actor.get("resources") or {}).items()}}
        for key, each in asked.items():
            if each > 0:
                where = f"{fields.get(name, name)}.{'num_gpus' if key == 'GPU' else 'resources.' + key}"
                asks.setdefault(key, []).append((where, name, each, max(1, _replicas_to_start(options))))
    problems = []
    for key in sorted(asks):
        has = float(have.get(key) or 0)
        if not has:
            problems += [f"{where}: {each:g} asked of each {name} replica; this machine's Ray has no {key} "
                         "(Serve would wait for it for ever)" for where, name, each, _ in asks[key]]
        elif (total := sum(each * n for _, _, each, n in asks[key])) > has + 1e-9:
            parts = " + ".join(f"{where} {each:g} × {n} {name} replica{'s' if n > 1 else ''}"
                               for where, name, each, n in asks[key])
            problems.append(f"{parts} = {total:g} {key} asked; this machine's Ray has {has:g} (Serve would wait "
                            "for the rest for ever)")
    return problems


def ray_cpus_for(config: PerceptConfig) -> int | None:
    """Logical CPUs for a private local Ray when the CPUs Ray finds are fewer than the graph
    reserves (the deployments share the cores either way: Ray does not pin), else None (Ray's
    own count). Ray counts a container's CPU quota (``docker run --cpus=1``, a Kubernetes limit),
    not the host's cores that ``os.cpu_count`` gives: compared with those, a 1-CPU quota on a
    2-core host left Ray with 1 CPU for a graph that reserves 1.25, and `percept run` hung."""
    need = math.ceil(logical_cpus(config) - 1e-6)
    return need if need > ray_detected_cpus() else None


def ray_detected_cpus() -> float:
    """The CPUs a local Ray would give itself (its own count: the cgroup's quota where one is set)."""
    try:
        from ray._private.utils import get_num_cpus

        return float(get_num_cpus())
    except Exception:  # noqa: BLE001 - a Ray without it: the machine's cores
        return float(os.cpu_count() or 1)


def build_app(config: PerceptConfig, *, gpu_available: bool = False) -> serve.Application:
    if not config.redis.url:
        raise ValueError("build_app needs redis.url (percept run starts a private redis-server otherwise)")
    data = config.model_dump(mode="json")
    options = deployment_options(config, gpu_available=gpu_available)
    detectors = {
        s.deployment: DetectorDeployment.options(name=s.deployment, **options[s.deployment]).bind(data, s.deployment)
        for s in config.detector_sections()
    }
    classifiers = {
        s.deployment: ClassifierDeployment.options(name=s.deployment, **options[s.deployment]).bind(data, s.deployment)
        for s in config.classifier_sections()
    }
    decoder = DecoderDeployment.options(**options["decoder"]).bind(data, detectors, classifiers)
    return CameraApi.options(**options["api"]).bind(data, decoder)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve's application builder (``import_path: deployments.graph:app_builder``).

    ``args.config`` is the percept YAML as written, ``${VAR}`` included: secrets are substituted
    here, on the cluster, from its environment, and never stored in the Serve config. Camera
    URLs keep their ``${VAR}`` even here: each decoder replica expands them from its own
    environment when it opens the camera, so they never reach Redis expanded."""
    import ray

    config = parse_config(args.get("config") or {}, env=os.environ)
    gpu = ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0
    return build_app(config, gpu_available=gpu)
