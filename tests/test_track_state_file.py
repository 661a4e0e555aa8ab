"""A file camera read faster than real time keeps its tracker on the file's own clock; the
tracks its snapshot left are ended on that clock too (real redis-server and publisher)."""

from __future__ import annotations

import json
import logging

import numpy as np

from pipeline.config import CameraConfig, TrackerConfig
from pipeline.events import EventEngine, events_json
from pipeline.publish import Publisher
from pipeline.schema import Detections, FrameMeta, FrameResult
from pipeline.streams import StreamKeys, connect_redis
from pipeline.track_restore import end_left_tracks, open_tracking
from pipeline.track_state import TrackSnapshots, source_of
from pipeline.tracking import ObjectTracker

KEYS = StreamKeys("filetime")


def test_the_tracks_a_file_cameras_snapshot_left_end_on_the_files_clock(redis_server, caplog):
    """`end_left_tracks` replayed such a camera's frames on the wall clock: the first replayed
    frame came some 1.7e9 s after the snapshot's file time, the tracker took it for an outage
    and dropped every track (here the car, lost since the snapshot), and the engine ended them
    inside the replay, whose events are
    thrown away (the old owner had published them): the car's ``track_end`` was never
    published. Now it ends once, published."""
    camera = CameraConfig(id="f", url="/clips/road.mp4", realtime=False, fps=4)
    cfg = TrackerConfig()
    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    tracker = ObjectTracker(cfg, fps=camera.fps, file_time=True)
    engine = EventEngine.for_camera(camera, track_buffer=cfg.track_buffer)
    snapshots = TrackSnapshots(pub, "f", every=1, hands_over=False)
    try:
        for seq in range(6):  # the file read at 100 frames a second of wall time, 4 of its own; the car
            # is seen up to seq 3 (the last snapshot), not in the two frames replayed after it
            meta = FrameMeta("f", seq, 1.7e9 + seq * 0.01, seq * 0.25, 640, 360)
            car = Detections(xyxy=np.array([[100 + 8 * seq, 200, 180 + 8 * seq, 250]] if seq <= 3 else [],
                                           np.float32).reshape(-1, 4),
                             scores=np.array([0.9] if seq <= 3 else [], np.float32),
                             labels=("car",) if seq <= 3 else (), categories=("vehicle",) if seq <= 3 else ())
            result = FrameResult(meta, tracker.update(car, (360, 640), ts=tracker.time_of(meta)), {}, {})
            if seq <= 3:
                snapshots.tracked(seq, tracker)
            events = engine.update(result, tracker.alive_ids(), tracker.origins)
            pub.publish(result, events_json(events), engine.take_counts())
            if seq <= 3:
                snapshots.published(meta, engine)  # the last snapshot: seq 3; seq 4 and 5 replayed
        assert pub.flush(5)
        assert json.loads(redis_server.client().hget(KEYS.trackstate("f"), "json"))["seq"] == 3
        caplog.set_level(logging.INFO, logger="percept")
        assert end_left_tracks(pub, camera, cfg, track_id_max=tracker.track_id_max) == 1
        assert pub.flush(5)
    finally:
        pub.close()
    said = [r.getMessage() for r in caplog.records if "open tracks" in r.getMessage()]
    assert said == ["camera f: the 1 open tracks its snapshot left end (nobody continues them)"], said  # (not
    # also "1 open tracks continued from seq 3": the log said both of one handover)
    kinds = [json.loads(f[b"json"])["kind"] for _, f in redis_server.client().xrange(KEYS.events("f"))]
    assert kinds.count("track_start") == 1 and kinds.count("track_end") == 1, kinds


def test_a_file_cameras_tracks_its_snapshot_cannot_continue_end_once(redis_server, caplog):
    """A file camera's next owner ends the tracks a dead owner left (the file starts again). Where
    the snapshot could not be replayed (here its zone was edited to leave the frame), the tracks
    were settled, but the count said 0: the owner settled them again from the same snapshot,
    its `closed` still queued. The parked car exited its zone twice (occupancy -1). The warning
    said "replaying seq 8", a frame never published, for what was the edited zone."""
    keys = StreamKeys("filesettle")
    zone = {"lot": [[100, 100], [600, 100], [600, 350], [100, 350]]}
    camera = CameraConfig(id="f", url="/clips/lot.mp4", fps=4, zones=zone)
    cfg = TrackerConfig(snapshot_every=5)
    pub = Publisher(connect_redis(redis_server.url), keys=keys, maxlen=1000).start()
    tracker = ObjectTracker(cfg, fps=4)
    engine = EventEngine.for_camera(camera, track_buffer=cfg.track_buffer)
    snapshots = TrackSnapshots(pub, "f", every=5, source=source_of(camera))
    try:
        for seq in range(8):  # a car parked in the zone; the owner dies after seq 7 (its snapshot: seq 4)
            meta = FrameMeta("f", seq, 1.7e9 + seq / 4, seq / 4, 640, 360)
            car = Detections(xyxy=[[300, 200, 360, 240]], scores=[0.9], labels=("car",), categories=("vehicle",))
            result = FrameResult(meta, tracker.update(car, (360, 640), ts=tracker.time_of(meta)), {}, {})
            snapshots.tracked(seq, tracker)
            events = engine.update(result, tracker.alive_ids(), tracker.origins)
            pub.publish(result, events_json(events), engine.take_counts())
            snapshots.published(meta, engine)
        assert pub.flush(5)
    finally:
        pub.close()
    edited = camera.model_copy(update={"zones": {"lot": [[100, 100], [700, 100], [700, 350], [100, 350]]}})
    nxt = Publisher(connect_redis(redis_server.url), keys=keys, maxlen=1000).start()
    try:
        _, counters = nxt.resume_camera("f")
        with caplog.at_level("WARNING", logger="percept.track_state"):
            open_tracking(nxt, edited, cfg, track_id_max=counters["track_id_max"], is_file=True)
        assert nxt.flush(5)
    finally:
        nxt.close()
    client = redis_server.client()
    kinds = [json.loads(f[b"json"])["kind"] for _, f in client.xrange(keys.events("f"))]
    assert kinds == ["track_start", "zone_enter", "zone_exit", "track_end"], kinds
    counts = {k.decode(): int(v) for k, v in client.hgetall(keys.counts("f")).items()}
    assert counts["zone:lot:enter:vehicle"] == counts["zone:lot:exit:vehicle"] == 1, counts
    said = [r.getMessage() for r in caplog.records if "not restored" in r.getMessage()]
    assert said and all("its zones and lines on its frames" in m and "is outside the 640x360 frame" in m for m in said), said
