"""What reaches a model and what comes out of it, on the shared models and data:

- a classifier restricted to some labels answers only when one of them fits (``min_score``), and
  the shipped configs give their ImageNet car-type classifier cars only (``on: [car]``);
- the classifier's minimum size is the object's own box, not the widened crop;
- a label the model gives several class ids (the sign detector's 9 and 10) keeps every one;
- a carded detector runs at its card's NMS IoU and says so when ``detector.iou`` differs.

The route logic (`ClassifierRoute.too_small`) is tested as pure logic; the rest runs the real networks."""

from __future__ import annotations

import asyncio
import csv
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.backends import load_classifier, load_detector
from pipeline.classify import ClassifierRoute, CropClassification
from pipeline.config import ClassifierConfig, DetectorConfig, load_config
from pipeline.config_models import DEFAULT_CATEGORIES, MIN_RESTRICTED_SCORE
from pipeline.models import prepare_crop, prepare_frame
from pipeline.schema import Detections

from .conftest import CLASSIFIER, MODELS, SHARED

REPO = Path(__file__).resolve().parents[1]
COCO = SHARED / "data" / "coco128-val"
GTSDB = SHARED / "data" / "gtsdb-sample"
COCO_VEHICLES = {1: "bicycle", 2: "car", 3: "motorcycle", 5: "bus", 7: "truck"}
CAR_TYPES = ["minivan", "sports_car", "cab", "pickup", "police_van", "minibus", "jeep", "convertible", "beach_wagon"]
GTSRB = "gtsrb-sign-classifier-32/gtsrb_gray32.xml"
VEHICLE = "vehicle-attributes-recognition-barrier-0039/FP32/vehicle-attributes-recognition-barrier-0039.xml"
SIGNS = "traffic-sign-detector-gtsdb43/yolov5n_gtsdb43_640_fp16w.onnx"
YUNET = "face-detection-yunet/face_detection_yunet_2023mar.onnx"
CONFIG_ENV = {"VIDEOS": "/videos", "CAM_PASS": "x", "REDIS_PW": "x"}


def need(*paths: Path) -> None:
    for path in paths:
        if not path.exists():
            pytest.skip(f"{path} not found (set PERCEPT_SHARED to the shared models and data)")


def classifier(weights: str, **kw):
    need(MODELS / weights)
    return load_classifier(ClassifierConfig(weights=weights, device="cpu", num_cpus=2, **kw),
                           models_dir=str(MODELS), field="classifiers.vehicle", warmup=False)


