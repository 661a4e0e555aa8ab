"""The live view and privacy blur at pipeline level (no Ray): `pipeline/view.py` draws on a
real frame, `pipeline/privacy.py` blurs every face YuNet finds on people.mp4, and a camera's view
draws and encodes nothing while nobody watches (real redis-server)."""

from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np
import pytest

from pipeline.config import CameraConfig
from pipeline.config_view import PrivacyConfig, ViewConfig
from pipeline.privacy import Blurrer
from pipeline.schema import Detections, FrameMeta, FrameResult
from pipeline.streams import StreamKeys
from pipeline.view import ViewHub, annotate, jpeg_comment, object_label, render_jpeg

from .conftest import MODELS
from .test_sources import Clock, FakeCapture
from .view_frames import VIEW_WIDTH, YUNET, border_band, clip_frame, decode, faces
from .waiting import wait_for

pytestmark = pytest.mark.integration  # real redis-server, YuNet and the clips


def test_annotate_draws_boxes_labels_zones_and_lines_on_a_copy():
    frame = clip_frame("traffic.mp4", 30)
    raw = frame.copy()
    objects = Detections(
        xyxy=[[100, 150, 220, 260]], scores=[0.87], labels=["car"], categories=["vehicle"], track_ids=[12],
        attributes=[{"type": {"label": "van", "score": 0.9}, "color": {"label": "white", "score": 0.8},
                     "unclassified": "too small"}])
    result = FrameResult(FrameMeta("traffic", 7, time.time(), 1.0, 640, 360), objects, {}, {})
    camera = CameraConfig(id="traffic", url="x", zones={"corner": [[0.7, 0.7], [1, 0.7], [1, 1], [0.7, 1]]},
                          lines={"gate": [[0, 0.1], [0.5, 0.1]]})
    out = annotate(frame, result, camera)
    assert np.array_equal(frame, raw), "annotate changed the frame it was given"
    assert object_label("car", 12, 0.87, objects.attributes[0]) == "car #12 0.87 white van"
    diff = np.abs(out.astype(int) - raw.astype(int)).sum(axis=2)
    assert diff[border_band(out.shape, objects.xyxy[0], top=False)].mean() > 60, "no box drawn"
    assert diff[142:150, 100:220].mean() > 40, "no label above the box"
    assert diff[260:360, 460:640].mean() > 8, "zone not drawn"
    assert diff[34:38, 0:320].mean() > 60, "line not drawn"
    assert np.median(diff[60:140, 300:440]) < 2, "drawn where nothing is"
    half = annotate(cv2.resize(frame, (320, 180)), result, camera)  # a scaled frame: boxes scale with it
    hdiff = np.abs(half.astype(int) - cv2.resize(raw, (320, 180)).astype(int)).sum(axis=2)
    assert hdiff[border_band(half.shape, objects.xyxy[0] / 2, 1, top=False)].mean() > 60
    # a box far beyond the frame (or not finite) is no reason to lose the others: cv2 refused it, and the frame went
    odd = Detections(xyxy=[[1e12, 1e12, 2e12, 2e12], [0, 10, np.inf, 50], [np.nan, 10, 40, 50], [100, 150, 220, 260]],
                     scores=[0.5] * 4, labels=["car"] * 4, categories=["vehicle"] * 4)
    out = annotate(frame, FrameResult(result.meta, odd, {}, {}), camera)
    diff = np.abs(out.astype(int) - raw.astype(int)).sum(axis=2)
    assert diff[border_band(out.shape, objects.xyxy[0], top=False)].mean() > 60, "the sane box not drawn"


@pytest.fixture(scope="module")
def blurrer():
    if not YUNET.exists():
        pytest.fail(f"YuNet missing: {YUNET}")
    b = Blurrer.from_config(PrivacyConfig(), str(MODELS))
    assert b.kinds == ["faces"], "faces are blurred by default when the model is there"
    return b


@pytest.mark.parametrize("index", [30, 100, 200])
def test_blurred_view_has_no_face_yunet_finds(blurrer, index):
    frame = clip_frame("people.mp4", index)
    result = FrameResult(FrameMeta("crowd", index, time.time(), None, 800, 450), Detections(), {}, {})
    camera = CameraConfig(id="crowd", url="x")
    cfg = ViewConfig(width=VIEW_WIDTH)
    plain = decode(render_jpeg(frame, result, camera, cfg))
    blurred = decode(render_jpeg(frame, result, camera, cfg, blurrer))
    assert plain.shape[1] == VIEW_WIDTH and blurred.shape == plain.shape
    assert faces(plain) >= 3, "blur off: YuNet should find the faces"
    assert faces(blurred) == 0, "blur on: YuNet still finds a face"


