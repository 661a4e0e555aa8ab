"""A camera removed while its open tracks were handed over (a new config dropped it, or the API
deleted it, as a replica of the old version handed it over): the removal is noted in the
registry, and a sweep (every supervisor round) ends those tracks once the old owner lets the
lease go (`pipeline/track_orphans.py`). Real conductors, publisher, registry, supervisor and
redis-server; the detector is a stand-in."""

from __future__ import annotations

import asyncio
import functools
import json
import threading

import pytest

from pipeline.assignment import CameraSupervisor
from pipeline.config import CameraConfig, TrackerConfig
from pipeline.lease import acquire, release
from pipeline.publish import Publisher
from pipeline.registry import CameraRegistry
from pipeline.streams import camera_data_keys, connect_redis
from pipeline.track_orphans import RemovedCameraSweeper

from .test_handover_tracks import CAMERA, KEYS, events_of, run_until
from .waiting import wait_for


def handed_over_then_removed(redis_server, *, through_api: bool) -> tuple[CameraRegistry, dict, int]:
    """The camera handed over with one open track, then removed: (registry, its snapshot, the track)."""
    client = redis_server.client()
    registry = CameraRegistry(client, KEYS)
    registry.seed([CAMERA])  # the old version's config
    run_until(redis_server, 8, keep_tracks=True)
    state = json.loads(client.hget(KEYS.trackstate("cam"), "json"))
    [started] = [e["track_id"] for e in events_of(client)]
    if through_api:
        assert registry.remove("cam")
    else:
        assert registry.seed([CameraConfig(id="other", url="rtsp://cam.example/9")])  # the new config lacks it
    assert [r.camera.id for r in registry.removed_cameras()] == ["cam"]
    return registry, state, started


def sweeper(redis_server, registry: CameraRegistry, *, ttl: float = 10, keep_s: float | None = None) -> RemovedCameraSweeper:
    return RemovedCameraSweeper(
        registry, lambda: Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start(), TrackerConfig(),
        lease_ttl_s=ttl, keep_s=keep_s)


def ended_as_a_stop_would(client, started: int, state: dict) -> None:
    assert [(e["kind"], e["track_id"], e["seq"]) for e in events_of(client)] == [
        ("track_start", started, 0), ("track_end", started, state["seq"])]
    assert events_of(client)[-1]["ts"] == state["frame_ts"]  # when it was last seen, not when it was swept
    assert json.loads(client.hget(KEYS.trackstate("cam"), "json")).get("closed") is True


@pytest.mark.parametrize("through_api", [False, True], ids=["config", "api"])
def test_a_removed_camera_handed_over_has_its_tracks_ended_once_its_lease_is_free(redis_server, through_api):
    client = redis_server.client()
    registry, state, started = handed_over_then_removed(redis_server, through_api=through_api)
    sweeps = sweeper(redis_server, registry)
    sweep = functools.partial(sweeps.sweep, "r1:removed")
    try:
        old = acquire(client, KEYS.lease("cam"), "cam", ttl=30, token="old-owner")  # still handing over
        assert sweep() == {} and [e["kind"] for e in events_of(client)] == ["track_start"]
        assert [r.camera.id for r in registry.removed_cameras()] == ["cam"], "kept for a later sweep"
        release(old)
        assert sweep() == {"cam": 1}
        assert sweep() == {} and registry.removed_cameras() == [], "ended once"
    finally:
        sweeps.close()
    ended_as_a_stop_would(client, started, state)
    assert client.get(KEYS.lease("cam")) is None, "the lease let go"


def test_a_camera_listed_again_is_left_to_its_owner(redis_server):
    client = redis_server.client()
    registry, _, _ = handed_over_then_removed(redis_server, through_api=True)
    assert registry.add(CAMERA)
    sweeps = sweeper(redis_server, registry)
    try:
        assert sweeps.sweep("r1:removed") == {}
    finally:
        sweeps.close()
    assert registry.removed_cameras() == []
    assert [e["kind"] for e in events_of(client)] == ["track_start"]
    assert not json.loads(client.hget(KEYS.trackstate("cam"), "json")).get("closed")


def test_a_camera_back_with_an_entry_that_cannot_run_still_has_its_tracks_ended(redis_server):
    client = redis_server.client()
    registry, state, started = handed_over_then_removed(redis_server, through_api=True)
    client.hset(registry.key, "cam", json.dumps({"source": "api", "camera": {"id": "cam", "url": "x", "fps": -2}}))
    sweeps = sweeper(redis_server, registry)
    try:
        assert sweeps.sweep("r1:removed") == {"cam": 1}
    finally:
        sweeps.close()
    ended_as_a_stop_would(client, started, state)


def test_a_note_written_again_meanwhile_is_kept(redis_server):
    """Compare-and-delete: a camera removed again after a sweep read its note keeps the new note."""
    registry, _, _ = handed_over_then_removed(redis_server, through_api=True)
    [seen] = registry.removed_cameras()
    registry.client.hset(registry.removed_key, "cam", seen.note + b" ")  # removed again, a new note
    assert not registry.forget_removed("cam", seen.note)
    assert [r.camera.id for r in registry.removed_cameras()] == ["cam"]


