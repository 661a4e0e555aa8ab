"""The message model: columnar detections, immutability, JSON v1 round trip."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest

from pipeline.schema import SCHEMA, Detections, FrameMeta, FrameResult


def sample():
    return Detections(
        xyxy=[[0, 0, 10, 10], [5, 5, 20, 30], [1, 2, 3, 4]],
        scores=[0.9, 0.5, 0.3],
        labels=("car", "person", "bus"),
        categories=("vehicle", "pedestrian", "vehicle"),
    )


def test_shapes_are_validated():
    with pytest.raises(ValueError, match="scores has 1 items, xyxy has 2"):
        Detections(xyxy=[[0, 0, 1, 1], [0, 0, 2, 2]], scores=[0.5], labels=("a", "b"), categories=("x", "y"))


def test_mask_and_attributes_return_new_objects():
    d = sample()
    vehicles = d[np.array([c == "vehicle" for c in d.categories])]
    assert vehicles.labels == ("car", "bus") and len(d) == 3
    tagged = d.with_attribute("type", {0: {"label": "cab", "score": 0.6}})
    assert tagged.attributes[0] == {"type": {"label": "cab", "score": 0.6}}
    assert d.attributes[0] == {}  # the original is untouched
    assert d.indices_of("vehicle") == [0, 2]


def test_a_payload_shares_nothing_with_its_result_and_detections_of_two_lengths_differ():
    """`to_payload` copied the attributes one level deep (an answer changed in the payload changed
    the result's), and comparing detections of two lengths raised (numpy's broadcast)."""
    answer = {"label": "cab", "score": 0.6}
    d = sample().with_attribute("type", {0: answer})
    result = FrameResult(FrameMeta("cam", 1, 1.0, None, 64, 64), d, {}, {})
    result.to_payload()["objects"][0]["attributes"]["type"]["label"] = "bus"
    assert d.attributes[0]["type"]["label"] == "cab" and answer["label"] == "cab"
    assert (d == d[[0, 1]]) is False and d[[0]] != d
    nan = Detections(xyxy=[[0, 0, float("nan"), 10]], scores=[0.9], labels=("car",), categories=("vehicle",))
    assert nan == Detections(xyxy=[[0, 0, float("nan"), 10]], scores=[0.9], labels=("car",), categories=("vehicle",))


def test_json_round_trip_matches_v1_contract():
    meta = FrameMeta(camera="traffic", seq=812, frame_ts=1764000000.123, pts=40.6, width=1920, height=1080)
    result = FrameResult(
        meta,
        sample().with_attribute("type", {0: {"label": "minivan", "score": 0.62}}),
        {"detector": "yolo11n.pt", "classifiers": {"vehicle": "yolov8n-cls.pt"}},
        {"decode": 3.1, "queue": 12.0, "detect": 41.0, "classify": 9.5, "total": 70.2},
    )
    payload = json.loads(result.to_json())
    assert payload["schema"] == SCHEMA and payload["id"] == "traffic:812"
    assert set(payload) >= {"camera", "seq", "frame_ts", "pts", "width", "height", "model", "objects", "latency_ms"}
    obj = payload["objects"][0]
    assert obj == {"category": "vehicle", "label": "car", "score": 0.9, "bbox": [0.0, 0.0, 10.0, 10.0],
                   "track_id": None, "attributes": {"type": {"label": "minivan", "score": 0.62}}}
    back = FrameResult.from_json(result.to_json())
    assert back.meta == meta and back.objects == result.objects
    payload = result.to_payload()  # plain data of its own: changing it changes no result
    assert payload["model"] == result.models and payload["model"] is not result.models
    assert payload["objects"][0]["attributes"] is not result.objects.attributes[0]


def test_unknown_schema_is_rejected():
    with pytest.raises(ValueError, match="unsupported schema"):
        FrameResult.from_payload({"schema": "other/v9"})


def test_empty_frame_serializes():
    meta = FrameMeta("c", 0, 1.0, None, 640, 360)
    assert json.loads(FrameResult(meta, Detections(), {}, {}).to_json())["objects"] == []


def test_published_numbers_are_rounded_as_round_does():
    """Boxes to 0.1 px, scores to 1e-4, latencies to 0.01 ms, pts to 0.1 ms: the same floats as
    round() / np.round give (the encoder rounds several columns at once), written short."""
    rng = np.random.default_rng(7)
    n = 500
    xyxy = (rng.random((n, 4)) * 1920).astype(np.float32)
    scores = rng.random(n).astype(np.float32)
    latency = {f"stage{i}": float(v) for i, v in enumerate(rng.random(50) * 300)}
    meta = FrameMeta("c", 1, 1764000000.5, 12345.678951, 1920, 1080)
    det = Detections(xyxy=xyxy, scores=scores, labels=("car",) * n, categories=("vehicle",) * n)
    text = FrameResult(meta, det, {}, latency).to_json()
    payload = json.loads(text)
    assert [o["bbox"] for o in payload["objects"]] == xyxy.astype(np.float64).round(1).tolist()
    assert [o["score"] for o in payload["objects"]] == scores.astype(np.float64).round(4).tolist()
    assert payload["latency_ms"] == {k: round(v, 2) for k, v in latency.items()}
    assert payload["pts"] == round(meta.pts, 4)
    assert max(len(d) for d in re.findall(r"\d\.(\d+)", text)) == 4  # no 0.30000000000000004


def test_detector_time_follows_the_frame():
    """``infer_ms`` (the replica's time) survives selection and attributes; several detectors'
    frame waited for the slowest."""
    d = replace(sample(), infer_ms=7.5)
    assert d[np.array([True, False, True])].infer_ms == 7.5
    assert d.with_attribute("type", {0: {"label": "cab"}}).infer_ms == 7.5
    assert Detections.concat([d, replace(Detections(), infer_ms=12.0)]).infer_ms == 12.0
    assert Detections.concat([d, Detections()]).infer_ms == 7.5
    assert Detections.concat([Detections(), Detections()]).infer_ms is None


def test_results_encoded_together_are_each_alone():
    """`FrameResult.many_to_json_bytes` (the publisher rounds a batch's numbers in one array) gives
    every result the bytes `to_json_bytes` gives it alone: empty frames, one object, many."""
    rng = np.random.default_rng(11)
    results = []
    for seq, n in enumerate((3, 0, 1, 7, 0, 12)):
        det = Detections(xyxy=(rng.random((n, 4)) * 1280).astype(np.float32), scores=rng.random(n).astype(np.float32),
                         labels=("car",) * n, categories=("vehicle",) * n, track_ids=tuple(range(seq, seq + n)))
        det = det.with_attribute("color", {i: {"label": "red", "score": 0.51} for i in range(0, n, 2)})
        meta = FrameMeta("c", seq, 1764000000.5 + seq, seq * 0.04, 1280, 720)
        results.append(FrameResult(meta, det, {"detector": "d"}, {"detect": float(rng.random() * 30)}))
    assert FrameResult.many_to_json_bytes(results) == [r.to_json_bytes() for r in results]
    assert FrameResult.many_to_json_bytes([]) == []


def test_detectors_merged_keep_one_object_per_place_and_category():
    coco = Detections(xyxy=np.array([[0, 0, 10, 10], [50, 50, 60, 70]], np.float32), scores=np.array([0.9, 0.8]),
                      labels=("stop sign", "person"), categories=("sign", "pedestrian"), model_names=("coco",))
    signs = Detections(xyxy=np.array([[0, 0, 10, 11], [20, 0, 30, 10]], np.float32), scores=np.array([0.95, 0.7]),
                       labels=("stop", "yield"), categories=("sign", "sign"), model_names=("signs",))
    faces = Detections(xyxy=np.array([[50, 50, 60, 70]], np.float32), scores=np.array([0.6]),
                       labels=("face",), categories=("face",), model_names=("faces",))
    merged = Detections.concat([coco, signs, faces])
    # the second stop sign is the first's (IoU 0.91); the yield sign is elsewhere; the face shares
    # the person's box but is another category
    assert merged.labels == ("stop sign", "person", "yield", "face")
    assert merged.model_names == ("coco", "signs", "faces")
    assert merged.scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert Detections.concat([signs, coco]).labels == ("stop", "yield", "person")


@pytest.mark.parametrize("change, words", [
    (lambda p: [p], "a percept.detections/v1 message is a JSON object, got list"),
    (lambda p: p.pop("camera") and p, "camera: expected str, got None"),
    (lambda p: {**p, "seq": 1.9}, "seq: expected an integer, got 1.9"),
    (lambda p: {**p, "pts": "abc"}, "pts: expected a finite number, got 'abc'"),
    (lambda p: {**p, "objects": None}, "objects: expected list, got None"),
    (lambda p: {**p, "objects": [p["objects"][0], {**p["objects"][1], "bbox": [1, 2]}]},
     "objects[1].bbox: expected 4 numbers (x1, y1, x2, y2), got [1, 2]"),
    (lambda p: {**p, "objects": [{**p["objects"][0], "score": "high"}]}, "objects[0].score: expected a finite number, got 'high'"),
    (lambda p: {**p, "objects": [{**p["objects"][0], "bbox": [1, 2, 3, "4"]}]},
     "objects[0].bbox[3]: expected a finite number, got '4'"),
])
def test_a_message_read_back_that_is_not_as_published_is_refused_naming_the_field(change, words):
    """A subscriber's `FrameResult.from_json`: a JSON list gave AttributeError, a missing camera
    KeyError, ``objects: null`` TypeError, a 2-number bbox a column length; ``score: "high"`` and
    ``pts: "abc"`` were taken in, ``seq: 1.9`` became 1. (A null box corner or score is a NaN, as
    the publisher wrote one before 2026-12-04: read back so, a camera's replay of its own older
    frames goes on.)"""
    det = Detections(xyxy=[[1, 2, 30, 40], [5, 6, 70, 80]], scores=[0.9, 0.8], labels=("car", "person"),
                     categories=("vehicle", "pedestrian"), track_ids=(3, None))
    payload = FrameResult(FrameMeta("c", 7, 1764000000.5, 0.28, 1280, 720), det, {"detector": "d"}, {"total": 9.0}).to_payload()
    assert FrameResult.from_payload(payload).meta.seq == 7
    with pytest.raises(ValueError) as refused:
        FrameResult.from_json(json.dumps(change(json.loads(json.dumps(payload)))))
    assert str(refused.value) == words


def test_a_null_number_published_by_an_older_version_is_read_back_as_nan():
    payload = FrameResult(FrameMeta("c", 7, 1764000000.5, None, 64, 36),
                          Detections(xyxy=[[1, 2, 30, 40]], scores=[0.9], labels=("car",), categories=("vehicle",)),
                          {}, {}).to_payload()
    payload["objects"][0]["bbox"][2], payload["objects"][0]["score"] = None, None
    back = FrameResult.from_json(json.dumps(payload))
    assert np.isnan(back.objects.xyxy[0, 2]) and np.isnan(back.objects.scores[0])
