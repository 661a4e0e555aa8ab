"""The per-camera conductor without Ray: out-of-order detections are published in seq order,
tracks get ids, classifiers run once per track and within their timeout, and the detector always
gets the newest frame."""

import asyncio
import json
import random
import threading
import time

import numpy as np
import pytest

import pipeline.camera_open
import pipeline.conductor
from pipeline.camera_open import open_camera
from pipeline.conductor import CameraConductor, ClassifierRoute
from pipeline.config import CameraConfig, ClassifierConfig, PerceptConfig, TrackerConfig
from pipeline.models import prepare_frame
from pipeline.publish import Publisher
from pipeline.schema import Detections
from pipeline.sources import VideoSource
from pipeline.streams import StreamKeys, connect_redis
from pipeline.track_answers import TrackAttributeCache
from pipeline.tracking import ObjectTracker

from .test_sources import Clock, FakeCapture
from .waiting import wait_for

KEYS = StreamKeys("cond")


class PacedCapture(FakeCapture):
    """A camera delivering a frame every 40 ms of real time (the pipeline keeps up, no drops)."""

    def grab(self):
        time.sleep(0.04)  # the camera's frame rate, not a wait
        return super().grab()


def answer_cab(crops):
    return [{"type": {"label": "cab", "score": 0.8}} for _ in crops]


def run_conductor(redis_server, *, frames=20, tracker=True, reclassify_every=0, classify=None, max_inflight=4,
                  classify_timeout_s=10.0, deadline_s=30.0, slow=None):
    """Runs a conductor over ``frames`` paced frames of one drifting car to the end; returns the
    published payloads, the number of crops sent to the classifier and the conductor."""
    clock = Clock()
    source = VideoSource("cam", lambda: PacedCapture(frames, clock), fps=0, is_file=True, realtime=False)
    calls = {"classify": 0}
    rng = random.Random(1234)

    async def detect(inp):
        if slow is not None:  # (first: it sees the frames in the order they are sent)
            await slow(inp)
        await asyncio.sleep(rng.uniform(0, 0.12))  # completions arrive out of order
        x = 5 + inp.frame_ts % 1 * 10  # the car drifts a little
        return Detections(xyxy=[[x, 5, x + 20, 25]], scores=[0.9], labels=("car",), categories=("vehicle",))

    async def counted(crops):
        calls["classify"] += len(crops)
        assert all(c.shape == (32, 32, 3) for c in crops)
        if classify is not None:
            return await classify(crops)
        await asyncio.sleep(0.01)  # the classifier's work, not a wait
        return answer_cab(crops)

    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    conductor = CameraConductor(
        CameraConfig(id="cam", url="x.mp4"),
        source,
        detect=detect,
        classifiers={"vehicle": ClassifierRoute(counted, ClassifierConfig(weights="c.pt", imgsz=32, min_box=4,
                                                                           reclassify_every=reclassify_every))},
        publisher=pub,
        imgsz=64,
        models={"detector": "fake"},
        max_inflight=max_inflight,
        classify_timeout_s=classify_timeout_s,
        tracker=(tracker if isinstance(tracker, ObjectTracker) else ObjectTracker(TrackerConfig())) if tracker else None,
    )

    async def drive():
        running = asyncio.create_task(conductor.run())
        done, _ = await asyncio.wait({running}, timeout=deadline_s)
        if not done:  # stop() cuts off what is stuck in flight, so a failing test ends too
            await conductor.stop()
            await asyncio.wait({running}, timeout=10)
            pytest.fail(f"the conductor did not finish {frames} frames within {deadline_s} s")
        running.result()

    asyncio.run(drive())
    assert pub.flush(5)
    pub.close()
    payloads = [json.loads(f[b"json"]) for _, f in redis_server.client().xrange(KEYS.detections("cam"))]
    return payloads, calls["classify"], conductor


def test_results_are_published_in_seq_order_with_track_ids(redis_server):
    payloads, _, conductor = run_conductor(redis_server)
    seqs = [p["seq"] for p in payloads]
    assert seqs == sorted(set(seqs)) and seqs[0] == 0, seqs  # in order, each once
    # on a loaded machine a frame may be skipped by keep-latest: then it is counted
    assert len(seqs) + conductor.dropped == 20 and len(seqs) >= 15, (seqs, conductor.dropped)
    ids = {p["objects"][0]["track_id"] for p in payloads}
    assert len(ids) == 1 and None not in ids  # one car, one track, all frames
    assert all(p["objects"][0]["attributes"]["type"]["label"] == "cab" for p in payloads)


