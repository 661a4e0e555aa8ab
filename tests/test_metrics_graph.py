"""Prometheus metrics of a real graph (shared clips as file cameras, the shared detector and
classifier, Ray Serve) scraped on Ray's metrics endpoint: the series exist with camera /
deployment labels, counters increase, a camera that played its clip to the end has exactly as many
frames published as its stream holds, and `percept top --once` shows a row per camera and per
deployment. The pure parts: tests/test_metrics.py."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest

from .conftest import CLASSIFIER, DETECTOR, REPO
from .waiting import wait_for

PREFIX = "mtest"
LOOPING, ONCE = "m-road", "m-once"  # camera ids of this module only (Ray keeps earlier modules' series)


def scrape(url):
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name.startswith("ray_percept_")]


def total(samples, name, **labels):
    """Sum over replicas of the series named ``name`` whose labels include ``labels`` (None if none)."""
    values = [v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())]
    return sum(values) if values else None


@pytest.fixture(scope="module")
def graph(ray_session, ray_metrics_url, session_redis, models_dir, videos):
    from ray import serve

    from deployments.graph import build_app
    from pipeline.config import parse_config

    config = parse_config({
        "redis": {"url": session_redis.url, "stream_prefix": PREFIX},
        "cameras": [
            {"id": LOOPING, "url": str(videos / "traffic.mp4"), "fps": 3, "loop": True},
            {"id": ONCE, "url": str(videos / "people.mp4"), "fps": 2},  # plays its 20 s once, then stops
        ],
        "detector": {"weights": DETECTOR, "num_cpus": 1, "threads": 2, "batch": {"max_size": 4, "wait_ms": 20}},
        "classifiers": {"vehicle": {"weights": CLASSIFIER, "labels": ["cab", "jeep", "minivan", "pickup"],
                                    "max_per_frame": 2, "num_cpus": 0.5}},
        "models_dir": models_dir,
    }, env={})
    serve.run(build_app(config), name="percept-mtest", route_prefix="/mtest", logging_config={"enable_access_log": False})
    client = session_redis.client()
    wait_for(lambda: client.xlen(f"{PREFIX}:detections:{LOOPING}") >= 5, 180, "the looping camera publishing")
    yield SimpleNamespace(client=client, url=ray_metrics_url, redis_url=session_redis.url)
    serve.delete("percept-mtest")


CAMERA_SERIES = ("ray_percept_frames_decoded_total", "ray_percept_frames_sampled_total",
                 "ray_percept_frames_published_total", "ray_percept_e2e_latency_ms_bucket",
                 "ray_percept_camera_lag_seconds")
MODEL_SERIES = ("ray_percept_batch_size_bucket", "ray_percept_inference_ms_bucket",
                "ray_percept_queue_wait_ms_bucket", "ray_percept_batch_max_size")


@pytest.mark.integration
def test_series_exist_with_camera_and_deployment_labels_and_counters_increase(graph):
    def all_there():
        s = scrape(graph.url)
        missing = [n for n in CAMERA_SERIES if total(s, n, camera=LOOPING) is None]
        missing += [n for n in MODEL_SERIES for dep in ("detector", "classifier-vehicle") if total(s, n, deployment=dep) is None]
        if total(s, "ray_percept_camera_state", camera=LOOPING, state="online") != 1:
            missing.append("camera_state online = 1")
        if total(s, "ray_percept_publisher_buffer_entries") is None:
            missing.append("publisher buffer")
        return s if not missing else None

    first = wait_for(all_there, 90, "every named series on Ray's metrics endpoint")
    assert total(first, "ray_percept_camera_lag_seconds", camera=LOOPING) < 30
    counters = ("ray_percept_frames_decoded_total", "ray_percept_frames_published_total",
                "ray_percept_frames_sampled_total")
    before = {n: total(first, n, camera=LOOPING) for n in counters}
    batches = total(first, "ray_percept_batch_size_count", deployment="detector")
    wait_for(lambda: (s := scrape(graph.url)) and all(total(s, n, camera=LOOPING) > before[n] for n in counters)
             and total(s, "ray_percept_batch_size_count", deployment="detector") > batches,
             60, "camera and batch counters to increase on the endpoint")


@pytest.mark.integration
def test_model_errors_are_counted(graph):
    from ray import serve

    from pipeline.models import DetectorInput

    errors_before = total(scrape(graph.url), "ray_percept_model_errors_total", deployment="detector") or 0
    handle = serve.get_deployment_handle("detector", app_name="percept-mtest")
    bad = DetectorInput(np.zeros((10, 20, 3), np.uint8), (10, 20))  # not the square letterboxed input
    try:
        answer = handle.detect.remote(bad).result(timeout_s=60)
    except Exception as exc:
        answer = exc
    assert isinstance(answer, Exception)
    wait_for(lambda: (total(scrape(graph.url), "ray_percept_model_errors_total", deployment="detector") or 0)
             > errors_before, 60, "the detector's error counted on the endpoint")


@pytest.mark.integration
def test_published_counter_equals_the_stream_once_the_camera_stopped(graph):
    client, stream = graph.client, f"{PREFIX}:detections:{ONCE}"
    wait_for(lambda: client.hget(f"{PREFIX}:camera:{ONCE}", "state") == b"stopped", 120,
             f"{ONCE} to play its clip to the end")
    xlen = client.xlen(stream)
    assert xlen > 0

    def settled():
        s = scrape(graph.url)
        ok = (total(s, "ray_percept_frames_published_total", camera=ONCE) == xlen
              and total(s, "ray_percept_camera_state", camera=ONCE, state="stopped") == 1)
        return s if ok else None

    s = wait_for(settled, 60, f"frames_published_total{{camera={ONCE}}} == XLEN {xlen}")
    assert client.xlen(stream) == xlen  # nothing more after the stop
    sampled = total(s, "ray_percept_frames_sampled_total", camera=ONCE)
    dropped = total(s, "ray_percept_frames_dropped_total", camera=ONCE) or 0
    assert total(s, "ray_percept_frames_decoded_total", camera=ONCE) >= sampled
    # every sampled frame was published or dropped for a reason (a frame left in the slot at the end)
    assert abs(sampled - (xlen + dropped)) <= 2, (sampled, xlen, dropped)
    hist = total(s, "ray_percept_e2e_latency_ms_count", camera=ONCE)
    assert hist == xlen


@pytest.mark.integration
def test_percept_top_once_shows_cameras_and_deployments(graph):
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def top():
        out = subprocess.run([sys.executable, "-m", "cli", "top", "--once", "--redis", graph.redis_url,
                              "--prefix", PREFIX], capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
        seen[:] = [out.stdout + out.stderr]
        rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.strip()}
        ok = (out.returncode == 0 and rows.get(LOOPING, [None])[1:2] == ["online"] and float(rows[LOOPING][2]) > 0
              and rows.get(ONCE, [None])[1:2] == ["stopped"] and rows.get("detector", [None, None])[1] == "1")
        return out.stdout if ok else None

    seen: list[str] = []
    try:
        screen = wait_for(top, 90, "percept top --once: both cameras with state and fps, the detector's row")
    finally:
        print("last percept top --once output:", *seen, sep="\n")
    print(screen)
    lines = screen.splitlines()
    assert lines[1].split()[:3] == ["CAMERA", "STATE", "FPS"]
    road = next(line for line in lines if line.startswith(LOOPING))
    p50, p95 = (float(x) for x in road.split()[6:8])
    assert 0 < p50 <= p95
    assert any(line.startswith("classifier-vehicle") for line in lines)
    assert "\x1b[" not in screen  # --once: no escapes, for scripts
