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
from pathlib import Path

import pytest

from pipeline.config import parse_config
from pipeline.streams import StreamKeys, camera_states

from .conftest import CLASSIFIER, DETECTOR
from .http import call_json
from .waiting import wait_for

pytestmark = pytest.mark.integration
PASSWORD_VAR = "PERCEPT_TEST_CAM_PASSWORD"  # set in conftest.py before Ray starts: the decoders expand it
PASSWORD = os.environ[PASSWORD_VAR]
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


def cam_url(server, mount: str, var: str = PASSWORD_VAR) -> str:
    """The camera URL as a user writes it: the password as ${VAR}, never inline."""
    return server.url(mount, with_auth=False).replace("rtsp://", f"rtsp://viewer:${{{var}}}@")


@pytest.fixture(scope="module")
def graph(ray_session, session_redis, rtsp_with_auth, models_dir):
    from ray import serve

    from deployments.graph import build_app

    config = parse_config(
        {
            "redis": {"url": session_redis.url, "stream_prefix": PREFIX},
            "cameras": [
                {"id": "traffic", "url": cam_url(rtsp_with_auth, "traffic"), "fps": 3},
                {"id": "walk", "url": cam_url(rtsp_with_auth, "walk"), "fps": 3,
                 "zones": {"left": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}, "lines": {"middle": [[0.5, 0], [0.5, 1]]}},
            ],
            "detector": {"weights": DETECTOR, "num_cpus": 1, "threads": 2, "batch": {"max_size": 4, "wait_ms": 20}},
            "classifiers": {
                # min_score 0: the plumbing is tested here; most of the clip's top-down dusk cars are no
                # car type the ImageNet model is sure of (below the default 0.1: no answer)
                "vehicle": {"weights": CLASSIFIER, "labels": VEHICLE_LABELS, "max_per_frame": 4, "num_cpus": 0.5,
                            "min_score": 0}
            },
            "models_dir": models_dir,
        },
        env={},
    )
    serve.run(build_app(config), name="percept-itest", route_prefix="/itest", logging_config={"enable_access_log": False})
    client = session_redis.client()
    wait_for(lambda: all(client.xlen(KEYS.detections(c)) >= 15 for c in ("traffic", "walk")), 120,
             "both cameras publishing")
    yield config, client
    serve.delete("percept-itest")


def traffic_frames(client, n: int) -> None:
    """Wait for the traffic camera (3 fps) to publish ``n`` more frames: a clock made of frames."""
    start = client.xlen(KEYS.detections("traffic"))
    wait_for(lambda: client.xlen(KEYS.detections("traffic")) >= start + n, 30, f"{n} more traffic frames")


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


