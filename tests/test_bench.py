"""`percept bench` smoke test: one short run of every phase (OpenVINO's benchmark_app limit, bare
model, classifier costs, Ultralytics over RTSP, the graph on Ray Serve with and without
classifiers, latency, overload, publisher vs redis-benchmark) and a JSON with every key the issue
asks for, with sane values. No timing assertions: machines here are shared."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def _finite_positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _run(cmd: list[str], *, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """The bench in its own process group: on a timeout the whole group goes (the RTSP server,
    redis-server and Ray it started would otherwise outlive it)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"percept bench did not finish within {timeout:.0f} s\n{out[-2000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _check_new_measures(r: dict, stdout: str) -> None:
    """limit (benchmark_app), p0, the detector-only and vehicle-classifier p2, what classifiers
    cost, the bytes of a frame and Ray's own CPU: present and sane (never timed)."""
    from pipeline.config_models import ClassifierConfig, classifier_sections

    lim = r["limit"]
    assert _finite_positive(r["limit_fps"]) and lim["fps"] == lim["fps_runs"][0], lim  # the demo's OpenVINO model
    assert "-hint throughput" in lim["command"] and lim["model"].endswith(".xml"), lim
    assert _finite_positive(lim["latency_median_ms"]) and _finite_positive(lim["latency"]["fps"]), lim
    for key in ("p0_e2e_over_limit", "p2_detect_only_over_ultralytics", "p2_vehicle_classifier_over_ultralytics",
                "classifiers_e2e_over_detect_only", "e2e_detect_only_fps", "e2e_vehicle_fps"):
        assert _finite_positive(r[key]), (key, r[key])
    assert r["p0_e2e_over_limit"] == pytest.approx(r["e2e_detect_only_fps"] / r["limit_fps"], rel=0.01)
    rect = lim["rect"]  # the limit at the cameras' rectangles: one size per camera, each measured
    assert rect["cameras"] and set(rect["cameras"]) == set(rect["fps_by_size"]), rect
    assert all(_finite_positive(v) for v in rect["fps_by_size"].values()) and rect["fps"] == r["limit_rect_fps"], rect
    assert r["p0_e2e_over_limit_rect"] == pytest.approx(r["e2e_detect_only_fps"] / r["limit_rect_fps"], rel=0.01)
    assert r["p2_vehicle_classifier_over_ultralytics"] == pytest.approx(
        r["e2e_vehicle_fps"] / r["ultralytics_fps"], rel=0.01)
    # the e2e-vehicle graph had the vehicle classifier and no other
    replicas = {p["name"].split(":")[-1] for p in r["e2e_vehicle"]["1"]["processes"] if "ServeReplica" in p["name"]}
    assert {"detector", "classifier-vehicle"} <= replicas and not any(
        n.startswith("classifier-") and n != "classifier-vehicle" for n in replicas), replicas

    sections = classifier_sections({cat: [ClassifierConfig(**c) for c in entries]
                                    for cat, entries in r["config"]["classifiers"].items()}, single=set())
    deployments = {s.deployment for s in sections}
    assert len(deployments) >= 2 and set(r["classifiers_cost"]) == deployments, (deployments, r["classifiers_cost"])
    for name, c in r["classifiers_cost"].items():
        assert _finite_positive(c["ms_per_crop_b1"]) and _finite_positive(c["ms_per_crop_batch"]), (name, c)
        assert c["crops_per_frame"] >= 0 and c["ms_per_frame"] >= 0, (name, c)
        assert c["ms_per_frame"] == pytest.approx(c["ms_per_crop_batch"] * c["crops_per_frame"], rel=0.01, abs=0.01)
    assert r["classifiers_cost"]["classifier-vehicle"]["crops_per_frame"] > 0  # cars in traffic.mp4

    assert r["frame_bytes"] > r["bare"]["frame_bytes"]["image_nbytes"] == 640 * 640 * 3
    ray = r["ray_own_cpu"]
    assert 0 < ray["share_pct"] < 100 and "raylet" in ray["processes"], ray
    assert not any("ServeReplica" in n for n in ray["processes"]), ray
    tr = r["tracking_cost"]  # tracker + events against the detector, on the same 4 fps frames
    assert set(tr["clips"]) == {"traffic", "vtest"} and tr["frames"] >= 48, tr
    assert all(c["events"] > 0 and c["tracked_objects"] > 0 for c in tr["clips"].values()), tr
    assert _finite_positive(tr["total_ms_per_frame"]) and _finite_positive(tr["detector_cpu_ms_per_frame"])
    assert tr["over_detector"] == pytest.approx(tr["total_ms_per_frame"] / tr["detector_cpu_ms_per_frame"], rel=0.01)
    view = r["view_cost"]  # view off / on with nobody watching / one MJPEG watcher
    assert _finite_positive(view["off_fps"]) and _finite_positive(view["idle_over_off"]), view
    assert view["watcher"]["parts"] > 0 and view["watcher"]["error"] is None, view["watcher"]
    assert "decoder" in view["replica_cpu_pct"]["watched"] and isinstance(view["watch_cpu_pct"], (int, float)), view
    assert r["frame_copies"] == pytest.approx(3.0, abs=0.05), r["frame_copies"]  # decode, letterbox, shared memory
    assert 0 < r["frame_shipped_bytes"] < 1000, r["frame_shipped_bytes"]  # the handle, not the pixels
    dec = r["decoder_cpu_ms_per_s"]  # every frame decoded vs keyframes only, same cameras
    assert _finite_positive(dec["all"]) and _finite_positive(dec["keyframes"]), dec
    assert _finite_positive(r["decode_keyframes_over_all"]), r["decode_keyframes_over_all"]
    files = r["decoder_cpu_files_ms_per_s"]  # the clips as files: every frame vs reference frames only
    assert _finite_positive(files["all"]) and _finite_positive(files["reference"]), files
    assert _finite_positive(r["decode_reference_over_all"]), r["decode_reference_over_all"]
    for label in ("frame copies", "decoder CPU ms/s", "files, all/reference", "tracker + events / detector CPU", "view on, nobody watching / view off", "one view watcher",
                  "p0 detector only / limit", "p2 detector only / ultralytics", "classifier-vehicle ms/crop",
                  "frame bytes", "Ray's own CPU"):
        assert label in stdout, label


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
    proc = _run([sys.executable, "-m", "cli", "bench", "--duration", "4", "--overload-duration", "6",
                 "--limit-duration", "3", "--warmup", "1", "--cameras", "1", "--state-dir", str(state)], env=env, timeout=900)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    # by default the results go to the state directory; the committed ones are left alone
    out = Path(re.search(r"^results: (.+)$", proc.stdout, re.M).group(1))
    assert out.is_relative_to(state / "bench") and out.is_file(), out
    assert sorted((REPO / "benchmarks" / "results").glob("*")) == results
    r = json.loads(out.read_text())
    assert r["errors"] == {}
    assert r["rtsp_encode"] == "once"  # the cameras' clips encoded before the phases (rtsp_server.py --encode-once)

    for key in ("bare_fps", "e2e_fps", "ultralytics_fps", "single_infer_ms", "single_infer_paused_ms"):
        assert _finite_positive(r[key]), (key, r[key])
    assert r["bare"]["single_infer_pause_ms"] == [20.0, 80.0] and r["bare"]["single_infer_paused_ms"]["p50"] == \
        r["single_infer_paused_ms"]
    # the limit measured before and after the graph's phases, p0 against their mean
    before, after = r["limit"]["fps_runs"]
    assert _finite_positive(before) and _finite_positive(after) and r["limit_fps"] == pytest.approx((before + after) / 2)
    assert "limit fps before / after the graph's phases" in proc.stdout
    # p3: capture → on the stream (the reader's lag), not the payload's total, which ends before the XADD
    assert r["latency_to_stream_ms_p50"] == pytest.approx(r["latency"]["lag_s"]["p50"] * 1000, abs=0.1)  # (s, 4 places)
    assert r["p3_p50_over_single_infer"] == pytest.approx(r["latency_to_stream_ms_p50"] / r["single_infer_ms"], rel=0.01)
    assert r["p3_p50_over_paused_infer"] == pytest.approx(r["latency_to_stream_ms_p50"] / r["single_infer_paused_ms"],
                                                          rel=0.01)
    assert "single inference ms after a 20-80 ms pause" in proc.stdout
    _check_new_measures(r, proc.stdout)
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
    assert 0 < r["e2e"]["1"]["converted_per_published"] < 10, r["e2e"]["1"]["converted_per_published"]
    assert r["publish"]["publisher"]["published"] > 0 and r["publish"]["redis_benchmark"]["rps"] > 0
    rounds = sorted(x["ratio"] for x in r["publish"]["rounds"])
    assert len(rounds) == 3 and r["p5_publish_over_redis_benchmark"] == pytest.approx(rounds[1], rel=1e-3), \
        "p5: the median of three same-minute pairs"

    m = r["machine"]
    assert m["cores"] >= 1 and m["imgsz"] == 640 and m["model"]
    assert all(m["versions"][k] for k in ("python", "torch", "ultralytics", "ray"))
    assert set(r["goals"]) == {
        "p0_e2e_over_limit", "p1_e2e_over_bare", "p2_detect_only_over_ultralytics",
        "p2_vehicle_classifier_over_ultralytics", "p3_p50_over_single_infer", "overload.lag_p99_s",
        "overload.rss_growth_max_pct", "p5_publish_over_redis_benchmark", "classifiers_e2e_over_detect_only",
        "ray_own_cpu.share_pct", "tracking_cost.over_detector", "view_cost.idle_over_off"}
    assert all(isinstance(g["value"], (int, float)) and g["met"] in (True, False) for g in r["goals"].values()), r["goals"]
    compare = {">=": float.__ge__, "<=": float.__le__, "<": float.__lt__, ">": float.__gt__}
    for key, g in r["goals"].items():  # each flag is its value against its goal
        op, target = g["goal"].split()
        assert g["met"] == compare[op](float(g["value"]), float(target)), (key, g)
    # where a frame's CPU goes counts every process, Ray's own too however little they took
    assert {"raylet", "gcs_server", "ray::ServeController"} <= set(r["e2e"]["1"]["cpu_ms_per_frame"])
    assert "p1 e2e / bare" in proc.stdout  # the table


