"""VideoSource against the clocks and timelines real cameras and files have: a wall clock that
steps, a stream that drops after each first frame, files whose timestamps are missing or start
again, and a reader still opening when its camera is stopped."""

import threading

from pipeline.backoff import Backoff
from pipeline.source_types import SourceError, SourceState
from pipeline.sources import VideoSource
from tests.test_sources import Clock, FakeCapture, FileCapture, make_source, take


class PositionCapture(FakeCapture):
    """A file of ``n`` frames at 25 fps whose position is ``position(i)`` ms."""

    def __init__(self, n, clock, position):
        super().__init__(n, clock)
        self.position = position

    def get(self, prop):
        return self.position(self.i)


def test_a_wall_clock_stepped_back_neither_starves_nor_floods_a_live_camera():
    mono, step = Clock(), [0.0]
    src = VideoSource("cam", lambda: FakeCapture(500, mono), fps=5, is_file=False,
                      clock=lambda: mono.t + step[0], monotonic=mono, sleep=mono.sleep)
    frames = src.frames()
    before = [next(frames) for _ in range(10)]  # 2 s of a 25 fps camera sampled at 5
    step[0] = -60.0  # NTP steps the wall clock back a minute
    t0 = mono.t
    after = [next(frames) for _ in range(10)]
    assert mono.t - t0 < 2.5  # still 5 frames a second (it took a minute before)
    assert after[0].meta.frame_ts < before[-1].meta.frame_ts  # frame_ts is the wall clock, as it is
    assert src.check_watchdog() is False and src.state == SourceState.ONLINE


def test_a_stream_that_drops_after_each_first_frame_backs_off():
    clock, waits = Clock(), []

    def sleep(s):
        waits.append(s)
        clock.sleep(s)

    src = VideoSource("cam", lambda: FakeCapture(1, clock), fps=0, is_file=False, clock=clock, sleep=sleep,
                      backoff=Backoff(0.5, 10))
    take(src, 7)
    assert waits == [0.5, 1, 2, 4, 8, 10]  # not 0.5 forever: one frame is no proof the camera is back


def test_a_file_without_timestamps_or_whose_timestamps_start_again_keeps_its_rate():
    for position in (lambda i: 0.0, lambda i: (i % 50) * 40.0):  # raw H.264; two recordings joined
        clock = Clock()
        src = VideoSource("f", lambda: PositionCapture(100, clock, position), fps=5, is_file=True, realtime=False,
                          native_fps=25, clock=clock, sleep=clock.sleep)
        frames = list(src.frames())
        assert len(frames) == 20, [f.meta.pts for f in frames]  # 4 s of a 25 fps file at 5 fps
        pts = [f.meta.pts for f in frames]
        assert pts == sorted(pts) and abs(pts[-1] - pts[0] - 3.8) < 0.05


def test_after_stop_a_reader_still_opening_reports_only_its_end():
    events, opening, release = [], threading.Event(), threading.Event()

    def slow_open():
        opening.set()
        release.wait(30)
        raise SourceError("cam", "cannot open rtsp://cam/s1: no answer", retryable=True)

    src = VideoSource("cam", slow_open, fps=0, is_file=False, on_status=events.append)
    reader = threading.Thread(target=lambda: list(src.frames()))
    reader.start()
    assert opening.wait(30)
    src.stop()
    release.set()  # the open fails after the camera was stopped
    reader.join(30)
    assert [e.state for e in events][:4] == [SourceState.STOPPED]

    detached = VideoSource("cam", lambda: FakeCapture(3, Clock()), fps=0, is_file=True, on_status=events.append)
    detached.detach()  # its owner stopped waiting: nothing it says lands any more
    assert len(list(detached.frames())) == 3 and len(events) == 1


def test_a_frame_keeps_the_file_position_it_was_read_at():
    clock = Clock()
    src = VideoSource("f", lambda: FakeCapture(5, clock), fps=0, is_file=True, realtime=False, clock=clock,
                      sleep=clock.sleep)
    assert [f.meta.pts for f in src.frames()] == [0.04, 0.08, 0.12, 0.16, 0.2]  # no shift where none is due


def test_a_file_held_back_by_a_slow_graph_is_not_reported_silent():
    clock, events, asked = Clock(), [], []

    def wait_for_demand(timeout):  # the graph takes a frame only every 30 s (a model still loading)
        asked.append(clock.t)
        clock.t += timeout
        return len(asked) % 120 == 0

    src = VideoSource("f", lambda: FakeCapture(3, clock), fps=0, is_file=True, realtime=False, clock=clock,
                      sleep=clock.sleep, on_status=events.append, wait_for_demand=wait_for_demand)
    for _ in src.frames():
        assert src.check_watchdog() is False
    assert [e.state for e in events][:4] == [SourceState.ONLINE, SourceState.STOPPED]