def test_a_frame_whose_publishing_fails_is_counted_and_the_camera_goes_on(redis_server, monkeypatch):
    """A fault after inference (here the events' update, on frame 5) costs that frame only."""
    real = pipeline.conductor.CameraConductor._publish

    def failing_on_5(self, result):
        if result.meta.seq == 5:
            raise KeyError("a bug in the events")
        return real(self, result)

    monkeypatch.setattr(pipeline.conductor.CameraConductor, "_publish", failing_on_5)
    payloads, _, conductor = run_conductor(redis_server)
    seqs = [p["seq"] for p in payloads]
    assert 5 not in seqs and seqs == sorted(seqs) and len(seqs) == 19, seqs
    assert conductor.counters.failed == 1 and conductor.counters.processed == 19


def test_a_frame_whose_detection_fails_does_not_let_the_next_one_be_tracked_before_the_one_before_it(redis_server):
    """Frame 0's detection is slow, frame 1's fails (both tries), frame 2's is quick: the tracker
    still sees 0 before 2 (it used to see 2 first: time going backwards for the motion model)."""
    order = []

    class Recording(ObjectTracker):
        def update(self, detections, shape, ts=None, **kw):
            order.append(ts)
            return super().update(detections, shape, ts=ts, **kw)

    first = {}

    async def slow(inp):
        first.setdefault("ts", inp.frame_ts)
        if inp.frame_ts == first["ts"]:
            await asyncio.sleep(0.8)  # a slow batch: frames 1 and 2 are done before it
        elif len(first) == 1:
            first["failed"] = inp.frame_ts
        if first.get("failed") == inp.frame_ts:
            raise RuntimeError("replica gone")  # and again on the retry

    payloads, _, conductor = run_conductor(redis_server, frames=8, tracker=Recording(TrackerConfig()), slow=slow)
    assert conductor.counters.failed == 1 and first["failed"] not in order, (conductor.counters, order)
    assert order == sorted(order) and order[0] == first["ts"], order


def test_classifier_runs_once_per_track(redis_server):
    _, calls, _ = run_conductor(redis_server, reclassify_every=0)
    assert calls == 1


def test_reclassify_every_n_frames(redis_server):
    _, calls, _ = run_conductor(redis_server, reclassify_every=5)
    assert 3 <= calls <= 5


def test_without_tracking_every_object_is_classified(redis_server):
    payloads, calls, _ = run_conductor(redis_server, tracker=False)
    assert calls == 20 and all(p["objects"][0]["track_id"] is None for p in payloads)


def test_a_hung_classifier_delays_frames_by_its_timeout_at_most(redis_server, monkeypatch):
    """A classifier that never answers: every frame is still published, in seq order, within the
    classify timeout (its retry included), without the attribute, and counted in classify_failed
    (written to the camera hash and carried over to the camera's next run)."""
    import pipeline.classify as classify_module

    monkeypatch.setattr(classify_module, "PROBE_EVERY_S", 600.0)  # (no probe within the run)
    timeout_s, slack_s = 0.5, 2.0  # (slack for a loaded machine: without the timeout no frame is published)

    async def never(crops):
        await asyncio.Event().wait()

    payloads, calls, conductor = run_conductor(redis_server, frames=40, max_inflight=2, classify=never,
                                               classify_timeout_s=timeout_s, deadline_s=20)
    seqs = [p["seq"] for p in payloads]
    assert len(seqs) >= 4 and seqs == sorted(set(seqs))
    assert all("type" not in p["objects"][0]["attributes"] for p in payloads)
    assert max(p["latency_ms"]["classify"] for p in payloads) <= (timeout_s + slack_s) * 1000
    assert conductor.counters.classify_failed == len(payloads)
    # one request (the frames in flight share it) and its retry: not one more on every frame
    # after it (each waited the timeout: the camera at 2 frames a timeout), `test_classify_outage.py`
    assert calls == 2
    camera = redis_server.client().hgetall(KEYS.camera("cam"))
    assert int(camera[b"classify_failed"]) == len(payloads)
    assert int(camera[b"converted"]) >= len(payloads)  # (every frame published was made; `percept bench` divides)
    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    try:
        assert pub.resume_camera("cam")[1]["classify_failed"] == len(payloads)
    finally:
        pub.close()


