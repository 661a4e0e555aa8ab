"""End to end on real components: a GStreamer RTSP server serving the shared clips (with
credentials), Ray Serve running the graph, the shared OpenVINO detector and ImageNet classifier,
and a private redis-server. Asserts what a user checks: streams fill, in order, with the right
categories, classifier attributes, camera state, no credentials, and `percept subscribe`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from pipeline.config import parse_config
from pipeline.publish import StreamKeys, camera_states

from .conftest import CLASSIFIER, DETECTOR

pytestmark = pytest.mark.integration
PASSWORD = "s3cret-Pa55"
PREFIX = "itest"
KEYS = StreamKeys(PREFIX)
VEHICLE_LABELS = ["minivan", "sports_car", "cab", "pickup", "police_van", "jeep", "convertible", "beach_wagon"]


@pytest.fixture(scope="module")
def rtsp_with_auth(videos):
    from benchmarks.rtsp import RtspServer

    with RtspServer(
        {"traffic": str(videos / "traffic.mp4"), "walk": str(videos / "vtest.avi")}, user="viewer", password=PASSWORD
    ) as server:
        yield server


@pytest.fixture(scope="module")
def graph(ray_session, session_redis, rtsp_with_auth, models_dir):
    from ray import serve

    from deployments.graph import build_app

    config = parse_config(
        {
            "redis": {"url": session_redis.url, "stream_prefix": PREFIX},
            "cameras": [
                {"id": "traffic", "url": rtsp_with_auth.url("traffic"), "fps": 3},
                {"id": "walk", "url": rtsp_with_auth.url("walk"), "fps": 3},
            ],
            "detector": {"weights": DETECTOR, "num_cpus": 1, "threads": 2, "batch": {"max_size": 4, "wait_ms": 20}},
            "classifiers": {
                "vehicle": {"weights": CLASSIFIER, "labels": VEHICLE_LABELS, "max_per_frame": 4, "num_cpus": 0.5}
            },
            "models_dir": models_dir,
        },
        env={},
    )
    serve.run(build_app(config), name="percept-itest", route_prefix="/itest", logging_config={"enable_access_log": False})
    client = session_redis.client()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(client.xlen(KEYS.detections(c)) >= 15 for c in ("traffic", "walk")):
            break
        time.sleep(1)
    yield config, client
    serve.delete("percept-itest")


def payloads(client, camera):
    return [json.loads(f[b"json"]) for _, f in client.xrange(KEYS.detections(camera))]


def test_both_streams_fill_in_seq_order(graph):
    _, client = graph
    for camera in ("traffic", "walk"):
        msgs = payloads(client, camera)
        assert len(msgs) >= 15, f"{camera}: only {len(msgs)} messages"
        seqs = [m["seq"] for m in msgs]
        assert all(b > a for a, b in zip(seqs, seqs[1:])), f"{camera}: seq not increasing: {seqs}"
        assert all(m["camera"] == camera and m["schema"] == "percept.detections/v1" for m in msgs)


def test_traffic_camera_sees_classified_vehicles(graph):
    _, client = graph
    msgs = payloads(client, "traffic")
    with_cars = [m for m in msgs if any(o["label"] == "car" and o["category"] == "vehicle" for o in m["objects"])]
    assert len(with_cars) >= len(msgs) // 2, f"cars in {len(with_cars)}/{len(msgs)} frames"
    typed = [o["attributes"]["type"] for m in with_cars for o in m["objects"] if "type" in o["attributes"]]
    assert typed, "no vehicle got a classifier attribute"
    assert all(t["label"] in VEHICLE_LABELS and 0 <= t["score"] <= 1 for t in typed)
    m = with_cars[0]
    assert (m["width"], m["height"]) == (640, 360)
    for o in m["objects"]:
        x1, y1, x2, y2 = o["bbox"]
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 360
    assert m["model"] == {"detector": DETECTOR, "classifiers": {"vehicle": CLASSIFIER}}
    assert set(m["latency_ms"]) == {"decode", "queue", "detect", "classify", "total"}


def test_walk_camera_sees_pedestrians(graph):
    _, client = graph
    msgs = payloads(client, "walk")
    with_people = [m for m in msgs if any(o["category"] == "pedestrian" for o in m["objects"])]
    assert len(with_people) >= len(msgs) * 0.7


def test_camera_state_online_without_credentials(graph):
    _, client = graph
    states = camera_states(client, KEYS, ["traffic", "walk"])
    for camera, state in states.items():
        assert state["state"] == "online", (camera, state)
        assert state["url"].startswith("rtsp://***@127.0.0.1")
        assert float(state["fps"]) > 0
    status = client.xrange(KEYS.status)
    assert {(f[b"camera"], f[b"state"]) for _, f in status} >= {(b"traffic", b"online"), (b"walk", b"online")}
    everything = b"".join(
        b"".join(v for v in f.values()) for key in (KEYS.status, KEYS.detections("traffic"))
        for _, f in client.xrange(key)
    ) + b"".join(client.hgetall(KEYS.camera("traffic")).values())
    assert PASSWORD.encode() not in everything and b"viewer:" not in everything


def test_percept_subscribe_group_reads_and_acks(graph, session_redis):
    _, client = graph

    def run(count):
        out = subprocess.run(
            [sys.executable, "-m", "deployments.cli", "subscribe", "traffic", "--redis", session_redis.url,
             "--prefix", PREFIX, "--group", "itest-g", "--consumer", "c1", "--from-start", "--count", str(count)],
            capture_output=True, text=True, timeout=60, env=os.environ,
        )
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    first, second = run(5), run(5)
    assert len(first) == 5 and len(second) == 5
    seqs = [m["seq"] for m in first + second]
    assert seqs == sorted(seqs) and len(set(seqs)) == 10  # the second run continues; nothing re-read
    assert client.xpending(KEYS.detections("traffic"), "itest-g")["pending"] == 0


def _http(method, url, body=None):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_cameras_added_and_removed_at_runtime_without_touching_others(graph, ray_session, rtsp_with_auth):
    _, client = graph
    api = ray_session.serve_http_url + "/itest"
    status, cams = _http("GET", api + "/cameras")
    assert status == 200 and {c["id"] for c in cams} == {"traffic", "walk"}
    assert all(c["state"] == "online" and c["url"].startswith("rtsp://***@") for c in cams)
    assert all(c["lag_s"] is not None and c["lag_s"] < 10 for c in cams)

    code, body = _http("POST", api + "/cameras", {"id": "bad id", "url": "x"})
    assert code == 422 and body["detail"] == ["id: must match ^[A-Za-z0-9_-]+$, got 'bad id'"], body
    code, body = _http("POST", api + "/cameras", {"id": "walk", "url": "x"})
    assert code == 409 and "exists" in body["detail"], body

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "deployments.cli", "cameras", "--api", api, *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    connecting_before = _connecting_entries(client)
    added_at = time.time()
    cli("add", "walk2", rtsp_with_auth.url("walk"), "--fps", "2")
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and client.xlen(KEYS.detections("walk2")) < 3:
        time.sleep(0.5)
    assert client.xlen(KEYS.detections("walk2")) >= 3, "runtime-added camera never published"
    assert "walk2" in cli("ls")
    # the cameras that were running were not restarted (no new 'connecting' for them)
    assert {cam for cam, _ in _connecting_entries(client) - connecting_before} == {"walk2"}

    cli("rm", "walk2")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and camera_states(client, KEYS, ["walk2"])["walk2"].get("state") != "stopped":
        time.sleep(0.5)
    assert camera_states(client, KEYS, ["walk2"])["walk2"]["state"] == "stopped"
    time.sleep(3)  # frames already in flight when it stopped may still land (2 s grace)
    n, traffic = client.xlen(KEYS.detections("walk2")), client.xlen(KEYS.detections("traffic"))
    time.sleep(3)
    assert client.xlen(KEYS.detections("walk2")) == n and client.xlen(KEYS.detections("traffic")) > traffic
    assert {c["id"] for c in _http("GET", api + "/cameras")[1]} == {"traffic", "walk"}
    assert time.time() - added_at < 120


def _connecting_entries(client):
    """(camera, entry id) of every 'connecting' status entry: one per camera start."""
    return {(f[b"camera"].decode(), eid) for eid, f in client.xrange(KEYS.status) if f[b"state"] == b"connecting"}


def test_plain_redis_cli_reads_schema_v1(graph, session_redis):
    out = subprocess.run(["redis-cli", "-p", str(session_redis.port), "--no-raw", "XRANGE",
                          KEYS.detections("traffic"), "-", "+", "COUNT", "1"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    raw = subprocess.run(["redis-cli", "-p", str(session_redis.port), "--raw", "XRANGE",
                          KEYS.detections("traffic"), "-", "+", "COUNT", "1"], capture_output=True, text=True, timeout=30)
    lines = raw.stdout.splitlines()
    fields = dict(zip(lines[1::2], lines[2::2]))
    assert fields["v"] == "1" and fields["camera"] == "traffic"
    payload = json.loads(fields["json"])
    assert payload["schema"] == "percept.detections/v1" and payload["seq"] == int(fields["seq"])