def test_a_realtime_file_with_a_gap_in_its_timestamps_is_not_paced_through_the_gap():
    """Recordings joined with an hour between them (an NVR export): the reader does not wait the
    hour out, silent (the watchdog would take the camera for lost); the gap is closed like
    timestamps that start again."""
    clock, waits = Clock(), []

    def sleep(s):
        waits.append(s)
        clock.sleep(s)

    position = lambda i: i * 40.0 + (3_600_000.0 if i > 50 else 0.0)  # noqa: E731
    src = VideoSource("nvr", lambda: PositionCapture(100, clock, position), fps=0, is_file=True, realtime=True,
                      native_fps=25, clock=clock, sleep=sleep, watchdog_s=10)
    frames = list(src.frames())
    assert len(frames) == 100 and max(waits) < 1, max(waits)
    pts = [f.meta.pts for f in frames]
    assert pts == sorted(pts) and abs(pts[-1] - pts[0] - 99 * 0.04) < 0.05, (pts[0], pts[-1])
    assert src.state == SourceState.STOPPED
    # keyframes alone (`decode: keyframes`) are that far apart by design: kept, and paced (a
    # scene cut's extra keyframe 1 s after one makes the next 25 s no gap); an hour between two
    # of them (joined) is closed to their longest step
    at = [0, 25, 26, 50, 3675, 3700]
    keyframes = VideoSource("kf", lambda: PositionCapture(6, clock, lambda i: at[i - 1] * 1000.0), fps=0,
                            is_file=True, realtime=True, native_fps=25, clock=clock, sleep=sleep, watchdog_s=10,
                            sparse=True)
    assert [f.meta.pts for f in keyframes.frames()] == [0.0, 25.0, 26.0, 50.0, 75.0, 100.0]


def test_a_file_paced_to_keyframes_further_apart_than_the_watchdog_is_not_reported_silent():
    """``decode: keyframes`` on a realtime file with a keyframe every 12 s (not a gap: every step
    is that long): the reader waits 12 s for each, held back by the file's own time, and the
    watchdog (10 s) took that for silence, the camera reconnecting and online again every frame."""
    clock, events = Clock(), []
    src = VideoSource("kf", lambda: PositionCapture(6, clock, lambda i: (i - 1) * 12_000.0), fps=0, is_file=True,
                      realtime=True, native_fps=25, clock=clock, sleep=clock.sleep, monotonic=clock, watchdog_s=10,
                      sparse=True, on_status=events.append)
    pts = []
    for frame in src.frames():
        pts.append(frame.meta.pts)
        assert src.check_watchdog() is False, frame.meta.seq
    assert pts == [0.0, 12.0, 24.0, 36.0, 48.0, 60.0]
    assert [e.state for e in events] == [SourceState.ONLINE, SourceState.STOPPED], events


def test_a_looping_file_whose_next_pass_has_no_frame_backs_off():
    """The file was replaced by one with nothing decodable: the loop reopens it with backoff,
    not as fast as it can (a million opens a second before)."""
    clock, waits, passes = Clock(), [], iter([3] + [0] * 6 + [3] * 100)

    def sleep(s):
        waits.append(s)
        clock.sleep(s)

    src = VideoSource("clip", lambda: FakeCapture(next(passes), clock), fps=0, is_file=True, loop=True,
                      realtime=False, native_fps=25, clock=clock, sleep=sleep, backoff=Backoff(0.5, 10))
    frames = take(src, 6)
    assert [f.meta.seq for f in frames] == list(range(6))
    assert waits == [0.5, 1, 2, 4, 8, 10], waits


def test_a_looping_files_pass_with_nothing_decodable_does_not_hold_back_the_passes_after_it():
    """A pass whose frames were read but none decoded (the file being rewritten) left the
    timeline where it was: the next passes started behind the sampler, which had gone past that
    pass's frames, and nothing of them was taken until they caught up (13 passes of a 3-frame
    clip after a 50-frame one)."""
    class Undecodable(FakeCapture):
        def retrieve(self):
            return False, None

    clock, opened, passes = Clock(), [], iter([3, -50] + [3] * 100)

    def open_capture():
        opened.append(n := next(passes))
        return Undecodable(-n, clock) if n < 0 else FakeCapture(n, clock)

    src = VideoSource("clip", open_capture, fps=25, is_file=True, loop=True, realtime=False, native_fps=25,
                      clock=clock, sleep=clock.sleep, backoff=Backoff(0.5, 10))
    frames = take(src, 6)
    assert len(opened) == 3 and frames[3].meta.pts > 2.0, ([f.meta.pts for f in frames], opened)