def test_every_supervisor_round_sweeps_the_removed_cameras(redis_server):
    """The decoder's wiring: a supervisor given the sweep ends the tracks of a camera removed
    while nobody ran it, and never claims the camera."""
    client = redis_server.client()
    registry, state, started = handed_over_then_removed(redis_server, through_api=False)
    publisher = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    sweeps = sweeper(redis_server, registry, ttl=3)
    started_here: list[str] = []

    async def start(camera):
        started_here.append(camera.id)
        raise RuntimeError("stand-in: cameras are not run here")

    sup = CameraSupervisor(lambda: registry.read()[0], client=client, keys=KEYS, start_camera=start, replicas=1,
                           lease_ttl_s=3, owner="r1", publisher=publisher,
                           end_removed=sweeps.sweep)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    run = asyncio.run_coroutine_threadsafe(sup.run(), loop)
    try:
        wait_for(lambda: registry.removed_cameras() == [], 30, "the removed camera swept")
    finally:
        asyncio.run_coroutine_threadsafe(sup.stop(), loop).result(5)
        run.result(30)
        loop.call_soon_threadsafe(loop.stop)
        publisher.close()
        sweeps.close()
    ended_as_a_stop_would(client, started, state)
    assert "cam" not in started_here


def data_ttls(client) -> dict[str, int]:
    """Each of the camera's own keys (`camera_data_keys`): its TTL in seconds (-1 kept for good, -2 gone)."""
    return {key: client.ttl(key) for key in camera_data_keys(KEYS, "cam")}


@pytest.mark.parametrize("keep_s", [3600, 0, None], ids=["an-hour", "at-once", "for-good"])
def test_a_removed_cameras_data_goes_after_removed_keep_s_once_its_tracks_are_ended(redis_server, keep_s):
    """A removed id's streams, counters, snapshot and hash stayed in Redis for good (adding and
    removing ids grew it without bound): once its tracks are ended they expire after
    `redis.removed_keep_s`."""
    client = redis_server.client()
    registry, _, _ = handed_over_then_removed(redis_server, through_api=True)
    assert set(data_ttls(client).values()) == {-1}, "all five written by the run, none to expire yet"
    sweeps = sweeper(redis_server, registry, keep_s=keep_s)
    try:
        assert sweeps.sweep("r1:removed") == {"cam": 1}
    finally:
        sweeps.close()
    ttls = data_ttls(client)
    if keep_s is None:
        assert set(ttls.values()) == {-1}
    elif keep_s == 0:
        assert set(ttls.values()) == {-2}
    else:
        assert all(keep_s - 60 <= t <= keep_s for t in ttls.values()), ttls


def test_an_id_added_again_keeps_its_data_for_good(redis_server):
    """The camera added again under its id within `removed_keep_s`: its next owner persists
    the keys (they would vanish under the running camera)."""
    client = redis_server.client()
    registry, _, _ = handed_over_then_removed(redis_server, through_api=True)
    sweeps = sweeper(redis_server, registry, keep_s=3600)
    try:
        assert sweeps.sweep("r1:removed") == {"cam": 1}
    finally:
        sweeps.close()
    assert all(t > 0 for t in data_ttls(client).values())
    assert registry.add(CAMERA)
    run_until(redis_server, 3, keep_tracks=False)
    assert set(data_ttls(client).values()) == {-1}


def test_the_expiry_is_set_only_while_the_sweeps_lease_holds(redis_server):
    """A sweep that stalled past its lease set the expiry on the keys of the id added again and
    running under its new owner (who had persisted them already): fenced now, nothing is set."""
    from pipeline.lease import acquire
    from pipeline.streams import expire_removed_camera

    client = redis_server.client()
    handed_over_then_removed(redis_server, through_api=True)
    assert acquire(client, KEYS.lease("cam"), "cam", ttl=30, token="new-owner") is not None
    assert expire_removed_camera(client, KEYS, "cam", 3600, (KEYS.lease("cam"), "r1:removed")) is None
    assert set(data_ttls(client).values()) == {-1}
    assert expire_removed_camera(client, KEYS, "cam", 3600, (KEYS.lease("cam"), "new-owner")) == []
    assert all(t > 0 for t in data_ttls(client).values())


def test_a_persist_redis_refuses_is_said(redis_server, caplog):
    """An ACL without PERSIST left an id added again to expire under its running camera, unsaid."""
    from pipeline.publish_items import resume_point

    admin = redis_server.client()
    handed_over_then_removed(redis_server, through_api=True)
    admin.expire(KEYS.detections("cam"), 3600)
    admin.acl_setuser("nopersist", enabled=True, passwords=["+np"], keys=["*"], commands=["+@all", "-persist"])
    client = connect_redis(redis_server.url.replace("redis://", "redis://nopersist:np@"))
    resume_point(client, KEYS, "cam")
    assert "its data may expire while it runs" in caplog.text and "permissions to run the 'persist'" in caplog.text, caplog.text
    assert admin.ttl(KEYS.detections("cam")) > 0
