"""A camera stopped while its reader is stuck in an open (a camera that takes the connection and
never answers): the reader left behind says nothing more once the camera has moved on, whether
it crashes later or the supervisor gave up on the camera's task. Real conductor, publisher and
redis-server; the stuck open is a function the test releases."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pipeline.conductor import CameraConductor
from pipeline.config import CameraConfig
from pipeline.publish import Publisher
from pipeline.sources import SourceError, VideoSource
from pipeline.streams import StreamKeys, connect_redis

from .waiting import wait_for

KEYS = StreamKeys("stuck")


class StuckOpen:
    """A camera whose open hangs until ``release`` is set, then raises ``error``; a conductor
    running it (status events to the camera hash, as `camera_open` wires them)."""

    def __init__(self, redis_server, camera_id: str, error: Exception, read_timeout_s: float):
        self.release, self.opening, self.error = threading.Event(), threading.Event(), error
        self.client = connect_redis(redis_server.url)
        self.client.delete(KEYS.camera(camera_id))
        self.pub = pub = Publisher(self.client, keys=KEYS, maxlen=10).start()

        async def detect(inp):
            raise AssertionError("not run")

        source = VideoSource(camera_id, self._open, fps=0, is_file=False,
                             on_status=lambda e: pub.camera_state(e.camera, e.state.value, error=e.error))
        self.conductor = CameraConductor(CameraConfig(id=camera_id, url="rtsp://h/s", read_timeout_s=read_timeout_s),
                                         source, detect=detect, classifiers={}, publisher=pub, imgsz=64, models={},
                                         max_inflight=1)
        self.camera_id = camera_id

    def _open(self):
        self.opening.set()
        self.release.wait(30)  # the stuck open (released by the test)
        raise self.error

    async def stopped(self, *, cancel_after_s: float | None = None) -> None:
        """Run it until its reader is in the open, then stop it: waited for, or (``cancel_after_s``)
        its task cancelled that long after the stop, as the supervisor gives up on it."""
        running = asyncio.create_task(self.conductor.run())
        await asyncio.to_thread(self.opening.wait, 10)
        await self.conductor.stop()
        if cancel_after_s is None:
            await asyncio.wait_for(running, 10)
            return
        await asyncio.sleep(cancel_after_s)  # into the wait for the reader: not a wait for a condition (it is stuck)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    def state_once_the_reader_ended(self) -> bytes | None:
        self.release.set()
        wait_for(lambda: not self.conductor._reader.is_alive(), 10, "the stuck reader's end")
        assert self.pub.flush(10)
        return self.client.hget(KEYS.camera(self.camera_id), "state")

    def close(self) -> None:
        self.release.set()
        self.pub.close()


def test_a_reader_left_behind_at_stop_that_crashes_later_reports_nothing(redis_server):
    """A camera stopped while its reader is stuck in an open says ``stopped`` and detaches that
    reader. When the open comes back later and the reader crashes, the camera has moved on (it
    may be running again here, or at another replica): that reader's crash once marked it
    ``failed`` over its live state."""
    camera = StuckOpen(redis_server, "orphan", RuntimeError("a bug in the reader"), read_timeout_s=0.1)
    try:
        asyncio.run(camera.stopped())
        assert camera.pub.flush(10)
        assert camera.client.hget(KEYS.camera("orphan"), "state") == b"stopped"
        assert camera.state_once_the_reader_ended() == b"stopped"
    finally:
        camera.close()


def test_a_camera_given_up_on_while_its_reader_is_stuck_says_nothing_more_from_that_reader(redis_server):
    """The supervisor waits 15 s for a stopped camera's task, then cancels it; a reader stuck in
    an open longer than that (``read_timeout_s`` up to 120) was then never detached: when the
    open came back, that reader's ``stopped`` landed over the camera's next run (``online``)."""
    camera = StuckOpen(redis_server, "late", SourceError("late", "no answer", retryable=False), read_timeout_s=60)
    try:
        asyncio.run(camera.stopped(cancel_after_s=0.2))  # (the supervisor's 15 s are up)
        camera.pub.camera_state("late", "online")  # the camera's next run
        assert camera.state_once_the_reader_ended() == b"online"
    finally:
        camera.close()
