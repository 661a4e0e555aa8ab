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

# name → (comparison, target); `value_of(result, name)` finds the value.
# name → (comparison, target); `value_of(result, name)` finds the value.
GOALS: dict[str, tuple[str, float]] = {
    "p1_e2e_over_bare": (">=", 0.90),
    "p2_e2e_over_ultralytics": (">=", 1.3),
    "p3_p50_over_single_infer": ("<=", 1.5),
    "overload.lag_p99_s": ("<", 1.0),
    "overload.rss_growth_max_pct": ("<", 5.0),
    "p5_publish_over_redis_benchmark": (">=", 0.5),
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