def test_a_classifier_that_hangs_once_is_retried(redis_server):
    """The first request hangs: its retry (within the same timeout) answers, so every frame gets
    its attribute and nothing counts as failed."""
    timeout_s = 2.0
    attempts = []

    async def hangs_once(crops):
        attempts.append(len(crops))
        if len(attempts) == 1:
            await asyncio.Event().wait()
        await asyncio.sleep(0.01)  # the classifier's work, not a wait
        return answer_cab(crops)

    payloads, _, conductor = run_conductor(redis_server, frames=10, tracker=False, classify=hangs_once,
                                           classify_timeout_s=timeout_s, deadline_s=20)
    seqs = [p["seq"] for p in payloads]
    assert len(seqs) >= 2 and seqs == sorted(set(seqs))
    assert all(p["objects"][0]["attributes"]["type"]["label"] == "cab" for p in payloads)
    assert conductor.counters.classify_failed == 0
    assert len(attempts) == len(payloads) + 1  # one request per frame, one retry
    waited = sorted(p["latency_ms"]["classify"] / 1000 for p in payloads)
    assert waited[-2] < timeout_s / 2 * 0.9 <= waited[-1] <= timeout_s  # one frame: retried after T/2


def test_track_cache_forgets_a_failed_answer():
    """A pending answer is shared by the track's next frames; once it fails it is dropped, so
    the track is classified again rather than reusing the failure."""

    async def scenario():
        cache = TrackAttributeCache(reclassify_every=0, forget_after=30)
        pending = asyncio.get_running_loop().create_future()
        cache.put(7, 0, pending)
        assert cache.get(7, 1) is pending
        pending.set_exception(TimeoutError("no answer"))
        await asyncio.sleep(0)  # one turn of the loop: the future's done callbacks run
        assert len(cache) == 0
        assert cache.get(7, 2) is None

    asyncio.run(scenario())


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


def test_tracker_reports_the_tracks_it_still_holds_until_it_drops_them():
    tracker = ObjectTracker(TrackerConfig(track_buffer=3), id_offset=100)
    car = Detections(xyxy=np.array([[10, 10, 50, 40]]), scores=[0.9], labels=("car",), categories=("vehicle",))
    (tid,) = [tracker.update(car, (360, 640)).track_ids for _ in range(3)][-1]
    assert tid is not None and tid > 100 and tracker.alive_ids() == {tid}
    empty = Detections(xyxy=np.zeros((0, 4)), scores=[], labels=(), categories=())
    held = [tid in (tracker.update(empty, (360, 640)), tracker.alive_ids())[1] for _ in range(6)]
    assert held[:3] == [True, True, True] and held[-1] is False, held  # lost, then dropped


class LiveCapture:
    """A live camera at ``fps`` frames per second of real time: grab() blocks until the next
    frame is due (behind schedule, it delivers at once, like a camera's buffered stream)."""

    def __init__(self, fps):
        self.period, self.due, self.i = 1.0 / fps, time.monotonic(), 0

    def grab(self):
        self.due += self.period
        time.sleep(max(0.0, self.due - time.monotonic()))  # the camera's frame rate, not a wait
        self.i += 1
        return True

    def retrieve(self):
        return True, np.zeros((36, 64, 3), np.uint8)

    def get(self, prop):
        return self.i * self.period * 1000

    def release(self):
        pass


