"""VideoSource state machine, backoff, sampling and keep-latest, against a scripted capture."""

import time
from typing import Any

import numpy as np
import pytest

from pipeline.backoff import Backoff
from pipeline.sampling import FpsSampler
from pipeline.source_types import Frame, InvalidTransition, SourceError, SourceState
from pipeline.sources import VideoSource
from pipeline.frame_slot import LatestFrameSlot
from pipeline.schema import FrameMeta

from .waiting import wait_for


class FakeCapture:
    """Yields ``n`` frames 1/25 s apart, then fails (a dropped stream or end of file)."""

    def __init__(self, n, clock):
        self.n, self.i, self.clock, self.released = n, 0, clock, False

    def grab(self):
        if self.i >= self.n:
            return False
        self.i += 1
        self.clock.t += 0.04
        return True

    def retrieve(self):
        return True, np.zeros((36, 64, 3), np.uint8)

    def get(self, prop):
        return self.i * 40.0

    def release(self):
        self.released = True


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def make_source(opens, *, is_file=False, loop=False, fps=0, seq_start=0, events=None):
    clock = Clock()
    script = iter(opens)

    def opener():
        item = next(script)
        if isinstance(item, Exception):
            raise item
        return FakeCapture(item, clock)

    src = VideoSource("cam", opener, fps=fps, is_file=is_file, loop=loop, realtime=False,
                      seq_start=seq_start, on_status=(events.append if events is not None else None),
                      clock=clock, sleep=clock.sleep, backoff=Backoff(0.5, 10))
    return src, clock


def take(src, n):
    out = []
    for frame in src.frames():
        out.append(frame)
        if len(out) == n:
            src.stop()
    return out


