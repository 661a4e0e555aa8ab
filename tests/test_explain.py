"""`percept explain`: heat maps of what drove a detection, on the real models and clips.

- Model level (`pipeline/explain.py`): on traffic.mp4 frame 150 (five cars) the explained car
  holds the heat (inside / outside its box, and against every other car's box), and greying the
  hottest 10 % of the pixels lowers its score more than greying 10 % at random — for D-RISE on
  the OpenVINO export, occlusion, and Eigen-Grad-CAM on the .pt model.
- The keep buffer (`pipeline/keep.py`): bounded, by reference, names what it keeps.
- Graph level: Ray Serve runs the graph with the live view off (the keep buffer does not depend
  on it); ``GET /cameras/{id}/explain`` answers a PNG of the published frame with the published
  object's box; unknown camera, object, seq and method are clear errors; ``percept explain``
  online and offline writes a PNG, and bad input exits 2."""

from __future__ import annotations

import json
import re
import time

import cv2
import numpy as np
import pytest

from pipeline.config import DetectorConfig
from pipeline.config_view import ViewConfig
from pipeline.explain import (
    EXPLAIN_CONF,
    ExplainError,
    Target,
    content_region,
    deletion_check,
    explain,
    inside_outside_ratio,
)
from pipeline.explain_target import to_content
from pipeline.keep import KeptFrame, KeptFrames, NotKept
from pipeline.models import prepare_frame
from pipeline.schema import Detections, FrameMeta, FrameResult

from .conftest import DETECTOR, MODELS, VIDEOS
from .http import get
from .inprocess import percept
from .view_frames import clip_frame
from .waiting import wait_for

PT_DETECTOR = "yolo11n-coco.pt"
FRAME = 150  # traffic.mp4: five cars, the nearest (0.84) in the middle of the lower lane


def _detector(weights: str):
    from pipeline.backends import load_detector

    return load_detector(DetectorConfig(weights=weights, conf=EXPLAIN_CONF, threads=2), models_dir=str(MODELS))


def _objects(detector, image) -> Detections:
    found = detector.detect_batch([prepare_frame(image, 640)])[0]
    return found[found.scores >= 0.25]


def _box_mean(heat: np.ndarray, box) -> float:
    x1, y1, x2, y2 = (round(v) for v in box)
    return float(heat[max(0, y1):y2, max(0, x1):x2].mean())


def _assert_explains_the_car(detector, image, objects: Detections, heat: np.ndarray, *, min_ratio: float) -> dict:
    """The explained car (object 0) is where the heat is, and the heat is what its score needs."""
    target = Target.of(objects, 0)
    assert target.label == "car"
    assert heat.shape == image.shape[:2] and heat.dtype == np.float32
    assert 0.0 <= heat.min() and heat.max() == pytest.approx(1.0)
    ratio = inside_outside_ratio(heat, target.box)
    assert ratio >= min_ratio, f"heat inside the car's box / outside it: {ratio:.2f} < {min_ratio}"
    inside = _box_mean(heat, target.box)
    others = {i: _box_mean(heat, objects.xyxy[i]) for i in range(1, len(objects))}
    assert len(others) >= 3, "the frame has other cars (else specificity is not tested)"
    assert all(inside >= 2 * v for v in others.values()), f"explained car {inside:.3f}, other cars {others}"
    check = deletion_check(detector, image, target, heat, imgsz=640)
    assert check.original == pytest.approx(target.score, abs=0.02)
    assert check.hottest < check.random - 0.1, f"greying the hottest 10 % vs a random 10 %: {check.as_dict()}"
    return {"ratio": ratio, **check.as_dict()}


@pytest.fixture(scope="module")
def traffic_frame() -> np.ndarray:
    return clip_frame("traffic.mp4", FRAME)


@pytest.fixture(scope="module")
def openvino_detector(models_dir):
    return _detector(DETECTOR)


