"""What `percept bench` reports: ratios, goals, the machine, the table."""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

# name → (comparison, target); `value_of(result, name)` finds the value. p0 and p2 compare the
# graph with its detector only (no classifiers); p2 vehicle and `classifiers_…` what classifiers cost.
GOALS: dict[str, tuple[str, float]] = {
    "p0_e2e_over_limit": (">=", 0.70),
    "p1_e2e_over_bare": (">=", 0.90),
    "p2_detect_only_over_ultralytics": (">=", 1.3),
    "p2_vehicle_classifier_over_ultralytics": (">=", 1.1),
    "p3_p50_over_single_infer": ("<=", 2.0),
    "overload.lag_p99_s": ("<", 1.0),
    "overload.rss_growth_max_pct": ("<", 5.0),
    "p5_publish_over_redis_benchmark": (">=", 0.5),
    "classifiers_e2e_over_detect_only": (">=", 0.75),
    "ray_own_cpu.share_pct": ("<=", 10.0),
    "tracking_cost.over_detector": ("<=", 0.10),  # tracker + events CPU / the detector's, per frame
    "view_cost.idle_over_off": (">=", 0.90),  # the view on and nobody watching: within noise of off
}

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


def detect_only_fps(result: Mapping[str, Any]) -> float | None:
    """The graph's fps at the largest camera count with its detector only: the detect-only phase,
    or the e2e one when the config has no classifiers (then they are the same graph)."""
    if result.get("e2e_detect_only_fps") is not None:
        return result["e2e_detect_only_fps"]
    return None if value_of(result, "config.classifiers") else result.get("e2e_fps")


def add_ratios(result: dict[str, Any]) -> None:
    """p0..p5, what classifiers cost, Ray's share of the CPU, and the goals, into ``result``."""
    det, ultra = detect_only_fps(result), result.get("ultralytics_fps")
    result["p0_e2e_over_limit"] = ratio(det, result.get("limit_fps"))  # detector only / benchmark_app
    # the same against the limit at the sizes the detector runs (rect): the graph's own overhead
    result["p0_e2e_over_limit_rect"] = ratio(det, result.get("limit_rect_fps"))
    result["p1_e2e_over_bare"] = ratio(result.get("e2e_fps"), result.get("bare_fps"))
    result["p1_detect_only_over_bare"] = ratio(result.get("e2e_detect_only_fps"), result.get("bare_fps"))
    # p2_e2e_over_ultralytics keeps its first meaning: the graph WITH every classifier / Ultralytics
    # (detector only); the goal is on the like-for-like p2_detect_only_over_ultralytics.
    result["p2_e2e_over_ultralytics"] = ratio(result.get("e2e_fps"), ultra)
    result["p2_detect_only_over_ultralytics"] = ratio(det, ultra)
    result["p2_vehicle_classifier_over_ultralytics"] = ratio(result.get("e2e_vehicle_fps"), ultra)
    # capture → on the stream (the XADD done: what a reader sees, `lag_s`), not the payload's
    # `latency_ms.total`, which ends where the frame is handed to the publisher (its JSON and XADD
    # come after, on the publisher's thread)
    lag = value_of(result, "latency.lag_s.p50")
    result["latency_to_stream_ms_p50"] = None if lag is None else lag * 1000
    result["p3_p50_over_single_infer"] = ratio(result["latency_to_stream_ms_p50"], result.get("single_infer_ms"))
    # not a goal: the same latency over one inference after an idle pause, as frames come at half load
    result["p3_p50_over_paused_infer"] = ratio(result["latency_to_stream_ms_p50"], result.get("single_infer_paused_ms"))
    result["p5_publish_over_redis_benchmark"] = ratio(
        value_of(result, "publish.publisher.entries_per_s"), value_of(result, "publish.redis_benchmark.rps"))
    result["classifiers_e2e_over_detect_only"] = (
        ratio(result.get("e2e_fps"), result.get("e2e_detect_only_fps")) if value_of(result, "config.classifiers") else None)
    e2e = result.get("e2e") or {}
    if e2e:
        from .processes import ray_own_cpu

        result["ray_own_cpu"] = ray_own_cpu(e2e[max(e2e, key=int)].get("processes") or [])
    result["goals"] = goals(result)


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
            "pyav": version("av"),
            "redis_server": redis_version,
        },
    }


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