def test_backoff_doubles_to_cap_and_resets():
    b = Backoff(0.5, 10)
    assert [b.next() for _ in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    b.reset()
    assert b.next() == 0.5


def test_sampler_keeps_requested_rate():
    s = FpsSampler(5)
    kept = [t for t in np.arange(0, 10, 0.04) if s.accept(float(t))]
    assert 49 <= len(kept) <= 51
    assert all(FpsSampler(0).accept(t) for t in range(10))


def test_cameras_at_the_same_rate_keep_frames_on_their_own_phases():
    """Four live cameras at 4 fps whose 30 fps streams start together: without phases they keep
    their frames at the same instants (a burst for the detector); with the phases the process
    gives them, their kept frames are spread over the period, at the same rate."""
    from pipeline.sampling import phase_of

    timeline = np.arange(100.0, 110.0, 1 / 30)
    period = 0.25

    def kept(phase):
        s = FpsSampler(4, phase=phase)
        return [t for t in timeline if s.accept(float(t))]

    together = [kept(None) for _ in range(4)]
    assert all(k == together[0] for k in together)  # the same instants: bursts
    spread = [kept(phase_of(k)) for k in range(4)]
    for times in spread:
        assert 39 <= len(times) <= 41, len(times)  # still 4 fps over 10 s
        assert min(np.diff(times)) >= period - 1 / 30 - 1e-6  # never two frames within a period
    shared = [t for k, times in enumerate(spread) for t in times
              if any(t in other for j, other in enumerate(spread) if j != k)]
    assert shared == []  # no frame kept by two cameras at the same instant


@pytest.mark.parametrize("camera_fps", [1, 5, 25])
def test_a_live_camera_sampled_at_its_own_rate_keeps_every_frame_despite_jitter(camera_fps):
    """Arrivals jitter by a few ms around the sampling grid: a frame a little early was passed
    over for the next one, a whole interval later (5 fps at fps 5, 10 ms of jitter: 3.6 frames/s
    at worst over 200 trials). A faster camera sampled lower still gives at most fps."""
    import random

    rng = random.Random(7)
    interval = 1 / camera_fps
    for trial in range(40):
        phase = rng.random()
        start = 100 + phase * interval + rng.uniform(-0.002, 0.002)  # arrivals on the sampler's grid
        arrivals = sorted(start + k * interval + rng.gauss(0, 0.1 * interval * 0.3) for k in range(60 * camera_fps))
        s = FpsSampler(camera_fps, phase=phase)
        kept = [t for t in arrivals if s.accept(t)]
        assert len(kept) >= 0.97 * len(arrivals), (trial, len(kept), len(arrivals))
    # a frame kept late (a stall): the next is not taken early beside it
    s = FpsSampler(5, phase=0.0)
    arrivals = [100 + k * 0.2 for k in range(20)] + [104.16, 104.17, 104.4]  # 104.0 missed: 104.16 late
    kept = [round(t, 2) for t in arrivals if s.accept(t)]
    assert kept[-3:] == [103.8, 104.16, 104.4], kept
    fast = [100 + k / 30 + rng.gauss(0, 0.003) for k in range(30 * 60)]
    s = FpsSampler(5, phase=0.3)
    kept = [t for t in sorted(fast) if s.accept(t)]
    assert 299 <= len(kept) <= 301 and min(np.diff(kept)) >= 0.2 - 2 / 30, len(kept)


def test_after_a_stall_the_frame_kept_late_has_no_other_kept_beside_it():
    """A live camera at 30 fps sampled at 4 back from a stall: the first frame after it is kept
    (late), and the grid started again from the first point after it — when that frame came just
    before a point, the next frame, 33 ms later, was kept too (a burst of two for the detector,
    one inference wasted; 13 % of stalls)."""
    for back in np.arange(103.0, 103.25, 0.004):
        s = FpsSampler(4, phase=0.0)
        frames = [100 + k / 30 for k in range(60)] + [float(back) + k / 30 for k in range(30)]
        kept = [t for t in frames if s.accept(t)]
        assert min(np.diff(kept)) >= 0.125, (back, kept)
        assert len(kept) >= 11, (back, len(kept))  # (2 s, then 1 s: a point missed after the stall at most)


@pytest.mark.parametrize("n", range(2, 9))
def test_the_phases_stay_spread_for_any_number_of_cameras(n):
    from pipeline.sampling import phase_of

    phases = sorted(phase_of(k) for k in range(n))
    gaps = np.diff(phases + [phases[0] + 1])
    assert min(gaps) >= 0.5 / n, phases


def test_a_live_camera_gets_a_phase_and_a_file_does_not():
    live = VideoSource("cam", lambda: None, fps=4, is_file=False)
    file = VideoSource("clip", lambda: None, fps=4, is_file=True)
    assert live._sampler.phase is not None and file._sampler.phase is None


def test_seq_keeps_increasing_across_reconnects_and_states_are_reported():
    events = []
    err = SourceError("cam", "cannot open rtsp://u:p@h/x", retryable=True)
    src, _ = make_source([3, err, err, 4], events=events, seq_start=100)
    frames = take(src, 7)
    assert [f.meta.seq for f in frames] == list(range(100, 107))
    states = [e.state for e in events]
    assert states[:2] == [SourceState.ONLINE, SourceState.RECONNECTING]
    assert SourceState.ONLINE in states[2:]
    assert all("u:p@" not in (e.error or "") for e in events)  # credentials never leave
    assert src.state == SourceState.STOPPED


def test_reconnect_waits_with_backoff():
    err = SourceError("cam", "down", retryable=True)
    src, clock = make_source([1, err, err, err, 1])
    t0 = clock.t
    take(src, 2)
    # lost after frame 1: waits 0.5, then 1, 2, 4 before the fifth open
    assert clock.t - t0 >= 0.5 + 1 + 2 + 4


def test_missing_file_fails_without_retry():
    events = []
    src, _ = make_source([SourceError("cam", "file not found: x.mp4", retryable=False)], is_file=True, events=events)
    assert list(src.frames()) == []
    assert src.state == SourceState.FAILED and "file not found" in src.last_error


def test_file_with_no_frames_fails():
    src, _ = make_source([0], is_file=True)
    assert list(src.frames()) == []
    assert src.state == SourceState.FAILED


def test_looping_file_continues_pts_and_seq():
    src, _ = make_source([3, 3, 3], is_file=True, loop=True)
    frames = take(src, 7)
    assert [f.meta.seq for f in frames] == list(range(7))
    pts = [f.meta.pts for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == 7


def test_file_without_loop_stops_at_end():
    src, _ = make_source([5], is_file=True)
    assert len(list(src.frames())) == 5
    assert src.state == SourceState.STOPPED


def test_watchdog_reports_a_silent_camera():
    events = []
    src, clock = make_source([2], events=events)
    gen = src.frames()
    next(gen)
    clock.t += 11
    assert src.check_watchdog()
    assert events[-1].state == SourceState.RECONNECTING and "watchdog" in events[-1].error


def test_transitions_are_checked():
    src, _ = make_source([])
    src._transition(SourceState.STOPPED)
    with pytest.raises(InvalidTransition):
        src._transition(SourceState.ONLINE)


def test_latest_slot_keeps_newest_and_counts_drops():
    slot = LatestFrameSlot()
    frames = [Frame(FrameMeta("c", i, 0.0, None, 1, 1), np.zeros((1, 1, 3), np.uint8)) for i in range(3)]
    for f in frames:
        slot.put(f)
    assert slot.get(timeout=0).meta.seq == 2
    assert slot.dropped == 2
    assert slot.get(timeout=0) is None
    slot.close()
    assert slot.get(timeout=1) is None and slot.closed


class FileCapture(FakeCapture):
    """A file: every frame is there at once (reading it does not move the clock)."""

    def grab(self):
        if self.i >= self.n:
            return False
        self.i += 1
        return True


def test_realtime_file_is_paced_across_loops():
    """A looping file is read at its own frame rate, not as fast as it decodes: each frame is
    released when its pts is due, so capture times follow the stream's timeline across loops.
    Only the source's own waits move the (fake) clock here."""
    clock = Clock()
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        clock.sleep(s)

    src = VideoSource("clip", lambda: FileCapture(3, clock), fps=0, is_file=True, loop=True, realtime=True,
                      native_fps=25, clock=clock, sleep=sleep)
    frames = take(src, 50)
    assert len(frames) == 50
    pts = [f.meta.pts for f in frames]
    wall = [f.meta.frame_ts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:])) and pts[-1] - pts[0] >= 49 / 25
    assert all(abs((w - wall[0]) - (p - pts[0])) < 1e-6 for w, p in zip(wall, pts))
    assert sum(sleeps) == pytest.approx(pts[-1] - pts[0])


