"""GET /status's merge of every decoder replica's status (pipeline/decoder_status.py), on a real
redis-server: each replica's cameras with its owner and pid, a line per replica, a replica gone
quiet left out and its entry removed, the answering replica's own keys as before."""

from __future__ import annotations

import asyncio
import json

import pytest

from pipeline.decoder_status import (MAX_AGE_S, live_decoders, merged_status, owner_tries, read_shared,
                                     share_status, share_status_every)
from pipeline.streams import StreamKeys, redis_now

KEYS = StreamKeys("dstatus")


def replica(owner: str, pid: int, cameras: dict) -> dict:
    return {"owner": owner, "pid": pid, "cameras": cameras, "publisher": {"pending": 0},
            "transport": {"detectors": ["grpc"]}}


def test_every_replica_is_in_the_answer_and_a_gone_one_is_dropped(redis_server):
    client = redis_server.client()
    now = 1_000.0
    share_status(client, KEYS, replica("a", 11, {"door": {"state": "online", "processed": 5}}), now - 1)
    share_status(client, KEYS, replica("b", 12, {"gate": {"state": "online", "processed": 9}}), now - 2)
    share_status(client, KEYS, replica("dead", 13, {"gate": {"state": "online", "processed": 1}}), now - MAX_AGE_S - 1)
    shared = read_shared(client, KEYS, now)
    assert sorted(s["owner"] for s in shared) == ["a", "b"]
    assert client.hkeys(KEYS.decoders) and b"dead" not in client.hkeys(KEYS.decoders)  # removed
    # replica "a" answers: its live status stands for its own (fresher than its shared copy)
    own = replica("a", 11, {"door": {"state": "online", "processed": 6}})
    merged = merged_status(own, shared)
    assert merged["owner"] == "a" and merged["pid"] == 11 and merged["publisher"] == {"pending": 0}
    assert merged["cameras"] == {"door": {"state": "online", "processed": 6, "owner": "a", "pid": 11},
                                 "gate": {"state": "online", "processed": 9, "owner": "b", "pid": 12}}
    assert [(d["owner"], d["cameras"]) for d in merged["decoders"]] == [("a", ["door"]), ("b", ["gate"])]
    assert merged["complete"] is True
    assert merged_status(own, [], complete=False)["cameras"] == {"door": {"state": "online", "processed": 6,
                                                                          "owner": "a", "pid": 11}}
    # a camera just handed over here, its old owner's status shared 40 ms ago (its age reads 0.0):
    # the answering replica's own status wins the tie (the old owner's `stopping` was shown)
    moved = [replica("b", 12, {"door": {"state": "stopping", "processed": 9}}) | {"age_s": 0.0}]
    assert merged_status(own, moved)["cameras"]["door"] == {"state": "online", "processed": 6, "owner": "a", "pid": 11}


def test_a_camera_listed_twice_while_it_moves_shows_the_fresher_replica(redis_server):
    client = redis_server.client()
    share_status(client, KEYS, replica("old", 1, {"road": {"state": "online"}}), 100.0 - 4)
    share_status(client, KEYS, replica("new", 2, {"road": {"state": "connecting"}}), 100.0 - 1)
    merged = merged_status(replica("api-side", 3, {}), read_shared(client, KEYS, 100.0))
    assert merged["cameras"]["road"] == {"state": "connecting", "owner": "new", "pid": 2}


async def polled(condition) -> None:
    """Until ``condition()`` holds; the caller's ``asyncio.wait_for`` is the deadline."""
    while not condition():
        await asyncio.sleep(0.02)  # polled under the caller's deadline


def test_a_replica_shares_its_status_on_a_schedule_and_rides_out_an_outage(redis_server):
    client = redis_server.client()
    calls = []

    async def status():
        calls.append(1)
        return replica("r1", 7, {"cam": {"state": "online"}})

    async def main():
        task = asyncio.create_task(share_status_every(status, client, KEYS, interval_s=0.05))
        try:
            await polled(lambda: client.hexists(KEYS.decoders, "r1"))
            redis_server.kill()
            before = len(calls)
            await polled(lambda: len(calls) >= before + 3)  # it keeps trying while Redis is down
            assert not task.done()
        finally:
            task.cancel()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_replica_whose_clock_is_off_still_counts_as_live(redis_server, monkeypatch):
    """Ages are measured on Redis's clock, not each host's: a replica on a host whose clock runs
    30 s behind shares its status, and a replica with the right time counts it as live (on its
    own clocks, its status would look 30 s old: gone)."""
    import time

    client = redis_server.client()
    real_time = time.time

    async def status():
        return replica("behind", 8, {"cam": {"state": "online"}})

    async def share_once():
        task = asyncio.create_task(share_status_every(status, client, KEYS, interval_s=60))
        try:
            await polled(lambda: client.hexists(KEYS.decoders, "behind"))
        finally:
            task.cancel()

    monkeypatch.setattr(time, "time", lambda: real_time() - 30)  # that host's clock
    asyncio.run(asyncio.wait_for(share_once(), 30))
    monkeypatch.undo()
    assert live_decoders(client, KEYS) == 1
    assert [s["owner"] for s in read_shared(client, KEYS)] == ["behind"]


