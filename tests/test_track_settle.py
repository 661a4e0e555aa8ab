"""A snapshot whose frames cannot be replayed (more published since than the replay takes, a
zone that no longer fits the frame) leaves tracks nobody continues: the next owner ends each of
them once — the snapshot's open tracks and those started since, brought up to the events stream
first, so that a track that already ended does not end twice (`track_restore.settle_left_tracks`;
before, they were left without a ``track_end``). Real conductors, publisher and redis-server;
the detector is a stand-in."""

from __future__ import annotations

import asyncio
import json

import pytest

import pipeline.track_replay
import pipeline.track_restore
from pipeline.config import CameraConfig, TrackerConfig
from pipeline.publish import Publisher
from pipeline.schema import Detections
from pipeline.streams import connect_redis
from pipeline.track_restore import open_tracking

from .test_handover_tracks import CAMERA, KEYS, events_of, run_until

CFG = TrackerConfig(snapshot_every=1000, track_buffer=5)  # no periodic snapshot; a track ends 5 frames after its last
CAR, VAN = [2, 2, 12, 10], [40, 20, 60, 34]  # two objects far apart in the 64x36 frames


def run_owner(redis_server, frames: int, boxes_at, *, camera: CameraConfig = CAMERA) -> None:
    """One owner continues what the last left (`open_tracking`), publishes ``frames`` frames whose
    objects are ``boxes_at(n)`` (n: the n-th frame it detects), then hands the camera over."""
    calls = {"n": 0}

    async def detect(inp):
        await asyncio.sleep(0.005)  # the detector's work, not a wait
        boxes, calls["n"] = boxes_at(calls["n"]), calls["n"] + 1
        return Detections(xyxy=boxes or [[0, 0, 0, 0]][:0], scores=[0.9] * len(boxes), labels=("car",) * len(boxes),
                          categories=("vehicle",) * len(boxes))

    run_until(redis_server, frames, keep_tracks=True, camera=camera, detect=detect, cfg=CFG, max_inflight=1)


def start_owner(redis_server, camera: CameraConfig = CAMERA) -> None:
    """The next owner starts the camera: what its snapshot left is continued or ended there."""
    publisher = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=5000).start()
    try:
        _, counters = publisher.resume_camera("cam")
        tracker, _, _ = open_tracking(publisher, camera, CFG, track_id_max=counters["track_id_max"], is_file=False)
        assert tracker is not None
        assert publisher.flush(5)
    finally:
        publisher.close()


def left_behind(redis_server) -> int:
    """The first owner's snapshot; the second owner then runs and hands over too, but its snapshot
    is lost (put back to the first: as when its writes were refused, too big), so the next owner
    finds one with frames and events after it: the car ended meanwhile, a van started. Returns
    the car's frames: those the first owner published (6 or more: it stops once it has 6) and
    the 3 it has under the second."""
    client = redis_server.client()
    run_owner(redis_server, 6, lambda n: [CAR])
    snapshot = client.hget(KEYS.trackstate("cam"), "json")
    car_frames = client.xlen(KEYS.detections("cam")) + 3
    run_owner(redis_server, 20, lambda n: [CAR, VAN] if n < 3 else [VAN])
    kinds = [(e["kind"], e["track_id"]) for e in events_of(client)]
    assert [k for k, _ in kinds] == ["track_start", "track_start", "track_end"], kinds
    client.hset(KEYS.trackstate("cam"), "json", snapshot)
    return car_frames


def ends(client) -> list[tuple[int, object, object]]:
    return [(e["track_id"], e["frames"], e["best_score"]) for e in events_of(client) if e["kind"] == "track_end"]


@pytest.mark.parametrize("why", ["too far behind", "a zone no longer fits"])
def test_tracks_of_a_snapshot_that_cannot_be_replayed_end_once(redis_server, monkeypatch, why):
    client = redis_server.client()
    car_frames = left_behind(redis_server)
    [car, van] = [e["track_id"] for e in events_of(client) if e["kind"] == "track_start"]
    assert ends(client) == [(car, car_frames, 0.9)]  # the car ended under the second owner
    camera = CAMERA
    if why == "too far behind":  # the replay takes 2 frames at most here (1000 by default)
        real = pipeline.track_replay.published_after
        monkeypatch.setattr(pipeline.track_replay, "published_after",
                            lambda publisher, cam, seq, since, limit: real(publisher, cam, seq, since, limit=2))
    else:  # a zone in pixels beyond the 64x36 frame: replaying the first frame fails
        camera = CAMERA.model_copy(update={"zones": {"far": [[100, 100], [200, 100], [200, 200]]}})
    start_owner(redis_server, camera)
    # the van, open when the events stopped, ends once; its frames and best score are not known
    # from its events (null); the car is not ended a second time
    top = client.xrevrange(KEYS.detections("cam"), count=1)[0][1]
    assert ends(client) == [(car, car_frames, 0.9), (van, None, None)], ends(client)
    van_end = [e for e in events_of(client) if e["kind"] == "track_end"][-1]
    assert (van_end["seq"], van_end["ts"]) == (int(top[b"seq"]), json.loads(top[b"json"])["frame_ts"])
    assert json.loads(client.hget(KEYS.trackstate("cam"), "json")).get("closed") is True  # its next owner starts afresh
    assert int(client.hget(KEYS.counts("cam"), "tracks:vehicle")) == 2