@pytest.fixture(scope="module")
def pt_detector(models_dir):
    return _detector(PT_DETECTOR)


# --- model level ------------------------------------------------------------------------------------

@pytest.mark.integration
def test_rise_heat_is_on_the_explained_car_and_greying_it_drops_the_score(openvino_detector, traffic_frame):
    objects = _objects(openvino_detector, traffic_frame)
    result = explain(openvino_detector, traffic_frame, Target.of(objects, 0), imgsz=640, method="rise", masks=300)
    assert result.calls == 300
    numbers = _assert_explains_the_car(openvino_detector, traffic_frame, objects, result.heat, min_ratio=2.0)
    print(f"rise, 300 masks: {result.elapsed_ms:.0f} ms, {numbers}")


@pytest.mark.integration
def test_occlusion_heat_is_on_the_explained_car(openvino_detector, traffic_frame):
    objects = _objects(openvino_detector, traffic_frame)
    result = explain(openvino_detector, traffic_frame, Target.of(objects, 0), imgsz=640, method="occlusion", grid=12)
    assert result.calls == 12 * 12 + 1
    numbers = _assert_explains_the_car(openvino_detector, traffic_frame, objects, result.heat, min_ratio=2.0)
    print(f"occlusion, grid 12: {result.elapsed_ms:.0f} ms, {numbers}")


@pytest.mark.integration
def test_eigencam_on_the_pt_model_is_about_the_explained_car(pt_detector, traffic_frame):
    objects = _objects(pt_detector, traffic_frame)
    result = explain(pt_detector, traffic_frame, Target.of(objects, 0), imgsz=640, method="eigencam")
    # class-agnostic EigenCAM lights every car up (measured ratio 6.7 here); this one stays on the car
    numbers = _assert_explains_the_car(pt_detector, traffic_frame, objects, result.heat, min_ratio=20.0)
    print(f"eigencam: {result.elapsed_ms:.0f} ms, {numbers}")


@pytest.mark.integration
def test_rise_is_deterministic_for_a_seed_and_eigencam_needs_a_pt_model(openvino_detector, traffic_frame):
    target = Target.of(_objects(openvino_detector, traffic_frame), 0)
    runs = [explain(openvino_detector, traffic_frame, target, imgsz=640, masks=32, seed=s).heat for s in (7, 7, 8)]
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    with pytest.raises(ExplainError, match="eigencam needs an ultralytics .pt model.*rise or occlusion"):
        explain(openvino_detector, traffic_frame, target, imgsz=640, method="eigencam")
    with pytest.raises(ExplainError, match="choose one of rise, occlusion, eigencam"):
        explain(openvino_detector, traffic_frame, target, imgsz=640, method="gradient")


@pytest.mark.parametrize("shape", [(360, 640), (576, 768), (1080, 1920), (640, 480), (100, 1000), (640, 640), (1, 2000)])
def test_content_region_is_where_the_letterbox_put_the_frame(shape):
    boxed = prepare_frame(np.full((*shape, 3), 255, np.uint8), 640).image
    top, left, h, w = content_region(shape, 640)
    rows, cols = np.nonzero(boxed[:, :, 0] != 114)
    assert (rows.min(), cols.min(), rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min()) == (top, left, h, w)