def coco_vehicles() -> list[tuple[np.ndarray, Detections]]:
    """coco128-val's labelled vehicles, per image, as the detector would hand them over."""
    need(COCO)
    category = {label: c for c, labels in DEFAULT_CATEGORIES.items() for label in labels}
    out = []
    for labels in sorted((COCO / "labels").glob("*.txt")):
        rows = [r for r in np.loadtxt(labels, ndmin=2) if int(r[0]) in COCO_VEHICLES]
        if not rows:
            continue
        image = cv2.imread(str(COCO / "images" / f"{labels.stem}.jpg"))
        h, w = image.shape[:2]
        xyxy = np.array([[(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
                         for _, cx, cy, bw, bh in rows], np.float32)
        names = [COCO_VEHICLES[int(r[0])] for r in rows]
        out.append((image, Detections(xyxy=xyxy, scores=np.ones(len(rows), np.float32), labels=names,
                                      categories=[category[n] for n in names])))
    return out


# --- P1: a restricted classifier answers only when a label fits ------------------------------------

def test_restricted_imagenet_classifier_gives_no_answer_to_a_bicycle():
    """Restricted to car types, the ImageNet model once called every bicycle "minivan 0.000"."""
    free, restricted = classifier(CLASSIFIER), classifier(CLASSIFIER, labels=CAR_TYPES)
    crops, tags = [], []
    for image, dets in coco_vehicles():
        for box, label in zip(dets.xyxy, dets.labels):
            if label in ("bicycle", "car") and min(box[2] - box[0], box[3] - box[1]) >= 16:
                crops.append(prepare_crop(image, box, 224))
                tags.append(label)
    answers = restricted.classify_batch(crops)
    bicycles = [a for a, t in zip(answers, tags) if t == "bicycle"]
    cars = [a for a, t in zip(answers, tags) if t == "car"]
    assert len(bicycles) >= 5 and len(cars) >= 10
    assert all("type" not in a for a in bicycles), bicycles
    typed = [a["type"] for a in cars if "type" in a]
    assert typed and all(t["label"] in CAR_TYPES and t["score"] >= MIN_RESTRICTED_SCORE for t in typed), typed
    # min_score 0: the best restricted label always (what restricting did before)
    forced = classifier(CLASSIFIER, labels=CAR_TYPES, min_score=0).classify_batch(crops)
    assert all(a["type"]["label"] in CAR_TYPES for a in forced)
    assert {t for a, t in zip(forced, tags) if a["type"]["score"] < MIN_RESTRICTED_SCORE} >= {"bicycle"}
    # unrestricted, the top label is always given
    assert all("type" in a for a in free.classify_batch(crops[:4]))


def test_restricted_card_head_gives_no_answer_when_no_label_fits():
    """GTSRB restricted to Stop / Yield: a speed limit sign gets no `sign`; a stop sign does.
    Vehicle attributes restricted to car / van: `color`, unrestricted, is always given."""
    sample = SHARED / "data" / "gtsrb-test-sample"
    need(sample, MODELS / GTSRB)
    rows = [(r["Filename"], int(r["ClassId"])) for r in csv.DictReader((sample / "labels.csv").open())]
    stops = [cv2.imread(str(sample / "images" / f)) for f, c in rows if c == 14]  # GTSRB 14: Stop
    limits = [cv2.imread(str(sample / "images" / f)) for f, c in rows if c == 1]  # 30 km/h
    signs = load_classifier(ClassifierConfig(weights=GTSRB, labels=["Stop", "Yield"], num_cpus=2),
                            models_dir=str(MODELS), field="classifiers.sign", warmup=False)
    assert sum("sign" not in a for a in signs.classify_batch(limits)) >= 0.9 * len(limits)
    answered = [a["sign"] for a in signs.classify_batch(stops) if "sign" in a]
    assert len(answered) >= 0.8 * len(stops) and {a["label"] for a in answered} == {"Stop"}
    vehicles = classifier(VEHICLE, labels=["car", "van"])
    grey = np.full((72, 72, 3), 128, np.uint8)
    forced = classifier(VEHICLE, labels=["car", "van"], min_score=0).classify_batch([grey])[0]
    out = vehicles.classify_batch([grey])[0]
    assert "color" in out and out["color"] == forced["color"]
    assert ("type" in out) == (forced["type"]["score"] >= MIN_RESTRICTED_SCORE)


@pytest.mark.parametrize("config", ["local-files.yaml", "cluster.yaml"])
def test_shipped_vehicle_classifier_types_cars_only(config):
    """The shipped configs' ImageNet car-type classifier, through the decoder's classification
    stage, on coco128-val's labelled vehicles: no bicycle, motorcycle, bus or truck gets a type."""
    cfg = load_config(REPO / "configs" / config, env=CONFIG_ENV).classifiers["vehicle"][0]
    assert cfg.labels and cfg.on == ["car"]
    model = classifier(cfg.weights, labels=cfg.labels)
    route = ClassifierRoute(lambda crops: asyncio.to_thread(model.classify_batch, crops), cfg, "classifier-vehicle")
    stage = CropClassification("coco", {"vehicle": route}, timeout_s=120)
    typed: dict[str, int] = {}
    for image, dets in coco_vehicles():
        out, failed = asyncio.run(stage(image, dets, 0))
        assert failed == 0
        for label, attrs in zip(out.labels, out.attributes):
            if "type" in attrs:
                assert attrs["type"]["label"] in cfg.labels and attrs["type"]["score"] >= cfg.min_score
                typed[label] = typed.get(label, 0) + 1
    assert set(typed) == {"car"}, typed


# --- P4: the minimum size is the object's box ------------------------------------------------------

async def _never(crops):
    raise AssertionError("the size gate calls no model")


def _route(**cfg) -> ClassifierRoute:
    return ClassifierRoute(_never, ClassifierConfig(weights="x.pt", **cfg), "classifier-x")


def test_minimum_size_is_tested_on_the_object_box():
    """The crop is widened to the model's aspect; the gate is not: a 4x40 sliver is below a 16 px
    min_box (its square crop was 46x46), a 30x146 pedestrian below the person model's 80x160
    (its 1:2 crop was 80x161)."""
    square = _route(min_box=16)
    assert square.too_small(np.array([0, 0, 4, 40])) == "box 4x40 px is below 16x16"
    assert square.too_small(np.array([0, 0, 16, 40])) is None
    person = ClassifierRoute(_never, ClassifierConfig(weights="p.xml"), "classifier-pedestrian",
                             crop_size=(80, 160), crop_context=1.1, min_size=(80, 160))
    assert person.too_small(np.array([10, 10, 40, 156])) == "box 30x146 px is below 80x160"
    assert person.too_small(np.array([10, 10, 90, 170])) is None
    assert _route(min_size=(72, 72)).too_small(np.array([652, 43, 722, 100])) == "box 70x57 px is below 72x72"


# --- P3: a label of several class ids ---------------------------------------------------------------

def test_a_label_of_two_sign_classes_keeps_both(tmp_path):
    """names.yaml beside the weights calls classes 9 and 10 "no overtaking": with a card that
    reads it, a category naming that label gets the signs of both (class 9, the commoner one in
    GTSDB, was dropped before NMS). The shipped card names 10 apart, as GTSRB does."""
    import yaml

    from .conftest import REPO

    need(MODELS / SIGNS, GTSDB)
    shipped = load_detector(DetectorConfig(weights=SIGNS, categories={"sign": ["*"]}), models_dir=str(MODELS),
                            warmup=False)
    assert (shipped.names[9], shipped.names[10]) == ("no overtaking", "no overtaking (trucks)")
    card = yaml.safe_load((REPO / "configs" / "models" / "traffic-sign-detector.yaml").read_text())
    del card["outputs"][0]["labels"]
    card["outputs"][0]["labels_file"] = "names.yaml"  # (found beside the weights)
    (tmp_path / "signs.yaml").write_text(yaml.safe_dump(card))
    det = load_detector(DetectorConfig(weights=SIGNS, num_cpus=2, card=str(tmp_path / "signs.yaml"),
                                       categories={"sign": ["no overtaking"]}), models_dir=str(MODELS), warmup=False)
    assert [k for k, v in det.names.items() if v == "no overtaking"] == [9, 10]
    assert det.same_label == {10: 9} and shipped.same_label is None  # one NMS group for 9 and 10
    assert det.categories.class_ids == [9, 10]
    found = total = 0
    for labels in sorted((GTSDB / "labels").glob("*.txt")):
        rows = np.loadtxt(labels, ndmin=2)
        rows = rows[rows[:, 0] == 9] if len(rows) else rows
        if not len(rows):
            continue
        image = cv2.imread(str(GTSDB / "images" / f"{labels.stem}.jpg"))
        h, w = image.shape[:2]
        (dets,) = det.detect_batch([prepare_frame(image, 640)])
        for _, cx, cy, bw, bh in rows:
            total += 1
            centre = np.array([cx * w, cy * h])
            found += any(b[0] <= centre[0] <= b[2] and b[1] <= centre[1] <= b[3] for b in dets.xyxy)
    assert total >= 5 and found >= 0.8 * total, f"{found} of {total} class-9 signs"


# --- P5: a carded detector's NMS IoU ------------------------------------------------------------------

@pytest.mark.parametrize("weights, card_iou", [(SIGNS, 0.45), (YUNET, 0.3)])
def test_carded_detector_says_an_explicit_iou_is_not_used(weights, card_iou, caplog):
    need(MODELS / weights)
    categories = {"sign": ["*"]} if weights == SIGNS else {"face": ["face"]}
    # as the deployments get it: through model_dump, every field set (iou: the default 0.7)
    dumped = DetectorConfig(weights=weights, categories=categories).model_dump(mode="json")
    with caplog.at_level(logging.WARNING, logger="percept.models"):
        quiet = load_detector(DetectorConfig.model_validate(dumped), models_dir=str(MODELS),
                              field="detectors[1]", warmup=False)
    assert not [r for r in caplog.records if "iou" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="percept.models"):
        loud = load_detector(DetectorConfig.model_validate({**dumped, "iou": 0.6}),
                             models_dir=str(MODELS), field="detectors[1]", warmup=False)
    warnings = [r.getMessage() for r in caplog.records if "iou" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"detectors[1].iou: 0.6 is not used: {Path(weights).name} runs at its card's "
                                  f"nms_iou {card_iou:g}"), warnings[0]
    assert quiet.card.nms_iou == loud.card.nms_iou == card_iou  # what `percept eval` reports
    if weights == SIGNS:  # the same boxes either way: NMS ran at the card's value
        image = cv2.imread(str(GTSDB / "images" / "00001.jpg"))
        a, b = (d.detect_batch([prepare_frame(image, 640)])[0] for d in (quiet, loud))
        assert len(a) > 0 and a == b
    else:
        assert loud.nms_iou == card_iou