def test_detector_gets_the_newest_frame_under_overload(redis_server, monkeypatch):
    """Keep-latest: a 30 fps camera, a detector taking 400 ms and one frame in flight. The frame
    the conductor hands to the detector is the newest one read (a frame interval old, plus the
    machine's scheduling), never the frame sampled right after the previous take (~400 ms old):
    half the detector's time tells the two apart with room for a loaded machine."""
    fps, work_s = 30, 0.4
    monkeypatch.setattr(pipeline.camera_open, "open_capture", lambda *a, **k: LiveCapture(fps))
    camera = CameraConfig(id="live", url="rtsp://camera.invalid/live", fps=0, max_inflight=1)
    config = PerceptConfig(cameras=[camera], tracker=TrackerConfig(enabled=False))
    ages: list[float] = []
    prepare_frame(np.zeros((36, 64, 3), np.uint8), 64)  # its first call imports ultralytics (~1 s)

    async def scenario():
        enough = asyncio.Event()

        async def detect(inp):
            ages.append(time.time() - inp.frame_ts)  # taken just now: how old is it?
            if len(ages) >= 12:
                enough.set()
            await asyncio.sleep(work_s)  # a slow detector
            return Detections()

        pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
        conductor = await open_camera(camera, config=config, publisher=pub, detect=detect, classifiers={},
                                      models={"detector": "fake"})
        running = asyncio.create_task(conductor.run())
        await asyncio.wait_for(enough.wait(), 30)
        await conductor.stop()
        await asyncio.wait_for(running, 10)
        pub.close()
        return conductor

    conductor = asyncio.run(scenario())
    assert len(ages) >= 12
    # (3 in 4: one stall of a loaded machine is not a stale frame; every take of a frame
    # sampled after the previous take would be ~work_s old)
    assert sorted(ages)[len(ages) * 3 // 4] <= work_s / 2, f"frame ages at take (s): {[round(a, 3) for a in ages]}"
    # every frame read is counted exactly once: processed, dropped, or still unsent at the end
    wait_for(lambda: conductor.slot.closed, 5, "the reader thread to finish")
    unsent = 1 if conductor.slot.get(timeout=0) is not None else 0
    assert conductor.counters.processed + conductor.dropped + unsent == conductor.source.frames_read


def test_letterbox_is_ultralytics_letterbox(videos):
    """The decoder's letterbox (one allocation, resized straight into the square) gives the same
    array as ultralytics' LetterBox(auto=False) — so its scale_boxes maps boxes back — on frames
    of the shared clips and on odd shapes."""
    import cv2
    from ultralytics.data.augment import LetterBox

    from pipeline.models import letterbox

    frames = []
    for clip in ("traffic.mp4", "vtest.avi", "people.mp4"):
        cap = cv2.VideoCapture(str(videos / clip))
        ok, frame = cap.read()
        cap.release()
        assert ok
        frames += [frame, frame[:, : frame.shape[1] // 3], cv2.resize(frame, (1920, 1080))]
    rng = np.random.default_rng(7)
    frames += [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((640, 640, 3), (1, 900, 3), (641, 639, 3))]
    for frame in frames:
        for size in (640, 320):
            expected = LetterBox(new_shape=(size, size), auto=False)(image=frame)
            got = letterbox(frame, size)
            assert got.shape == expected.shape and got.flags.c_contiguous, frame.shape
            assert np.array_equal(got, expected), (frame.shape, size)


def test_the_detector_input_is_made_in_the_reader_thread_for_taken_frames_only(redis_server, monkeypatch):
    """A 30 fps camera and a detector taking 100 ms: the letterbox runs in the camera's reader
    thread, never on the event loop, the detector gets that very object (no second letterbox),
    and frames the conductor skips are not letterboxed (about one per frame taken, not three)."""
    fps = 30
    monkeypatch.setattr(pipeline.camera_open, "open_capture", lambda *a, **k: LiveCapture(fps))
    real_prepare = pipeline.conductor.prepare_frame
    prepared: list[tuple[object, str]] = []  # the objects themselves: their ids stay unique

    def recording_prepare(*args, **kwargs):
        inp = real_prepare(*args, **kwargs)
        prepared.append((inp, threading.current_thread().name))
        return inp

    monkeypatch.setattr(pipeline.camera_open, "prepare_frame", recording_prepare)  # the reader thread's
    monkeypatch.setattr(pipeline.conductor, "prepare_frame", recording_prepare)  # a frame without one
    camera = CameraConfig(id="live", url="rtsp://camera.invalid/live", fps=0, max_inflight=1)
    config = PerceptConfig(cameras=[camera], tracker=TrackerConfig(enabled=False), detector={"imgsz": 64})
    taken = []

    async def scenario():
        enough = asyncio.Event()

        async def detect(inp):
            taken.append((inp, inp.image.shape, inp.orig_shape, inp.camera))
            if len(taken) >= 12:
                enough.set()
            await asyncio.sleep(0.1)  # a slow detector
            return Detections()

        pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
        conductor = await open_camera(camera, config=config, publisher=pub, detect=detect, classifiers={},
                                      models={"detector": "fake"})
        running = asyncio.create_task(conductor.run())
        await asyncio.wait_for(enough.wait(), 60)
        await conductor.stop()
        await asyncio.wait_for(running, 10)
        pub.close()
        return conductor

    conductor = asyncio.run(scenario())
    assert {thread for _, thread in prepared} == {"reader-live"}
    made = {id(inp) for inp, _ in prepared}
    assert all(id(inp) in made for inp, *_ in taken)  # the reader's object itself reached the detector
    assert {(shape, orig, cam) for _, shape, orig, cam in taken} == {((64, 64, 3), (36, 64), "live")}
    assert conductor.source.converted == len(prepared)
    read = conductor.source.frames_read
    print(f"frames read {read}, letterboxed {len(prepared)}, taken {len(taken)}")
    assert len(prepared) <= 1.5 * len(taken) + 2 and read >= 2.5 * len(taken), (read, len(prepared), len(taken))


def test_waiting_for_a_stuck_reader_holds_no_worker_of_the_shared_thread_pool():
    """A camera stopped while its reader is stuck in an open waits for it without a worker of the
    replica's default executor: lease renewals and registry reads (`asyncio.to_thread`) go on."""
    release = threading.Event()
    stuck = threading.Thread(target=release.wait, daemon=True)
    stuck.start()
    from pipeline.frame_slot import thread_ended

    async def main():
        import concurrent.futures
        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
        waiting = asyncio.create_task(thread_ended(stuck, 30))
        await asyncio.sleep(0)  # one turn of the loop: the wait has started (no time passes)
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "renewed"), 5) == "renewed"
        assert not waiting.done()
        release.set()
        await asyncio.wait_for(waiting, 5)

    asyncio.run(main())


def test_a_conductor_answers_status_before_it_runs(redis_server):
    """A replica's `GET /status` can come between a camera's start and its task's first step:
    it raised AttributeError there."""
    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=10)

    async def detect(inp):
        raise AssertionError("not run")

    conductor = CameraConductor(CameraConfig(id="cam", url="x.mp4"), VideoSource("cam", lambda: None, fps=0, is_file=True),
                                detect=detect, classifiers={}, publisher=pub, imgsz=64, models={}, max_inflight=1)
    status = conductor.status()
    pub.close()
    assert status["state"] == "connecting" and status["last_error"] is None, status