def test_a_status_that_fails_on_something_unforeseen_is_shared_at_the_next_round(redis_server):
    """Only Redis errors were caught: anything else ended the task for good, and the replica
    dropped out of `GET /status` while its cameras ran."""
    client = redis_server.client()
    calls = []

    async def status():
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("a status entry nobody foresaw")
        return replica("r2", 8, {"cam": {"state": "online"}})

    async def main():
        task = asyncio.create_task(share_status_every(status, client, KEYS, interval_s=0.05))
        try:
            await polled(lambda: client.hexists(KEYS.decoders, "r2"))
            assert not task.done()
        finally:
            task.cancel()

    asyncio.run(asyncio.wait_for(main(), 30))


# (Python calls the async __del__ itself when the object goes: a coroutine nobody awaits)
@pytest.mark.filterwarnings("ignore:coroutine 'DecoderDeployment.__del__' was never awaited")
def test_a_decoder_stopped_while_it_starts_closes_what_it_made(redis_server):
    """Serve stops a replica whose __init__ has not finished (the application deleted as a
    failover's replacement starts): its destructor failed on the tasks not made yet
    (AttributeError in the log) and left the publisher it had started running."""
    from deployments.decoder import DecoderDeployment
    from pipeline.publish import Publisher

    cls = DecoderDeployment.func_or_class
    half = cls.__new__(cls)
    half.publisher = Publisher(redis_server.client(), keys=StreamKeys("half"), maxlen=100).start()
    publisher = half.publisher
    asyncio.run(half.__del__())
    assert not publisher._thread.is_alive() and half._stopping  # an __init__ still running stops at its next step


def test_an_entry_that_is_json_but_not_an_object_is_dropped_not_an_error_for_good(redis_server):
    """`"text"` or `42` under a replica's name (not written by percept) raised AttributeError:
    /status failed on every call until someone deleted it."""
    client = redis_server.client()
    client.hset(KEYS.decoders, mapping={"odd-1": '"text"', "odd-2": "42"})
    assert read_shared(client, KEYS) == [] and not client.hexists(KEYS.decoders, "odd-1")
    # an object of another shape (another version's, a foreign writer's): merged_status raised on it
    now = redis_now(client)
    client.hset(KEYS.decoders, mapping={"odd-3": json.dumps({"owner": "x", "written_at": now, "cameras": ["b"]}),
                                        "odd-4": json.dumps({"owner": "y", "written_at": now, "cameras": {"b": "on"}})})
    assert read_shared(client, KEYS) == []
    assert merged_status(replica("here", 1, {}), read_shared(client, KEYS))["cameras"] == {}


def test_a_detector_that_fails_cancels_the_others_calls():
    """With several detectors, one that raises fails the frame at once (it is retried on every
    detector): the others' calls are cancelled, not left running beside the retry."""
    import asyncio

    import numpy as np

    from deployments.decoder import merged_detect
    from pipeline.models import DetectorInput

    ran: list[str] = []

    def handle(name: str, delay: float, error: bool = False):
        class Handle:
            class handle_options:  # calls over gRPC: the frame goes by value (no Ray object store here)
                _by_reference = False

            class detect:
                @staticmethod
                async def remote(x):
                    try:
                        await asyncio.sleep(delay)  # (the fake detector's time on the frame)
                    except asyncio.CancelledError:
                        ran.append(f"{name} cancelled")
                        raise
                    if error:
                        raise RuntimeError(f"{name} failed")
                    ran.append(f"{name} answered")
        return Handle()

    async def main():
        detect = merged_detect([handle("coco", 5.0), handle("signs", 0.01, error=True)])
        with pytest.raises(RuntimeError, match="signs failed"):
            await asyncio.wait_for(detect(DetectorInput(np.zeros((8, 8, 3), np.uint8), (8, 8))), 4.0)
        deadline = asyncio.get_running_loop().time() + 2.0  # (coco would answer after 5 s)
        while not ran and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # polling interval of the deadline loop
        assert ran == ["coco cancelled"]

    asyncio.run(main())


