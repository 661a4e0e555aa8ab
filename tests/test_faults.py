"""Faults on real processes: cameras that break, hang and come back; Redis going away; Serve
replicas killed; and bad camera input. Each camera's trouble stays with that camera."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from pipeline.config import parse_config
from pipeline.publish import StreamKeys, camera_states, parse_entry_id
from pipeline.redis_server import EmbeddedRedis, free_port

from .conftest import DETECTOR

pytestmark = pytest.mark.integration
PREFIX = "faults"
KEYS = StreamKeys(PREFIX)
APP = "percept-faults"
PASSWORD = "viewer-pw"


@dataclass
class World:
    redis: EmbeddedRedis
    cam_a: Any  # RtspServer for camera "a" (killed and paused by the tests)
    cam_b: Any  # RtspServer with credentials for camera "b" and the bad-path/bad-auth cameras

    def client(self):
        return self.redis.client()

    def xlen(self, cam: str) -> int:
        return self.client().xlen(KEYS.detections(cam))

    def state(self, cam: str) -> dict[str, str]:
        return camera_states(self.client(), KEYS, [cam])[cam]

    def seqs(self, cam: str) -> list[int]:
        return [int(f[b"seq"]) for _, f in self.client().xrange(KEYS.detections(cam))]


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> float:
    """Seconds it took for ``pred`` to hold; fails the test naming ``what`` after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if pred():
                return time.monotonic() - t0
        except Exception:  # redis down while we poll
            pass
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for: {what}")


@pytest.fixture(scope="module")
def world(ray_session, videos, models_dir, tmp_path_factory, rtsp_server_cls):
    from ray import serve

    from deployments.graph import build_app

    tmp = tmp_path_factory.mktemp("faults")
    redis = EmbeddedRedis(tmp / "redis").start()
    cam_a = rtsp_server_cls({"a": str(videos / "traffic.mp4")}).start()
    cam_b = rtsp_server_cls({"b": str(videos / "vtest.avi")}, user="viewer", password=PASSWORD).start()
    (tmp / "notes.mp4").write_text("this is not a video\n")
    (tmp / "truncated.mp4").write_bytes((videos / "traffic.mp4").read_bytes()[:150_000])
    cameras = [
        {"id": "a", "url": cam_a.url("a"), "fps": 3, "watchdog_s": 5},
        {"id": "b", "url": cam_b.url("b"), "fps": 3},
        {"id": "bad-path", "url": cam_b.url("b").rsplit("/", 1)[0] + "/nope", "fps": 3},
        {"id": "bad-auth", "url": f"rtsp://viewer:Wr0ngPw9@127.0.0.1:{cam_b.port}/b", "fps": 3},
        {"id": "unreachable", "url": f"rtsp://127.0.0.1:{free_port()}/x", "fps": 3},
        {"id": "not-video", "url": str(tmp / "notes.mp4")},
        {"id": "truncated", "url": str(tmp / "truncated.mp4")},
    ]
    config = parse_config(
        {
            "redis": {"url": redis.url, "stream_prefix": PREFIX},
            "cameras": cameras,
            "detector": {"weights": DETECTOR, "num_cpus": 1, "threads": 2, "batch": {"max_size": 4, "wait_ms": 10}},
            "decoder": {"lease_ttl_s": 6, "detect_timeout_s": 20},
            "models_dir": models_dir,
        },
        env={},
    )
    serve.run(build_app(config), name=APP, route_prefix="/faults", logging_config={"enable_access_log": False})
    w = World(redis, cam_a, cam_b)
    wait_for(lambda: w.xlen("a") >= 5 and w.xlen("b") >= 5, 120, "both good cameras publishing")
    yield w
    serve.delete(APP)
    for server in (cam_a, cam_b):
        server.stop()
    redis.stop()


def test_bad_cameras_get_clear_errors_and_the_rest_keep_running(world):
    expected = {
        "bad-path": ("reconnecting", "404 Not Found: check the stream path"),
        "bad-auth": ("reconnecting", "401 Unauthorized: check the user and password"),
        "unreachable": ("reconnecting", "connection refused"),
        "not-video": ("failed", "not a video FFmpeg can decode"),
    }
    for cam, (state, text) in expected.items():
        wait_for(lambda: world.state(cam).get("state") == state and text in world.state(cam).get("last_error", ""),
                 30, f"{cam} {state} with '{text}' (now {world.state(cam)})")
    truncated = world.state("truncated")
    assert truncated["state"] in ("failed", "stopped"), truncated
    # credentials of the bad-auth camera never appear in its state or the status stream
    dump = json.dumps(world.state("bad-auth")) + str(world.client().xrange(KEYS.status))
    assert "Wr0ngPw9" not in dump and PASSWORD not in dump
    before = world.xlen("a"), world.xlen("b")
    time.sleep(3)
    assert world.xlen("a") > before[0] and world.xlen("b") > before[1]


