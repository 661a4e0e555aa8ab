"""A continued track keeps its classifier answers at the camera's next decoder (a handover, a
failover): the answers its previous owner published are in the tracks' snapshot, and each
classifier's cache is given back the attributes that classifier writes. Before, the next decoder
started with empty caches: every open track was classified again, and one whose box was too
small there from the start said ``unclassified`` until it grew.

Pure logic (a counting classifier, the real event engine and its snapshot), then real
conductors, publisher and redis-server with a stand-in detector, and the shipped cards' names."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from pipeline.classify import ClassifierRoute, CropClassification
from pipeline.config import ClassifierConfig, TrackerConfig
from pipeline.events import EventEngine

from .test_events import frame, obj, run
from .test_handover_tracks import KEYS, events_of, run_until
from .test_track_answers import cars


def route(asked: list, name: str, answer: dict, attributes, **cfg) -> ClassifierRoute:
    async def classify(crops):
        asked.append((name, len(crops)))
        return [dict(answer) for _ in crops]

    return ClassifierRoute(classify, ClassifierConfig(weights="c.pt", imgsz=32, **{"min_box": 16, **cfg}), name,
                           attributes=frozenset(attributes) if attributes is not None else None)


def engine_after_a_handover(attributes: dict) -> EventEngine:
    """Track 1 seen with ``attributes`` by its first owner; the engine its next owner restores
    from the snapshot (through JSON, as Redis keeps it)."""
    first = EventEngine("cam", track_buffer=30)
    run(first, [frame(1, [obj(1, 60, attributes=attributes)])])
    return EventEngine.restore(json.loads(json.dumps(first.snapshot())), "cam", track_buffer=30)


def seed_and_classify(stage: CropClassification, answers: dict, frames: list) -> tuple[int, list]:
    """Seed the stage, then classify ``frames`` (frame numbers 0, 1, …) on one event loop."""
    image = np.zeros((200, 400, 3), np.uint8)

    async def go():
        seeded = stage.seed(answers, 0)
        return seeded, [(await stage(image, dets, k))[0] for k, dets in enumerate(frames)]

    return asyncio.run(go())


def test_each_classifier_gets_back_its_own_answers_and_a_small_box_keeps_them():
    carried = {"type": {"label": "truck", "score": 0.8}, "color": {"label": "red", "score": 0.7},
               "make": {"label": "volvo", "score": 0.6}}
    engine = engine_after_a_handover({**carried, "unclassified": {"classifier-plate": "box 10x10 px is below 40x20"}})
    assert engine.track_attributes() == {1: carried}  # why one had no answer is not an answer
    asked = []
    vehicle = route(asked, "classifier-vehicle", {"type": {"label": "car", "score": 0.9},
                                                  "color": {"label": "blue", "score": 0.9}}, {"type", "color"},
                    reclassify_every=3)
    make = route(asked, "classifier-make", {"make": {"label": "ford", "score": 0.9}}, {"make"})
    unknown = route(asked, "classifier-plate", {"plate": {"label": "AB12", "score": 0.9}}, None)
    stage = CropClassification("cam", {"vehicle": [vehicle, make, unknown]}, timeout_s=5, track_buffer=30)

    small, big = [[10, 10, 20, 20]], [[10, 10, 60, 60]]
    seeded, out = seed_and_classify(stage, engine.track_attributes(), [cars(small), cars(small), cars(big), cars(big)])
    assert seeded == 2  # the plate reader names nothing: it is given nothing
    attrs = [{k: v.get("label", v) for k, v in o.attributes[0].items()} for o in out]
    # too small: the carried answers, and only the plate reader (never answered) says why not
    assert attrs[0] == attrs[1] == {"type": "truck", "color": "red", "make": "volvo",
                                    "unclassified": {"classifier-plate": "box 10x10 px is below 16x16"}}
    # big enough: every classifier looks afresh at once (a carried answer may be another model's),
    # then each goes by its own reclassify_every
    assert asked == [("classifier-vehicle", 1), ("classifier-make", 1), ("classifier-plate", 1)], asked
    assert attrs[2] == attrs[3] == {"type": "car", "color": "blue", "make": "ford", "plate": "AB12"}


def test_a_carried_answer_stands_while_the_fresh_look_fails():
    """The next decoder's classifier replica is restarting: the carried answer stands on the
    frame of the failed look (it went out without it) and on the next, where the box is too
    small, and the look is tried again as soon as the box allows."""
    engine = engine_after_a_handover({"type": {"label": "truck", "score": 0.8}})
    asked = []

    async def restarting(crops):
        asked.append(len(crops))
        if len(asked) <= 2:  # the request and its one retry
            raise RuntimeError("classifier replica restarting")
        return [{"type": {"label": "car", "score": 0.9}} for _ in crops]

    vehicle = ClassifierRoute(restarting, ClassifierConfig(weights="c.pt", imgsz=32, min_box=16, reclassify_every=0),
                              "classifier-vehicle", attributes=frozenset({"type"}))
    stage = CropClassification("cam", {"vehicle": vehicle}, timeout_s=5, track_buffer=30)
    small, big = [[10, 10, 20, 20]], [[10, 10, 60, 60]]
    _, out = seed_and_classify(stage, engine.track_attributes(), [cars(big), cars(small), cars(big), cars(big)])
    labels = [o.attributes[0].get("type", {}).get("label") for o in out]
    assert labels == ["truck", "truck", "car", "car"] and len(asked) == 3, (labels, asked)


def test_without_tracking_nothing_is_seeded():
    stage = CropClassification("cam", {"vehicle": route([], "classifier-vehicle", {}, {"type"})}, timeout_s=5)

    assert seed_and_classify(stage, {1: {"type": {"label": "car", "score": 0.9}}}, [])[0] == 0


@pytest.mark.needs_models
def test_the_shipped_cards_name_the_attributes_their_classifiers_write(models_dir):
    from pipeline.backends.crops import written_attributes

    vehicle = written_attributes(ClassifierConfig(
        weights="vehicle-attributes-recognition-barrier-0039/FP16-INT8/vehicle-attributes-recognition-barrier-0039.xml"),
        models_dir=models_dir)
    person = written_attributes(ClassifierConfig(
        weights="person-attributes-recognition-crossroad-0230/FP16-INT8/person-attributes-recognition-crossroad-0230.xml"),
        models_dir=models_dir)
    sign = written_attributes(ClassifierConfig(weights="gtsrb-sign-classifier-32/gtsrb_gray32.xml"), models_dir=models_dir)
    assert vehicle == {"type", "color"} and sign == {"sign"}, (vehicle, sign)
    assert len(person) == 8 and "has_backpack" in person, person
    assert written_attributes(ClassifierConfig(weights="yolov8n-cls-imagenet.pt", attribute="kind"),
                              models_dir=models_dir) == {"kind"}


def test_a_handed_over_track_keeps_its_answer_at_the_next_owner(redis_server):
    """Real conductors: the first owner's classifier says "car"; the camera is handed over; at the
    next owner the car's box is too small for its classifier (here: that classifier's minimum is
    larger): its frames there still say "car", not `unclassified`, and no ``attributes`` event
    appears at the handover."""
    client = redis_server.client()
    cfg = TrackerConfig(snapshot_every=1000)
    first_asked, next_asked = [], []
    first = {"vehicle": [route(first_asked, "classifier-vehicle", {"type": {"label": "car", "score": 0.9}}, {"type"})]}
    run_until(redis_server, 8, keep_tracks=True, classifiers=first, cfg=cfg)
    assert first_asked == [("classifier-vehicle", 1)]
    handed_at = client.xlen(KEYS.detections("cam"))
    later = {"vehicle": [route(next_asked, "classifier-vehicle", {"type": {"label": "bus", "score": 0.9}}, {"type"},
                               min_box=30)]}  # the stand-in's car is 20x20
    run_until(redis_server, 8, keep_tracks=False, classifiers=later, cfg=cfg)
    frames = [json.loads(f[b"json"]) for _, f in client.xrange(KEYS.detections("cam"))][handed_at:]
    attributes = [o["attributes"] for f in frames for o in f["objects"]]
    assert len(frames) >= 8 and all(a == {"type": {"label": "car", "score": 0.9}} for a in attributes), attributes[:3]
    assert next_asked == []
    assert [e["kind"] for e in events_of(client)] == ["track_start", "track_end"]