def test_soak_smoke(tmp_path, models_dir, videos):
    """`percept bench soak`, short: two RTSP cameras on the graph, sampled over the window; the
    JSON has the timeline, every process's RSS and fds at both ends, and what the cameras did."""
    from benchmarks.rtsp import gst_rtsp_available

    if not gst_rtsp_available():
        pytest.fail("GStreamer RTSP server (Debian python3-gi, gir1.2-gst-rtsp-server-1.0) is missing")
    out = tmp_path / "soak.json"
    env = dict(os.environ, PERCEPT_MODELS_DIR=models_dir, PERCEPT_SAMPLE_VIDEOS=str(videos), YOLO_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    proc = _run([sys.executable, "-m", "cli", "bench", "soak", "--cameras", "2", "--fps", "2", "--warmup", "4",
                 "--duration", "10", "--interval", "5", "--json", str(out), "--state-dir", str(tmp_path / "state")],
                env=env, timeout=600)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    r = json.loads(out.read_text())
    assert r["cameras"] == 2 and r["fps_per_camera"] == 2 and len(r["timeline"]) >= 3, r.keys()
    assert (r["source"], r["rtsp_fps"], r["rtsp_encode"]) == ("rtsp", 15, "once")
    assert r["timeline"][-1]["published"] > r["timeline"][0]["published"]  # it kept publishing over the window
    assert _finite_positive(r["published_fps"]) and r["dropped_per_s"] >= 0 and r["exceptions_total"] == 0, r
    assert _finite_positive(r["lag_p99_s"]) and _finite_positive(r["latency_ms"]["p50"]), r
    replicas = [n for n in r["processes"] if n.startswith(("replica:decoder", "replica:detector"))]
    assert len(replicas) >= 2, list(r["processes"])
    first, last = r["timeline"][0]["processes"], r["timeline"][-1]["processes"]
    for name, p in r["processes"].items():  # the first and the last sample of each process
        assert (p["rss_start_mb"], p["rss_end_mb"]) == (first[name]["rss_mb"], last[name]["rss_mb"]), (name, p)
        assert _finite_positive(p["rss_start_mb"]) and isinstance(p["rss_growth_pct"], (int, float)), (name, p)
    worst = r["worst_rss_growth"]  # the graph's (redis-server grows with the streams by design)
    from benchmarks.soak import _graph_process

    graph = [p["rss_growth_pct"] for n, p in r["processes"].items() if _graph_process(n)]
    assert worst["process"] in r["processes"] and _graph_process(worst["process"]), worst
    assert not worst["process"].startswith("redis-server") and worst["rss_growth_pct"] == max(graph), worst
    assert r["latency_sampled_entries"]["kept"] <= r["latency_sampled_entries"]["seen"], r["latency_sampled_entries"]
    assert "soak: 2 cameras" in proc.stdout and "exceptions 0" in proc.stdout


def test_the_publish_phase_reports_the_median_of_the_rounds_that_flushed():
    from benchmarks.phases import median_index

    assert median_index([0.44, 0.38, 0.41]) == 2
    assert median_index([None, 0.40, 0.44]) == 1, "a round that did not flush is no low value"
    assert median_index([None, None, 0.5]) == 2 and median_index([None, None]) == 0


def test_ultralytics_fps_counts_the_steps_inside_its_window_and_streams_sharing_a_url_apart():
    """Ultralytics' multi-stream predict yields one result per stream per step: the window's first
    step was counted whole though it ran before the window began, and two cameras on one URL
    (the bench's fourth camera is traffic again) were one stream at twice the rate."""
    from types import SimpleNamespace

    from benchmarks.measure import steps_window

    paths = ["rtsp://h/traffic", "rtsp://h/vtest", "rtsp://h/people", "rtsp://h/traffic"]
    times = iter([0.1 * (k // 4 + 1) for k in range(4 * 100)])  # a step of 4 results every 0.1 s
    results = (SimpleNamespace(path=paths[k % 4]) for k in range(4 * 100))
    out, first = steps_window(results, 4, warmup=0.25, duration=1.0, clock=lambda: next(times))
    assert out["fps"] == pytest.approx(40.0) and out["seconds"] == pytest.approx(1.0), out
    assert out["streams"] == 4 and len(out["per_stream_fps"]) == 4, out
    assert all(v == pytest.approx(10.0) for v in out["per_stream_fps"].values()), out


def test_the_classifier_phase_cuts_crops_as_the_card_says():
    """The bench timed every classifier on square context crops, whatever its card's
    ``input.resize`` (the traffic-light card stretches tight boxes)."""
    import numpy as np

    from benchmarks.phases import _crops
    from pipeline.classify import ClassifierRoute
    from pipeline.config import ClassifierConfig
    from pipeline.schema import Detections

    frame = np.zeros((100, 100, 3), np.uint8)
    frame[20:80, 40:60] = 255  # a tall white light on black
    dets = Detections(xyxy=[[40, 20, 60, 80]], scores=[0.9], labels=["traffic light"], categories=["sign"])
    crops = {}
    for fit in ("context", "stretch"):
        route = ClassifierRoute(classify=None, cfg=ClassifierConfig(weights="w.xml", min_box=4), crop_size=(32, 32),
                                crop_context=1.0, crop_fit=fit)
        (crops[fit],), counts = _crops(route, [frame], [dets], "sign")
        assert counts["crops_source"] == "objects it classifies"
    assert (crops["stretch"] == 255).all()  # the box stretched to the input
    assert (crops["context"][:, :8] == 0).all()  # widened to a square: black either side


def test_a_redis_benchmark_run_whose_clients_were_disconnected_is_run_again(redis_server, tmp_path, monkeypatch):
    """redis-benchmark once ended with "All clients disconnected... aborting." (rc 1, no result)
    in CI, failing the whole bench. The run is tried again; the failure is kept in the JSON."""
    import stat

    from benchmarks.publishing import redis_benchmark_xadd

    real = shutil.which("redis-benchmark")
    if real is None:
        pytest.fail("redis-benchmark is missing (Debian redis-tools)")
    flaky = tmp_path / "bin" / "redis-benchmark"
    flaky.parent.mkdir()
    marker = tmp_path / "failed-once"
    flaky.write_text(f"#!/bin/sh\nif [ ! -e {marker} ]; then touch {marker}; echo 'All clients disconnected... aborting.'; "
                     f"exit 1; fi\nexec {real} \"$@\"\n")
    flaky.chmod(flaky.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{flaky.parent}:{os.environ['PATH']}")
    out = redis_benchmark_xadd(redis_server.port, payload_bytes=100, n=2000, key="flaky")
    assert out["rps"] > 0 and len(out["runs_failed"]) == 1 and "All clients disconnected" in out["runs_failed"][0], out
