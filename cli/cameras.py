"""`percept cameras ls|add|rm`: the running graph's camera set, through its HTTP API.
While the graph's Redis is unreachable the API answers 503; the command says so once and
retries until ``--wait`` seconds have passed."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from pipeline.config import CONFIG_ERROR_EXIT_CODE, MIN_FPS, RUNTIME_FIELDS, CameraConfig, inline_password_error
from pipeline.config_urls import camera_url_problem
from pipeline.redact import redact, redact_url

from .common import (EXIT_UNAVAILABLE, UNAVAILABLE_STATUS, api_text, ingress_url_arg, call_api, camera_id_arg, fail, number_arg,
                     unreachable, utf8_arg)


def register(sub: Any) -> None:
    cams = sub.add_parser("cameras", help="list, add or remove cameras of a running graph")
    cams.add_argument("--api", default=os.environ.get("PERCEPT_API", "http://127.0.0.1:8000"), type=ingress_url_arg,
                      help="the graph's HTTP address (default: PERCEPT_API or http://127.0.0.1:8000)")
    cams.add_argument("--wait", type=number_arg(float, 0.0), default=60.0,
                      help="seconds to keep retrying while the graph's Redis is unreachable (default 60)")
    # the same two options after the action too (`percept cameras ls --api …`); not given there,
    # the value given before it (or the default) stands
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--api", type=ingress_url_arg, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    after.add_argument("--wait", type=number_arg(float, 0.0), default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    cam_sub = cams.add_subparsers(dest="action", required=True)
    cam_sub.add_parser("ls", help="cameras with state, fps, drops and lag", parents=[after])
    add = cam_sub.add_parser("add", help="add a camera (takes effect within a few seconds)", parents=[after])
    add.add_argument("id", type=camera_id_arg)
    add.add_argument("url", help="the camera URL (a network stream: files and devices only where the config "
                     "sets security.api_local_sources); write a password as ${VAR}, expanded by the decoders")
    add.add_argument("--fps", type=_fps_arg, default=5.0,
                     help="max frames sampled per second, 0 to 240 (0: every frame; default 5)")
    add.add_argument("--loop", action="store_true", help="a file camera starts again at its end")
    rm = cam_sub.add_parser("rm", help="remove a camera", parents=[after])
    rm.add_argument("id", type=_some_id)
    zones = cam_sub.add_parser("zones", help="change a camera's zones, lines, anchor, line or zone margin (no restart)",
                               parents=[after])
    zones.add_argument("id", type=_some_id)
    zones.add_argument("--zones", type=json_arg('{"name": [[x, y], ...]}'),
                       help='JSON: {"name": [[x, y], ...]} ({} removes them all)')
    zones.add_argument("--lines", type=json_arg('{"name": [[x1, y1], [x2, y2]]}'), help='JSON: {"name": [[x1, y1], [x2, y2]]}')
    zones.add_argument("--anchor", choices=("bottom_center", "center"))
    zones.add_argument("--line-margin", type=MARGIN, dest="line_margin",
                       help="hysteresis at lines: a fraction of the box across the line (0 turns it off)")
    zones.add_argument("--zone-margin", type=MARGIN, dest="zone_margin",
                       help="hysteresis at zone edges: a fraction of the box across the edge (0 turns it off)")
    cams.set_defaults(func=_cameras)


def _some_id(value: str) -> str:
    """argparse type of the camera a request names (any text, escaped in the path; a camera
    registered under an id no longer valid can still be removed): not empty, which asked
    ``DELETE /cameras/``, a path the API redirects."""
    if not value:
        raise argparse.ArgumentTypeError("a camera id cannot be empty")
    return utf8_arg(value)


MARGIN = number_arg(float, 0.0, 2.0)  # as cameras[].line_margin / zone_margin
_FPS = number_arg(float, 0.0, 240.0)  # as cameras[].fps


def _fps_arg(value: str) -> float:
    """argparse type of ``add --fps``: as ``cameras[].fps`` takes it (NaN and inf were sent as-is)."""
    fps = _FPS(value)
    if 0 < fps < MIN_FPS:
        raise argparse.ArgumentTypeError(f"must be 0 (every frame) or at least {MIN_FPS:g} (a frame an hour), "
                                         f"got {value!r}")
    return fps


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is no JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # (1e400: read as inf, sent on as Infinity, no JSON)
        raise ValueError(f"{text[:40]} is beyond a JSON number's range")
    return value


def json_arg(shape: str) -> Any:
    """An argparse type: JSON text, else exit 2 saying where it stopped and the shape expected."""
    def parse(value: str) -> Any:
        try:
            return json.loads(value, parse_constant=_no_constant, parse_float=_finite)  # (NaN went to the API as no JSON)
        except RecursionError:  # (a traceback)
            raise argparse.ArgumentTypeError(f"nested too deeply; expected {shape}") from None
        except ValueError as exc:
            where = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise argparse.ArgumentTypeError(f"not JSON ({msg}{where}); expected {shape}") from None
    parse.__name__ = "JSON"
    return parse


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """(method, path, JSON body) of the action."""
    if args.action == "ls":
        return "GET", "/cameras", None
    if args.action == "add":
        return "POST", "/cameras", {"id": args.id, "url": args.url, "fps": args.fps, "loop": args.loop}
    if args.action == "zones":
        changes = {k: getattr(args, k) for k in RUNTIME_FIELDS if getattr(args, k) is not None}
        return "PUT", f"/cameras/{quote(args.id, safe='')}", changes
    return "DELETE", f"/cameras/{quote(args.id, safe='')}", None


def _call(args: argparse.Namespace) -> tuple[int, Any]:
    """(HTTP status, JSON body); 503 (Redis unreachable) is retried until ``--wait`` passes. A
    removal retried after a 503 that says a timeout, and then finds no such camera: the try that
    timed out may have removed it (Redis slow, the write landed); after a 503 of Redis down
    (nothing done) a 404 stays an error. An add is the same camera again: the API answers it as
    added."""
    retried: list[bytes] = []
    status, data = call_api(args.api, *_request(args), wait_s=args.wait, retried=retried)
    if args.action == "rm" and status == 404 and any(b"TimeoutError" in body for body in retried):
        return 200, {"id": args.id, "removed": True, "note": "not in the registry after a retried request: "
                     "an earlier try removed it (or it was not there)"}
    return status, data


def _ls_row(cam: dict[str, Any], width: int = 14) -> str:
    """One camera's line; why it is not online at its end (``last_error``, as `top` shows it), or
    that its results are held while Redis refuses writes."""
    lag = "-" if cam["lag_s"] is None else f"{cam['lag_s']:.1f} s"
    error = cam.get("last_error")
    why = f"  error: {redact(str(error))}" if error and cam["state"] != "online" else ""  # (a URL's password)
    if not why and cam.get("writes_refused"):  # (online by its hash, its results held by its decoder)
        why = f"  held: redis refuses writes ({cam['writes_refused']})"
    dropped = cam["dropped"] + cam.get("publish_dropped", 0)  # (load's drops and the outages'; an older API: load's)
    return (f"{cam['id']:<{width}} {cam['state']:<12} {cam['fps']:5.1f} fps  dropped {dropped:>5}  "
            f"lag {lag:>7}  {cam['url']}{why}")


def _cameras(args: argparse.Namespace) -> int:
    if args.action == "zones" and all(getattr(args, k) is None for k in RUNTIME_FIELDS):
        options = [f"--{k.replace('_', '-')}" for k in RUNTIME_FIELDS]
        return fail(f"cameras zones: give {', '.join(options[:-1])} and/or {options[-1]}", 2)
    if args.action == "add":  # refused by the API with 422 after being sent; the message never holds the password
        if (problem := camera_url_problem(args.url)) is not None:  # (rtsp:/u:pw@h: no credentials found in it, sent)
            return fail(f"cameras add: url: {problem}", CONFIG_ERROR_EXIT_CODE)
        inline = inline_password_error(CameraConfig.model_construct(id=args.id, url=args.url), "url", setting=False)
        if inline:  # (whatever the service's security.allow_inline_credentials: no password goes over the wire)
            return fail(f"cameras add: {inline} (percept cameras never sends a password)", CONFIG_ERROR_EXIT_CODE)
    try:
        status, data = _call(args)
    except (urllib.error.URLError, OSError) as exc:
        return unreachable(args.api, exc)
    if status >= 400:
        detail = data.get("detail", "") if isinstance(data, dict) else data
        lines = detail if isinstance(detail, list) else [detail]
        lines = [f"{'.'.join(map(str, d.get('loc') or []))}: {d['msg']}" if isinstance(d, dict) and "msg" in d else d
                 for d in lines]  # (a FastAPI validation error's items, as `explain` says them)
        what = " ".join(filter(None, (args.action, getattr(args, "id", ""))))  # ("ls : HTTP 503" had a stray space)
        return fail(f"{what}: HTTP {status}: " + api_text(redact("; ".join(map(str, lines)))),
                    EXIT_UNAVAILABLE if status in UNAVAILABLE_STATUS else CONFIG_ERROR_EXIT_CODE if 400 <= status < 500 else 1)
    if args.action == "ls":
        try:
            width = max([14, *(len(str(cam["id"])) for cam in data)])  # (ids up to 64 characters)
            rows = [_ls_row(cam, width) for cam in data]
        except (TypeError, KeyError, ValueError):  # --api names another HTTP service
            return fail(f"ls: {redact_url(args.api)} did not answer with percept's camera list (is --api the graph's "
                        f"ingress?)", EXIT_UNAVAILABLE)
        for row in rows:
            print(row)
        if not rows:
            print("percept: cameras ls: no cameras (add one: percept cameras add ID URL)", file=sys.stderr)
    elif not isinstance(data, dict) or data.get("id") != args.id:  # what percept's API answers names the camera
        return fail(f"{args.action} {args.id}: {redact_url(args.api)} did not answer as percept's API does (HTTP "
                    f"{status}, no camera {args.id!r} in it): nothing is known to be done (is --api the graph's ingress?)",
                    EXIT_UNAVAILABLE)
    else:
        print(json.dumps(data))
    return 0
