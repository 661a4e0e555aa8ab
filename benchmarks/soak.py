"""`percept bench soak`: many cameras for a long time; RSS and open fds per process over time,
dropped frames, lag p99 and exceptions in the replicas' logs. A command, not a CI test."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pipeline.config import CONFIG_ERROR_EXIT_CODE, ConfigError

from . import measure as M
from . import processes as P
from . import report as R
from .bench_run import _interrupt
from .harness import (
    APP,
    Graph,
    _base_config,
    _clips,
    _phase_config,
    _say,
    add_rtsp_encode,
    dropped_between,
    fail,
    ray_cpus_for,
    start_services,
)


def add_arguments(p: argparse.ArgumentParser, number_arg: Callable[..., Callable[[str], Any]],
                  output_file: Callable[[str], str] = str) -> None:
    """``number_arg``: the CLI's bounded-number option type (cli/common.py; benchmarks/ does not
    import cli/): exit 2 naming the option (--cameras 0 gave an empty result); ``output_file``:
    its output-file type, so that a ``--json`` that cannot be written fails before the run."""
    day = 86_400.0
    p.add_argument("--cameras", type=number_arg(int, 1, 256), default=8,
                   help="cameras, 1 to 256 (default 8, cycling over the clips)")
    p.add_argument("--duration", type=number_arg(float, 1.0, 30 * day), default=600,
                   help="seconds after warm-up, 1 to 30 days (default 600)")
    p.add_argument("--warmup", type=number_arg(float, 0.0, day), default=60,
                   help="seconds before the first sample (default 60)")
    p.add_argument("--fps", type=number_arg(float, 0.1, 240.0), default=5,
                   help="frames sampled per camera per second, 0.1 to 240 (default 5)")
    p.add_argument("--interval", type=number_arg(float, 0.1, day), default=30,
                   help="seconds between samples (default 30)")
    p.add_argument("--model", help="detector weights (default: the demo's)")
    p.add_argument("-c", "--config", help="detector/classifier/decoder settings from this config")
    p.add_argument("--source", choices=("rtsp", "file"), default="rtsp")
    p.add_argument("--rtsp-fps", type=number_arg(int, 1, 240), default=15,
                   help="--source rtsp: frame rate of each RTSP camera (default 15)")
    add_rtsp_encode(p)
    p.add_argument("--videos", help="folder with the clips (default PERCEPT_SAMPLE_VIDEOS)")
    p.add_argument("--json", dest="json_out", type=output_file, help="write the results here (default: <state-dir>/bench/<time>-<host>-soak.json)")
    p.add_argument("--state-dir", default=".percept", help="percept's state directory (default .percept)")


def _sample(client: Any, streams: list[str]) -> dict[str, Any]:
    import psutil

    procs = {}
    for pid, p in P.process_stats().items():
        try:
            fds = psutil.Process(pid).num_fds()
        except psutil.Error:
            fds = None
        name = p["name"].replace(f"ray::ServeReplica:{APP}:", "replica:")
        procs[f"{name}[{pid}]"] = {"rss_mb": round(p["rss_mb"], 1), "fds": fds, "threads": p["threads"]}
    return {"t": time.time(), "published": _published(client, streams), "processes": procs}


def _published(client: Any, streams: list[str]) -> int:
    """Entries ever added to the streams (XINFO STREAM ``entries-added``, Redis 7): their length
    stops growing at ``redis.maxlen`` (XADD MAXLEN ~), hours into a soak. A stream not made yet: 0."""
    pipe = client.pipeline(transaction=False)
    for s in streams:
        pipe.xinfo_stream(s)
    total = 0
    for info in pipe.execute(raise_on_error=False):
        if isinstance(info, Exception):
            if "no such key" not in str(info).lower():
                raise info
            continue
        if "entries-added" not in info:
            raise RuntimeError("the soak counts entries with XINFO STREAM's entries-added: Redis 7 or later")
        total += int(info["entries-added"])
    return total


TAP_KEEP = 10_000  # payloads the soak keeps for its latency and lag percentiles (~25 MB): a uniform sample


def _tap(client: Any, streams: list[str]) -> M.StreamTap:
    """The soak's reader of the streams: bounded (it kept every payload, GBs a day)."""
    return M.StreamTap(client, streams, keep=TAP_KEEP)


def _start_graph(stack: ExitStack, client: Any, cfg: Any) -> None:
    """Ray, Serve and the graph on the cluster's GPU when it has one (as `Graph.phase`), our
    SIGTERM handler put back after ray.init installed its own (as `Bench._our_sigterm`)."""
    from ray import serve

    from deployments.graph import build_app

    ours = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    g = Graph(stack, client, num_cpus=ray_cpus_for(cfg))
    if callable(ours):
        signal.signal(signal.SIGTERM, ours)
    serve.run(build_app(cfg, gpu_available=g.gpu), name=APP, route_prefix="/",
              logging_config={"enable_access_log": False})
    stack.callback(serve.delete, APP)


