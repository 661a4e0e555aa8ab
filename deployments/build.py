"""`percept build`: a standard Ray Serve config file for `serve deploy` / KubeRay's RayService."""

from __future__ import annotations

from typing import Any

from pipeline.config import ConfigError, PerceptConfig

from .graph import SERVE_ENV, deployment_options

APP_NAME = "percept"
IMPORT_PATH = "deployments.graph:app_builder"


def serve_config(raw: dict[str, Any], config: PerceptConfig, *, http_host: str = "127.0.0.1",
                 http_port: int = 8000) -> dict[str, Any]:
    """``raw`` is the YAML as written (``${VAR}`` kept, so no secret lands in the file);
    ``config`` is its validated form, which decides the deployment options."""
    if not config.redis.url:
        raise ConfigError(["redis.url: required for percept build (every node must reach one shared Redis)"])
    sections = {s.deployment: s.cfg for s in config.detector_sections() + config.classifier_sections()}
    deployments = []
    for name, options in deployment_options(config, gpu_available=False).items():
        entry: dict[str, Any] = {"name": name, **options}
        section = sections.get(name)
        if section is not None and section.num_gpus == "auto":
            # GPUs are decided on the cluster by app_builder (graph.gpu_shares); a value here
            # would override it.
            entry.pop("ray_actor_options")
        deployments.append(entry)
    return {
        "proxy_location": config.http.proxy_location,
        "http_options": {"host": http_host, "port": http_port},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "args": {"config": raw},
                "runtime_env": {"env_vars": dict(SERVE_ENV)},  # the replicas' event loops (graph.SERVE_ENV)
                "deployments": deployments,
            }
        ],
    }
