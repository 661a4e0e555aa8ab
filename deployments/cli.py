"""The `percept` command: run, demo, subscribe, bench.

Exit codes: 0 ok; 2 invalid config or arguments (nothing was started); 3 a service the config
names is unreachable (Redis) or a model cannot be loaded; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Sequence

from pipeline.config import CONFIG_ERROR_EXIT_CODE, ConfigError, PerceptConfig, load_config, parse_config
from pipeline.redact import redact, redact_url

EXIT_UNAVAILABLE = 3
ENV_SAMPLE_VIDEOS = "PERCEPT_SAMPLE_VIDEOS"
log = logging.getLogger("percept")


def _fail(message: str, code: int) -> int:
    print(f"percept: {message}", file=sys.stderr)
    return code


# --- run / demo ------------------------------------------------------------------------------

def _redis_for(config: PerceptConfig, stack: ExitStack) -> PerceptConfig:
    """Use the configured Redis, or start a private redis-server for this run."""
    import redis

    from pipeline.publish import redis_from_config
    from pipeline.redis_server import EmbeddedRedis

    state = Path(config.state_dir)
    if config.redis.url is None:
        server = stack.enter_context(EmbeddedRedis(state / "redis", password=config.redis.password))
        config = config.model_copy(update={"redis": config.redis.model_copy(update={"url": server.url})})
        (state / "redis.url").write_text(server.url + "\n")
        stack.callback(lambda: (state / "redis.url").unlink(missing_ok=True))
        print(f"percept: private redis-server at {server.url} (data in {state / 'redis'})", flush=True)
    try:
        redis_from_config(config.redis).ping()
    except redis.RedisError as exc:
        raise _Unavailable(f"redis.url: cannot reach {redact_url(config.redis.url)}: {redact(str(exc))}") from None
    return config


class _Unavailable(RuntimeError):
    pass


def _check_models(config: PerceptConfig) -> None:
    """Load every model once in the driver before starting Ray: a missing file, a failed
    download or a model of the wrong task is a config error, reported before anything starts."""
    from pipeline.models import ModelError, load_yolo

    sections = [("detector", config.detector, "detect")]
    sections += [(f"classifiers.{c}", cc, "classify") for c, cc in config.classifiers.items()]
    errors = []
    for field, section, task in sections:
        try:
            load_yolo(section, models_dir=config.models_dir, field=f"{field}.weights", task=task)
        except ModelError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError(errors)


def _start_ray(address: str | None) -> None:
    import ray

    # "local" starts a private Ray even when a `ray start` cluster runs on this machine.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    env_vars = {k: v for k, v in os.environ.items() if k.startswith(("YOLO_", "PERCEPT_"))}
    ray.init(
        address=address,
        runtime_env={"env_vars": env_vars} if env_vars else None,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )


def run_graph(config: PerceptConfig, *, address: str | None, duration: float | None, monitor: bool) -> int:
    import ray
    from ray import serve

    from pipeline.publish import StreamKeys, redis_from_config

    from .graph import build_app

    with ExitStack() as stack:
        try:
            _check_models(config)
            config = _redis_for(config, stack)
        except ConfigError as exc:
            return _fail(str(exc), CONFIG_ERROR_EXIT_CODE)
        except _Unavailable as exc:
            return _fail(str(exc), EXIT_UNAVAILABLE)
        _start_ray(address)
        stack.callback(ray.shutdown)
        gpu = ray.cluster_resources().get("GPU", 0) > 0
        serve.start(
            proxy_location=config.http.proxy_location,
            http_options={"host": config.http.host, "port": config.http.port},
        )
        stack.callback(serve.shutdown)
        try:
            serve.run(
                build_app(config, gpu_available=gpu),
                name="percept",
                route_prefix="/",
                logging_config={"enable_access_log": False},
            )
        except Exception as exc:  # a replica that cannot start (model error) fails the deploy
            return _fail(f"deployment failed: {redact(str(exc))[-2000:]}", EXIT_UNAVAILABLE)
        print(f"percept: running {len(config.cameras)} camera(s); streams {config.redis.stream_prefix}:detections:<camera>", flush=True)
        client = redis_from_config(config.redis)
        return _monitor(client, StreamKeys(config.redis.stream_prefix), [c.id for c in config.cameras], duration, monitor)
    return 0


def _monitor(client: Any, keys: Any, cameras: list[str], duration: float | None, show: bool) -> int:
    """Until the duration ends or Ctrl-C: one live line per camera every second."""
    from pipeline.publish import camera_states

    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    deadline = time.monotonic() + duration if duration else None
    try:
        while not stop["flag"] and (deadline is None or time.monotonic() < deadline):
            time.sleep(1.0)
            if show:
                for line in status_lines(client, keys, cameras, camera_states(client, keys, cameras)):
                    print(line, flush=True)
    except KeyboardInterrupt:
        return 130
    return 0


def status_lines(client: Any, keys: Any, cameras: list[str], states: dict[str, dict[str, str]]) -> list[str]:
    lines = []
    for cam in cameras:
        st = states.get(cam, {})
        last = client.xrevrange(keys.detections(cam), count=1)
        counts: dict[str, int] = {}
        e2e = "-"
        if last:
            payload = json.loads(last[0][1][b"json"])
            for obj in payload["objects"]:
                counts[obj["category"]] = counts.get(obj["category"], 0) + 1
            e2e = f"{payload['latency_ms'].get('total', 0):.0f} ms"
        objs = " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"
        err = f"  error: {st['last_error']}" if st.get("last_error") and st.get("state") != "online" else ""
        lines.append(
            f"{cam:<12} {st.get('state', 'pending'):<12} {float(st.get('fps', 0)):5.1f} fps  "
            f"dropped {st.get('dropped', '0'):>4}  objects {objs:<28} e2e {e2e}{err}"
        )
    return lines


def demo_config(videos_dir: str | None, models_dir: str | None, state_dir: str) -> PerceptConfig:
    """Looping sample clips (or ultralytics' bundled images as still cameras) and the best
    detector/classifier found in the models folder."""
    cameras: list[dict[str, Any]] = []
    if videos_dir:
        for name, cam_id in (("traffic.mp4", "traffic"), ("vtest.avi", "pedestrians"), ("people.mp4", "crowd")):
            path = Path(videos_dir) / name
            if path.exists():
                cameras.append({"id": cam_id, "url": str(path), "fps": 4, "loop": True})
    if not cameras:
        from ultralytics.utils import ASSETS

        for name in ("bus.jpg", "zidane.jpg"):
            cameras.append({"id": Path(name).stem, "url": str(ASSETS / name), "fps": 2, "loop": True})
    mdir = Path(models_dir) if models_dir else None

    def pick(*names: str) -> str:
        for n in names:
            if mdir and (mdir / n).exists():
                return n
        return names[-1]

    return parse_config(
        {
            "cameras": cameras,
            "detector": {"weights": pick("yolo11n_int8_openvino_model", "yolo11n-coco.pt", "yolo11n.pt"), "imgsz": 640},
            "classifiers": {
                "vehicle": {
                    "weights": pick("yolov8n-cls-imagenet.pt", "yolov8n-cls.pt"),
                    "labels": ["minivan", "sports_car", "cab", "pickup", "police_van", "minibus", "school_bus",
                               "trolleybus", "jeep", "limousine", "convertible", "beach_wagon", "moving_van",
                               "ambulance", "fire_engine", "garbage_truck", "tow_truck", "trailer_truck", "moped",
                               "motor_scooter", "mountain_bike", "bicycle-built-for-two"],
                    "max_per_frame": 8,
                }
            },
            "models_dir": models_dir,
            "state_dir": state_dir,
        },
        env={},
    )


# --- build ---------------------------------------------------------------------------------

class _KeepUnset(dict):
    """An environment in which unset ``${VAR}`` stay as written (resolved later, on the cluster)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return os.environ.get(key, "${" + key + "}")


def _build(args: argparse.Namespace) -> int:
    import yaml

    from .build import serve_config

    path = Path(args.config)
    config = load_config(path, env=_KeepUnset())
    raw = yaml.safe_load(path.read_text()) or {}
    out = serve_config(raw, config, http_host=args.http_host or config.http.host,
                       http_port=args.http_port if args.http_port is not None else config.http.port)
    text = yaml.safe_dump(out, sort_keys=False)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"percept: wrote {args.output}; deploy with: serve deploy {args.output}", file=sys.stderr)
    return 0


