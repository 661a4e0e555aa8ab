"""`percept bench` smoke test: one short run of every phase (bare model, Ultralytics over RTSP,
the graph on Ray Serve, latency, overload, publisher vs redis-benchmark) and a JSON with every
key the issue asks for, with sane values. No timing assertions: machines here are shared."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def _finite_positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_bench_smoke(tmp_path, models_dir, videos):
    from benchmarks.rtsp import gst_rtsp_available

    if not gst_rtsp_available():
        pytest.fail("GStreamer RTSP server (Debian python3-gi, gir1.2-gst-rtsp-server-1.0) is missing")
    if shutil.which("redis-benchmark") is None:
        pytest.fail("redis-benchmark is missing (Debian redis-tools)")
    state = tmp_path / "state"
    results = sorted((REPO / "benchmarks" / "results").glob("*"))
    env = dict(os.environ, PERCEPT_MODELS_DIR=models_dir, PERCEPT_SAMPLE_VIDEOS=str(videos), YOLO_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "bench", "--duration", "10", "--cameras", "1",
         "--state-dir", str(state)],
        capture_output=True, text=True, timeout=420, cwd=REPO, env=env,
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    # by default the results go to the state directory; the committed ones are left alone
    out = Path(re.search(r"^results: (.+)$", proc.stdout, re.M).group(1))
    assert out.is_relative_to(state / "bench") and out.is_file(), out
    assert sorted((REPO / "benchmarks" / "results").glob("*")) == results
    r = json.loads(out.read_text())
    assert r["errors"] == {}

    for key in ("bare_fps", "e2e_fps", "ultralytics_fps", "single_infer_ms"):
        assert _finite_positive(r[key]), (key, r[key])
    for key in ("p1_e2e_over_bare", "p2_e2e_over_ultralytics", "p3_p50_over_single_infer",
                "p5_publish_over_redis_benchmark"):
        assert _finite_positive(r[key]), (key, r[key])

    lat = r["latency_ms"]
    assert all(_finite_positive(lat[p]) for p in ("p50", "p95", "p99")) and lat["p50"] <= lat["p95"] <= lat["p99"]

    ov = r["overload"]
    assert _finite_positive(ov["lag_p99_s"]) and ov["dropped_per_s"] >= 0
    assert _finite_positive(ov["offered_fps"]) and _finite_positive(ov["published_fps"])
    names = {p["name"] for p in ov["rss"]}
    assert any(n.endswith(":detector") for n in names) and any(n.endswith(":decoder") for n in names), names
    assert all(_finite_positive(p["start_mb"]) for p in ov["rss"])
    assert isinstance(ov["rss_growth_max_pct"], (int, float)) and math.isfinite(ov["rss_growth_max_pct"])

    assert r["e2e"]["1"]["fps"] > 0 and r["e2e"]["1"]["cameras"] == 1
    assert r["publish"]["publisher"]["published"] > 0 and r["publish"]["redis_benchmark"]["rps"] > 0

    m = r["machine"]
    assert m["cores"] >= 1 and m["imgsz"] == 640 and m["model"]
    assert all(m["versions"][k] for k in ("python", "torch", "ultralytics", "ray"))
    assert set(r["goals"]) == {"p1_e2e_over_bare", "p2_e2e_over_ultralytics", "p3_p50_over_single_infer",
                               "overload.lag_p99_s", "overload.rss_growth_max_pct", "p5_publish_over_redis_benchmark"}
    assert "p1 e2e / bare" in proc.stdout  # the table
