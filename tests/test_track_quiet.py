"""A live camera that goes quiet (reconnecting, every frame failing) ends its open tracks once
the gap is longer than tracks outlive one, at their last frame: a car parked in a zone when the
camera went down kept the zone occupied, with no ``zone_exit`` nor ``track_end``, until the
camera came back, and for good when it never did (`pipeline/track_quiet.py`; the real conductor,
source, tracker, event engine and publisher on a real redis-server; a fake capture)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np

import pipeline.tracking as tracking
from pipeline.conductor import CameraConductor
from pipeline.config import CameraConfig, TrackerConfig
from pipeline.events import EventEngine
from pipeline.publish import Publisher
from pipeline.schema import Detections
from pipeline.source_types import SourceError
from pipeline.sources import VideoSource
from pipeline.streams import StreamKeys, connect_redis

KEYS = StreamKeys("quiet")


class _Capture:
    """``frames`` frames, 0.1 s apart, then the stream drops."""

    def __init__(self, frames: int):
        self.left = frames

    def grab(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        time.sleep(0.1)  # pacing: a 10 fps camera
        return True

    def retrieve(self):
        return True, np.zeros((100, 100, 3), np.uint8)

    def get(self, prop):
        return 0.0

    def release(self):
        pass


def test_a_camera_gone_quiet_ends_its_tracks_at_their_last_frame_and_once(redis_server, monkeypatch):
    monkeypatch.setattr(tracking, "PAUSE_ENDS_TRACKS_S", 1.5)  # (30 s as shipped)
    back = threading.Event()
    opens = []

    def opener():
        opens.append(1)
        if len(opens) == 1:
            return _Capture(12)  # the car parked in the bay, then the camera goes down
        if not back.is_set():
            raise SourceError("gate", "cannot connect: timed out", retryable=True)
        return _Capture(10**6)  # back, the bay empty

    async def detect(inp):
        if back.is_set():
            return Detections()
        return Detections(xyxy=[[40, 40, 60, 60]], scores=[0.9], labels=("car",), categories=("vehicle",))

    camera = CameraConfig(id="gate", url="rtsp://cam/gate", zones={"bay": [[0, 0], [1, 0], [1, 1], [0, 1]]})
    client = connect_redis(redis_server.url)
    publisher = Publisher(client, keys=KEYS, maxlen=1000).start()
    conductor = CameraConductor(camera, VideoSource("gate", opener, fps=0, is_file=False), detect=detect, classifiers={},
                                publisher=publisher, imgsz=64, models={"detector": "fake"}, max_inflight=1,
                                tracker=tracking.ObjectTracker(TrackerConfig(track_buffer=5)),
                                events=EventEngine.for_camera(camera, track_buffer=5))

    def events() -> list[dict]:
        publisher.flush(5)
        return [json.loads(f[b"json"]) for _, f in client.xrange(KEYS.events("gate"))]

    async def until(condition, what: str, timeout_s: float = 30.0):
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"{what}: {[e['kind'] for e in events()]}"
            await asyncio.sleep(0.2)  # polling

    async def scenario():
        task = asyncio.create_task(conductor.run())
        try:
            await until(lambda: len(opens) >= 3, "the camera never went down")  # (reconnecting)
            await until(lambda: any(e["kind"] == "track_end" for e in events()), "no track_end while quiet")
            assert not back.is_set() and not task.done()
            got = events()
            frames = [json.loads(f[b"json"]) for _, f in client.xrange(KEYS.detections("gate"))]
            assert [e["kind"] for e in got] == ["track_start", "zone_enter", "zone_exit", "track_end"], got
            last_seen = max(m["frame_ts"] for m in frames if m["objects"])
            assert all(e["ts"] == last_seen for e in got[2:]), (got, last_seen)  # at the car's last frame, not later
            back.set()
            published = len(frames)
            await until(lambda: client.xlen(KEYS.detections("gate")) >= published + 5, "no frames once back")
            assert [e["kind"] for e in events()] == [e["kind"] for e in got]  # nothing ended twice
        finally:
            await conductor.stop()
            await asyncio.wait({task}, timeout=10)

    try:
        asyncio.run(scenario())
    finally:
        publisher.close()


def test_frames_held_behind_one_slow_detection_continue_the_tracks(redis_server, monkeypatch):
    """One detection slower than the pause (a retry): the frames taken right after it wait in
    flight to be tracked. Quiet was counted from the last frame tracked, so the tracks ended
    before them and they started new ones; they continue them (the tracker itself judges the
    gap after them, by their capture times)."""
    monkeypatch.setattr(tracking, "PAUSE_ENDS_TRACKS_S", 1.5)

    calls: list[float] = []  # frame_ts of each detection

    async def detect(inp):
        calls.append(inp.frame_ts)
        if len(calls) == 15:
            await asyncio.sleep(2.5)  # pacing: the slow detection
        return Detections(xyxy=[[40, 40, 60, 60]], scores=[0.9], labels=("car",), categories=("vehicle",))

    camera = CameraConfig(id="gate", url="rtsp://cam/gate")
    client = connect_redis(redis_server.url)
    publisher = Publisher(client, keys=KEYS, maxlen=1000).start()
    conductor = CameraConductor(camera, VideoSource("gate", lambda: _Capture(10**6), fps=0, is_file=False), detect=detect,
                                classifiers={}, publisher=publisher, imgsz=64, models={"detector": "fake"}, max_inflight=4,
                                tracker=tracking.ObjectTracker(TrackerConfig(track_buffer=5)),
                                events=EventEngine.for_camera(camera, track_buffer=5))

    def frames() -> dict[float, int | None]:
        """frame_ts → the car's track id, of the frames published."""
        publisher.flush(5)
        return {m["frame_ts"]: (m["objects"][0].get("track_id") if m["objects"] else None)
                for m in (json.loads(f[b"json"]) for _, f in client.xrange(KEYS.detections("gate")))}

    async def scenario():
        task = asyncio.create_task(conductor.run())
        try:
            deadline = time.monotonic() + 60
            while len(frames()) < 24:
                assert time.monotonic() < deadline and not task.done(), frames()
                await asyncio.sleep(0.2)  # polling
        finally:
            await conductor.stop()
            await asyncio.wait({task}, timeout=10)

    try:
        asyncio.run(scenario())
        ids, slow = frames(), calls[14]
        before = ids[max(t for t in ids if t < slow)]
        held = [ids[t] for t in sorted(ids) if slow <= t < slow + 1.0]  # (taken while it was detected)
        assert len(held) >= 2 and before is not None and set(held) == {before}, (before, held)
    finally:
        publisher.close()


def test_a_file_read_on_its_own_time_is_never_quiet():
    """A file's frames carry its own clock: a pause of the reader is no gap in the scene."""
    assert not tracking.ObjectTracker(TrackerConfig(), file_time=True).quiet_ends_tracks(1e6)
    assert tracking.ObjectTracker(TrackerConfig()).quiet_ends_tracks(1e6)
    assert not tracking.ObjectTracker(TrackerConfig()).quiet_ends_tracks(5.0)  # (under PAUSE_ENDS_TRACKS_S)