def test_frames_reach_the_detector_through_shared_memory(graph, ray_session):
    """The decoder lends each frame to the detector (same machine) through a shared-memory slot:
    the Serve call carries only its name (pipeline/frame_share.py); the frames published above
    got their detections that way."""
    _, client = graph
    api = ray_session.serve_http_url + "/itest"
    code, status = _http("GET", api + "/status")
    assert code == 200, status
    sent = status["frames_to_detectors"]
    assert sent["sharing"] and sent["pixels"] == 0 and 1 <= sent["slots"] <= 16, sent
    assert sent["shared"] >= client.xlen(KEYS.detections("traffic")) + client.xlen(KEYS.detections("walk")) - 4, sent
    # the calls went over Serve's gRPC channel (decoder.transport's default), answered by value
    assert status["transport"] == {"detectors": ["grpc"], "classifiers": ["grpc"]}, status["transport"]


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
    assert set(m["latency_ms"]) == {"decode", "queue", "detect", "infer", "track", "classify", "total"}
    # the detector replica's time is part of the detector call (the rest: Serve, the batch wait)
    assert all(0 < p["latency_ms"]["infer"] <= p["latency_ms"]["detect"] for p in msgs), \
        [p["latency_ms"] for p in msgs if not 0 < p["latency_ms"]["infer"] <= p["latency_ms"]["detect"]][:3]


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
            [sys.executable, "-m", "cli", "subscribe", "traffic", "--redis", session_redis.url,
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
    return call_json(method, url, body, timeout=30)


def test_cameras_added_and_removed_at_runtime_without_touching_others(graph, ray_session, rtsp_with_auth):
    _, client = graph
    api = ray_session.serve_http_url + "/itest"
    status, cams = _http("GET", api + "/cameras")
    assert status == 200 and {c["id"] for c in cams} == {"traffic", "walk"}
    assert all(c["state"] == "online" and c["url"].startswith("rtsp://***@") for c in cams)
    assert all(c["lag_s"] is not None and c["lag_s"] < 10 for c in cams)

    code, body = _http("POST", api + "/cameras", {"id": "bad id", "url": "x"})
    assert code == 422 and body["detail"] == ["id: must match ^[A-Za-z0-9_-]+$, got 'bad id'"], body
    code, body = _http("POST", api + "/cameras", {"id": "walk", "url": "rtsp://cam/x"})
    assert code == 409 and "exists" in body["detail"], body

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "cli", "cameras", "--api", api, *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    connecting_before = _connecting_entries(client)
    cli("add", "walk2", cam_url(rtsp_with_auth, "walk", "CAM_WALK2_PASSWORD"), "--fps", "2")  # (set in conftest.py)
    wait_for(lambda: client.xlen(KEYS.detections("walk2")) >= 3, 40, "the runtime-added camera publishing")
    assert "walk2" in cli("ls")
    # the cameras that were running were not restarted (no new 'connecting' for them)
    assert {cam for cam, _ in _connecting_entries(client) - connecting_before} == {"walk2"}

    cli("rm", "walk2")
    wait_for(lambda: camera_states(client, KEYS, ["walk2"])["walk2"].get("state") == "stopped", 30,
             "the removed camera stopped")
    # frames already in flight when it stopped may still land (2 s grace): let traffic (3 fps)
    # publish ~3 s worth, then watch another ~3 s in which walk2 must not grow
    traffic_frames(client, 9)
    n = client.xlen(KEYS.detections("walk2"))
    traffic_frames(client, 9)
    assert client.xlen(KEYS.detections("walk2")) == n
    assert {c["id"] for c in _http("GET", api + "/cameras")[1]} == {"traffic", "walk"}


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


def _decoder_health(app: str = "percept-itest") -> str:
    from ray import serve

    status = serve.status().applications[app].deployments["decoder"].status
    return str(getattr(status, "value", status))


def test_bad_registry_entries_fail_alone_and_no_decoder_restarts(graph, ray_session, rtsp_with_auth):
    """Hand-edited registry entries that do not validate, and a camera whose ${VAR} the decoders
    lack, are `failed` on their own hashes, once; the decoder replica keeps running the others."""
    _, client = graph
    api = ray_session.serve_http_url + "/itest"
    code, before = _http("GET", api + "/status")
    assert code == 200, before
    connecting_before = _connecting_entries(client)
    port = rtsp_with_auth.port
    client.hset(f"{PREFIX}:cameras", mapping={
        "broken": json.dumps({"source": "api", "camera": {"id": "broken", "url": cam_url(rtsp_with_auth, "walk"),
                                                          "fps": -2}}),
        "garbage": "{not json",
    })
    try:
        code, body = _http("POST", api + "/cameras", {
            "id": "noenv", "url": f"rtsp://viewer:${{CAM_NOENV_PASSWORD}}@127.0.0.1:{port}/walk"})
        assert code == 201, body
        expected = {
            "broken": "cameras[broken].fps: must be >= 0, got -2",
            "garbage": "cameras[garbage]: not valid JSON",
            "noenv": "cameras[noenv].url: environment variable CAM_NOENV_PASSWORD is not set",
        }

        def failed(cam):
            st = camera_states(client, KEYS, [cam])[cam]
            return st.get("state") == "failed" and st.get("last_error", "").startswith(expected[cam])

        wait_for(lambda: all(failed(c) for c in expected), 30,
                 f"all of {sorted(expected)} failed naming the field")
        xlen = {c: client.xlen(KEYS.detections(c)) for c in ("traffic", "walk")}
        # more than two lease rounds (lease_ttl_s 10 → a round every 3.3 s): ~8 s of frames at 3 fps
        wait_for(lambda: all(client.xlen(KEYS.detections(c)) >= xlen[c] + 24 for c in xlen), 40,
                 "the good cameras publishing on through two more lease rounds")
        for cam in expected:  # reported once, not every round
            entries = [f for _, f in client.xrange(KEYS.status) if f[b"camera"] == cam.encode()]
            assert [e[b"state"] for e in entries] == [b"failed"], (cam, entries)

        code, cams = _http("GET", api + "/cameras")
        assert code == 200, cams
        listed = {c["id"]: c for c in cams}
        assert listed["broken"]["state"] == "failed" and listed["broken"]["last_error"] == expected["broken"]
        assert listed["broken"]["url"].startswith("rtsp://***@127.0.0.1")
        assert listed["garbage"]["state"] == "failed" and listed["traffic"]["state"] == "online"

        # the same decoder replica (its supervisor's owner id) runs on, healthy, cameras untouched
        code, after = _http("GET", api + "/status")
        assert code == 200 and after["owner"] == before["owner"], (before.get("owner"), after)
        assert {c for c, s in after["cameras"].items() if s["owner"] is not None} == {"traffic", "walk"}
        assert {c: (s["state"], s["last_error"][:len(expected[c])]) for c, s in after["cameras"].items()
                if s["owner"] is None} == {c: ("failed", e) for c, e in expected.items()}  # (were absent)
        assert _decoder_health() == "HEALTHY"
        assert _connecting_entries(client) == connecting_before
    finally:
        client.hdel(f"{PREFIX}:cameras", "broken", "garbage")
        _http("DELETE", api + "/cameras/noenv")


def test_inline_camera_password_is_refused_by_the_api(graph, ray_session, rtsp_with_auth):
    api = ray_session.serve_http_url + "/itest"
    url = rtsp_with_auth.url("walk")  # rtsp://viewer:<password>@127.0.0.1:PORT/walk
    code, body = _http("POST", api + "/cameras", {"id": "x", "url": url})
    assert code == 422, body
    (msg,) = body["detail"]
    assert msg.startswith(f"cameras[x].url: inline password refused; write rtsp://viewer:${{CAM_X_PASSWORD}}@127.0.0.1:"
                          f"{rtsp_with_auth.port}/walk and set CAM_X_PASSWORD in the decoder's environment"), msg
    assert "security.allow_inline_credentials: true" in msg and PASSWORD not in msg
    assert "x" not in {c["id"] for c in _http("GET", api + "/cameras")[1]}


def _dump_every_key(client) -> bytes:
    """Every key and value in the Redis database, whatever its type."""
    chunks: list[bytes] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        chunks.append(key)
        if kind == b"string":
            chunks.append(client.get(key) or b"")
        elif kind == b"hash":
            for k, v in client.hgetall(key).items():
                chunks += [k, v]
        elif kind == b"list":
            chunks += client.lrange(key, 0, -1)
        elif kind == b"set":
            chunks += list(client.smembers(key))
        elif kind == b"zset":
            chunks += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            for eid, fields in client.xrange(key):
                chunks.append(eid)
                for k, v in fields.items():
                    chunks += [k, v]
        elif kind != b"none":  # none: expired meanwhile (a lease)
            pytest.fail(f"key {key!r} of unexpected type {kind!r}")
    return b"\n".join(chunks)


def test_no_camera_password_anywhere_in_redis(graph, session_redis):
    """Last in this module: after everything above ran, no key holds the camera password, and the
    cameras whose URLs name it as ${VAR} published (the decoders expanded it)."""
    config, client = graph
    everything = _dump_every_key(client)
    assert len(everything) > 10_000
    assert PASSWORD.encode() not in everything
    stored = json.loads(client.hget(f"{PREFIX}:cameras", "traffic"))["camera"]["url"]
    assert stored == config.camera("traffic").url and f"${{{PASSWORD_VAR}}}@" in stored
    import ray  # nor in Ray's logs (a runtime env is logged with its values)
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    assert [p.name for p in logs.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()] == []
    for camera in ("traffic", "walk"):
        assert client.xlen(KEYS.detections(camera)) >= 15
        assert camera_states(client, KEYS, [camera])[camera]["state"] == "online"


def _events(client, camera):
    return [json.loads(f[b"json"]) for _, f in client.xrange(KEYS.events(camera))]


def test_walk_camera_events_are_consistent_with_their_counters(graph):
    """Track, zone and line events on vtest.avi: each track ends after it started, each zone exit
    follows its enter (dwell = exit − enter), ids are unique, and the counters hash equals what
    the events stream says (both are written in one round-trip)."""
    _, client = graph

    def seen(events):  # three tracks ended, someone in the left half, someone across the middle
        kinds = [e["kind"] for e in events]
        return kinds.count("track_end") >= 3 and "zone_enter" in kinds and "zone_exit" in kinds and "line_cross" in kinds

    wait_for(lambda: seen(_events(client, "walk")), 120,
             "three pedestrian tracks ended, a zone entered and left and the line crossed on the walk camera")
    pipe = client.pipeline(transaction=True)  # events and counters read at one instant
    pipe.xrange(KEYS.events("walk"))
    pipe.hgetall(KEYS.counts("walk"))
    raw_events, raw_counts = pipe.execute()
    events = [json.loads(f[b"json"]) for _, f in raw_events]
    counts = {k.decode(): int(v) for k, v in raw_counts.items()}
    repeated = [e for e in events if sum(x["id"] == e["id"] for x in events) > 1]
    assert not repeated, f"event ids repeat: {repeated}"
    for e in events:
        assert e["schema"] == "percept.events/v1" and e["camera"] == "walk" and e["track_id"] is not None
        assert {"id", "kind", "ts", "seq", "category", "label"} <= set(e), e
    started = {}
    for e in events:
        if e["kind"] == "track_start":
            started[e["track_id"]] = e
        elif e["kind"] == "track_end":
            assert e["track_id"] in started and e["ts"] >= started[e["track_id"]]["ts"], e
            assert e["frames"] >= 1 and e["duration_s"] >= 0, e
    entered = {}
    for e in events:
        if e["kind"] == "zone_enter":
            entered[(e["track_id"], e["zone"])] = e
        elif e["kind"] == "zone_exit":
            enter = entered.pop((e["track_id"], e["zone"]))
            if not e.get("ended"):
                assert abs(e["dwell_s"] - (e["ts"] - enter["ts"])) < 1e-3, (enter, e)
    # the counters agree with the events on the stream (no more, no fewer)
    expected: dict[str, int] = {}
    for e in events:
        key = {"track_start": f"tracks:{e['category']}",
               "zone_enter": f"zone:{e.get('zone')}:enter:{e['category']}",
               "zone_exit": f"zone:{e.get('zone')}:exit:{e['category']}",
               "line_cross": f"line:{e.get('line')}:{e.get('direction')}:{e['category']}"}.get(e["kind"])
        if key:
            expected[key] = expected.get(key, 0) + 1
    assert counts == expected, (counts, expected)
    assert counts.get("tracks:pedestrian", 0) >= 3



def test_zones_change_at_runtime_without_restarting_the_camera(graph, ray_session):
    """PUT /cameras/traffic with a zone (through `percept cameras zones`): zone events follow on
    that camera's stream while it keeps running (no new 'connecting'); bad changes get 422 naming
    the path; fields that need a restart are refused."""
    _, client = graph
    api = ray_session.serve_http_url + "/itest"
    code, body = _http("PUT", api + "/cameras/traffic", {"zones": {"road": [[0, 0], [1, 1]]}})
    assert code == 422 and body["detail"][0].startswith("zones.road: a zone needs at least 3 points"), body
    code, body = _http("PUT", api + "/cameras/traffic", {"fps": 10})
    assert code == 422 and body["detail"][0].startswith("fps: only zones, lines, anchor, line_margin, zone_margin change at runtime"), body
    code, body = _http("PUT", api + "/cameras/nope", {"zones": {}})
    assert code == 404 and body["detail"].startswith("no camera 'nope'; cameras: ") and "traffic" in body["detail"], body
    connecting_before = _connecting_entries(client)
    changed_at = time.time()
    out = subprocess.run([sys.executable, "-m", "cli", "cameras", "--api", api, "zones", "traffic",
                          "--zones", json.dumps({"road": [[0, 0], [1, 0], [1, 1], [0, 1]]})],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["zones"]["road"], out.stderr

    def road_enters():
        return [e for e in _events(client, "traffic") if e["kind"] == "zone_enter" and e["zone"] == "road"
                and e["ts"] > changed_at]

    wait_for(road_enters, 60, "zone_enter events for the zone added at runtime")
    assert {cam for cam, _ in _connecting_entries(client) - connecting_before} == set(), "a camera was restarted"
    # tracks that were open before the change did not start again (no second track_start per id)
    starts = [e["track_id"] for e in _events(client, "traffic") if e["kind"] == "track_start"]
    assert len(starts) == len(set(starts))
