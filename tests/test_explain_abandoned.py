"""An explanation whose request goes away (the client left, Serve's request timeout) stops at
its next detector batch: it ran on in the one explain worker, minutes of CPU for `masks=4000`,
while the queue already counted its place free and the next operator's explanation waited
behind it. The API's own `explain` and `_run`; the detector is a stand-in that counts batches."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np

from deployments.explain import ExplainApi
from pipeline.config import DetectorConfig, PerceptConfig
from pipeline.keep import KeptFrame
from pipeline.schema import Detections, FrameMeta, FrameResult

from .waiting import wait_for


class CountedDetector:
    """Scores the object 0.9 in every input, one batch at a time, counting them."""

    name = "counted"

    def __init__(self):
        self.batches, self.first = 0, threading.Event()

    def detect_batch(self, inputs):
        self.batches += 1
        self.first.set()
        time.sleep(0.05)  # (the detector's work on the batch, not a wait)
        return [Detections(xyxy=[[1, 2, 30, 40]], scores=[0.9], labels=("car",), categories=("vehicle",))
                for _ in inputs]


def test_an_explanation_whose_request_went_away_stops_at_its_next_batch():
    result = FrameResult(FrameMeta("cam", 3, time.time(), 0.1, 64, 48),
                         Detections(xyxy=[[1, 2, 30, 40]], scores=[0.9], labels=("car",), categories=("vehicle",)), {}, {})
    kept = KeptFrame(np.zeros((48, 64, 3), np.uint8), result, (3,))

    async def kept_frame(camera_id, seq):
        return kept

    async def known(camera_id):
        return None

    api = ExplainApi(PerceptConfig(), None, None, None, SimpleNamespace(kept_frame=SimpleNamespace(remote=kept_frame)))
    api._known = known
    detector = CountedDetector()
    api._detector_for = lambda frame, target: (detector, DetectorConfig(weights="w.pt", imgsz=64))
    ended = threading.Event()
    run = api._run

    def traced_run(*args):
        try:
            return run(*args)
        finally:
            ended.set()

    api._run = traced_run

    async def scenario() -> int:
        asked = asyncio.create_task(api.explain("cam", 0, seq=None, method="rise", masks=4000))  # 250 batches
        assert await asyncio.to_thread(detector.first.wait, 30), "the explanation never started"
        asked.cancel()  # the client gone
        await asyncio.gather(asked, return_exceptions=True)
        at_cancel = detector.batches
        await asyncio.to_thread(wait_for, ended.is_set, 60, "the explanation's work to end")
        return detector.batches - at_cancel

    assert asyncio.run(scenario()) <= 1  # (the batch running as it went away)
    assert api._queued == 0
