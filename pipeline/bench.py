"""Ray-free measurement helpers for `percept bench` (the graph-running part is deployments/bench.py).

- `measure_bare`: the detector alone, in this process, on pre-decoded, pre-letterboxed frames at
  the configured batch size (the upper bound of the graph), and `measure_single_infer` (one frame,
  batch 1: the latency floor).
- `StreamTap`: reads the detection streams while a phase runs (XREAD BLOCK) and records when
  each entry became visible, so capture→XADD lag is measured from outside the graph.
- `process_stats` / `compare_processes`: RSS and CPU time of the Ray workers, redis-server and the
  RTSP server, by pid, so a phase reports memory growth and where the CPU went.
- `measure_publisher` / `redis_benchmark_xadd`: the `Publisher` on real payloads against
  `redis-benchmark` sending the same XADD on the same server.
- `run_ultralytics`: `YOLO(model).predict(source=<.streams file>, stream=True)`; run it as
  ``python -m pipeline.bench ultralytics …`` in a subprocess (a stream that hangs cannot block
  the bench), it prints one JSON line.
- `goals`, `format_table`, `machine_info`: what the bench reports.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

# name → (comparison, target); `value_of(result, name)` finds the value.
GOALS: dict[str, tuple[str, float]] = {
    "p1_e2e_over_bare": (">=", 0.90),
    "p2_e2e_over_ultralytics": (">=", 1.3),
    "p3_p50_over_single_infer": ("<=", 1.5),
    "overload.lag_p99_s": ("<", 1.0),
    "overload.rss_growth_max_pct": ("<", 5.0),
    "p5_publish_over_redis_benchmark": (">=", 0.5),
}

CLIPS = ("traffic.mp4", "vtest.avi", "people.mp4")
# What percept's decoder sets for RTSP (pipeline/sources.py); the Ultralytics run gets the same.
RTSP_CAPTURE_OPTIONS = "rtsp_transport;tcp|analyzeduration;0|probesize;32"


# --- small numbers -------------------------------------------------------------------------------

def percentiles(values: Iterable[float], ps: Sequence[float] = (50, 95, 99)) -> dict[str, float | None]:
    """``{"p50": …, "p95": …, "p99": …}`` (None when there are no values)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {f"p{p:g}": None for p in ps}
    return {f"p{p:g}": float(np.percentile(arr, p)) for p in ps}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or not math.isfinite(a) or not math.isfinite(b):
        return None
    return a / b


def rounded(obj: Any, digits: int = 4) -> Any:
    """Round floats in nested JSON-like data (results stay readable)."""
    if isinstance(obj, float):
        return round(obj, digits) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


# --- the bare model ------------------------------------------------------------------------------

def load_frames(paths: Sequence[str | Path], *, per_clip: int = 8, stride: int = 7) -> list[np.ndarray]:
    """Decoded BGR frames from each clip (every ``stride``-th frame), in round-robin order."""
    import cv2

    per: list[list[np.ndarray]] = []
    for path in paths:
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        frames: list[np.ndarray] = []
        index = 0
        try:
            while len(frames) < per_clip:
                ok, image = cap.read()
                if not ok or image is None:
                    break
                if index % stride == 0:
                    frames.append(image)
                index += 1
        finally:
            cap.release()
        if frames:
            per.append(frames)
    out = [clip[i] for i in range(per_clip) for clip in per if i < len(clip)]
    if not out:
        raise RuntimeError(f"no frames could be decoded from {[str(p) for p in paths]}")
    return out


def measure_bare(detect_batch: Callable[[list[Any]], list[Any]], inputs: Sequence[Any], *, batch: int,
                 duration: float, warmup_batches: int = 2) -> dict[str, Any]:
    """Frames per second of ``detect_batch`` on full batches of ``inputs`` (cycled) for ``duration``."""
    if not inputs:
        raise ValueError("no inputs")
    batch = max(1, batch)

    def take(i: int) -> list[Any]:
        return [inputs[(i * batch + k) % len(inputs)] for k in range(batch)]

    for i in range(warmup_batches):
        detect_batch(take(i))
    times: list[float] = []
    frames, i = 0, 0
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        out = detect_batch(take(i))
        times.append(time.perf_counter() - t0)
        errors = [o for o in out if isinstance(o, Exception)]
        if errors:
            raise RuntimeError(f"bare detector failed: {errors[0]}")
        frames += batch
        i += 1
        if time.perf_counter() - start >= duration:
            break
    elapsed = time.perf_counter() - start
    return {"fps": frames / elapsed, "batch": batch, "frames": frames, "seconds": elapsed,
            "batch_ms": percentiles([t * 1000 for t in times])}


