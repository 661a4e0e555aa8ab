"""A camera removed while its open tracks were handed over (a new version of the service dropped
it from the config as a replica of the old one handed it over): the replica whose seed removed it
ends those tracks once the old owner lets the lease go (`pipeline/track_orphans.py`). Real
conductors, publisher, registry and redis-server; the detector is a stand-in."""

from __future__ import annotations

import json
import threading

from pipeline.config import TrackerConfig
from pipeline.lease import acquire, release
from pipeline.publish import Publisher
from pipeline.registry import CameraRegistry
from pipeline.streams import connect_redis
from pipeline.track_orphans import end_removed_cameras_tracks

from .test_handover_tracks import CAMERA, KEYS, events_of, run_until
from .waiting import wait_for


def test_a_removed_camera_handed_over_has_its_tracks_ended(redis_server):
    client = redis_server.client()
    registry = CameraRegistry(client, KEYS)
    registry.seed([CAMERA])  # the old version's config
    run_until(redis_server, 8, keep_tracks=True)  # handed over: its track open
    state = json.loads(client.hget(KEYS.trackstate("cam"), "json"))
    [started] = [e["track_id"] for e in events_of(client)]
    seeded = registry.seed([])  # the new version's config has no camera
    assert seeded.wrote and [c.id for c in seeded.removed] == ["cam"]

    old = acquire(client, KEYS.lease("cam"), "cam", ttl=30, token="old-owner")  # still handing over
    publisher = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    reads, out = [], {}

    def listed():
        reads.append(1)
        return {c.id for c in registry.read()[0]}

    worker = threading.Thread(target=lambda: out.update(end_removed_cameras_tracks(
        seeded.removed, publisher=publisher, cfg=TrackerConfig(), owner="new-owner", lease_ttl_s=10, listed=listed,
        poll_s=0.05)))
    worker.start()
    wait_for(lambda: len(reads) >= 3, 20, "the lease tried while the old owner holds it")
    assert [e["kind"] for e in events_of(client)] == ["track_start"], "nothing ended under another's lease"
    release(old)
    worker.join(30)
    publisher.close()
    assert out == {"cam": 1}
    assert [(e["kind"], e["track_id"], e["seq"]) for e in events_of(client)] == [
        ("track_start", started, 0), ("track_end", started, state["seq"])]
    assert json.loads(client.hget(KEYS.trackstate("cam"), "json")).get("closed") is True
    assert client.get(KEYS.lease("cam")) is None, "the lease let go"


def test_a_camera_listed_again_is_left_to_its_owner(redis_server):
    client = redis_server.client()
    registry = CameraRegistry(client, KEYS)
    registry.seed([CAMERA])
    run_until(redis_server, 8, keep_tracks=True)
    removed = registry.seed([]).removed
    client.hset(registry.key, "cam", json.dumps({"source": "api", "camera": CAMERA.model_dump(mode="json")}))
    publisher = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    try:
        assert end_removed_cameras_tracks(removed, publisher=publisher, cfg=TrackerConfig(), owner="new-owner",
                                          lease_ttl_s=10, listed=lambda: {c.id for c in registry.read()[0]}) == {}
    finally:
        publisher.close()
    assert [e["kind"] for e in events_of(client)] == ["track_start"]
    assert not json.loads(client.hget(KEYS.trackstate("cam"), "json")).get("closed")
