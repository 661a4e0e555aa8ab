"""`percept build`: a standard Ray Serve config for `serve deploy` / KubeRay, with ``${VAR}``
left as written (secrets are substituted on the cluster, from its environment)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from pipeline.config import CAMERA_ID, CONFIG_ERROR_EXIT_CODE, ConfigError, camera_var_prefix, load_config
from pipeline.config_urls import ENV_REF
from pipeline.config_yaml import load_yaml
from pipeline.redact import query_secrets, url_credentials

from .common import PORT, bind_host_arg, fail, output_or_stdout_arg


# what every warning of an inline secret says (scripts/kuberay-manifest.py refuses on it: the
# manifest is committed)
INLINE_SECRET_WARNING = "holds its password as written"


class _KeepUnset(dict):
    """An environment in which unset ``${VAR}`` stay as written (resolved later, on the cluster)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return os.environ.get(key, "${" + key + "}")


def inline_redis_secrets(raw: Any) -> list[str]:
    """The fields of the config as written that hold a Redis password itself, not a ``${VAR}``."""
    redis_section = raw.get("redis") if isinstance(raw, dict) else None
    if not isinstance(redis_section, dict):
        return []
    found = []
    password = redis_section.get("password")
    if isinstance(password, str) and _written_out(password):
        found.append("redis.password")
    url = redis_section.get("url")
    creds = url_credentials(url) if isinstance(url, str) else None
    in_query = isinstance(url, str) and any(_written_out(url[a:b]) for a, b in query_secrets(url))  # ?password=
    if (creds is not None and creds.password and _written_out(creds.password)) or in_query:
        found.append("redis.url")
    return found


def inline_camera_secrets(raw: Any) -> list[tuple[str, str]]:
    """(field, the variable to write instead) for each camera of the config as written whose URL
    holds a password itself, in its userinfo or a ``password=``-like query parameter, not a
    ``${VAR}``: what ``security.allow_inline_credentials: true`` lets through (read as its check,
    `pipeline.config.inline_password_error`, reads it). The password itself is never part of it."""
    cameras = raw.get("cameras") if isinstance(raw, dict) else None
    if not isinstance(cameras, list):
        return []
    found = []
    for i, cam in enumerate(cameras):
        url = cam.get("url") if isinstance(cam, dict) else None
        if not isinstance(url, str):
            continue
        creds = url_credentials(url)
        if (creds is not None and creds.password and _written_out(creds.password)) or any(
                _written_out(url[a:b]) for a, b in query_secrets(url)):
            cam_id = cam.get("id")
            ok_id = isinstance(cam_id, str) and len(cam_id) <= 64 and re.fullmatch(CAMERA_ID, cam_id) is not None
            found.append((f"cameras[{i}].url" + (f" (camera {cam_id!r})" if ok_id else ""),
                          "${" + camera_var_prefix(cam_id if ok_id else "X") + "PASSWORD}"))
    return found


def _written_out(password: str) -> bool:
    """Some of the password is written as it is, not all ``${VAR}``s: ``s3cret${SUFFIX}`` puts
    ``s3cret`` in the Serve config (it was not said: the value named a variable)."""
    return bool(ENV_REF.sub("", password))


def register(sub: Any) -> None:
    b = sub.add_parser("build", help="write a Ray Serve config for `serve deploy` / KubeRay")
    b.add_argument("-c", "--config", required=True)
    b.add_argument("-o", "--output", default="-", type=output_or_stdout_arg, help="file to write (default: stdout)")
    b.add_argument("--http-host", type=bind_host_arg, help="Serve HTTP bind address (default: http.host, 127.0.0.1)")
    b.add_argument("--http-port", type=PORT, help="default: http.port, 8000")
    b.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    import yaml

    from deployments.build import serve_config

    path = Path(args.config)
    try:
        config = load_config(path, env=_KeepUnset())
    except ConfigError as exc:  # a check a ${VAR} left as written fails: say it is unset here
        unset = sorted({name for line in exc.errors for name in ENV_REF.findall(line)} - set(os.environ))
        if not unset:
            raise
        note = (f"(not set here: {', '.join(unset)}; `percept build` leaves an unset variable as written for the "
                "cluster to set, so a field checked against a pattern or a number fails here: set it for the build)")
        raise ConfigError([*exc.errors, note], exc.source, exc.camera_ids) from None
    raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    try:
        out = serve_config(raw, config, http_host=args.http_host or config.http.host,
                           http_port=args.http_port if args.http_port is not None else config.http.port)
    except ConfigError as exc:  # (named after the file, as load_config's own)
        raise ConfigError(exc.errors, str(path), exc.camera_ids) from None
    for field in inline_redis_secrets(raw):
        print(f"percept build: warning: {field} {INLINE_SECRET_WARNING}: the Serve config carries it (so do "
              "Serve's API, the dashboard and a RayService); write ${REDIS_PW} (as configs/cluster.yaml) and set it on the cluster",
              file=sys.stderr)
    for field, var in inline_camera_secrets(raw):  # (security.allow_inline_credentials: true let it through)
        print(f"percept build: warning: {field} {INLINE_SECRET_WARNING}: the Serve config carries it (so do "
              f"Serve's API, the dashboard and a RayService), not only Redis; write it as {var} (as "
              "configs/cluster.yaml writes ${CAM_PASS}) and set it on the cluster", file=sys.stderr)
    text = yaml.safe_dump(out, sort_keys=False)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        try:
            Path(args.output).write_text(text)
        except OSError as exc:
            return fail(f"--output: cannot write {args.output}: {exc.strerror}", CONFIG_ERROR_EXIT_CODE)
        print(f"percept: wrote {args.output}; deploy with: serve deploy {args.output}", file=sys.stderr)
    return 0