def measure_single_infer(detect_batch: Callable[[list[Any]], list[Any]], inputs: Sequence[Any], *,
                         duration: float) -> dict[str, Any]:
    """One frame at a time (batch 1): the time one inference takes, the floor of any latency."""
    r = measure_bare(detect_batch, inputs, batch=1, duration=duration)
    return {"ms_p50": r["batch_ms"]["p50"], "ms": r["batch_ms"], "fps": r["fps"], "frames": r["frames"]}


# --- reading the streams from outside ------------------------------------------------------------

@dataclass
class TapEntry:
    stream: str
    entry_id: str
    seen: float  # wall time when XREAD returned it
    raw: bytes  # the json field, parsed later (keeps the reader cheap)


class StreamTap:
    """A thread doing ``XREAD BLOCK`` on the given streams from "now" on, recording each entry
    with the time it became visible (≈ its XADD time on loopback)."""

    def __init__(self, client: Any, streams: Sequence[str], *, block_ms: int = 200):
        self.client = client
        self.streams = list(streams)
        self.block_ms = block_ms
        self.entries: list[TapEntry] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-tap", daemon=True)

    def start(self) -> "StreamTap":
        self._ids = {s: "$" for s in self.streams}
        # Resolve "$" to the current last ids now, so entries added before the first XREAD count.
        for s in self.streams:
            last = self.client.xrevrange(s, count=1)
            if last:
                self._ids[s] = last[0][0].decode() if isinstance(last[0][0], bytes) else last[0][0]
            else:
                self._ids[s] = "0-0"
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                resp = self.client.xread(self._ids, count=1000, block=self.block_ms)
            except Exception:
                self.errors += 1
                time.sleep(0.1)
                continue
            now = time.time()
            for stream, entries in resp or []:
                name = stream.decode() if isinstance(stream, bytes) else stream
                for entry_id, fields in entries:
                    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    self._ids[name] = eid
                    self.entries.append(TapEntry(name, eid, now, fields.get(b"json", b"{}")))

    def stop(self) -> list[TapEntry]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.entries

    @staticmethod
    def summarize(entries: Sequence[TapEntry], t0: float, t1: float) -> dict[str, Any]:
        """Latency (payload ``latency_ms.total``: capture → publish), lag (seen − frame_ts, s) and
        the per-stage breakdown of the entries seen in [t0, t1]."""
        totals, lags = [], []
        stages: dict[str, list[float]] = {}
        n = objects = classified = 0
        for e in entries:
            if not t0 <= e.seen <= t1:
                continue
            n += 1
            p = json.loads(e.raw)
            lat = p.get("latency_ms", {})
            if "total" in lat:
                totals.append(float(lat["total"]))
            for k, v in lat.items():
                stages.setdefault(k, []).append(float(v))
            lags.append(e.seen - float(p["frame_ts"]))
            objs = p.get("objects", [])
            objects += len(objs)
            classified += sum(1 for o in objs if o.get("attributes"))
        return {
            "entries": n,
            "objects_per_frame": objects / n if n else None,
            "classified_per_frame": classified / n if n else None,
            "latency_ms": percentiles(totals),
            "lag_s": percentiles(lags),
            "lag_max_s": max(lags) if lags else None,
            "stages_ms_p50": {k: percentiles(v, (50,))["p50"] for k, v in stages.items()},
            "stages_ms_p95": {k: percentiles(v, (95,))["p95"] for k, v in stages.items()},
        }


# --- processes -----------------------------------------------------------------------------------

def bench_process_name(cmdline: Sequence[str], name: str) -> str:
    """A stable label: Ray's workers as ``ray::ServeReplica:app:detector`` (Ray appends the method
    it is running, ``….handle_request``; that part is dropped), ``rtsp_server`` for the RTSP test
    server, else the process name."""
    first = cmdline[0] if cmdline else ""
    if first.startswith("ray::"):
        title = first.split()[0]
        head, _, tail = title.rpartition(":")
        return f"{head}:{tail.split('.')[0]}" if head else title.split(".")[0]
    if any(part.endswith("rtsp_server.py") for part in cmdline[:3]):
        return "rtsp_server"
    if name.startswith("python"):  # Ray's helpers (log_monitor.py, …), the Ultralytics run
        script = next((Path(a).name for a in cmdline[1:4] if a.endswith(".py")), None)
        module = next((cmdline[i + 1] for i, a in enumerate(cmdline[:-1]) if a == "-m"), None)
        return script or module or name
    return name