@pytest.mark.parametrize("shape", [(720, 1280), (4000, 16), (16, 4000)])
def test_a_box_goes_into_the_square_where_the_letterbox_put_its_pixels(shape):
    """eigencam scored the anchors under a box scaled by the width's ratio on both axes: on a
    4000×16 frame (3 px wide in the square, 0.19 against 0.16 down) its lower quarter was
    looked for below the frame."""
    h, w = shape
    frame = np.zeros((h, w, 3), np.uint8)
    frame[3 * h // 4:, w // 2:] = 255  # the box's pixels
    boxed = prepare_frame(frame, 640).image
    x1, y1, x2, y2 = to_content([w // 2, 3 * h // 4, w, h], shape, 640)
    rows, cols = np.nonzero(boxed[:, :, 0] > 128)
    assert abs(y1 - rows.min()) <= 1.5 and abs(y2 - (rows.max() + 1)) <= 1.5, (y1, y2, rows.min(), rows.max())
    assert abs(x1 - cols.min()) <= 1.5 and abs(x2 - (cols.max() + 1)) <= 1.5, (x1, x2, cols.min(), cols.max())


def test_object_index_out_of_range_names_the_objects():
    two = Detections(xyxy=[[0, 0, 10, 10], [5, 5, 20, 20]], scores=[0.9, 0.5], labels=["car", "bus"],
                     categories=["vehicle", "vehicle"])
    assert Target.of(two, 1) == Target((5.0, 5.0, 20.0, 20.0), "bus", 0.5)
    with pytest.raises(ExplainError, match=r"object 2 is out of range: the frame has objects 0\.\.1"):
        Target.of(two, 2)
    with pytest.raises(ExplainError, match="object 0 is out of range: the frame has no objects"):
        Target.of(Detections(), 0)


# --- the keep buffer -----------------------------------------------------------------------------------

def _result(camera: str, seq: int) -> FrameResult:
    return FrameResult(FrameMeta(camera, seq, time.time(), None, 64, 48), Detections(), {}, {})


def test_keep_buffer_keeps_the_last_frames_by_reference_and_names_them():
    kept = KeptFrames(size=3)
    images = [np.full((48, 64, 3), i, np.uint8) for i in range(5)]
    for i, image in enumerate(images):
        kept.keep(image, _result("a", 10 + i))
    kept.keep(images[0], _result("b", 1))
    assert kept.seqs("a") == (12, 13, 14) and kept.cameras() == ["a", "b"]
    newest = kept.get("a")
    assert isinstance(newest, KeptFrame) and newest.result.meta.seq == 14 and newest.image is images[4]
    assert kept.get("a", 12).image is images[2] and newest.kept == (12, 13, 14)
    gone = kept.get("a", 11)
    assert isinstance(gone, NotKept) and gone.running and gone.kept == (12, 13, 14)
    assert gone.message == "frame 11 of camera 'a' is no longer kept; kept: 12, 13, 14"
    assert kept.get("a", 99).message == "frame 99 of camera 'a' is not published yet; newest kept: 14"
    assert kept.get("c").message == "camera 'c' has published no frame yet"
    kept.forget("a")
    assert kept.seqs("a") == () and kept.cameras() == ["b"]
    off = KeptFrames(size=0)
    off.keep(images[0], _result("a", 1))
    assert off.cameras() == []


def test_keep_buffer_holds_at_most_its_bytes_per_camera_and_always_the_newest():
    big = [np.full((48, 64, 3), i, np.uint8) for i in range(4)]  # 9216 bytes each (an 8K frame: 100 MB)
    kept = KeptFrames(size=8, max_bytes=2 * big[0].nbytes + 100)
    for i, image in enumerate(big):
        kept.keep(image, _result("a", i))
    kept.keep(big[0][:8], _result("b", 1))  # another camera's bytes are its own
    assert kept.seqs("a") == (2, 3) and kept.seqs("b") == (1,)
    assert kept.get("a").image is big[3]
    tiny = KeptFrames(size=8, max_bytes=10)  # a frame larger than the bound: the newest alone
    for i, image in enumerate(big):
        tiny.keep(image, _result("a", i))
    assert tiny.seqs("a") == (3,)
    with pytest.raises(ValueError, match="keep_mb"):
        ViewConfig.model_validate({"keep_mb": 0})


# --- the graph: GET /cameras/{id}/explain and `percept explain` ----------------------------------------

PREFIX = "extest"
KEEP = 8


def _get(url: str, timeout: float = 300):
    return get(url, timeout)


@pytest.fixture(scope="module")
def graph(ray_session, session_redis, models_dir, videos):
    from ray import serve

    from deployments.graph import build_app
    from pipeline.config import parse_config
    from pipeline.redis_server import free_port
    from pipeline.streams import StreamKeys

    config = parse_config({
        "redis": {"url": session_redis.url, "stream_prefix": PREFIX},
        "cameras": [
            {"id": "traffic", "url": str(videos / "traffic.mp4"), "fps": 2, "loop": True},
            {"id": "dead", "url": f"rtsp://127.0.0.1:{free_port()}/nothing", "fps": 2, "open_timeout_s": 2},
        ],
        "detector": {"weights": DETECTOR, "num_cpus": 1, "threads": 2, "batch": {"max_size": 4, "wait_ms": 20}},
        "view": {"enabled": False, "keep_frames": KEEP},  # the keep buffer works with the live view off
        "models_dir": models_dir,
    }, env={})
    serve.run(build_app(config), name="percept-explain", route_prefix="/ex", logging_config={"enable_access_log": False})
    client = session_redis.client()
    keys = StreamKeys(PREFIX)
    wait_for(lambda: client.xlen(keys.detections("traffic")) >= KEEP + 3, 240, "traffic publishing past its keep buffer")
    yield ray_session.serve_http_url + "/ex", client, keys
    serve.delete("percept-explain")


def _newest_with_a_car(client, keys) -> dict:
    def found():
        (_, fields), = client.xrevrange(keys.detections("traffic"), count=1)
        payload = json.loads(fields[b"json"])
        return payload if any(o["label"] == "car" for o in payload["objects"]) else None

    return wait_for(found, 60, "a published traffic frame with a car")


@pytest.mark.integration
def test_explain_endpoint_answers_a_png_of_the_published_object(graph):
    api, client, keys = graph
    payload = _newest_with_a_car(client, keys)
    index = next(i for i, o in enumerate(payload["objects"]) if o["label"] == "car")
    code, headers, body = _get(f"{api}/cameras/traffic/explain?object={index}&seq={payload['seq']}&masks=48")
    assert code == 200 and headers["Content-Type"] == "image/png", (code, headers, body[:300])
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (payload["height"], payload["width"]) == (360, 640)
    assert re.search(rf"\bseq={payload['seq']}\b", headers["X-Percept-Frame"])
    obj = payload["objects"][index]
    box = [float(v) for v in re.search(r"box=(\S+)", headers["X-Percept-Object"]).group(1).split(",")]
    assert f"label={obj['label']}" in headers["X-Percept-Object"] and np.allclose(box, obj["bbox"], atol=0.1)
    assert headers["X-Percept-Method"].startswith("rise calls=48 ")
    deletion = dict(kv.split("=") for kv in headers["X-Percept-Deletion"].split())
    assert float(deletion["original"]) == pytest.approx(obj["score"], abs=0.02), (deletion, obj)
    assert float(headers["X-Percept-Heat-Ratio"]) > 1.0


@pytest.mark.integration
def test_explain_errors_name_what_is_there(graph):
    api, client, keys = graph
    code, _, body = _get(f"{api}/cameras/nope/explain?object=0")
    assert code == 404, (code, body[:200])
    assert json.loads(body)["detail"] == {"message": "no camera 'nope'", "cameras": ["dead", "traffic"]}

    (_, first), = client.xrange(keys.detections("traffic"), count=1)
    old = json.loads(first[b"json"])["seq"]
    code, _, body = _get(f"{api}/cameras/traffic/explain?object=0&seq={old}")
    assert code == 404, (code, body[:200])
    detail = json.loads(body)["detail"]
    assert f"frame {old} of camera 'traffic' is no longer kept" in detail["message"], (code, detail)
    assert len(detail["kept"]) == KEEP and min(detail["kept"]) > old

    payload = _newest_with_a_car(client, keys)
    n = len(payload["objects"])
    code, _, body = _get(f"{api}/cameras/traffic/explain?object=99&seq={payload['seq']}")
    assert code == 404, (code, body[:200])
    detail = json.loads(body)["detail"]
    assert f"object 99 is out of range: the frame has objects 0..{n - 1}" in detail["message"]
    assert [o["bbox"] for o in detail["objects"]] == [o["bbox"] for o in payload["objects"]]

    code, _, body = _get(f"{api}/cameras/traffic/explain?object=0&seq={payload['seq']}&method=eigencam")
    assert code == 422 and "eigencam needs an ultralytics .pt model" in json.loads(body)["detail"], body
    code, _, body = _get(f"{api}/cameras/traffic/explain?object=0&method=gradient")
    assert code == 422 and "choose one of auto, rise, occlusion, eigencam" in json.loads(body)["detail"]

    code, headers, body = _get(f"{api}/cameras/dead/explain?object=0")
    assert code == 503 and int(headers["Retry-After"]) >= 1, (code, body)
    assert json.loads(body)["detail"]["message"] == "camera 'dead' has published no frame yet"


@pytest.mark.integration
def test_percept_explain_cli_against_the_graph(graph, tmp_path):
    api, client, keys = graph
    payload = _newest_with_a_car(client, keys)
    out = tmp_path / "online.png"
    code, stdout, stderr = percept("explain", "traffic", "--object", "0", "--seq", str(payload["seq"]),
                                   "--masks", "16", "--api", api, "--out", str(out))
    assert code == 0, stderr
    assert f"traffic seq {payload['seq']}" in stdout and "deletion check" in stdout
    assert cv2.imread(str(out)).shape == (360, 640, 3)
    code, _, stderr = percept("explain", "nope", "--object", "0", "--api", api)
    assert code == 2 and "HTTP 404: no camera 'nope'; cameras: ['dead', 'traffic']" in stderr, stderr
    # a 503 (no frame published yet) is asked again for --wait seconds, said once, then exit 3
    code, _, stderr = percept("explain", "dead", "--object", "0", "--api", api, "--wait", "2")
    assert code == 3 and stderr.count("answered 503 (") == 1 and "has published no frame yet" in stderr, stderr


# --- `percept explain` offline -------------------------------------------------------------------------

@pytest.mark.integration
def test_percept_explain_offline_writes_a_png(models_dir, tmp_path, capfd):
    out = tmp_path / "offline.png"
    code, stdout, stderr = percept("explain", "--video", str(VIDEOS / "traffic.mp4"), "--frame", str(FRAME),
                                   "--weights", DETECTOR, "--object", "0", "--masks", "32", "--out", str(out))
    assert code == 0 and "WARN" not in capfd.readouterr().err, stderr  # (OpenCV 5's, at each YuNet: `create_yunet`)
    assert "object 0: car 0.84" in stdout and "rise: 32 detector calls" in stdout, stdout
    image = cv2.imread(str(out))
    assert image.shape == (360, 640, 3)
    raw = clip_frame("traffic.mp4", FRAME)
    assert np.abs(image.astype(int) - raw.astype(int)).mean() > 10, "no heat map drawn over the frame"


@pytest.mark.integration
@pytest.mark.parametrize("argv, says", [
    ((), "give a CAMERA of a running graph, or --image/--video with --weights"),
    (("--video", "traffic.mp4"), "--weights: needed with --image/--video"),
    (("--image", "/nonexistent.png", "--weights", DETECTOR), "--image: cannot read '/nonexistent.png' as an image"),
    (("--video", str(VIDEOS / "traffic.mp4"), "--frame", "480", "--weights", DETECTOR),
     "--frame: 480 is out of range: " + str(VIDEOS / "traffic.mp4") + " has frames 0..479"),
    (("--video", str(VIDEOS / "traffic.mp4"), "--weights", "nope.pt"), "--weights: cannot load 'nope.pt'"),
    (("--video", str(VIDEOS / "traffic.mp4"), "--frame", str(FRAME), "--weights", DETECTOR, "--object", "7"),
     "--object: object 7 is out of range: the frame has objects 0..4 at --conf 0.25: 0: car 0.84, 1: car 0.7"),
    (("--video", str(VIDEOS / "traffic.mp4"), "--frame", str(FRAME), "--weights", DETECTOR, "--method", "eigencam"),
     "eigencam needs an ultralytics .pt model"),
])
def test_percept_explain_bad_input_exits_2(models_dir, argv, says):
    if "--object" not in argv:
        argv = (*argv, "--object", "0")
    code, _, stderr = percept("explain", *argv)
    assert code == 2 and says in stderr, stderr


def test_explanations_beyond_four_asked_at_once_get_429_and_a_fault_is_a_clear_500(redis_server, monkeypatch):
    """`deployments/explain.py`'s queue on a real redis-server, the decoder's answer and the
    explanation's work stood in for: one explanation runs at a time; with four asked for, a
    fifth is refused at once (429, Retry-After); an unexpected fault of one is a 500 naming it."""
    import asyncio
    import threading
    from types import SimpleNamespace

    from fastapi import HTTPException

    from deployments.explain import MAX_QUEUED, ExplainApi
    from pipeline.config import CameraConfig, PerceptConfig
    from pipeline.registry import CameraRegistry
    from pipeline.schema import Detections, FrameMeta, FrameResult
    from pipeline.streams import StreamKeys

    client = redis_server.client()
    keys = StreamKeys("explainq")
    registry = CameraRegistry(client, keys)
    registry.add(CameraConfig(id="cam", url="x.mp4"))
    result = FrameResult(FrameMeta("cam", 3, time.time(), 0.1, 64, 48),
                         Detections(xyxy=[[1, 2, 30, 40]], scores=[0.9], labels=("car",), categories=("vehicle",)),
                         {}, {})
    kept = KeptFrame(np.zeros((48, 64, 3), np.uint8), result, (3,))
    asked_decoder = []

    fetching = {"now": 0, "most": 0}

    async def kept_frame(camera_id, seq):
        asked_decoder.append(seq)
        if len(asked_decoder) > MAX_QUEUED:  # the burst below: the decoder takes its time
            fetching["now"] += 1
            fetching["most"] = max(fetching["most"], fetching["now"])
            await asyncio.sleep(0.5)  # (a decoder's answer time, not a wait)
            fetching["now"] -= 1
        return kept

    decoder = SimpleNamespace(kept_frame=SimpleNamespace(remote=kept_frame))  # the decoder's answer, stood in for
    api = ExplainApi(PerceptConfig(), client, keys, registry, decoder)
    release, started = threading.Event(), threading.Event()

    def slow_run(frame, index, target, method, masks, abandoned=None):
        started.set()
        if not release.wait(30):
            raise TimeoutError("never released")
        if masks == 13:
            raise RuntimeError("a bug in the explanation")
        return b"png", {}

    monkeypatch.setattr(api, "_run", slow_run)

    async def scenario():
        asked = [asyncio.create_task(api.explain("cam", 0, seq=None, method="rise", masks=m))
                 for m in (16, 16, 16, 13)]
        assert await asyncio.to_thread(started.wait, 10), "the first explanation never started"
        deadline = time.monotonic() + 10
        while api._queued < MAX_QUEUED:  # the other three reach the queue
            assert time.monotonic() < deadline, f"only {api._queued} explanations queued"
            await asyncio.sleep(0.01)  # polled until the deadline above
        with pytest.raises(HTTPException) as refused:
            await api.explain("cam", 0, seq=None, method="rise", masks=16)
        # refused before a full-resolution frame came from the decoder for it (a burst cost one each)
        assert len(asked_decoder) == MAX_QUEUED, asked_decoder
        release.set()
        done = await asyncio.gather(*asked, return_exceptions=True)
        # ten asked together: each took a frame from the decoder before any was refused
        burst = await asyncio.gather(*(api.explain("cam", 0, seq=None, method="rise", masks=16) for _ in range(10)),
                                     return_exceptions=True)
        codes = sorted(getattr(b, "status_code", 200) for b in burst)
        assert set(codes) == {200, 429} and fetching["most"] <= MAX_QUEUED, (codes, fetching)
        return refused.value, done

    refused, done = asyncio.run(scenario())
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30", refused.detail
    assert [d.body for d in done[:3]] == [b"png"] * 3
    assert isinstance(done[3], HTTPException) and done[3].status_code == 500
    assert done[3].detail == "explain failed: RuntimeError: a bug in the explanation" and api._queued == 0


def test_a_label_beyond_latin_1_comes_back_escaped_in_the_headers_not_as_a_500(redis_server, monkeypatch):
    """A fine-tuned model's labels may be in any script: the explanation's headers carry the
    label and the model's name, and a value Starlette cannot write as Latin-1 failed the
    response (a 500 after the whole explanation); a CR/LF could have ended the header."""
    import asyncio
    from types import SimpleNamespace

    from deployments.explain import ExplainApi
    from pipeline.config import CameraConfig, PerceptConfig
    from pipeline.registry import CameraRegistry
    from pipeline.streams import StreamKeys

    client = redis_server.client()
    keys = StreamKeys("explainh")
    registry = CameraRegistry(client, keys)
    registry.add(CameraConfig(id="cam", url="x.mp4"))
    result = FrameResult(FrameMeta("cam", 3, time.time(), 0.1, 64, 48),
                         Detections(xyxy=[[1, 2, 30, 40]], scores=[0.9], labels=("信号",), categories=("sign",)), {}, {})

    async def kept_frame(camera_id, seq):
        return KeptFrame(np.zeros((48, 64, 3), np.uint8), result, (3,))

    api = ExplainApi(PerceptConfig(), client, keys, registry, SimpleNamespace(kept_frame=SimpleNamespace(remote=kept_frame)))

    def run(frame, index, target, method, masks, abandoned=None):  # the explanation's work stood in for; its headers as `_run` makes them
        return b"png", {"X-Percept-Object": f"index={index} label={target.label} score=0.9000 box=1.0,2.0,30.0,40.0",
                        "X-Percept-Method": "rise calls=8 ms=1 model=знаки\r\nX-Injected: 1"}

    monkeypatch.setattr(api, "_run", run)
    response = asyncio.run(api.explain("cam", 0, seq=None, method="rise", masks=8))
    assert response.status_code == 200 and response.body == b"png"
    assert response.headers["X-Percept-Object"] == r"index=0 label=\u4fe1\u53f7 score=0.9000 box=1.0,2.0,30.0,40.0"
    assert response.headers["X-Percept-Method"] == r"rise calls=8 ms=1 model=\u0437\u043d\u0430\u043a\u0438\r\nX-Injected: 1"
    assert "x-injected" not in response.headers


def test_with_no_frames_kept_explain_says_so_at_once(redis_server):
    """`view.keep_frames: 0`: no frame is ever kept, and the API answered 503 "no frame yet",
    which `percept explain` asked again until its --wait ran out."""
    import asyncio

    from fastapi import HTTPException

    from deployments.explain import ExplainApi
    from pipeline.config import CameraConfig, PerceptConfig
    from pipeline.registry import CameraRegistry
    from pipeline.streams import StreamKeys

    client = redis_server.client()
    keys = StreamKeys("explain0")
    registry = CameraRegistry(client, keys)
    registry.add(CameraConfig(id="cam", url="x.mp4"))
    api = ExplainApi(PerceptConfig(view={"keep_frames": 0}), client, keys, registry, decoder=None)
    with pytest.raises(HTTPException) as refused:
        asyncio.run(api.explain("cam", 0, seq=None, method="auto", masks=100))
    assert refused.value.status_code == 409 and "view.keep_frames is 0" in refused.value.detail
