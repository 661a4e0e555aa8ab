"""A line's hysteresis band changed (``PUT /cameras/{id}`` ``line_margin``) while the camera fails
over: the frames its dead owner published since its snapshot are replayed under the band they were
judged with, the camera's new one from the next live frame."""

from __future__ import annotations

import json

import numpy as np

from pipeline.config import CameraConfig, TrackerConfig
from pipeline.events import EventEngine, events_json
from pipeline.publish import Publisher
from pipeline.schema import Detections, FrameMeta, FrameResult
from pipeline.streams import StreamKeys, connect_redis
from pipeline.track_restore import restore_tracking
from pipeline.track_state import TrackSnapshots
from pipeline.tracking import ObjectTracker

KEYS = StreamKeys("margins")
LINE = {"gate": [[300, 0], [300, 360]]}


def car(k: int) -> Detections:
    x = 200 + 10 * k  # its anchor crosses x = 300 at frame 10
    boxes = np.array([[x - 30, 150, x + 30, 200]] if k < 26 else [], np.float32).reshape(-1, 4)
    return Detections(xyxy=boxes, scores=np.full(len(boxes), 0.9, np.float32), labels=("car",) * len(boxes),
                      categories=("vehicle",) * len(boxes))


def frame(k: int) -> FrameMeta:
    return FrameMeta("cam", k, 1.7e9 + 0.25 * k, None, 640, 360)


def test_a_crossing_published_before_a_failover_is_not_counted_again_under_a_new_line_margin(redis_server):
    """The snapshot had the zones, lines and anchor the frames since were judged by, not the
    margins: with ``line_margin`` raised from 0.1 to 1.0 as the owner died after the car crossed,
    the next owner replayed it inside the wider band, kept its old side, and counted the crossing
    again (same event id, the counter at 2)."""
    old = CameraConfig(id="cam", url="rtsp://cam.example/1", lines=LINE, line_margin=0.1)
    new = old.model_copy(update={"line_margin": 1.0})
    cfg = TrackerConfig(snapshot_every=20)
    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=10_000).start()
    tracker, engine = ObjectTracker(cfg, fps=4), EventEngine.for_camera(old, track_buffer=cfg.track_buffer)
    snaps = TrackSnapshots(pub, "cam", every=20)
    for k in range(14):  # the owner dies after frame 13
        res = FrameResult(frame(k), tracker.update(car(k), (360, 640), ts=frame(k).frame_ts), {}, {})
        snaps.tracked(k, tracker)
        pub.publish(res, events_json(engine.update(res, tracker.alive_ids(), tracker.origins)), engine.take_counts())
        snaps.published(frame(k), engine)
    assert pub.flush(10)
    tracker2, engine2, _ = restore_tracking(pub, new, cfg, track_id_max=max(engine.open_tracks), file_time=False)
    nxt = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=10_000).start()
    nxt.resume_camera("cam")
    for k in range(14, 30):
        res = FrameResult(frame(k), tracker2.update(car(k), (360, 640), ts=frame(k).frame_ts), {}, {})
        nxt.publish(res, events_json(engine2.update(res, tracker2.alive_ids(), tracker2.origins)), engine2.take_counts())
    assert nxt.flush(10)
    assert engine2.line_margin == 1.0  # (the camera's own band from the live frames on)
    client = redis_server.client()
    crossings = [json.loads(f[b"json"]) for _, f in client.xrange(KEYS.events("cam"))]
    crossings = [(e["id"], e["seq"]) for e in crossings if e["kind"] == "line_cross"]
    counters = {k.decode(): v.decode() for k, v in client.hgetall(KEYS.counts("cam")).items() if b"line:" in k}
    assert len(crossings) == 1 and counters == {"line:gate:in:vehicle": "1"}, (crossings, counters)
    pub.close()
    nxt.close()
