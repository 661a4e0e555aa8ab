"""The per-camera conductor without Ray: out-of-order detections are published in seq order,
tracks get ids, and classifiers run once per track."""

import asyncio
import json
import random

import numpy as np

from pipeline.config import CameraConfig, ClassifierConfig, TrackerConfig
from pipeline.conductor import ClassifierRoute, CameraConductor
from pipeline.publish import Publisher, StreamKeys, connect_redis
from pipeline.schema import Detections
from pipeline.sources import VideoSource
from pipeline.tracking import ObjectTracker, TrackAttributeCache

from .test_sources import Clock, FakeCapture

KEYS = StreamKeys("cond")


class PacedCapture(FakeCapture):
    """A camera delivering a frame every 40 ms of real time (the pipeline keeps up, no drops)."""

    def grab(self):
        import time

        time.sleep(0.04)
        return super().grab()


def run_conductor(redis_server, *, frames=20, tracker=True, reclassify_every=0):
    clock = Clock()
    source = VideoSource("cam", lambda: PacedCapture(frames, clock), fps=0, is_file=True, realtime=False)
    calls = {"classify": 0}

    async def detect(inp):
        await asyncio.sleep(random.uniform(0, 0.12))  # completions arrive out of order
        x = 5 + inp.frame_ts % 1 * 10  # the car drifts a little
        return Detections(xyxy=[[x, 5, x + 20, 25]], scores=[0.9], labels=("car",), categories=("vehicle",))

    async def classify(crops):
        calls["classify"] += len(crops)
        assert all(c.shape == (32, 32, 3) for c in crops)
        await asyncio.sleep(0.01)
        return [{"label": "cab", "score": 0.8} for _ in crops]

    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    conductor = CameraConductor(
        CameraConfig(id="cam", url="x.mp4"),
        source,
        detect=detect,
        classifiers={"vehicle": ClassifierRoute(classify, ClassifierConfig(weights="c.pt", imgsz=32, min_box=4,
                                                                           reclassify_every=reclassify_every))},
        publisher=pub,
        imgsz=64,
        models={"detector": "fake"},
        max_inflight=4,
        tracker=ObjectTracker(TrackerConfig()) if tracker else None,
    )
    asyncio.run(asyncio.wait_for(conductor.run(), 30))
    assert pub.flush(5)
    pub.close()
    payloads = [json.loads(f[b"json"]) for _, f in redis_server.client().xrange(KEYS.detections("cam"))]
    return payloads, calls["classify"]


def test_results_are_published_in_seq_order_with_track_ids(redis_server):
    payloads, _ = run_conductor(redis_server)
    assert [p["seq"] for p in payloads] == list(range(20))
    ids = {p["objects"][0]["track_id"] for p in payloads}
    assert len(ids) == 1 and None not in ids  # one car, one track, all frames
    assert all(p["objects"][0]["attributes"]["type"]["label"] == "cab" for p in payloads)


def test_classifier_runs_once_per_track(redis_server):
    _, calls = run_conductor(redis_server, reclassify_every=0)
    assert calls == 1


def test_reclassify_every_n_frames(redis_server):
    _, calls = run_conductor(redis_server, reclassify_every=5)
    assert 3 <= calls <= 5


def test_without_tracking_every_object_is_classified(redis_server):
    payloads, calls = run_conductor(redis_server, tracker=False)
    assert calls == 20 and all(p["objects"][0]["track_id"] is None for p in payloads)


def test_track_cache_is_bounded():
    async def scenario():
        cache = TrackAttributeCache(reclassify_every=0, forget_after=30)
        loop = asyncio.get_running_loop()
        for tid in range(100):
            fut = loop.create_future()
            fut.set_result({"label": "x"})
            cache.put(tid, tid, fut)
            cache.prune(tid)
        return len(cache)

    assert asyncio.run(scenario()) <= 31


def test_tracker_keeps_ids_for_moving_objects():
    tracker = ObjectTracker(TrackerConfig())
    ids = []
    for step in range(10):
        dets = Detections(xyxy=np.array([[10 + step, 10, 50 + step, 40], [200 - step, 100, 240 - step, 150]]),
                          scores=[0.9, 0.8], labels=("car", "person"), categories=("vehicle", "pedestrian"))
        ids.append(tracker.update(dets, (360, 640)).track_ids)
    assert ids[-1][0] is not None and ids[-1][1] is not None and ids[-1][0] != ids[-1][1]
    assert all(frame == ids[-1] for frame in ids[2:])