def is_graph_process(label: str) -> bool:
    """Processes whose memory must stay flat: Ray's workers and daemons (redis-server's grows with
    the streams by design, up to MAXLEN; the RTSP server is the test camera)."""
    return (label.startswith("ray::") and label != "ray::IDLE") or label in ("raylet", "gcs_server")


def process_stats(root: int | None = None) -> dict[int, dict[str, Any]]:
    """pid → {name, rss_mb, cpu_s} of ``root`` (default: this process) and all its descendants —
    Ray's daemons and workers, redis-server and the RTSP server when the bench started them —
    and never other users' processes on a shared machine."""
    import psutil

    try:
        top = psutil.Process(root or os.getpid())
        procs = [top, *top.children(recursive=True)]
    except psutil.Error:
        return {}
    out: dict[int, dict[str, Any]] = {}
    for proc in procs:
        try:
            with proc.oneshot():
                label = "bench" if proc.pid == top.pid else bench_process_name(proc.cmdline(), proc.name())
                ct = proc.cpu_times()  # children_*: reaped children (an exited subprocess) count too
                cpu = ct.user + ct.system + getattr(ct, "children_user", 0.0) + getattr(ct, "children_system", 0.0)
                out[proc.pid] = {"name": label, "rss_mb": proc.memory_info().rss / 2**20, "cpu_s": cpu,
                                 "threads": proc.num_threads(), "t": time.monotonic()}
        except psutil.Error:
            continue
    return out


class CpuMeter:
    """Machine-wide CPU busy time between `start` and `stop`, and how much of it this process tree
    used: ``foreign_pct`` is what other processes on the machine took (noise on a shared host)."""

    def start(self) -> "CpuMeter":
        import psutil

        self._sys0 = _busy(psutil.cpu_times())
        self._tree0 = process_stats()
        self._t0 = time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        import psutil

        dt = time.monotonic() - self._t0
        busy = (_busy(psutil.cpu_times()) - self._sys0) / dt * 100
        tree1 = process_stats()
        own = sum(tree1[p]["cpu_s"] - s["cpu_s"] for p, s in self._tree0.items() if p in tree1) / dt * 100
        return {"machine_busy_pct": busy, "bench_tree_pct": own, "foreign_pct": max(0.0, busy - own),
                "capacity_pct": 100.0 * (os.cpu_count() or 1)}


def _busy(ct: Any) -> float:
    idle = ct.idle + getattr(ct, "iowait", 0.0)
    return sum(ct) - idle - getattr(ct, "guest", 0.0) - getattr(ct, "guest_nice", 0.0)


def compare_processes(start: Mapping[int, Mapping[str, Any]], end: Mapping[int, Mapping[str, Any]],
                      samples: Sequence[Mapping[int, Mapping[str, Any]]] = ()) -> list[dict[str, Any]]:
    """Per process seen at the start: RSS start/end, growth %, CPU % (of one core) in between, and,
    given intermediate ``samples``, the RSS trend over the second half of the window (MB/min: a
    leak keeps growing, allocator warm-up flattens out)."""
    rows = []
    for pid, s in sorted(start.items(), key=lambda kv: kv[1]["name"]):
        e = end.get(pid)
        row: dict[str, Any] = {"pid": pid, "name": s["name"], "start_mb": s["rss_mb"], "end_mb": None,
                               "growth_pct": None, "cpu_pct": None, "threads_start": s.get("threads"), "threads_end": None}
        if e is not None:
            row["end_mb"] = e["rss_mb"]
            row["threads_end"] = e.get("threads")
            row["growth_pct"] = (e["rss_mb"] / s["rss_mb"] - 1) * 100 if s["rss_mb"] else None
            dt = e["t"] - s["t"]
            row["cpu_pct"] = (e["cpu_s"] - s["cpu_s"]) / dt * 100 if dt > 0 else None
            series = [(x[pid]["t"], x[pid]["rss_mb"]) for x in (start, *samples, end) if pid in x]
            if len(series) >= 4:
                t_mid = (series[0][0] + series[-1][0]) / 2
                half = [(t, m) for t, m in series if t >= t_mid]
                if len(half) >= 2 and half[-1][0] > half[0][0]:
                    ts, ms = np.array([h[0] for h in half]), np.array([h[1] for h in half])
                    row["second_half_mb_per_min"] = float(np.polyfit(ts - ts[0], ms, 1)[0] * 60)
        rows.append(row)
    return rows