def test_file_not_realtime_is_read_as_fast_as_it_decodes():
    clock = Clock()
    src = VideoSource("clip", lambda: FileCapture(3, clock), fps=0, is_file=True, loop=True, realtime=False,
                      native_fps=25, clock=clock, sleep=lambda s: pytest.fail(f"slept {s} s"))
    frames = take(src, 10)
    assert len(frames) == 10 and len({f.meta.frame_ts for f in frames}) == 1


def test_slot_drops_its_frame_once_a_newer_one_is_skipped():
    """Demand: while the consumer cannot take a frame, the reader converts none, and a frame
    the slot still holds is outdated by the newer one just skipped (dropped, counted once)."""
    slot = LatestFrameSlot()
    frame = Frame(FrameMeta("c", 0, 0.0, None, 1, 1), np.zeros((1, 1, 3), np.uint8))
    assert not slot.wants_frame()  # nobody asked yet
    slot.want(True)
    assert slot.wants_frame()
    slot.put(frame)
    assert slot.wants_frame() and slot.dropped == 0  # still wanted: the next put replaces it
    slot.want(False)
    assert not slot.wants_frame() and slot.dropped == 1
    assert slot.get(timeout=0) is None
    assert not slot.wants_frame() and slot.dropped == 1
    slot.want(False, at=time.monotonic() + 60)  # busy for a minute yet: nothing to convert
    assert not slot.wants_frame()
    slot.want(False, at=time.monotonic())  # due now: convert, so the frame is ready when it is free
    assert slot.wants_frame()