def test_camera_outage_reconnects_and_others_never_stall(world):
    world.cam_a.kill()
    killed_at = time.time()
    wait_for(lambda: world.state("a")["state"] == "reconnecting", 10, "camera a reconnecting after the kill")
    b_before = world.xlen("b")
    time.sleep(10 - (time.time() - killed_at))
    assert world.xlen("b") >= b_before + 10, "camera b stalled while camera a was down"
    a_before = world.xlen("a")
    world.cam_a.start()
    took = wait_for(lambda: world.xlen("a") > a_before + 2, 15, "camera a frames again after restart")
    assert took <= 12, f"frames resumed {took:.1f} s after restart"
    assert world.state("a")["state"] == "online"
    states = [f[b"state"] for _, f in world.client().xrange(KEYS.status, min=int(killed_at * 1000))
              if f[b"camera"] == b"a"]
    assert b"reconnecting" in states and states[-1] == b"online", states
    seqs = world.seqs("a")
    assert all(b > a for a, b in zip(seqs, seqs[1:]))


def test_hung_camera_is_detected_and_recovers(world):
    world.cam_a.pause()  # SIGSTOP: the TCP connection stays up, nothing arrives
    try:
        took = wait_for(lambda: world.state("a")["state"] == "reconnecting", 12, "hung camera a detected")
        assert took <= 10.5, f"hang detected after {took:.1f} s"
        b_before = world.xlen("b")
        time.sleep(2)
        assert world.xlen("b") > b_before
    finally:
        world.cam_a.resume()
    a_before = world.xlen("a")
    wait_for(lambda: world.xlen("a") > a_before + 2 and world.state("a")["state"] == "online", 30,
             "camera a back online after SIGCONT")


def test_redis_outage_loses_nothing_and_keeps_order(world):
    client = world.client()
    last_before = {c: world.seqs(c)[-1] for c in ("a", "b")}
    world.redis.kill()
    down_from = time.time()
    time.sleep(5)
    world.redis.start()
    down_to = time.time()
    wait_for(lambda: all(world.seqs(c)[-1] > last_before[c] + 10 for c in ("a", "b")), 30, "streams flowing again")
    time.sleep(2.5)  # one more stats update into the camera hashes
    for cam in ("a", "b"):
        entries = [json.loads(f[b"json"]) for _, f in client.xrange(KEYS.detections(cam))]
        seqs = [e["seq"] for e in entries]
        assert all(b > a for a, b in zip(seqs, seqs[1:])), f"{cam}: out of order"
        during = [e for e in entries if down_from + 0.5 < e["frame_ts"] < down_to - 0.5]
        assert len(during) >= 5, f"{cam}: frames captured during the outage are missing ({len(during)})"
        window = [s for s in seqs if s > last_before[cam]]
        missing = (window[-1] - last_before[cam]) - len(window)
        state = world.state(cam)
        assert missing <= int(state["dropped"]) + int(state["publish_dropped"]), (cam, missing, state)


def _replica_pids(deployment: str) -> list[int]:
    """Replica processes by their title (Ray names them ``ray::ServeReplica:<app>:<deployment>``)."""
    import psutil

    title = f"ServeReplica:{APP}:{deployment}"
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if title in cmd and proc.status() != psutil.STATUS_ZOMBIE:
            pids.append(proc.pid)
    return pids


def test_detector_replica_killed_is_restarted_and_frames_resume(world):
    (pid,) = _replica_pids("detector")
    os.kill(pid, signal.SIGKILL)
    killed = world.xlen("a"), world.xlen("b")
    wait_for(lambda: world.xlen("a") > killed[0] + 3 and world.xlen("b") > killed[1] + 3, 30,
             "frames resume after the detector replica was killed")
    assert _replica_pids("detector") and _replica_pids("detector")[0] != pid


def test_decoder_replica_killed_cameras_are_picked_up_once(world):
    (pid,) = _replica_pids("decoder")
    owner_before = world.client().get(KEYS.lease("a"))
    os.kill(pid, signal.SIGKILL)
    killed = world.xlen("a"), world.xlen("b")
    wait_for(lambda: world.xlen("a") > killed[0] + 3 and world.xlen("b") > killed[1] + 3, 45,
             "cameras picked up again after the decoder replica was killed")
    assert world.client().get(KEYS.lease("a")) != owner_before
    for cam in ("a", "b"):
        seqs = world.seqs(cam)
        assert all(b > a for a, b in zip(seqs, seqs[1:])), f"{cam}: ingested twice or out of order"