def test_privacy_asked_for_with_a_missing_model_warns_once_and_shows_no_image(tmp_path, caplog, monkeypatch):
    """A blur asked for whose model is missing (or does not load) failed open: a warning, then
    every face shown. It fails closed: the blurrer refuses every image, and the view renders none."""
    from pipeline import privacy
    from pipeline.privacy import PrivacyUnavailable

    monkeypatch.setattr(privacy, "_warned", set())  # (said once a process: another test may have said it)

    frame = clip_frame("vtest.avi", 0)
    with caplog.at_level(logging.WARNING, logger="percept.privacy"):
        for _ in range(2):
            b = Blurrer.from_config(PrivacyConfig(blur=["faces", "plates"]), str(tmp_path))
            assert b and b.kinds == [] and b.missing == ("faces", "plates")
            with pytest.raises(PrivacyUnavailable, match="faces and plates"):
                b.blur(frame)
        default = Blurrer.from_config(PrivacyConfig(), str(tmp_path))  # not asked for: no search, no warning
    assert default.kinds == [] and default.blur(frame) is frame  # (its own detections' faces still blurred)
    warnings = [r.getMessage() for r in caplog.records if r.name == "percept.privacy"]
    assert len(warnings) == 2, warnings  # faces and plates, once each
    assert all("no image is shown" in w and "missing" in w for w in warnings), warnings
    result = FrameResult(FrameMeta("crowd", 0, 0.0, 0.0, frame.shape[1], frame.shape[0]), Detections(), {}, {})
    with pytest.raises(PrivacyUnavailable):
        render_jpeg(frame, result, CameraConfig(id="crowd", url="x"), ViewConfig(width=VIEW_WIDTH), b)
    plates = Blurrer.from_config(PrivacyConfig(blur=["plates"]), str(MODELS))
    assert plates.kinds == ["plates"] and len(plates.regions(clip_frame("traffic.mp4", 30))) == 0