def test_frames_nobody_wants_are_not_colour_converted():
    clock = Clock()
    retrieved = []

    class Counting(FakeCapture):
        def retrieve(self):
            retrieved.append(self.i)
            return super().retrieve()

    busy = iter([True, False, False, True, False, True, True, True])
    prepared = []

    def prepare(image, meta):  # the detector's input, made in the reader for frames that go on
        prepared.append(meta.seq)
        return ("boxed", meta.seq, image.shape)

    src = VideoSource("c", lambda: Counting(8, clock), fps=0, is_file=True, realtime=False,
                      wants_frame=lambda: next(busy), prepare=prepare, clock=clock, sleep=clock.sleep)
    frames = list(src.frames())
    assert len(frames) == len(retrieved) == len(prepared) == src.converted == 5 and src.skipped == 3
    assert [f.meta.seq for f in frames] == list(range(5)) == prepared
    assert [f.prepared for f in frames] == [("boxed", i, (36, 64, 3)) for i in range(5)]


def reading_with_wait(frames: int, slot: LatestFrameSlot) -> tuple[VideoSource, Any]:
    """A file of ``frames`` read under ``backpressure: wait`` into ``slot`` by a reader thread
    (started; the slot closed at the file's end)."""
    import threading

    clock = Clock()
    src = VideoSource("clip", lambda: FakeCapture(frames, clock), fps=0, is_file=True, realtime=False,
                      wants_frame=slot.wants_frame, wait_for_demand=slot.wait_for_demand,
                      clock=clock, sleep=clock.sleep)

    def read():
        for frame in src.frames():
            slot.put(frame)
        slot.close()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return src, reader


def test_backpressure_wait_processes_every_frame_of_a_file():
    """``backpressure: wait`` (files): the reader waits while the consumer is busy instead of
    skipping, so a slow consumer still gets every frame, in order, and nothing is dropped."""
    slot = LatestFrameSlot()
    src, reader = reading_with_wait(12, slot)
    taken = []
    while True:
        slot.want(True)
        frame = slot.get(timeout=5)
        if frame is None:
            break
        slot.want(False)  # busy with it: a latest-policy reader would skip frames now
        taken.append(frame.meta.seq)
        time.sleep(0.01)  # a slow consumer (real time: the reader thread runs meanwhile)
    reader.join(5)
    assert taken == list(range(12)) and slot.dropped == 0 and src.skipped == 0


def test_backpressure_wait_keeps_a_frame_whose_demand_was_withdrawn_after_the_reader_saw_it():
    """The reader saw demand (``wait_for_demand``: the slot empty, the consumer free), then the
    consumer said it was busy (``want(False)``, after its take filled its last in-flight place)
    before the reader asked ``wants_frame``: the frame was skipped under ``wait``, which promises
    none is. Here the consumer withdraws its demand each time right after the reader saw it."""
    class WithdrawnAtOnce(LatestFrameSlot):
        def wait_for_demand(self, timeout):
            seen = super().wait_for_demand(timeout)
            if seen:
                self.want(False)  # the consumer's want(False), landing between the reader's two looks
            return seen

    slot = WithdrawnAtOnce()
    src, reader = reading_with_wait(6, slot)
    taken = []

    def taken_all() -> bool:  # (a get also returns None when woken by a want: looked at again)
        slot.want(True)
        frame = slot.get(timeout=0.1)
        if frame is not None:
            taken.append(frame.meta.seq)
        return slot.closed and frame is None

    wait_for(taken_all, 30, "the file read to its end", 0)
    reader.join(5)
    assert taken == list(range(6)) and src.skipped == 0, (taken, src.skipped)