def test_a_snapshot_with_too_many_events_after_it_is_left(redis_server, monkeypatch, caplog):
    """Past `SETTLE_EVENTS_MAX` events since the snapshot, nothing is ended (said in the log):
    reading them all would hold the camera's start."""
    client = redis_server.client()
    left_behind(redis_server)
    real = pipeline.track_replay.published_after
    monkeypatch.setattr(pipeline.track_replay, "published_after",
                        lambda publisher, cam, seq, since, limit: real(publisher, cam, seq, since, limit=2))
    monkeypatch.setattr(pipeline.track_restore, "SETTLE_EVENTS_MAX", 1)
    with caplog.at_level("WARNING", logger="percept.track_state"):
        start_owner(redis_server)
    assert len(ends(client)) == 1
    assert any("more than 1 events since its snapshot" in r.getMessage() for r in caplog.records)


def test_events_trimmed_past_the_snapshot_leave_its_tracks(redis_server, monkeypatch, caplog):
    """``MAXLEN ~`` dropped the events after the snapshot (the car's track_end among them): which
    of its tracks ended is not known, so none is ended again (a second track_end otherwise)."""
    client = redis_server.client()
    run_owner(redis_server, 6, lambda n: [CAR])
    snapshot = client.hget(KEYS.trackstate("cam"), "json")
    run_owner(redis_server, 25, lambda n: [CAR, VAN] if n < 3 else [VAN] if n < 10 else [])
    assert [e["kind"] for e in events_of(client)] == ["track_start", "track_start", "track_end", "track_end"]
    client.hset(KEYS.trackstate("cam"), "json", snapshot)
    last_id = client.xrevrange(KEYS.events("cam"), count=1)[0][0]
    client.xtrim(KEYS.events("cam"), minid=last_id, approximate=False)  # only the van's track_end is left
    real = pipeline.track_replay.published_after
    monkeypatch.setattr(pipeline.track_replay, "published_after",
                        lambda publisher, cam, seq, since, limit: real(publisher, cam, seq, since, limit=2))
    with caplog.at_level("WARNING", logger="percept.track_state"):
        start_owner(redis_server)
    assert [e["kind"] for e in events_of(client)] == ["track_end"]
    assert any("its events since its snapshot were trimmed" in r.getMessage() for r in caplog.records)


def test_events_since_a_snapshot_are_put_on_its_timeline_before_its_tracks_end():
    """NTP set an edge box's clock 3 days forward while a car stood in a zone, and the frames
    after the snapshot cannot be replayed: one event published since (an attribute change)
    carried its wall-clock time into the settled track, whose `zone_exit` dwell and `track_end`
    duration became the 3 days of the step. On the snapshot's timeline they are what was seen."""
    import numpy as np

    from pipeline.events import EventEngine
    from pipeline.schema import FrameMeta, FrameResult

    zones = {"all": [[0, 0], [1, 0], [1, 1], [0, 1]]}
    engine = EventEngine("cam", zones, None, track_buffer=2)
    car = Detections(xyxy=np.array([[100, 100, 200, 180]], np.float32), scores=np.array([0.9]), labels=("car",),
                     categories=("vehicle",), track_ids=(7,))
    step = 3 * 86400
    for k in range(8):  # 1.75 s in the zone, the wall clock stepped after 1 s (the steady clock goes on)
        wall = 1.7e9 + k * 0.25 + (step if k >= 4 else 0)
        engine.update(FrameResult(FrameMeta("cam", k, wall, None, 640, 360, steady_ts=100 + k * 0.25), car, {}, {}), {7})
    settled = EventEngine.restore(json.loads(json.dumps(engine.snapshot())), "cam", zones, None, track_buffer=2)
    settled.apply_published([{"kind": "attributes", "track_id": 7, "ts": 1.7e9 + 2.25 + step, "seq": 9,
                              "id": "cam:7:attributes:1", "attributes": {"color": {"label": "red", "score": 0.9}}}])
    by_kind = {e.kind: e for e in settled.close(10, 1.7e9 + 2.5 + step)}
    assert by_kind["zone_exit"].dwell_s == 2.25 and by_kind["track_end"].duration_s == 2.25, by_kind