# --- publishing ----------------------------------------------------------------------------------

def measure_publisher(client: Any, results: Sequence[Any], *, n: int, prefix: str = "benchpub",
                      maxlen: int = 100_000, batch: int = 256, timeout: float = 120.0) -> dict[str, Any]:
    """Entries/s of `Publisher` (pipelined XADD on its writer thread, JSON encoding on the caller)
    publishing ``n`` results cycled from ``results`` (real payloads) on one camera stream."""
    from dataclasses import replace

    from .publish import Publisher, StreamKeys
    from .schema import FrameResult

    keys = StreamKeys(prefix)
    camera = "pub"
    client.delete(keys.detections(camera))
    pub = Publisher(client, keys=keys, maxlen=maxlen, max_buffer_entries=n + 1, max_buffer_bytes=2**31,
                    batch=batch).start()
    base = time.time()
    prepared = []
    for i in range(n):
        r: FrameResult = results[i % len(results)]
        prepared.append(FrameResult(replace(r.meta, camera=camera, seq=i, frame_ts=base + i * 0.001),
                                    r.objects, r.models, r.latency_ms))
    sizes = [len(r.to_json()) for r in results]
    t0 = time.perf_counter()
    for r in prepared:
        pub.publish(r)
    ok = pub.flush(timeout)
    elapsed = time.perf_counter() - t0
    pub.close(timeout=5)
    published = sum(pub.stats.published.values())
    return {"entries_per_s": published / elapsed if ok else None, "published": published, "seconds": elapsed,
            "payload_bytes_mean": float(np.mean(sizes)), "batch": batch, "errors": pub.stats.errors,
            "flushed": ok}


