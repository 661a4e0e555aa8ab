"""`percept bench`: the graph against its own limit and against Ultralytics, in one invocation.

Phases, in this order, on one machine (Ray-free helpers live in `benchmarks/measure.py`):

1. ``bare`` — the detector in this process on pre-decoded, pre-letterboxed frames of the clips at
   the configured batch size (``bare_fps``) and at batch 1 (one inference: ``single_infer_ms``).
2. ``ultralytics`` — ``YOLO(model).predict(source=<.streams>, stream=True)`` on the same RTSP
   URLs, in a subprocess with a timeout, before Ray starts (the machine is otherwise idle).
3. Ray and Serve start once; each of the following is a ``serve.run`` of the graph with its own
   cameras and its own stream prefix (fresh streams, leases and camera hashes), deleted after:
   ``e2e`` for every N in ``--cameras`` with cameras uncapped (``fps: 0``), counting XLEN growth
   over a window after a warm-up; ``detect-only``, the same without classifiers (what they cost);
   ``latency`` at ~50 % of the measured capacity; ``overload`` at ~3× capacity (RSS of every Ray
   process at the start and end of the window, lag, drops). Every window also records the CPU
   each process used and how much other processes on the machine took (noise).
4. ``publish`` — after Ray stops: `Publisher` on real payloads vs ``redis-benchmark`` XADD.

Cameras are the shared clips (PERCEPT_SAMPLE_VIDEOS) served as live RTSP cameras on loopback by
benchmarks/rtsp.py at ``--rtsp-fps`` (like real cameras, every frame is decoded; ``fps`` only
samples), or the files themselves with ``--source file``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pipeline.config import CONFIG_ERROR_EXIT_CODE, ConfigError, PerceptConfig

from . import measure as M
from . import processes as P
from . import report as R
from .harness import MAX_CAMERAS, Graph, fail, _base_config, _clips, _parse_counts, _phase_config, _say, start_services

log = logging.getLogger("percept.bench")

PHASES = ("bare", "ultralytics", "e2e", "detect-only", "latency", "overload", "publish")
REPO = Path(__file__).resolve().parents[1]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cameras", default="1,4", help="camera counts for the e2e phase (default 1,4); the largest "
                   "is used for Ultralytics, latency and overload")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds measured per phase (default 30; overload then runs 60)")
    p.add_argument("--overload-duration", type=float, default=None,
                   help="seconds of overload (default 60, or --duration when that is given)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before each window (default duration/3, 3..8)")
    p.add_argument("--model", help="detector weights: a path, a file in PERCEPT_MODELS_DIR or an ultralytics name "
                   "(default: the demo's, the OpenVINO INT8 YOLO11n when present)")
    p.add_argument("-c", "--config", help="take detector/classifier/decoder settings from this config (cameras and "
                   "redis are replaced)")
    p.add_argument("--source", choices=("rtsp", "file"), default="rtsp",
                   help="cameras: the clips over a loopback RTSP server (default) or the files")
    p.add_argument("--rtsp-fps", type=int, default=30, help="frame rate of each RTSP camera (default 30)")
    p.add_argument("--videos", help="folder with traffic.mp4, vtest.avi, people.mp4 (default PERCEPT_SAMPLE_VIDEOS)")
    p.add_argument("--skip", default="", help=f"comma-separated phases to skip: {','.join(PHASES)}")
    p.add_argument("--json", dest="json_out", help="write the results here (default: <state-dir>/bench/<time>-<host>.json; "
                   "pass benchmarks/results/<name>.json to commit a run on purpose)")
    p.add_argument("--state-dir", default=".percept", help="percept's state directory (default .percept)")
    p.add_argument("--profile", help="py-spy record every Serve replica during the largest e2e window into this "
                   "folder (raw collapsed stacks)")


def phase_bare(cfg: PerceptConfig, clips: list[Path], duration: float) -> tuple[dict[str, Any], list[Any]]:
    """The detector alone (same weights, imgsz, batch, threads) on pre-letterboxed clip frames."""
    import gc

    from pipeline.models import Detector, prepare_frame

    det = Detector.from_config(cfg.detector, models_dir=cfg.models_dir)
    frames = M.load_frames(clips, per_clip=8)
    inputs = [prepare_frame(f, cfg.detector.imgsz) for f in frames]
    batch = cfg.detector.batch.max_size
    single = M.measure_single_infer(det.detect_batch, inputs, duration=max(3.0, duration / 3))
    full = M.measure_bare(det.detect_batch, inputs, batch=batch, duration=duration)
    dets = det.detect_batch(inputs[: len(clips)])
    samples = []
    from pipeline.schema import FrameMeta, FrameResult

    for i, (inp, d) in enumerate(zip(inputs, dets)):  # payloads for the publish phase if e2e is skipped
        if not isinstance(d, Exception):
            h, w = inp.orig_shape
            samples.append(FrameResult(FrameMeta("bare", i, time.time(), 0.0, w, h), d,
                                       {"detector": det.name, "classifiers": {}},
                                       {"decode": 1.0, "queue": 1.0, "detect": 10.0, "classify": 0.0, "total": 12.0}))
    out = {"fps": full["fps"], "batch": batch, "batch_ms": full["batch_ms"], "frames": full["frames"],
           "seconds": full["seconds"], "batch1_fps": single["fps"], "single_infer_ms": single["ms"],
           "device": det.device, "half": det.half, "threads": cfg.detector.threads or max(1, int(round(cfg.detector.num_cpus)))}
    del det
    gc.collect()
    return out, samples


def phase_ultralytics(model: str, urls: list[str], cfg: PerceptConfig, *, duration: float, warmup: float,
                      workdir: Path) -> dict[str, Any]:
    streams = workdir / "bench.streams"
    streams.write_text("\n".join(urls) + "\n")
    cmd = [sys.executable, "-m", "benchmarks.measure", "ultralytics", "--model", model, "--streams", str(streams),
           "--imgsz", str(cfg.detector.imgsz), "--duration", str(duration), "--warmup", str(warmup),
           "--conf", str(cfg.detector.conf)]
    if cfg.detector.device != "auto":
        cmd += ["--device", cfg.detector.device]
    from pipeline.models import choose_device

    device, half = choose_device(cfg.detector.device, cfg.detector.half)
    if half:
        cmd += ["--half"]
    env = dict(os.environ, OPENCV_FFMPEG_CAPTURE_OPTIONS=M.RTSP_CAPTURE_OPTIONS)
    timeout = warmup + duration + 120
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"ultralytics predict did not finish within {timeout:.0f} s (killed)") from None
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            res["cameras"] = len(urls)
            return res
    raise RuntimeError(f"ultralytics predict failed (rc={out.returncode}): {out.stderr.strip()[-800:]}")


def phase_publish(redis_server: Any, samples: list[Any], *, n: int) -> dict[str, Any]:
    client = redis_server.client()
    pub = M.measure_publisher(client, samples, n=n)
    size = int(round(pub["payload_bytes_mean"]))
    rb = M.redis_benchmark_xadd(redis_server.port, payload_bytes=size, n=n, clients=1, pipeline=pub["batch"],
                                password=redis_server.password)
    rb_default = M.redis_benchmark_xadd(redis_server.port, payload_bytes=size, n=n, clients=50, pipeline=16,
                                        password=redis_server.password, key="benchrb50")
    return {"publisher": pub, "redis_benchmark": rb, "redis_benchmark_50_clients": rb_default}


# --- orchestration ---------------------------------------------------------------------------

def _capacity(result: dict[str, Any], n_max: int) -> float | None:
    e2e = (result.get("e2e") or {}).get(str(n_max))
    if e2e and e2e.get("fps"):
        return float(e2e["fps"])
    return result.get("bare_fps")


def run_bench(args: argparse.Namespace) -> int:
    from pipeline.schema import FrameResult

    from pipeline.models import check_models as _check_models

    try:
        counts = _parse_counts(args.cameras)
        skip = {s.strip() for s in args.skip.split(",") if s.strip()}
        unknown = skip - set(PHASES)
        if unknown:
            raise ConfigError([f"--skip: unknown phase(s) {sorted(unknown)}; phases are {', '.join(PHASES)}"])
        clips = _clips(args)
    except ConfigError as exc:
        return fail(str(exc), CONFIG_ERROR_EXIT_CODE)
    duration = args.duration if args.duration is not None else 30.0
    overload_s = args.overload_duration or (args.duration if args.duration is not None else 60.0)
    warmup = args.warmup if args.warmup is not None else min(8.0, max(3.0, duration / 3))
    n_max = counts[-1]
    os.environ.setdefault("YOLO_VERBOSE", "False")
    t_start = time.monotonic()

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="percept-bench-")))
        try:
            base = _base_config(args, str(workdir / "state"))
            _check_models(base)
        except ConfigError as exc:
            return fail(str(exc), CONFIG_ERROR_EXIT_CODE)
        from pipeline.models import choose_device, model_name, resolve_weights

        weights = resolve_weights(base.detector.weights, base.models_dir)
        device, _ = choose_device(base.detector.device, base.detector.half)
        result: dict[str, Any] = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": args.source,
            "cameras": counts,
            "duration_s": duration,
            "overload_duration_s": overload_s,
            "rtsp_fps": args.rtsp_fps if args.source == "rtsp" else None,
            "machine": R.machine_info(model=model_name(base.detector), imgsz=base.detector.imgsz,
                                      batch=base.detector.batch.max_size, device=device),
            "config": {"detector": base.detector.model_dump(mode="json"),
                       "classifiers": {k: v.model_dump(mode="json") for k, v in base.classifiers.items()},
                       "decoder": base.decoder.model_dump(mode="json")},
            "skipped": sorted(skip, key=PHASES.index),
            "errors": {},
        }
        redis_server, cams = start_services(stack, args, clips, workdir)
        client = redis_server.client()
        samples: list[Any] = []

        def attempt(name: str, fn: Callable[[], None]) -> None:
            if name in skip:
                return
            _say(f"{name} …")
            t = time.monotonic()
            try:
                fn()
            except Exception as exc:  # one failing phase must not lose the others' numbers
                log.debug("phase %s failed", name, exc_info=True)
                result["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
                _say(f"{name} FAILED: {exc}")
            else:
                _say(f"{name} done in {time.monotonic() - t:.0f} s")

        def bare() -> None:
            cpu = P.CpuMeter().start()
            out, s = phase_bare(base, clips, duration)
            out["cpu"] = cpu.stop()
            samples.extend(s)
            result["bare"] = out
            result["bare_fps"] = out["fps"]
            result["single_infer_ms"] = out["single_infer_ms"]["p50"]

        def ultra() -> None:
            urls = [cams.url(i) for i in range(n_max)]
            cpu = P.CpuMeter().start()
            res = phase_ultralytics(weights, urls, base, duration=duration, warmup=warmup, workdir=workdir)
            res["cpu"] = cpu.stop()
            result["ultralytics"] = res
            result["ultralytics_fps"] = res["fps"]

        attempt("bare", bare)
        attempt("ultralytics", ultra)

        ray_phases = [p for p in ("e2e", "detect-only", "latency", "overload") if p not in skip]
        if ray_phases:
            with ExitStack() as ray_stack:
                graph: Graph | None = None
                try:
                    _say("starting Ray and Serve …")
                    graph = Graph(ray_stack, client)
                    result["ray_startup_s"] = graph.startup_s
                except Exception as exc:
                    for p in ray_phases:
                        result["errors"][p] = f"Ray/Serve did not start: {exc}"
                if graph is not None:
                    g = graph

                    def e2e() -> None:
                        result["e2e"] = {}
                        for n in counts:
                            cfg = _phase_config(base, redis_url=redis_server.url, prefix=f"e2e{n}",
                                                cameras=cams.entries(n, fps=0, realtime=False))
                            prof = Path(args.profile) if args.profile and n == n_max else None
                            ph = g.phase(cfg, duration=duration, warmup=warmup, profile_dir=prof)
                            samples[:0] = [FrameResult.from_json(s) for s in ph.pop("payload_samples")]
                            result["e2e"][str(n)] = ph
                            _say(f"  {n} camera(s): {ph['fps']:.1f} fps published, {ph['offered_fps']:.1f} offered")
                        result["e2e_fps"] = result["e2e"][str(n_max)]["fps"]

                    def detect_only() -> None:
                        # The same graph without classifiers: separates their cost from Serve's.
                        cfg = _phase_config(base, redis_url=redis_server.url, prefix=f"det{n_max}", classifiers=False,
                                            cameras=cams.entries(n_max, fps=0, realtime=False))
                        ph = g.phase(cfg, duration=duration, warmup=warmup)
                        ph.pop("payload_samples")
                        result["e2e_detect_only"] = {str(n_max): ph}
                        result["e2e_detect_only_fps"] = ph["fps"]

                    def latency() -> None:
                        cap = _capacity(result, n_max)
                        if not cap:
                            raise RuntimeError("no capacity measured (e2e and bare both missing)")
                        fps = min(0.5 * cap / n_max, cams.rate)
                        cfg = _phase_config(base, redis_url=redis_server.url, prefix="latency",
                                            cameras=cams.entries(n_max, fps=fps, realtime=True))
                        ph = g.phase(cfg, duration=duration, warmup=warmup)
                        ph.pop("payload_samples")
                        ph["capacity_fps"] = cap
                        result["latency"] = ph
                        result["latency_ms"] = ph["latency_ms"]

                    def overload() -> None:
                        cap = _capacity(result, n_max)
                        if not cap:
                            raise RuntimeError("no capacity measured (e2e and bare both missing)")
                        target = 3 * cap
                        n = min(MAX_CAMERAS, max(n_max, math.ceil(target / (0.9 * cams.rate))))
                        fps = target / n
                        fps = 0 if fps >= 0.95 * cams.rate else fps
                        cfg = _phase_config(base, redis_url=redis_server.url, prefix="overload",
                                            cameras=cams.entries(n, fps=fps, realtime=True))
                        ph = g.phase(cfg, duration=overload_s, warmup=warmup)
                        ph.pop("payload_samples")
                        graph_procs = [p for p in ph["processes"] if P.is_graph_process(p["name"]) and p["growth_pct"] is not None]
                        total = R.ratio(sum(p["end_mb"] for p in graph_procs), sum(p["start_mb"] for p in graph_procs))
                        result["overload"] = {
                            "capacity_fps": cap,
                            "cameras": n,
                            "camera_fps": fps,
                            "offered_fps": ph["offered_fps"],
                            "offered_over_capacity": R.ratio(ph["offered_fps"], cap),
                            "published_fps": ph["fps"],
                            "lag_p99_s": ph["lag_s"]["p99"],
                            "lag_s": ph["lag_s"],
                            "lag_max_s": ph["lag_max_s"],
                            "dropped_per_s": ph["dropped_per_s"],
                            "rss": [{k: p.get(k) for k in ("name", "pid", "start_mb", "end_mb", "growth_pct",
                                                           "second_half_mb_per_min", "threads_start", "threads_end")}
                                    for p in ph["processes"]],
                            "rss_growth_max_pct": max((p["growth_pct"] for p in graph_procs), default=None),
                            "rss_growth_max_process": max(graph_procs, key=lambda p: p["growth_pct"])["name"] if graph_procs else None,
                            "rss_growth_graph_total_pct": (total - 1) * 100 if total else None,
                            "seconds": ph["seconds"],
                            "detail": ph,
                        }

                    attempt("e2e", e2e)
                    if base.classifiers:
                        attempt("detect-only", detect_only)
                    attempt("latency", latency)
                    attempt("overload", overload)
                    _say("stopping Ray …")

        def publish() -> None:
            if not samples:
                raise RuntimeError("no payloads to publish (bare and e2e both skipped or failed)")
            result["publish"] = phase_publish(redis_server, samples[:200], n=20_000)

        attempt("publish", publish)

    # --- ratios and goals ---------------------------------------------------------------------
    result["p1_e2e_over_bare"] = R.ratio(result.get("e2e_fps"), result.get("bare_fps"))
    result["p1_detect_only_over_bare"] = R.ratio(result.get("e2e_detect_only_fps"), result.get("bare_fps"))
    result["p2_e2e_over_ultralytics"] = R.ratio(result.get("e2e_fps"), result.get("ultralytics_fps"))
    result["p3_p50_over_single_infer"] = R.ratio((result.get("latency_ms") or {}).get("p50"), result.get("single_infer_ms"))
    result["p5_publish_over_redis_benchmark"] = R.ratio(
        R.value_of(result, "publish.publisher.entries_per_s"), R.value_of(result, "publish.redis_benchmark.rps"))
    result["goals"] = R.goals(result)
    result["wall_s"] = time.monotonic() - t_start
    for key in ("bare_fps", "e2e_fps", "ultralytics_fps", "latency_ms", "overload", "single_infer_ms"):
        result.setdefault(key, None)
    result = R.rounded(result)
    text = json.dumps(result, indent=2)
    written = R.write_results(text, args.json_out, args.state_dir, result["machine"]["host"])
    print(R.format_table(result), flush=True)
    if result["errors"]:
        print("errors: " + "; ".join(f"{k}: {v[:300]}" for k, v in result["errors"].items()), flush=True)
    print(f"results: {written}", flush=True)
    return 1 if result["errors"] else 0