def _exceptions_in_ray_logs() -> dict[str, int]:
    """Tracebacks in this Ray session's replica and worker logs (0 is the goal)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    counts: dict[str, int] = {}
    for f in logs.rglob("*"):
        if f.is_file() and re.search(r"(serve|worker).*\.(log|err|out)$", f.name):
            n = f.read_text(errors="replace").count("Traceback (most recent call last)")
            if n:
                counts[f.name] = n
    return counts


def run_soak(args: argparse.Namespace) -> int:
    from pipeline.backends.checks import check_models as _check_models
    from pipeline.streams import StreamKeys, camera_states

    try:
        clips = _clips(args)
        with ExitStack() as stack:
            if threading.current_thread() is threading.main_thread():  # SIGTERM unwinds: the redis-server and
                stack.callback(signal.signal, signal.SIGTERM, signal.signal(signal.SIGTERM, _interrupt))  # RTSP server go
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="percept-soak-")))
            base = _base_config(args, str(workdir / "state"))
            _check_models(base)
            redis_server, cams = start_services(stack, args, clips, workdir)
            client = redis_server.client()
            cfg = _phase_config(base, redis_url=redis_server.url, prefix="soak",
                                cameras=cams.entries(args.cameras, fps=args.fps))
            keys = StreamKeys("soak")
            ids = [c.id for c in cfg.cameras]
            streams = [keys.detections(c) for c in ids]
            _say("starting Ray and Serve …")
            _start_graph(stack, client, cfg)
            _say(f"{args.cameras} cameras at {args.fps} fps; warm-up {args.warmup:.0f} s, then {args.duration:.0f} s")
            time.sleep(args.warmup)
            tap = _tap(client, streams).start()
            stack.callback(tap.stop)  # (also when interrupted: it read Redis while the stack unwound)
            st0 = camera_states(client, keys, ids)
            timeline = [_sample(client, streams)]
            end = time.monotonic() + args.duration
            while (left := end - time.monotonic()) > 0:
                time.sleep(min(args.interval, left))
                timeline.append(_sample(client, streams))
                last = timeline[-1]
                _say(f"  t+{last['t'] - timeline[0]['t']:.0f} s: {last['published'] - timeline[0]['published']} published")
            st1 = camera_states(client, keys, ids)
            entries = tap.stop()
            exceptions = _exceptions_in_ray_logs()
    except ConfigError as exc:
        return fail(str(exc), CONFIG_ERROR_EXIT_CODE)
    result = _soak_result(args, base, timeline, entries, tap.seen, dropped=dropped_between(st0, st1, ids), exceptions=exceptions)
    text = json.dumps(R.rounded(result), indent=1)
    out = R.write_results(text, args.json_out, args.state_dir, os.uname().nodename, "soak")
    _say(f"wrote {out}")
    worst, growth = result["worst_rss_growth"], result["processes"].values()
    print(f"soak: {args.cameras} cameras, {result['duration_s']:.0f} s: {result['published_fps']:.1f} fps published, "
          f"{result['dropped_per_s']:.2f} dropped/s, lag p99 {result['lag_p99_s']} s, "
          f"worst graph RSS growth {worst.get('rss_growth_pct')} % ({worst['process']}), "
          f"fds {sum((g['fds_start'] or 0) for g in growth)} → {sum((g['fds_end'] or 0) for g in growth)}, "
          f"exceptions {result['exceptions_total']}")
    return 0


def _rss_growth(timeline: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each process's RSS and open fds at the first and the last sample."""
    growth = {}
    for name, first in timeline[0]["processes"].items():
        last = timeline[-1]["processes"].get(name)
        if last is None or not first["rss_mb"]:
            continue
        growth[name] = {
            "rss_start_mb": first["rss_mb"], "rss_end_mb": last["rss_mb"],
            "rss_growth_pct": round(100 * (last["rss_mb"] / first["rss_mb"] - 1), 2),
            "fds_start": first["fds"], "fds_end": last["fds"],
        }
    return growth


def _graph_process(name: str) -> bool:
    """A `_sample` name (``replica:…[pid]``, ``raylet[pid]``) of a process whose memory must stay
    flat (`processes.is_graph_process`): not redis-server (the streams, by design), the RTSP
    server or the bench itself."""
    label = name.rsplit("[", 1)[0]
    return label.startswith("replica:") or P.is_graph_process(label)


def _worst_rss_growth(growth: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The graph's process whose RSS grew most (as the overload phase's ``rss_growth_max_pct``)."""
    graph = [kv for kv in growth.items() if _graph_process(kv[0])]
    worst = max(graph, key=lambda kv: kv[1]["rss_growth_pct"]) if graph else (None, {})
    return {"process": worst[0], **worst[1]}


def _soak_result(args: argparse.Namespace, base: Any, timeline: list[dict[str, Any]], entries: list[Any],
                 seen: int, *, dropped: float, exceptions: dict[str, int]) -> dict[str, Any]:
    """``entries``: a uniform sample of the ``seen`` entries the tap read (`TAP_KEEP`)."""
    t0, t1 = timeline[0]["t"], timeline[-1]["t"]
    summary = M.StreamTap.summarize(entries, t0, t1)
    growth = _rss_growth(timeline)
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cameras": args.cameras, "fps_per_camera": args.fps, "duration_s": t1 - t0, "warmup_s": args.warmup,
        "source": args.source, **({"rtsp_fps": args.rtsp_fps, "rtsp_encode": args.rtsp_encode} if args.source == "rtsp" else {}),
        "machine": R.machine_info(model=Path(base.detector.weights).name, imgsz=base.detector.imgsz,
                                  batch=base.detector.batch.max_size, device=base.detector.device),
        "published_fps": (timeline[-1]["published"] - timeline[0]["published"]) / (t1 - t0),
        "dropped_per_s": dropped / (t1 - t0),
        "lag_p99_s": summary["lag_s"]["p99"],
        "latency_ms": summary["latency_ms"],
        "latency_sampled_entries": {"kept": len(entries), "seen": seen},
        "exceptions": exceptions, "exceptions_total": sum(exceptions.values()),
        "worst_rss_growth": _worst_rss_growth(growth),
        "processes": growth,
        "timeline": timeline,
    }