def redis_benchmark_xadd(port: int, *, payload_bytes: int, n: int = 20_000, clients: int = 1, pipeline: int = 256,
                         host: str = "127.0.0.1", password: str | None = None, maxlen: int = 100_000,
                         key: str = "benchrb") -> dict[str, Any]:
    """``redis-benchmark`` sending the publisher's XADD (same fields, same payload size, MAXLEN ~)."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        raise RuntimeError("redis-benchmark is not installed (Debian: apt-get install redis-tools)")
    payload = "x" * max(1, payload_bytes)
    cmd = [exe, "-h", host, "-p", str(port), "-n", str(n), "-c", str(clients), "-P", str(pipeline), "--csv"]
    if password:
        cmd += ["-a", password]
    command = ["XADD", key, "MAXLEN", "~", str(maxlen), "*", "v", "1", "camera", "bench", "seq", "1", "json", payload]
    out = subprocess.run(cmd + command, capture_output=True, text=True, timeout=300)
    rps = None
    for line in out.stdout.splitlines():
        m = re.match(r'^"[^"]*","([0-9.]+)"', line)
        if m:
            rps = float(m.group(1))
    if rps is None:
        raise RuntimeError(f"redis-benchmark gave no result (rc={out.returncode}): {out.stdout[-300:]} {out.stderr[-300:]}")
    return {"rps": rps, "clients": clients, "pipeline": pipeline, "requests": n, "payload_bytes": payload_bytes,
            "command": "XADD <key> MAXLEN ~ %d * v 1 camera bench seq 1 json <%d bytes>" % (maxlen, payload_bytes)}


# --- Ultralytics' own multi-stream predict ------------------------------------------------------

def run_ultralytics(model: str, streams_file: str, *, imgsz: int, duration: float, warmup: float,
                    device: str | None = None, half: bool = False, conf: float = 0.25) -> dict[str, Any]:
    """What a user would otherwise write: ``YOLO(model).predict(source=<.streams>, stream=True)``.
    Counts results (one per stream per step) seen during [warmup, warmup + duration]."""
    from ultralytics import YOLO

    t_load = time.perf_counter()
    yolo = YOLO(model, task="detect")
    kwargs: dict[str, Any] = {"imgsz": imgsz, "conf": conf, "verbose": False, "stream": True}
    if device:
        kwargs["device"] = device
    if half:
        kwargs["half"] = True
    per_stream: dict[str, int] = {}
    count, t0, t1 = 0, None, None
    first = None
    start = time.perf_counter()
    for res in yolo.predict(source=streams_file, **kwargs):
        now = time.perf_counter()
        if first is None:
            first = now
            start_window = now + warmup
        if now < start_window:
            continue
        if t0 is None:
            t0 = now
        count += 1
        per_stream[res.path] = per_stream.get(res.path, 0) + 1
        t1 = now
        if now - t0 >= duration:
            break
    if t0 is None or t1 is None or t1 <= t0:
        raise RuntimeError("ultralytics produced no results in the window")
    return {"fps": count / (t1 - t0), "frames": count, "seconds": t1 - t0, "streams": len(per_stream),
            "per_stream_fps": {k: v / (t1 - t0) for k, v in per_stream.items()},
            "startup_s": (first or start) - t_load}


# --- reporting -----------------------------------------------------------------------------------

def value_of(result: Mapping[str, Any], path: str) -> Any:
    node: Any = result
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def goals(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (op, target) in GOALS.items():
        v = value_of(result, name)
        ok = None
        if isinstance(v, (int, float)) and math.isfinite(v):
            ok = {">=": v >= target, "<=": v <= target, "<": v < target, ">": v > target}[op]
        out[name] = {"value": v, "goal": f"{op} {target:g}", "met": ok}
    return out


def machine_info(*, model: str, imgsz: int, batch: int, device: str) -> dict[str, Any]:
    import psutil

    def version(mod: str) -> str | None:
        try:
            m = __import__(mod)
            return str(getattr(m, "__version__", None))
        except Exception:
            return None

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:
        pass
    redis_version = None
    if shutil.which("redis-server"):
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        m = re.search(r"v=([0-9.]+)", out)
        redis_version = m.group(1) if m else None
    return {
        "host": socket.gethostname(),
        "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu": cpu,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu,
        "loadavg_at_start": list(os.getloadavg()),
        "model": model,
        "imgsz": imgsz,
        "batch": batch,
        "device": device,
        "versions": {
            "python": platform.python_version(),
            "torch": version("torch"),
            "ultralytics": version("ultralytics"),
            "ray": version("ray"),
            "openvino": version("openvino"),
            "opencv": version("cv2"),
            "redis_server": redis_version,
        },
    }


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def format_table(result: Mapping[str, Any]) -> str:
    """The human summary: one line per number, goals marked."""
    m = result.get("machine", {})
    g = result.get("goals", {})
    lines = [
        f"percept bench  {m.get('model')}  imgsz {m.get('imgsz')}  batch {m.get('batch')}  device {m.get('device')}",
        f"machine        {m.get('cores')} cores  {m.get('cpu')}  {m.get('gpu') or 'no GPU'}  ({m.get('host')}, {result.get('date')})",
        f"source         {result.get('source')}  cameras {result.get('cameras')}",
        "",
        f"{'metric':<44}{'value':>14}   {'goal':<8} met",
    ]

    def row(label: str, value: Any, goal_key: str | None = None, spec: str = ".2f") -> None:
        goal, met = "", ""
        if goal_key and goal_key in g:
            goal = g[goal_key]["goal"]
            met = {True: "yes", False: "NO", None: "-"}[g[goal_key]["met"]]
        lines.append(f"{label:<44}{_fmt(value, spec):>14}   {goal:<8} {met}")

    bare = result.get("bare") or {}
    row(f"bare_fps (batch {bare.get('batch', '-')})", result.get("bare_fps"), spec=".1f")
    row("bare_fps (batch 1)", value_of(result, "bare.batch1_fps"), spec=".1f")
    row("single inference ms (batch 1, p50)", result.get("single_infer_ms"), spec=".1f")
    for n, ph in sorted((result.get("e2e") or {}).items(), key=lambda kv: int(kv[0])):
        row(f"e2e_fps, {n} camera(s) (offered {_fmt(ph.get('offered_fps'), '.0f')} fps)", ph.get("fps"), spec=".1f")
    for n, ph in sorted((result.get("e2e_detect_only") or {}).items(), key=lambda kv: int(kv[0])):
        row(f"e2e_fps without classifiers, {n} camera(s)", ph.get("fps"), spec=".1f")
    row(f"ultralytics_fps, {value_of(result, 'ultralytics.cameras') or '-'} camera(s)", result.get("ultralytics_fps"), spec=".1f")
    row("p1 e2e / bare", result.get("p1_e2e_over_bare"), "p1_e2e_over_bare")
    if result.get("p1_detect_only_over_bare") is not None:
        row("p1 without classifiers (not a goal)", result.get("p1_detect_only_over_bare"))
    row("p2 e2e / ultralytics", result.get("p2_e2e_over_ultralytics"), "p2_e2e_over_ultralytics")
    lat = result.get("latency_ms") or {}
    row(f"latency ms p50/p95/p99 @ {_fmt(value_of(result, 'latency.offered_fps'), '.0f')} fps offered",
        "/".join(_fmt(lat.get(k), ".0f") for k in ("p50", "p95", "p99")) if lat else None)
    row("p3 latency p50 / single inference", result.get("p3_p50_over_single_infer"), "p3_p50_over_single_infer")
    ov = result.get("overload") or {}
    row(f"overload offered fps ({_fmt(ov.get('offered_over_capacity'), '.1f')}x capacity)", ov.get("offered_fps"), spec=".1f")
    row("overload published fps", ov.get("published_fps"), spec=".1f")
    row("overload lag p99 s", ov.get("lag_p99_s"), "overload.lag_p99_s")
    row("overload dropped/s", ov.get("dropped_per_s"), spec=".1f")
    who = (ov.get("rss_growth_max_process") or "").split(":")[-1]
    row(f"overload RSS growth % (worst: {who or '-'})"[:44], ov.get("rss_growth_max_pct"),
        "overload.rss_growth_max_pct", ".1f")
    pub = result.get("publish") or {}
    row("publisher entries/s", value_of(pub, "publisher.entries_per_s"), spec=".0f")
    row("redis-benchmark XADD/s (same conn/pipeline)", value_of(pub, "redis_benchmark.rps"), spec=".0f")
    row("p5 publisher / redis-benchmark", result.get("p5_publish_over_redis_benchmark"), "p5_publish_over_redis_benchmark")
    e2e = result.get("e2e") or {}
    if e2e:
        n_max = max(e2e, key=int)
        per = e2e[n_max].get("cpu_ms_per_frame") or {}
        if per:
            lines.append(f"CPU ms per published frame, e2e {n_max} camera(s): "
                         + ", ".join(f"{k} {v:.1f}" for k, v in per.items() if v >= 0.5))
    foreign = [(name, value_of(result, path)) for name, path in
               (("bare", "bare.cpu.foreign_pct"), ("ultralytics", "ultralytics.cpu.foreign_pct"),
                ("latency", "latency.cpu.foreign_pct"), ("overload", "overload.detail.cpu.foreign_pct"))]
    foreign += [(f"e2e{n}", value_of(ph, "cpu.foreign_pct")) for n, ph in (result.get("e2e") or {}).items()]
    foreign = [(k, v) for k, v in foreign if v is not None]
    if foreign:
        lines.append("CPU %% used by other processes on the machine during each phase (noise; %d%% = all cores): %s" % (
            100 * (m.get("cores") or 1), "  ".join(f"{k} {v:.0f}" for k, v in foreign)))
    skipped = result.get("skipped") or []
    if skipped:
        lines.append(f"skipped: {', '.join(skipped)}")
    return "\n".join(lines)


# --- subprocess entry point ----------------------------------------------------------------------

def _main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench")
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("ultralytics", help="YOLO.predict on a .streams file; prints one JSON line")
    u.add_argument("--model", required=True)
    u.add_argument("--streams", required=True)
    u.add_argument("--imgsz", type=int, default=640)
    u.add_argument("--duration", type=float, default=10)
    u.add_argument("--warmup", type=float, default=3)
    u.add_argument("--device")
    u.add_argument("--half", action="store_true")
    u.add_argument("--conf", type=float, default=0.25)
    args = p.parse_args(argv)
    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", RTSP_CAPTURE_OPTIONS)
    out = run_ultralytics(args.model, args.streams, imgsz=args.imgsz, duration=args.duration, warmup=args.warmup,
                          device=args.device, half=args.half, conf=args.conf)
    print("RESULT " + json.dumps(out), flush=True)
    os._exit(0)  # LoadStreams' reader threads may still sit in a blocking read


if __name__ == "__main__":
    sys.exit(_main())