def test_a_files_last_frame_put_just_before_the_slot_closes_is_taken(redis_server):
    """The conductor looked at the slot (empty), then the reader put the file's last frame and
    closed the slot at its end, before the conductor checked `closed`: that frame was never
    processed (``backpressure: wait`` promises no sampled frame is dropped)."""
    from pipeline.frame_slot import LatestFrameSlot

    class ReaderBetween(LatestFrameSlot):
        def __init__(self, last):
            super().__init__()
            self.last, self.looks = last, 0

        def get(self, timeout=None):
            frame = super().get(timeout)
            self.looks += 1
            if self.looks == 1:  # the reader, between the conductor's look and its check
                self.put(self.last)
                self.close()
            return frame

    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=10)

    async def detect(inp):
        raise AssertionError("not run")

    from types import SimpleNamespace

    last = SimpleNamespace(meta=SimpleNamespace(seq=7))  # (only its seq is read)
    conductor = CameraConductor(CameraConfig(id="cam", url="x.mp4"), VideoSource("cam", lambda: None, fps=0, is_file=True),
                                detect=detect, classifiers={}, publisher=pub, imgsz=64, models={}, max_inflight=1,
                                slot=ReaderBetween(last))
    try:
        taken = asyncio.run(asyncio.wait_for(conductor._next_frame(), 10))
    finally:
        pub.close()
    assert taken is last