def test_a_looping_file_that_cannot_be_opened_for_a_moment_is_tried_again_not_failed():
    """The clip is being replaced (``cp`` truncates it first, or it is deleted and written
    again): the next pass's open fails. The camera failed for good and kept its lease, so nobody
    tried it again; a file read before is now tried again with backoff, like a stream."""
    clock, waits, events = Clock(), [], []
    opens = iter(["ok", "gone", "gone", "ok"] + ["ok"] * 100)

    def sleep(s):
        waits.append(s)
        clock.sleep(s)

    def open_capture():
        if next(opens) == "gone":
            raise SourceError("clip", "clip.mp4 is not a video FFmpeg can decode", retryable=False)
        return FakeCapture(3, clock)

    src = VideoSource("clip", open_capture, fps=0, is_file=True, loop=True, realtime=False, native_fps=25,
                      clock=clock, sleep=sleep, on_status=events.append, backoff=Backoff(0.5, 10))
    frames = take(src, 6)
    assert [f.meta.seq for f in frames] == list(range(6)) and waits == [0.5, 1], waits
    # (the second failed open, as the first: not said again)
    assert [e.state for e in events][:3] == [SourceState.ONLINE, SourceState.RECONNECTING, SourceState.ONLINE], events

    def never_a_video():
        raise SourceError("new", "new.mp4 is not a video FFmpeg can decode", retryable=False)

    first = VideoSource("new", never_a_video, fps=0, is_file=True, loop=True, realtime=False, native_fps=25,
                        clock=clock, sleep=sleep)
    assert take(first, 1) == [] and first.state == SourceState.FAILED  # never read: a wrong file, failed


def test_a_looping_still_image_is_opened_once_a_sampling_period():
    """A picture (one frame a pass) at fps 2 was reopened and decoded every 40 ms, its frame
    interval at 25 fps: 30 % of a core for a demo's still camera."""
    clock, opens = Clock(), []

    def open_capture():
        opens.append(clock.t)
        return FakeCapture(1, clock)

    src = VideoSource("still", open_capture, fps=2, is_file=True, loop=True, realtime=True, native_fps=25,
                      clock=clock, sleep=clock.sleep, monotonic=clock)
    frames = take(src, 10)
    assert len(frames) == 10 and len(opens) <= 11, len(opens)  # one pass a sampling period
    assert abs(frames[-1].meta.pts - frames[0].meta.pts - 4.5) < 0.05


def test_a_slowly_sampled_still_image_keeps_the_watchdog_fed():
    """At fps 0.05 a pass spaced a whole sampling period (20 s) was 20 s without a frame read:
    the watchdog (10 s) called the camera lost every pass."""
    clock, events = Clock(), []
    src = VideoSource("still", lambda: FakeCapture(1, clock), fps=0.05, is_file=True, loop=True, realtime=True,
                      native_fps=25, clock=clock, sleep=clock.sleep, monotonic=clock, watchdog_s=10,
                      on_status=events.append)
    frames = []
    for frame in src.frames():
        frames.append(frame)
        assert src.check_watchdog() is False
        if len(frames) == 4:
            src.stop()
    assert abs(frames[-1].meta.pts - frames[0].meta.pts - 60) < 0.5  # still 0.05 frames/s
    assert [e.state for e in events][:1] == [SourceState.ONLINE] and SourceState.RECONNECTING not in [
        e.state for e in events], events


def test_a_realtime_looping_file_back_after_a_minute_is_paced_not_caught_up():
    """Its pacing kept the clock of before the outage: the minute missed was read at decode
    speed (287 frames in 2 s at fps 5), frames with one frame_ts and pts a minute apart."""
    clock, opens = Clock(), iter(["ok"] + ["gone"] * 6 + ["ok"] * 100)

    def open_capture():
        if next(opens) == "gone":
            raise SourceError("clip", "clip.mp4 is not a video FFmpeg can decode", retryable=False)
        return FileCapture(50, clock)  # 2 s at 25 fps, decoded in no time

    src = VideoSource("clip", open_capture, fps=5, is_file=True, loop=True, realtime=True, native_fps=25,
                      clock=clock, sleep=clock.sleep, monotonic=clock, backoff=Backoff(0.5, 30))
    times = []
    for frame in src.frames():
        times.append(clock.t)
        if len(times) == 30:
            src.stop()
    after = [b - a for a, b in zip(times[10:], times[11:])]  # the frames read once it is back
    assert min(after) >= 0.15, after  # 5 frames a second, not a burst


