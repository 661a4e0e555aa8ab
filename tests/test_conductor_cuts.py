"""Frames a camera loses, counted once and kept in order (`pipeline/conductor.py`, real
publisher and redis-server, stand-in detectors): a request the detector cancels (Ray Serve
raises `asyncio.CancelledError` at the caller when a replica drains or swaps its model) is a
failure like any other, retried, counted, and the frames after it are still tracked in order;
a frame that failed already and is then cut off at stop() is counted once, not twice."""

from __future__ import annotations

import asyncio

from pipeline.conductor import CameraConductor
from pipeline.config import CameraConfig, TrackerConfig
from pipeline.publish import Publisher
from pipeline.schema import Detections
from pipeline.sources import VideoSource
from pipeline.streams import connect_redis
from pipeline.tracking import ObjectTracker

from .test_conductor import KEYS, PacedCapture, run_conductor
from .test_sources import Clock
from .waiting import wait_for


def car(inp) -> Detections:
    return Detections(xyxy=[[5, 5, 25, 25]], scores=[0.9], labels=("car",), categories=("vehicle",))


def test_a_request_the_detector_cancels_is_retried_counted_and_leaves_tracking_in_order(redis_server):
    """It was re-raised as if the frame itself were cancelled: no retry, not counted (the frames
    read no longer added up), and the frame marked tracked at once, so the next one was tracked
    before the one before it (time going backwards for the motion model)."""
    order, attempts, first = [], {}, {}

    class Recording(ObjectTracker):
        def update(self, detections, shape, ts=None, **kw):
            order.append(ts)
            return super().update(detections, shape, ts=ts, **kw)

    async def slow(inp):
        first.setdefault("ts", inp.frame_ts)
        if inp.frame_ts == first["ts"]:
            await asyncio.sleep(0.8)  # a slow batch: frames 1 and 2 are done before it
        elif "cancelled" not in first:
            first["cancelled"] = inp.frame_ts
        if first.get("cancelled") == inp.frame_ts:
            attempts[inp.frame_ts] = attempts.get(inp.frame_ts, 0) + 1
            raise asyncio.CancelledError()  # the replica cancelled it (and again on the retry)

    payloads, _, conductor = run_conductor(redis_server, frames=8, tracker=Recording(TrackerConfig()), slow=slow)
    assert attempts == {first["cancelled"]: 2}, attempts
    assert conductor.counters.failed == 1 and first["cancelled"] not in order, (conductor.counters, order)
    assert order == sorted(order) and order[0] == first["ts"], order
    assert len(payloads) + conductor.dropped == 8, (len(payloads), conductor.dropped)  # every frame read, once


def test_a_frame_that_failed_and_is_then_cut_off_at_stop_counts_once(redis_server):
    """Frames 1 and 3 get no answer from the detector; frame 2's fails (both tries) and waits
    behind frame 1 to keep the order; stop() cuts the three off: 3 frames lost, 4 were counted
    failed (frame 2 twice; `dropped` in /status too)."""
    seen: list[float] = []

    async def detect(inp):
        if inp.frame_ts not in seen:
            seen.append(inp.frame_ts)
        k = seen.index(inp.frame_ts)
        if k == 2:
            raise RuntimeError("replica gone")  # and again on its retry
        if k >= 1:
            await asyncio.Event().wait()  # a replica that never answers
        return car(inp)

    source = VideoSource("cam", lambda: PacedCapture(1000, Clock()), fps=0, is_file=True, realtime=False)
    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    conductor = CameraConductor(CameraConfig(id="cam", url="x.mp4"), source, detect=detect, classifiers={},
                                publisher=pub, imgsz=64, models={"detector": "fake"}, max_inflight=3,
                                stop_grace_s=0.3)

    async def drive():
        running = asyncio.create_task(conductor.run())
        await asyncio.to_thread(wait_for, lambda: len(seen) == 4 and conductor.counters.failed == 1, 30,
                                "frame 2 failed, frames 1 to 3 in flight", 0.05)
        await conductor.stop()
        await asyncio.wait_for(running, 10)

    try:
        asyncio.run(drive())
    finally:
        pub.close()
    assert (conductor.counters.processed, conductor.counters.failed) == (1, 3), conductor.counters