class Counting:
    """Wraps a function and counts its calls (from any thread)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _offer_for(view, seconds, frame, result, camera):
    end = time.monotonic() + seconds
    slowest = 0.0
    while time.monotonic() < end:
        t0 = time.perf_counter()
        view.offer(frame, result, camera)
        slowest = max(slowest, time.perf_counter() - t0)
        time.sleep(0.05)  # frames offered at 20 fps, not a wait
    return slowest


def test_nothing_is_drawn_or_encoded_while_nobody_watches(redis_server, monkeypatch):
    import pipeline.view as view_mod

    annotate_calls, encode_calls = Counting(view_mod.annotate), Counting(view_mod.encode_jpeg)
    monkeypatch.setattr(view_mod, "annotate", annotate_calls)
    monkeypatch.setattr(view_mod, "encode_jpeg", encode_calls)
    client = redis_server.client()
    keys = StreamKeys("unit")
    hub = ViewHub(ViewConfig(fps=10, width=320), client, keys)
    view = hub.camera("cam")
    frame = clip_frame("traffic.mp4", 30)
    result = FrameResult(FrameMeta("cam", 1, time.time(), None, 640, 360), Detections(), {}, {})
    camera = CameraConfig(id="cam", url="x")
    try:
        _offer_for(view, 2.5, frame, result, camera)  # two and more checks, nobody watching
        assert (annotate_calls.calls, encode_calls.calls) == (0, 0)
        assert not client.exists(keys.view_jpeg("cam"))

        client.set(keys.view_want("cam"), b"1", px=10_000)  # someone watches
        wait_for(lambda: view.offer(frame, result, camera) or client.exists(keys.view_jpeg("cam")), 10,
                 "the watched camera's JPEG", interval=0.05)
        assert decode(client.get(keys.view_jpeg("cam"))).shape[1] == 320
        assert jpeg_comment(client.get(keys.view_jpeg("cam"))).startswith("percept camera=cam seq=1 ")

        client.delete(keys.view_want("cam"))  # nobody any more: stops within a check
        wait_for(lambda: view.offer(frame, result, camera) or not (view.watched or view._busy), 10,
                 "the view to find nobody watching", interval=0.05)
        before = encode_calls.calls
        _offer_for(view, 1.5, frame, result, camera)
        assert encode_calls.calls == before and annotate_calls.calls == before
    finally:
        hub.close()


def test_a_replica_without_the_cameras_lease_writes_no_view_jpeg(redis_server):
    """The view JPEG is fenced like the camera's results: written while the lease holds our token,
    refused (and counted) once another replica holds it or after we released it."""
    from pipeline.lease import Fence

    client = redis_server.client()
    keys = StreamKeys("unit")
    fences = {"cam": Fence(keys.lease("cam"), "ours", 20.0)}
    hub = ViewHub(ViewConfig(fps=20, width=320), client, keys, fence_of=fences.get)
    view = hub.camera("cam")
    client.set(keys.view_want("cam"), b"1", px=60_000)
    frame = clip_frame("traffic.mp4", 30)
    camera = CameraConfig(id="cam", url="x")

    def offered(seq: int):
        result = FrameResult(FrameMeta("cam", seq, time.time(), None, 640, 360), Detections(), {}, {})
        return lambda: view.offer(frame, result, camera) or client.get(keys.view_jpeg("cam"))

    def seq_of(jpeg: bytes) -> int:
        return int(jpeg_comment(jpeg).split("seq=")[1].split()[0])

    try:
        client.set(keys.lease("cam"), b"ours")
        wait_for(offered(1), 10, "a JPEG while the lease is ours", interval=0.05)
        client.set(keys.lease("cam"), b"another-replica")  # the camera moved on
        wait_for(lambda: offered(2)() and view.fenced >= 3, 10, "JPEGs refused", interval=0.05)
        assert seq_of(client.get(keys.view_jpeg("cam"))) == 1
        # no drawing of frame 2 still under way: begun under the fence before its release, it
        # would land once our token is back (a lease ours again, as far as it knows)
        wait_for(lambda: not view._busy and not view._checking, 10, "the view idle", interval=0.05)
        fences["cam"] = Fence(keys.lease("cam"), "ours", 20.0, released=True)
        client.set(keys.lease("cam"), b"ours")  # even with our old token back: we released it
        refused = view.fenced
        wait_for(lambda: offered(3)() and view.fenced >= refused + 3, 10, "released: refused", interval=0.05)
        assert seq_of(client.get(keys.view_jpeg("cam"))) == 1
    finally:
        hub.close()


def test_a_busy_view_skips_frames_and_never_blocks_the_caller(redis_server):
    class HeldBlur:  # a blur that takes as long as the test holds it
        def __init__(self):
            self.started, self.release = threading.Event(), threading.Event()

        def blur(self, image, detected=None, shown_width=None):
            self.started.set()
            self.release.wait(30)
            return image

    client = redis_server.client()
    keys = StreamKeys("unit")
    blur = HeldBlur()
    hub = ViewHub(ViewConfig(fps=20, width=320), client, keys, blurrer=blur)
    view = hub.camera("cam")
    client.set(keys.view_want("cam"), b"1", px=10_000)
    frame = clip_frame("traffic.mp4", 30)
    camera = CameraConfig(id="cam", url="x")

    def offer(seq):
        view.offer(frame, FrameResult(FrameMeta("cam", seq, time.time(), None, 640, 360), Detections(), {}, {}),
                   camera)

    try:
        offer(1)
        wait_for(lambda: blur.started.is_set() or offer(2), 10, "the view drawing a frame")  # (offer: None)
        # a frame offered sooner than the view's rate allows is not due, neither drawn nor skipped:
        # the drawing can start within that time of frame 1 (then all 20 offers below came too soon)
        wait_for(lambda: time.monotonic() >= view._due, 10, "the next frame due", interval=0.01)
        # while it draws, frames offered go by: none waits for the drawing
        caller = threading.Thread(target=lambda: [offer(s) for s in range(10, 30)], daemon=True)
        caller.start()
        caller.join(10)
        assert not caller.is_alive(), "offer() waited for the view's drawing"
        assert view.skipped >= 20 and view.rendered == 0, (view.skipped, view.rendered)
        blur.release.set()
        wait_for(lambda: view.rendered >= 1, 10, "the held frame drawn once released")
    finally:
        blur.release.set()
        hub.close()


def test_a_slow_cameras_snapshot_is_the_first_frame_after_the_request(redis_server):
    """A camera sampled every 7 s that nobody watched: a snapshot request gets the first frame
    offered after it (the frame whose check finds the camera watched is drawn), the request
    waiting two of the camera's intervals more and keeping it watched meanwhile. Before, that
    frame only queued the check and a snapshot waited 6 s: such a camera always answered 503."""
    import asyncio
    import threading

    from deployments.live import LiveView
    from pipeline.registry import CameraRegistry

    client = redis_server.client()
    keys = StreamKeys("slowcam")
    CameraRegistry(client, keys).add(CameraConfig(id="cam", url="x.mp4"))
    # the hash's fps counts the frames of the last 5 s: 0 for such a camera most of the time (the
    # wait was 6 s again); the gap between its last two published frames says 7 s
    client.hset(keys.camera("cam"), mapping={"state": "online", "fps": "0.00"})
    now_ms = int(time.time() * 1000)
    for ms in (now_ms - 7000, now_ms):
        client.xadd(keys.detections("cam"), {"json": "{}"}, id=f"{ms}-0")
    hub = ViewHub(ViewConfig(fps=5, width=320), client, keys)
    view = hub.camera("cam")
    frame, camera = clip_frame("traffic.mp4", 30), CameraConfig(id="cam", url="x")
    offered: list[tuple[int, float]] = []  # (seq, when)
    stop = threading.Event()

    def slow_camera() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            at = time.monotonic()
            view.offer(frame, FrameResult(FrameMeta("cam", seq, time.time(), None, 640, 360), Detections(), {}, {}),
                       camera)
            offered.append((seq, at))  # after the offer: its check (if any) is under way
            stop.wait(7.0)  # the camera's frame interval, not a test wait

    thread = threading.Thread(target=slow_camera, daemon=True)
    thread.start()
    try:
        wait_for(lambda: offered and not view._checking, 10, "the first frame offered and checked (nobody watching)")
        asked = time.monotonic()
        response = asyncio.run(LiveView(ViewConfig(), client, keys, CameraRegistry(client, keys)).snapshot("cam"))
    finally:
        stop.set()
        thread.join(10)
        hub.close()
    seq = int(jpeg_comment(response.body).split("seq=")[1].split()[0])
    assert seq == next(s for s, t in offered if t > asked), (seq, offered, asked)


# --- graph level ------------------------------------------------------------------------------------


def test_live_streams_beyond_view_max_streams_get_429(redis_server):
    """`deployments/live.py` without Serve, on a real redis-server: with `view.max_streams: 1`, a
    second MJPEG response while the first runs is refused (429, Retry-After); once the first
    ends, a new one is served."""
    import asyncio

    from fastapi import HTTPException

    from deployments.live import LiveView
    from pipeline.registry import CameraRegistry

    client = redis_server.client()
    keys = StreamKeys("maxstreams")
    registry = CameraRegistry(client, keys)
    registry.add(CameraConfig(id="a", url="x.mp4"))
    client.hset(keys.camera("a"), "state", "online")
    client.set(keys.view_jpeg("a"), cv2.imencode(".jpg", np.zeros((36, 64, 3), np.uint8))[1].tobytes())
    view = LiveView(ViewConfig(max_streams=1), client, keys, registry)

    async def scenario():
        first = await view.live("a")
        parts = first.body_iterator
        assert b"image/jpeg" in await parts.__anext__() and view.streams == 1
        with pytest.raises(HTTPException) as refused:
            await view.live("a")
        assert refused.value.status_code == 429 and refused.value.headers["Retry-After"] == "10"
        assert "view.max_streams" in refused.value.detail["message"]
        await parts.aclose()
        assert view.streams == 0
        again = await view.live("a")
        await again.body_iterator.__anext__()
        await again.body_iterator.aclose()

    asyncio.run(scenario())


def test_one_cameras_odd_newest_entry_costs_only_its_own_details(redis_server):
    """`GET /cameras` reads each camera's newest entry (`last_frames`): one whose JSON is not an
    object (hand-written, another writer) gets its lag only; the others are unaffected."""
    from deployments.live import last_frames

    client = redis_server.client()
    keys = StreamKeys("oddentry")
    client.xadd(keys.detections("odd"), {"json": "null"}, id="1000-0")
    client.xadd(keys.detections("list"), {"json": "[1, 2]"}, id="1000-0")
    good = {"objects": [{"category": "vehicle"}], "latency_ms": {"total": 42.0}}
    client.xadd(keys.detections("good"), {"json": __import__("json").dumps(good)}, id="1000-0")
    out = last_frames(client, keys, ["odd", "list", "good", "none"], now=3.0)
    assert out["odd"] == {"lag_s": 2.0} and out["list"] == {"lag_s": 2.0} and out["none"] == {}
    assert out["good"] == {"lag_s": 2.0, "objects": {"vehicle": 1}, "e2e_ms": 42.0}


def test_face_detectors_of_the_sizes_in_use_stay(monkeypatch):
    """A replica's cameras × three scales need more input sizes than were kept, and the whole set
    was dropped when one more came (each rebuilt: ~100 ms a frame): the least recently used
    goes, the sizes in use stay."""
    from pipeline.privacy import FaceFinder

    if not YUNET.exists():
        pytest.skip("YuNet is not in the shared models")
    finder = FaceFinder(str(YUNET), score=0.6, detect_width=640)
    monkeypatch.setattr(FaceFinder, "MAX_SIZES", 3)
    first = finder._net_for((320, 180))
    finder._net_for((160, 90))
    assert finder._net_for((320, 180)) is first  # used again: the most recent now
    finder._net_for((640, 360))  # one more: (320, 320), the load's, goes, then (160, 90)
    finder._net_for((80, 45))
    assert finder._net_for((320, 180)) is first and set(finder._nets) == {(640, 360), (80, 45), (320, 180)}


def test_faces_the_service_itself_detected_are_blurred_too():
    """The blurrer searches faces on its own (another scale, another score): a face the
    pipeline's own detector reported (a ``yunet`` detector, label ``face``) but the blurrer's
    search missed was drawn, labelled, unblurred."""
    frame = clip_frame("vtest.avi", 0)
    blurrer = Blurrer.from_config(PrivacyConfig(blur=["faces"]), str(MODELS))
    box = [652, 43, 722, 101]  # the parked van: no face the blurrer's own search finds
    own = Detections(xyxy=[box], scores=[0.9], labels=("face",), categories=("face",))
    other = Detections(xyxy=[box], scores=[0.9], labels=("car",), categories=("vehicle",))
    x1, y1, x2, y2 = box
    assert np.array_equal(blurrer.blur(frame, other)[y1:y2, x1:x2], frame[y1:y2, x1:x2])
    blurred = blurrer.blur(frame, own)
    assert np.abs(blurred[y1:y2, x1:x2].astype(int) - frame[y1:y2, x1:x2]).mean() > 5


class ResizedCapture(FakeCapture):
    """A camera that comes back at twice its resolution after 4 frames; each frame comes once
    the one before was shown (``shown``), so that none is skipped for a newer one."""

    def __init__(self, n, clock, shown: threading.Event):
        super().__init__(n, clock)
        self.shown = shown

    def grab(self):
        if self.i >= self.n:  # (its end: at once, as a file's)
            return False
        if self.i and not self.shown.wait(30):
            return False
        self.shown.clear()
        return super().grab()

    def retrieve(self):
        return True, np.zeros((360, 640, 3) if self.i <= 4 else (720, 1280, 3), np.uint8)


def test_the_view_draws_pixel_zones_where_the_events_judge_them_after_a_change_of_resolution(redis_server):
    """A pixel zone is in the first frame's pixels and scales with the tracks when the camera
    comes back at another size (`EventEngine.geometry`); the view drew it where it was written,
    a quarter of where the events counted it."""
    import asyncio

    from pipeline.conductor import CameraConductor
    from pipeline.config import TrackerConfig
    from pipeline.events import EventEngine
    from pipeline.publish import Publisher
    from pipeline.sources import VideoSource
    from pipeline.streams import connect_redis
    from pipeline.tracking import ObjectTracker


    camera = CameraConfig(id="cam", url="x.mp4", zones={"bay": [[0, 0], [320, 0], [320, 180], [0, 180]]})
    drawn: dict[int, np.ndarray] = {}
    shown = threading.Event()

    class Recorder:  # the view's part of the conductor: what a watched camera's image shows
        def offer(self, image, result, camera, geometry=None):
            drawn[result.meta.width] = annotate(image, result, camera, geometry)
            shown.set()

    async def detect(inp):
        w = inp.orig_shape[1]
        return Detections(xyxy=[[w * 0.8, w * 0.3, w * 0.9, w * 0.4]], scores=[0.9], labels=("car",),
                          categories=("vehicle",))

    pub = Publisher(connect_redis(redis_server.url), keys=StreamKeys("geo"), maxlen=100).start()
    conductor = CameraConductor(
        camera, VideoSource("cam", lambda: ResizedCapture(8, Clock(), shown), fps=0, is_file=True, realtime=False),
        detect=detect, classifiers={}, publisher=pub, imgsz=64, models={"detector": "fake"}, max_inflight=1,
        tracker=ObjectTracker(TrackerConfig()), events=EventEngine.for_camera(camera, track_buffer=30), view=Recorder())
    asyncio.run(asyncio.wait_for(conductor.run(), 60))
    pub.close()
    assert set(drawn) == {640, 1280}, set(drawn)
    big = drawn[1280]  # a black frame: the zone's tint is all that is there
    assert big[340, 600].any(), "the zone is not drawn where the events count it (0-640 × 0-360)"
    assert not big[400:700, 660:760].any(), "drawn outside the zone"