class UndecodableCapture(FakeCapture):
    """A stream whose packets arrive (grab works) but whose frames after the ``good`` first do
    not decode (retrieve fails)."""

    def __init__(self, n, clock, good):
        super().__init__(n, clock)
        self.good = good

    def retrieve(self):
        return (True, super().retrieve()[1]) if self.i <= self.good else (False, None)


def test_sampled_frames_that_cannot_be_decoded_are_counted_and_end_in_a_reconnect():
    from pipeline.sources import MAX_UNDECODABLE

    clock, events, opens = Clock(), [], iter([5, 10_000])
    src = VideoSource("cam", lambda: UndecodableCapture(10_000, clock, next(opens)), fps=0, is_file=False,
                      clock=clock, sleep=clock.sleep, on_status=events.append, backoff=Backoff(0.5, 10))
    frames = take(src, 10)
    assert len(frames) == 10  # the first open's 5 frames, then the reconnect's
    assert src.skipped == MAX_UNDECODABLE  # each one counted, none lost silently
    reconnects = [e for e in events if e.state == SourceState.RECONNECTING]
    assert len(reconnects) == 1 and "could not be decoded" in reconnects[0].error, events


def test_a_wall_clock_step_is_no_gap_for_the_tracker():
    """NTP stepping the wall clock 31 s forward looked, to the tracker, like
    31 s without a frame: every track ended and started again (a `track_end` and a new
    `track_start` for a car that never moved, zone visitors counted twice). Frames carry their
    time on the reader's steady clock too, and the tracker measures on it."""
    from pipeline.config import TrackerConfig
    from pipeline.schema import Detections
    from pipeline.tracking import ObjectTracker

    mono, step = Clock(), [0.0]
    src = VideoSource("cam", lambda: FakeCapture(500, mono), fps=5, is_file=False,
                      clock=lambda: mono.t + step[0], monotonic=mono, sleep=mono.sleep)
    tracker = ObjectTracker(TrackerConfig(), fps=5)
    car = Detections(xyxy=[[100, 100, 200, 160]], scores=[0.9], labels=("car",), categories=("vehicle",))
    ids, frames = [], src.frames()
    for k in range(12):
        if k == 6:
            step[0] = 31.0  # the wall clock jumps; the camera never paused
        meta = next(frames).meta
        ids.append(tracker.update(car, (meta.height, meta.width), ts=tracker.time_of(meta),
                                  steady_ts=meta.steady_ts).track_ids[0])
    assert ids[6:] == [ids[5]] * 6 and ids[5] is not None, ids
    assert meta.frame_ts - meta.steady_ts > 30  # frame_ts stays the wall clock, as published
    state = tracker.snapshot()  # what the next owner continues from is on the wall clock
    assert state["clock"]["last"] == meta.frame_ts


def test_a_file_is_read_on_past_frames_that_do_not_decode_and_one_that_never_decodes_fails():
    """A corrupt stretch of a file: its frames are counted and the rest of the file is read
    (it was cut there, and then marked as read to its end); a looping file whose frames never
    decode is not reopened as fast as it ends."""
    class Stretch(FakeCapture):  # frames 41-70 of 100 do not decode
        def retrieve(self):
            return (False, None) if 40 < self.i <= 70 else super().retrieve()

    clock = Clock()
    src = VideoSource("f", lambda: Stretch(100, clock), fps=0, is_file=True, realtime=False, native_fps=25,
                      clock=clock, sleep=clock.sleep)
    frames = list(src.frames())
    assert len(frames) == 70 and src.skipped == 30 and src.state == SourceState.STOPPED

    clock, waits = Clock(), []

    def sleep(s):
        waits.append(s)
        clock.sleep(s)

    passes = iter([FakeCapture(3, clock)] + [UndecodableCapture(50, clock, 0) for _ in range(6)]
                  + [FakeCapture(3, clock) for _ in range(100)])
    src = VideoSource("clip", lambda: next(passes), fps=0, is_file=True, loop=True, realtime=False, native_fps=25,
                      clock=clock, sleep=sleep, backoff=Backoff(0.5, 10))
    take(src, 6)
    assert waits == [0.5, 1, 2, 4, 8, 10], waits
    never = VideoSource("bad", lambda: UndecodableCapture(50, Clock(), 0), fps=0, is_file=True, realtime=False,
                        native_fps=25)
    assert list(never.frames()) == [] and never.state == SourceState.FAILED