def test_the_watchdogs_change_and_the_readers_reach_the_status_hook_in_the_order_made():
    """The watchdog (the event loop) committed ``reconnecting`` and was preempted before its
    status event; the reader got a frame, committed ``online`` and said so; then the watchdog's
    ``reconnecting`` was said last, and the camera's hash showed it while the camera streamed.
    Here the watchdog's event waits up to 1 s for the reader's change, as a preemption would."""
    import threading

    said: list[SourceState] = []
    src = None

    def hook(event):
        if event.state == SourceState.RECONNECTING:  # the watchdog, preempted before its event lands
            reader = threading.Thread(target=src._transition, args=(SourceState.ONLINE,), daemon=True)
            reader.start()
            reader.join(1.0)
        said.append(event.state)

    src = VideoSource("cam", lambda: None, fps=5, is_file=False, on_status=hook, watchdog_s=1.0)
    src._transition(SourceState.ONLINE)
    src.last_frame_at = src._monotonic() - 5  # silent for 5 s
    assert src.check_watchdog()
    wait_for(lambda: len(said) == 3, 10, "the reader's change said")
    assert said == [SourceState.ONLINE, SourceState.RECONNECTING, SourceState.ONLINE] and src.state == said[-1], said


def test_a_camera_failed_between_the_watchdogs_check_and_its_change_is_left_failed(caplog):
    """The watchdog read ``online`` without the lock; the reader failed the camera before its
    change: InvalidTransition (failed → reconnecting), logged as "stats update failed" with a
    traceback, that round's stats lost."""
    said = []
    src = VideoSource("cam", lambda: None, fps=5, is_file=False, on_status=lambda e: said.append(e.state),
                      watchdog_s=1.0)
    src._transition(SourceState.ONLINE)
    src.last_frame_at = src._monotonic() - 5
    clock = src._monotonic

    def reader_fails_meanwhile() -> float:  # (read right after the watchdog's check)
        src._transition(SourceState.FAILED, "401 Unauthorized")
        return clock()

    src._monotonic = reader_fails_meanwhile
    src.check_watchdog()  # (raised InvalidTransition)
    assert src.state == SourceState.FAILED and said == [SourceState.ONLINE, SourceState.FAILED], said


@pytest.mark.parametrize("steps", ["fast", "slow", "one stall"])
def test_a_camera_whose_frames_come_near_its_read_timeout_is_told_to_raise_it(steps):
    """A timelapse camera (a frame every 3 s) against the default read timeout of 2 s went
    reconnecting after every frame, saying only "stream ended or read timed out". One stall of
    a fast camera is no such camera."""
    events, clock = [], Clock()
    gaps = {"fast": [0.04] * 8, "slow": [1.5] * 8, "one stall": [0.04] * 3 + [1.5] + [0.04] * 4}[steps]

    class Paced(FakeCapture):
        def grab(self):
            self.clock.t += (gaps[self.i] if self.i < len(gaps) else 0.04) - 0.04
            return super().grab()

    opens = iter([Paced(8, clock), SourceError("cam", "gone", retryable=False)])

    def opener():
        item = next(opens)
        if isinstance(item, Exception):
            raise item
        return item

    src = VideoSource("cam", opener, fps=0, is_file=False, realtime=False, on_status=events.append, clock=clock,
                      sleep=clock.sleep, backoff=Backoff(0.5, 10), read_timeout_s=2.0)
    assert len(list(src.frames())) == 8  # (then lost, and its next open refused for good)
    [lost] = [e.error for e in events if e.state == SourceState.RECONNECTING][:1]
    hint = " (its frames came 1.5 s apart: a camera this slow needs cameras[cam].read_timeout_s above that, now 2 s)"
    assert lost == "stream ended or read timed out" + (hint if steps == "slow" else ""), lost