def test_explain_tries_as_many_decoders_as_run_not_only_as_the_config_says(redis_server):
    """A Serve config with ``num_replicas`` raised to 8 (the README says how) and a config of 1:
    12 random calls missed the camera's owner one time in five (503 for a running camera)."""
    import redis

    client = redis_server.client()
    assert owner_tries(client, KEYS, 1) == 12
    for i in range(8):
        share_status(client, KEYS, replica(f"d{i}", 100 + i, {}))
    assert owner_tries(client, KEYS, 1) == 82 and owner_tries(client, KEYS, 10) == 102
    assert owner_tries(redis.Redis(port=1, socket_connect_timeout=0.2), KEYS, 2) == 22  # (Redis away: the config's)


def test_a_camera_that_cannot_run_is_listed_failed_unless_a_replica_runs_it():
    """A camera whose entry does not validate (a variable unset) or whose start failed was absent
    from GET /status (``cameras.c8`` null) while `cameras ls` and `top` said failed."""
    own = {**replica("a", 11, {"door": {"state": "online"}}), "cannot_run": {"c8": "cameras[c8].url: …"}}
    other = {**replica("b", 12, {"gate": {"state": "online"}}), "cannot_run": {"gate": "could not start: x"}, "age_s": 1}
    merged = merged_status(own, [other])
    assert merged["cameras"]["c8"] == {"camera": "c8", "state": "failed", "last_error": "cameras[c8].url: …",
                                       "owner": None, "pid": None}
    assert merged["cameras"]["gate"] == {"state": "online", "owner": "b", "pid": 12}  # run there: not failed
    assert all("cannot_run" not in d for d in merged["decoders"])


def test_prometheus_shows_a_camera_that_cannot_run_as_failed_and_then_in_no_state():
    """The state gauge had no series for such a camera: an alert on state="failed" never fired."""
    from pipeline import metrics as pm

    from .test_metrics import MemoryRecorder, fake_conductor, fake_publisher

    rec, pub = MemoryRecorder(), fake_publisher()
    m = pm.CameraMetrics(rec, clock=lambda: 1000.0)
    running = fake_conductor("a", pub)
    running.source.state = pm.SourceState.ONLINE
    m.track(running)
    m.collect({"a": running}, pub, failed=["c8", "a"])  # (one it runs: its own state, not failed)
    state = {(dict(k[1:])["camera"], dict(k[1:])["state"]): v for k, v in rec.gauges.items() if k[0] == "percept_camera_state"}
    assert state[("c8", "failed")] == 1 and sum(v for (c, _), v in state.items() if c == "c8") == 1
    assert state[("a", "online")] == 1 and state[("a", "failed")] == 0
    m.collect({"a": running}, pub, failed=[])  # fixed, or removed
    assert all(v == 0 for k, v in rec.gauges.items() if k[0] == "percept_camera_state" and ("camera", "c8") in k)


def test_a_camera_another_replica_runs_is_not_failed_here_for_lack_of_its_variable(redis_server):
    """A URL variable this replica lacks but another's has: the camera runs there (its lease
    held), and this replica's metrics said it failed beside the other's online."""
    from pipeline.config import CameraConfig
    from pipeline.lease import acquire
    from pipeline.publish import Publisher
    from pipeline.registry import CameraRegistry
    from pipeline.streams import connect_redis

    client = redis_server.client()
    registry = CameraRegistry(client, KEYS)
    assert registry.add(CameraConfig(id="gate", url="rtsp://u:${CAM_GATE_PASSWORD}@127.0.0.1:9/s"))
    publisher = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=100).start()
    try:
        lease = acquire(client, KEYS.lease("gate"), "gate", ttl=30, token="other-replica")
        assert registry.runnable({}, publisher) == [] and registry.invalid_now == {}
        client.delete(KEYS.lease("gate"))  # nobody runs it: failed, here too
        assert registry.runnable({}, publisher) == [] and list(registry.invalid_now) == ["gate"]
        assert "CAM_GATE_PASSWORD is not set" in registry.invalid_now["gate"] and lease is not None
    finally:
        publisher.close()
