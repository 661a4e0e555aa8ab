"""Processes during a bench phase: RSS and CPU time of the Ray workers, redis-server and the
RTSP server, by pid (`process_stats` / `compare_processes`), so a phase reports memory growth and
where the CPU went; `CpuMeter` for the machine as a whole."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

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



# --- who uses the CPU ----------------------------------------------------------------------------

HARNESS = ("bench", "rtsp_server", "py-spy")  # the bench itself (and its stream tap), the test cameras


def is_ray_own(label: str) -> bool:
    """Ray's and Serve's own processes (raylet, gcs_server, the Serve controller and proxy, the
    dashboard and log monitor, idle workers): neither a percept replica, redis nor the harness."""
    return not label.startswith("ray::ServeReplica") and label not in HARNESS and label != "redis-server"


def ray_own_cpu(processes: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """CPU of Ray's own processes during a window, in % of one core and as a share of the CPU the
    service used (every process but the harness: replicas, Ray, redis-server)."""
    rows = [p for p in processes if p.get("cpu_pct") is not None and p["name"] not in HARNESS]
    total = sum(p["cpu_pct"] for p in rows)
    if not rows or total <= 0:
        return None
    own: dict[str, float] = {}
    for p in rows:
        if is_ray_own(p["name"]):
            own[p["name"]] = own.get(p["name"], 0.0) + p["cpu_pct"]
    used = sum(own.values())
    return {"share_pct": used / total * 100, "ray_pct_of_core": used, "service_pct_of_core": total,
            "pct_of_machine": used / (os.cpu_count() or 1),
            "processes": dict(sorted(own.items(), key=lambda kv: -kv[1]))}


def overload_summary(ph: dict[str, Any], cap: float, n: int, fps: float) -> dict[str, Any]:
    """The overload phase: what was offered against the capacity, lag, drops and every graph
    process's RSS growth over the window."""
    graph_procs = [p for p in ph["processes"] if is_graph_process(p["name"]) and p["growth_pct"] is not None]
    start = sum(p["start_mb"] for p in graph_procs)
    total = sum(p["end_mb"] for p in graph_procs) / start if start else None
    return {
        "capacity_fps": cap,
        "cameras": n,
        "camera_fps": fps,
        "offered_fps": ph["offered_fps"],
        "offered_over_capacity": ph["offered_fps"] / cap if cap else None,
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