W = 50  # the metric column


class _Table:
    """Rows of ``metric  value  goal  met``."""

    def __init__(self, goals_: Mapping[str, Any]):
        self.goals = goals_
        self.lines: list[str] = [f"{'metric':<{W}}{'value':>14}   {'goal':<8} met"]

    def row(self, label: str, value: Any, goal_key: str | None = None, spec: str = ".2f") -> None:
        goal, met = "", ""
        if goal_key and goal_key in self.goals:
            goal = self.goals[goal_key]["goal"]
            met = {True: "yes", False: "NO", None: "-"}[self.goals[goal_key]["met"]]
        self.lines.append(f"{label[:W]:<{W}}{_fmt(value, spec):>14}   {goal:<8} {met}")


def _by_count(phases: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    return sorted(((k, v) for k, v in (phases or {}).items() if str(k).isdigit()), key=lambda kv: int(kv[0]))


def _throughput_rows(t: _Table, result: Mapping[str, Any]) -> None:
    bare = result.get("bare") or {}
    t.row("limit fps (benchmark_app, throughput hint)", result.get("limit_fps"), spec=".1f")
    runs = value_of(result, "limit.fps_runs")
    if runs:
        t.row("limit fps before / after the graph's phases", " / ".join(_fmt(v, ".1f") for v in runs))
    t.row("limit fps at the cameras' rectangles (rect)", result.get("limit_rect_fps"), spec=".1f")
    t.row("limit latency-hint median ms", value_of(result, "limit.latency_median_ms"), spec=".1f")
    t.row(f"bare_fps (batch {bare.get('batch', '-')})", result.get("bare_fps"), spec=".1f")
    t.row("bare_fps (batch 1)", value_of(result, "bare.batch1_fps"), spec=".1f")
    t.row("single inference ms (batch 1, p50)", result.get("single_infer_ms"), spec=".1f")
    pause = "-".join(f"{v:g}" for v in value_of(result, "bare.single_infer_pause_ms") or ()) or "-"
    t.row(f"single inference ms after a {pause} ms pause (p50)", result.get("single_infer_paused_ms"), spec=".1f")
    for n, ph in _by_count(result.get("e2e")):
        t.row(f"e2e_fps, {n} camera(s) (offered {_fmt(ph.get('offered_fps'), '.0f')} fps)", ph.get("fps"), spec=".1f")
    for n, ph in _by_count(result.get("e2e_detect_only")):
        t.row(f"e2e_fps detector only, {n} camera(s)", ph.get("fps"), spec=".1f")
    for n, ph in _by_count(result.get("e2e_vehicle")):
        t.row(f"e2e_fps vehicle classifier only, {n} camera(s)", ph.get("fps"), spec=".1f")
    t.row(f"ultralytics_fps, {value_of(result, 'ultralytics.cameras') or '-'} camera(s)", result.get("ultralytics_fps"), spec=".1f")
    t.row("p0 detector only / limit", result.get("p0_e2e_over_limit"), "p0_e2e_over_limit")
    t.row("p0 detector only / limit at the rectangles", result.get("p0_e2e_over_limit_rect"))
    t.row("p1 e2e / bare", result.get("p1_e2e_over_bare"), "p1_e2e_over_bare")
    if result.get("p1_detect_only_over_bare") is not None:
        t.row("p1 detector only / bare (not a goal)", result.get("p1_detect_only_over_bare"))
    t.row("p2 detector only / ultralytics", result.get("p2_detect_only_over_ultralytics"), "p2_detect_only_over_ultralytics")
    t.row("p2 vehicle classifier / ultralytics", result.get("p2_vehicle_classifier_over_ultralytics"),
          "p2_vehicle_classifier_over_ultralytics")
    t.row("p2 all classifiers / ultralytics (no goal)", result.get("p2_e2e_over_ultralytics"))
    t.row("all classifiers / detector only (e2e fps)", result.get("classifiers_e2e_over_detect_only"),
          "classifiers_e2e_over_detect_only")


def _latency_rows(t: _Table, result: Mapping[str, Any]) -> None:
    lat = result.get("latency_ms") or {}
    t.row(f"latency ms p50/p95/p99 @ {_fmt(value_of(result, 'latency.offered_fps'), '.0f')} fps offered",
          "/".join(_fmt(lat.get(k), ".0f") for k in ("p50", "p95", "p99")) if lat else None)
    stages = value_of(result, "latency.stages_ms_p50") or {}
    t.row("latency p50 ms: detect / of it in the detector",
          f"{_fmt(stages.get('detect'), '.1f')} / {_fmt(stages.get('infer'), '.1f')}" if stages else None)
    t.row("capture → on the stream p50 ms", result.get("latency_to_stream_ms_p50"), spec=".1f")
    t.row("p3 capture → stream p50 / single inference", result.get("p3_p50_over_single_infer"), "p3_p50_over_single_infer")
    t.row("capture → stream p50 / single inference after a pause", result.get("p3_p50_over_paused_infer"), spec=".2f")
    ov = result.get("overload") or {}
    t.row(f"overload offered fps ({_fmt(ov.get('offered_over_capacity'), '.1f')}x capacity)", ov.get("offered_fps"), spec=".1f")
    t.row("overload published fps", ov.get("published_fps"), spec=".1f")
    t.row("overload lag p99 s", ov.get("lag_p99_s"), "overload.lag_p99_s")
    t.row("overload dropped/s", ov.get("dropped_per_s"), spec=".1f")
    who = (ov.get("rss_growth_max_process") or "").split(":")[-1]
    t.row(f"overload RSS growth % (worst: {who or '-'})", ov.get("rss_growth_max_pct"), "overload.rss_growth_max_pct", ".1f")
    pub = result.get("publish") or {}
    t.row("publisher entries/s", value_of(pub, "publisher.entries_per_s"), spec=".0f")
    t.row("redis-benchmark XADD/s (same conn/pipeline)", value_of(pub, "redis_benchmark.rps"), spec=".0f")
    t.row("p5 publisher / redis-benchmark", result.get("p5_publish_over_redis_benchmark"), "p5_publish_over_redis_benchmark")


def _cost_rows(t: _Table, result: Mapping[str, Any]) -> None:
    for name, c in (result.get("classifiers_cost") or {}).items():
        t.row(f"{name} ms/crop b1/b{c.get('batch')}",
              f"{_fmt(c.get('ms_per_crop_b1'), '.1f')}/{_fmt(c.get('ms_per_crop_batch'), '.1f')}")
        t.row(f"{name} crops, ms /frame",
              f"{_fmt(c.get('crops_per_frame'), '.1f')}, {_fmt(c.get('ms_per_frame'), '.1f')}")
    tr = result.get("tracking_cost") or {}
    t.row("tracker + events CPU ms/frame (4 fps)", tr.get("total_ms_per_frame"), spec=".2f")
    t.row("tracker + events / detector CPU", tr.get("over_detector"), "tracking_cost.over_detector", ".3f")
    view = result.get("view_cost") or {}
    t.row("view on, nobody watching / view off (fps)", view.get("idle_over_off"), "view_cost.idle_over_off")
    t.row(f"one view watcher: CPU % of a core ({_fmt(value_of(view, 'watcher.parts_per_s'), '.1f')} JPEG/s)",
          view.get("watch_cpu_pct"), spec=".1f")
    t.row("frame bytes (pickled DetectorInput with its pixels)", result.get("frame_bytes"), spec=".0f")
    t.row("frame bytes sent, pixels in shared memory", result.get("frame_shipped_bytes"), spec=".0f")
    t.row("frame copies, decoder → detector", result.get("frame_copies"), spec=".1f")
    dec = result.get("decoder_cpu_ms_per_s") or {}
    t.row(f"decoder CPU ms/s @ {_fmt(value_of(result, 'decode.decoder_cpu.sampled_fps'), 'g')} fps, decode all/keyframes",
          "/".join(_fmt(dec.get(k), ".0f") for k in ("all", "keyframes")) if dec else None)
    files = result.get("decoder_cpu_files_ms_per_s") or {}
    t.row(f"decoder CPU ms/s @ {_fmt(value_of(result, 'decode.decoder_cpu_files.sampled_fps'), 'g')} fps, files, all/reference",
          "/".join(_fmt(files.get(k), ".0f") for k in ("all", "reference")) if files else None)
    ray = result.get("ray_own_cpu") or {}
    t.row(f"Ray's own CPU, % of the service's ({_fmt(ray.get('ray_pct_of_core'), '.0f')}% of a core)",
          ray.get("share_pct"), "ray_own_cpu.share_pct", ".1f")


def _notes(result: Mapping[str, Any]) -> list[str]:
    m = result.get("machine", {})
    lines = []
    e2e = result.get("e2e") or {}
    if e2e:
        n_max = max(e2e, key=int)
        per = e2e[n_max].get("cpu_ms_per_frame") or {}
        if per:
            lines.append(f"CPU ms per published frame, e2e {n_max} camera(s): "
                         + ", ".join(f"{k} {v:.1f}" for k, v in per.items() if v >= 0.5))
    foreign = [(name, value_of(result, path)) for name, path in
               (("limit", "limit.cpu.foreign_pct"), ("bare", "bare.cpu.foreign_pct"),
                ("ultralytics", "ultralytics.cpu.foreign_pct"),
                ("latency", "latency.cpu.foreign_pct"), ("overload", "overload.detail.cpu.foreign_pct"))]
    for key, tag in (("e2e", "e2e"), ("e2e_detect_only", "detect-only"), ("e2e_vehicle", "vehicle")):
        foreign += [(f"{tag}{n}", value_of(ph, "cpu.foreign_pct")) for n, ph in _by_count(result.get(key))]
    foreign = [(k, v) for k, v in foreign if v is not None]
    if foreign:
        lines.append("CPU %% used by other processes on the machine during each phase (noise; %d%% = all cores): %s" % (
            100 * (m.get("cores") or 1), "  ".join(f"{k} {v:.0f}" for k, v in foreign)))
    skipped = result.get("skipped") or []
    if skipped:
        lines.append(f"skipped: {', '.join(skipped)}")
    return lines


def format_table(result: Mapping[str, Any]) -> str:
    """The human summary: one line per number, goals marked."""
    m = result.get("machine", {})
    t = _Table(result.get("goals", {}))
    _throughput_rows(t, result)
    _latency_rows(t, result)
    _cost_rows(t, result)
    head = [
        f"percept bench  {m.get('model')}  imgsz {m.get('imgsz')}  batch {m.get('batch')}  device {m.get('device')}",
        f"machine        {m.get('cores')} cores  {m.get('cpu')}  {m.get('gpu') or 'no GPU'}  ({m.get('host')}, {result.get('date')})",
        f"source         {result.get('source')}  cameras {result.get('cameras')}",
        "",
    ]
    return "\n".join(head + t.lines + _notes(result))


def default_results_path(state_dir: str | os.PathLike[str], host: str, kind: str = "") -> Path:
    """Where a run's JSON goes unless ``--json`` says otherwise: the state directory, never the
    checkout (the committed figures under benchmarks/results/ are written on purpose only)."""
    suffix = f"-{kind}" if kind else ""
    stamp = time.strftime("%Y-%m-%d-%H%M%S")
    return Path(state_dir) / "bench" / f"{stamp}-{host}{suffix}.json"


def write_results(text: str, json_out: str | None, state_dir: str, host: str, kind: str = "") -> Path:
    path = Path(json_out) if json_out else default_results_path(state_dir, host, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path