def test_a_camera_down_for_long_says_so_once_not_once_a_try():
    """A camera whose reconnects fail, each as the last one did: one `reconnecting` (one status
    entry, one warning), not one every try (8640 a day at the 10 s backoff: a few such cameras
    pushed every other camera's changes out of the capped status stream); a new error is said."""
    clock, events, tries = Clock(), [], []

    def opener():
        tries.append(clock.t)
        if len(tries) == 8:
            src.stop()
        why = "connection refused" if len(tries) < 6 else "no route to host"
        raise SourceError("cam", f"cannot open rtsp://10.0.0.9/s: {why}", retryable=True)

    src = VideoSource("cam", opener, fps=0, is_file=False, clock=clock, sleep=clock.sleep, on_status=events.append,
                      backoff=Backoff(0.5, 10))
    assert list(src.frames()) == [] and len(tries) == 8
    said = [(e.state, e.error.rsplit(": ", 1)[-1] if e.error else None) for e in events]
    assert said == [(SourceState.RECONNECTING, "connection refused"), (SourceState.RECONNECTING, "no route to host"),
                    (SourceState.STOPPED, None)], said


class BurstCapture(FileCapture, PositionCapture):
    """A live stream's segment read at once (no time passes in ``grab``), its position ``position(i)`` ms."""


def test_a_paced_live_streams_timestamps_that_jump_are_paced_from_there():
    """An HLS camera (paced by its own timestamps) whose timestamps jump a minute ahead (a
    discontinuity, its encoder restarted) waited the minute out, silent and shown online (the
    watchdog held off); jumped back a minute, it was read flat out, ahead of its live edge. Either
    way it goes on at 25 fps from the jump, its frames published, the watchdog quiet."""
    for jump_ms in (60_000, -60_000):
        clock = Clock()
        src = VideoSource("hls", lambda: BurstCapture(40, clock, lambda i: 100_000 + i * 40.0 + (jump_ms if i > 20 else 0)),
                          fps=0, is_file=False, paced=True, watchdog_s=5.0, clock=clock, sleep=clock.sleep)
        t0, stamps = clock.t, []
        for frame in src.frames():
            stamps.append(clock.t - t0)
            assert src.check_watchdog() is False and src.state == SourceState.ONLINE, (jump_ms, len(stamps))
            if len(stamps) == 40:
                src.stop()
        assert len(stamps) == 40, jump_ms
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert max(gaps) < 0.1 and stamps[-1] > 1.4, (jump_ms, stamps[-1], max(gaps))  # 39 intervals of 40 ms


def test_a_camera_back_online_shows_no_last_error():
    """`/status` showed the failure that made the camera reconnect beside ``online`` once it was
    back (the camera hash cleared it): a camera that works has no error to show."""
    src, _ = make_source([SourceError("cam", "cannot open rtsp://cam/s: connection refused", retryable=True), 30])
    seen = 0
    for frame in src.frames():
        seen += 1
        assert src.state == SourceState.ONLINE and src.last_error is None, src.last_error
        src.stop()
    assert seen == 1 and src.state == SourceState.STOPPED, (seen, src.state)  # (back online: not failed for good)


def test_a_live_stream_whose_frames_never_decode_is_never_said_online():
    """Its packets came (grab works), none decoded: each packet counted as a live frame, so the
    camera was `online` with no error ~98 % of the time, flapping to `reconnecting` every 30
    sampled frames (30 s at 1 fps) and back at once (the backoff reset after 10 s up). Sampled at
    1 fps for 5 minutes of the camera's time now: never online, its reconnects saying why."""
    clock, events, opens = Clock(), [], []

    class Undecodable(UndecodableCapture):
        def grab(self):
            if clock.t - 1000.0 > 300:
                src.stop()
            return super().grab()

    src = VideoSource("cam", lambda: opens.append(1) or Undecodable(10_000, clock, 0), fps=1, is_file=False,
                      clock=clock, sleep=clock.sleep, on_status=events.append, backoff=Backoff(0.5, 10))
    assert take(src, 1) == []
    states = [e.state for e in events]
    assert SourceState.ONLINE not in states, states
    assert all("could not be decoded" in e.error for e in events if e.state == SourceState.RECONNECTING), events
    assert 3 <= len(opens) <= 10, len(opens)