# --- cameras -------------------------------------------------------------------------------

def _cameras(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    base = args.api.rstrip("/") + "/cameras"
    if args.action == "ls":
        req = urllib.request.Request(base)
    elif args.action == "add":
        body = json.dumps({"id": args.id, "url": args.url, "fps": args.fps, "loop": args.loop}).encode()
        req = urllib.request.Request(base, data=body, method="POST", headers={"Content-Type": "application/json"})
    else:
        req = urllib.request.Request(f"{base}/{args.id}", method="DELETE")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("detail", exc.reason)
        lines = detail if isinstance(detail, list) else [detail]
        return _fail(f"{args.action} {getattr(args, 'id', '')}: HTTP {exc.code}: " + "; ".join(map(str, lines)), 1)
    except (urllib.error.URLError, OSError) as exc:
        return _fail(f"cannot reach {args.api}: {exc}", EXIT_UNAVAILABLE)
    if args.action == "ls":
        for cam in data:
            lag = "-" if cam["lag_s"] is None else f"{cam['lag_s']:.1f} s"
            print(f"{cam['id']:<14} {cam['state']:<12} {cam['fps']:5.1f} fps  dropped {cam['dropped']:>5}  "
                  f"lag {lag:>7}  {cam['url']}")
    else:
        print(json.dumps(data))
    return 0


# --- subscribe -----------------------------------------------------------------------------

def _subscribe(args: argparse.Namespace) -> int:
    import redis

    from pipeline.publish import StreamKeys, connect_redis, redis_from_config
    from pipeline.subscribe import Subscriber

    url, prefix = args.redis, args.prefix
    redis_cfg = None
    if args.config:
        cfg = load_config(args.config)
        redis_cfg = cfg.redis
        prefix = prefix or cfg.redis.stream_prefix
        if not url:
            url = cfg.redis.url
            if not url:
                marker = Path(cfg.state_dir) / "redis.url"
                if not marker.exists():
                    return _fail(f"{args.config}: no redis.url and no running private server ({marker} missing)", EXIT_UNAVAILABLE)
                url = marker.read_text().strip()
    url = url or os.environ.get("PERCEPT_REDIS_URL") or "redis://127.0.0.1:6379/0"
    start = "0" if args.from_start else (args.from_id or "$")
    try:
        if redis_cfg is not None:
            client = redis_from_config(redis_cfg.model_copy(update={"url": url}))
        else:
            client = connect_redis(url)
        client.ping()
        sub = Subscriber(client, StreamKeys(prefix or "percept"), args.cameras, group=args.group,
                         consumer=args.consumer, start=start, claim_idle_ms=args.claim_idle_ms)
        for msg in sub.messages(limit=args.count, idle_timeout_s=args.timeout):
            print(json.dumps(msg.payload, separators=(",", ":")), flush=True)
            sub.ack(msg)
    except redis.RedisError as exc:
        return _fail(f"redis {redact_url(url)}: {redact(str(exc))}", EXIT_UNAVAILABLE)
    except KeyboardInterrupt:
        return 130
    return 0


# --- entry point ---------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="percept", description="Streaming video perception on Ray Serve → Redis Streams")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the graph for the cameras in a config file")
    run.add_argument("-c", "--config", required=True)
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--quiet", action="store_true", help="no live status lines")

    demo = sub.add_parser("demo", help="run on looping sample videos (PERCEPT_SAMPLE_VIDEOS) with live status")
    demo.add_argument("--duration", type=float)
    demo.add_argument("--state-dir", default=".percept")

    b = sub.add_parser("build", help="write a Ray Serve config for `serve deploy` / KubeRay")
    b.add_argument("-c", "--config", required=True)
    b.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    b.add_argument("--http-host", help="Serve HTTP bind address (default: http.host, 127.0.0.1)")
    b.add_argument("--http-port", type=int, help="default: http.port, 8000")

    cams = sub.add_parser("cameras", help="list, add or remove cameras of a running graph")
    cams.add_argument("--api", default=os.environ.get("PERCEPT_API", "http://127.0.0.1:8000"),
                      help="the graph's HTTP address (default: PERCEPT_API or http://127.0.0.1:8000)")
    cam_sub = cams.add_subparsers(dest="action", required=True)
    cam_sub.add_parser("ls", help="cameras with state, fps, drops and lag")
    add = cam_sub.add_parser("add", help="add a camera (takes effect within a few seconds)")
    add.add_argument("id")
    add.add_argument("url")
    add.add_argument("--fps", type=float, default=5.0)
    add.add_argument("--loop", action="store_true")
    rm = cam_sub.add_parser("rm", help="remove a camera")
    rm.add_argument("id")

    s = sub.add_parser("subscribe", help="print detection payloads as JSON lines")
    s.add_argument("cameras", nargs="+")
    s.add_argument("-c", "--config", help="read redis url/prefix from this config")
    s.add_argument("--redis", help="redis URL (default: config, PERCEPT_REDIS_URL, localhost)")
    s.add_argument("--prefix", help="stream prefix (default: config or 'percept')")
    s.add_argument("--group", help="consumer group (XREADGROUP + XACK)")
    s.add_argument("--consumer", help="consumer name within the group")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--from-start", action="store_true", help="from the oldest entry kept")
    g.add_argument("--from", dest="from_id", help="from after this entry id")
    s.add_argument("--count", type=int, help="stop after N messages")
    s.add_argument("--timeout", type=float, help="stop after S seconds without messages")
    s.add_argument("--claim-idle-ms", type=int, default=30_000, help="reclaim entries pending this long on dead consumers")

    from .bench import add_arguments as add_bench_arguments

    add_bench_arguments(sub.add_parser("bench", help="measure the graph against the bare model, Ultralytics and redis-benchmark"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["bench", "soak"]:  # a mode of its own, with its own options
        from .soak import add_arguments as add_soak_arguments, run_soak

        soak = argparse.ArgumentParser(prog="percept bench soak", description="long run: RSS, fds, drops, lag, exceptions")
        add_soak_arguments(soak)
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        os.environ.setdefault("YOLO_VERBOSE", "False")
        return run_soak(soak.parse_args(argv[2:]))
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("YOLO_VERBOSE", "False")
    try:
        if args.command == "run":
            return run_graph(load_config(args.config), address=args.address, duration=args.duration, monitor=not args.quiet)
        if args.command == "demo":
            cfg = demo_config(os.environ.get(ENV_SAMPLE_VIDEOS), os.environ.get("PERCEPT_MODELS_DIR"), args.state_dir)
            print("percept demo: cameras " + ", ".join(f"{c.id} ({Path(c.url).name})" for c in cfg.cameras), flush=True)
            return run_graph(cfg, address=None, duration=args.duration, monitor=True)
        if args.command == "subscribe":
            return _subscribe(args)
        if args.command == "build":
            return _build(args)
        if args.command == "cameras":
            return _cameras(args)
        if args.command == "bench":
            from .bench import run_bench

            return run_bench(args)
    except ConfigError as exc:
        return _fail(str(exc), CONFIG_ERROR_EXIT_CODE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
