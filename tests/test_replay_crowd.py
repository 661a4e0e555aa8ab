"""A crowd larger than a tracker snapshot holds (`tracking.MAX_SNAPSHOT_TRACKS`, 512; the event
engine's snapshot keeps its 4096): after a crash, the tracks the tracker's snapshot left out
ended in the replay, where the events made are dropped as published already — but their owner
had not ended them: 88 of 600 people were left with a ``track_start`` and no ``track_end``. They
are held open through the replay now, and end at the next owner's first live frame unless their
owner ended them since. Real redis-server, the real tracker, event engine and publisher."""

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
from pipeline.tracking import MAX_SNAPSHOT_TRACKS, ObjectTracker

KEYS = StreamKeys("crowd")
CAMERA = CameraConfig(id="cam", url="rtsp://cam.example/crowd")
W, H, PEOPLE, LEAVING = 3840, 2160, 600, 100
GRID = np.stack([(np.arange(PEOPLE) % 40) * 95.0, (np.arange(PEOPLE) // 40) * 140.0], 1)


def people(k: int, present: np.ndarray) -> Detections:
    boxes = np.concatenate([GRID[present] + k, GRID[present] + k + [60, 100]], 1).astype(np.float32)
    return Detections(xyxy=boxes, scores=np.full(len(boxes), 0.9, np.float32), labels=("person",) * len(boxes),
                      categories=("pedestrian",) * len(boxes))


def test_tracks_a_crowds_snapshot_left_out_end_once_after_a_crash(redis_server):
    publisher = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=10_000).start()
    cfg = TrackerConfig()
    tracker, engine = ObjectTracker(cfg, fps=4), EventEngine("cam", track_buffer=cfg.track_buffer)
    snapshots = TrackSnapshots(publisher, "cam", every=1000)
    everyone, staying = np.arange(PEOPLE), np.arange(PEOPLE - LEAVING)
    for k in range(8):  # 100 people step out of view at frame 3 (lost, not ended); snapshot at 4; crash after 7
        meta = FrameMeta("cam", k, 1000 + 0.25 * k, None, W, H)
        result = FrameResult(meta, tracker.update(people(k, everyone if k < 3 else staying), (H, W), ts=meta.frame_ts),
                             {}, {})
        if k == 4:
            snapshots.tracked(k, tracker)
        publisher.publish(result, events_json(engine.update(result, tracker.alive_ids(), tracker.origins)))
        snapshots.published(meta, engine)
    lost = set(engine.open_tracks) - set(int(t) for t in result.objects.track_ids)
    assert len(lost) == LEAVING and tracker.alive_ids() >= lost  # lost there, still open
    assert publisher.flush(10)
    state = json.loads(publisher.client.hget(KEYS.trackstate("cam"), "json"))
    left_out = set(engine.open_tracks) - ObjectTracker.restore(state["tracker"], cfg, fps=4).alive_ids()
    assert left_out and len(left_out) == PEOPLE - MAX_SNAPSHOT_TRACKS and left_out <= lost, left_out
    ended_there = sorted(left_out)[:5]  # their owner ended these after the snapshot (published)
    publisher.publish_events("cam", 1001.9, [("track_end", json.dumps(
        {"kind": "track_end", "camera": "cam", "track_id": t, "seq": 7, "ts": 1001.75})) for t in ended_there])
    assert publisher.flush(10)

    tracker2, engine2, done = restore_tracking(publisher, CAMERA, cfg, track_id_max=max(engine.open_tracks),
                                               file_time=False)
    assert done.replayed == 3 and left_out - set(ended_there) <= set(engine2.open_tracks), done
    meta = FrameMeta("cam", 8, 1002.0, None, W, H)  # the next owner's first live frame
    live = FrameResult(meta, tracker2.update(people(8, staying), (H, W), ts=meta.frame_ts), {}, {})
    ends = [e.track_id for e in engine2.update(live, tracker2.alive_ids(), tracker2.origins) if e.kind == "track_end"]
    publisher.close()
    assert set(ends) >= left_out - set(ended_there), "tracks left out of the snapshot never ended"
    assert not set(ends) & set(ended_there), "a track its owner ended ended twice"
    assert len(ends) == len(set(ends))
