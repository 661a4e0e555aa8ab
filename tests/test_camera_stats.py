"""What a camera's numbers say (`pipeline/conductor_stats.py`, `pipeline/metrics.py`): the fps of
a camera that stopped, the fps of a run shorter than its window, and the state Prometheus shows
for a camera whose reader crashed."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from pipeline import metrics as pm
from pipeline.conductor_stats import FPS_WINDOW_S, ConductorStats
from pipeline.sources import SourceState

from .test_conductor import KEYS, run_conductor
from .test_metrics import MemoryRecorder, fake_publisher


class Stats(ConductorStats):
    """The stats mixin over a conductor's attributes it reads (pure logic)."""

    def __init__(self, *, since: float, frames: list[float], state=SourceState.ONLINE, reader_error=None):
        self.source = SimpleNamespace(state=state, frames_read=0, skipped=0, next_seq=0)
        self._fps_since, self._fps_window = since, frames
        self._failure, self._reader_error = None, reader_error


def test_a_cameras_fps_over_a_run_shorter_than_its_window_is_not_divided_by_the_whole_window():
    """A 2 fps camera said 0.4, 0.8, … for 5 s after each start or move to another replica."""
    now = time.monotonic()
    assert Stats(since=now - 2.0, frames=[now - 1.5, now - 1.0, now - 0.5, now]).fps == pytest.approx(2.0, rel=0.05)
    long = Stats(since=now - 60, frames=[now - k * 0.5 for k in range(10)])
    assert long.fps == pytest.approx(10 / FPS_WINDOW_S)


def test_prometheus_shows_a_camera_whose_reader_crashed_as_failed_as_its_hash_does():
    """The state gauge read the source's last state, ``online``, while the hash and /status said
    failed: a camera crash-looping looked online on the dashboards."""
    crashed = Stats(since=0.0, frames=[], reader_error=RuntimeError("boom"))
    assert crashed.state_now == "failed"
    rec, pub = MemoryRecorder(), fake_publisher()
    conductor = SimpleNamespace(camera=SimpleNamespace(id="a"), publisher=pub, source=crashed.source,
                                slot=SimpleNamespace(dropped=0), counters=SimpleNamespace(failed=0), state_now=crashed.state_now)
    m = pm.CameraMetrics(rec, clock=lambda: 1000.0)
    m.track(conductor)
    m.collect({"a": conductor}, pub)
    assert rec.gauges[("percept_camera_state", ("camera", "a"), ("state", "failed"))] == 1
    assert rec.gauges[("percept_camera_state", ("camera", "a"), ("state", "online"))] == 0


def test_a_file_read_to_its_end_says_no_fps_any_more(redis_server):
    """Its hash kept its last rate for good (``stopped``, ``fps 3.20``): `percept top`, `cameras
    ls` and ``GET /cameras`` showed a camera that sends nothing at that rate."""
    payloads, _, conductor = run_conductor(redis_server, frames=20, tracker=False)
    assert len(payloads) == 20 and conductor.source.state == SourceState.STOPPED
    camera = redis_server.client().hgetall(KEYS.camera("cam"))
    assert camera[b"fps"] == b"0.00", camera
