"""A tracked object's classifier answers over its life (pure logic: a counting classifier, no
model): every object of a crowded frame gets its turn, an answer outlives frames where the box
is too small, yes/no attribute changes are events, and "too small" leaves once the answer came."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from pipeline.classify import ClassifierRoute, CropClassification
from pipeline.config import ClassifierConfig
from pipeline.events import EventEngine
from pipeline.schema import Detections
from tests.test_events import frame, obj, run


def counting_route(asked: list, **cfg) -> ClassifierRoute:
    async def classify(crops):
        asked.append(len(crops))
        return [{"type": {"label": f"t{len(asked)}", "score": 0.9}} for _ in crops]

    return ClassifierRoute(classify, ClassifierConfig(weights="c.pt", imgsz=32, min_box=16, **cfg), "classifier-vehicle")


def cars(boxes, scores=None):
    n = len(boxes)
    return Detections(xyxy=np.array(boxes, np.float32), scores=np.array(scores or [0.9 - 0.1 * i for i in range(n)],
                      np.float32), labels=("car",) * n, categories=("vehicle",) * n, track_ids=tuple(range(1, n + 1)))


def classify_frames(stage, frames):
    image = np.zeros((200, 400, 3), np.uint8)

    async def go():
        return [(await stage(image, dets, k))[0] for k, dets in enumerate(frames)]

    return asyncio.run(go())


def test_every_object_of_a_crowded_frame_gets_its_turn():
    """max_per_frame limits fresh crops, not cached answers: the best two once held every place."""
    asked = []
    stage = CropClassification("c", {"vehicle": counting_route(asked, max_per_frame=2)}, timeout_s=5, track_buffer=30)
    boxes = [[10 + 60 * i, 10, 60 + 60 * i, 60] for i in range(5)]
    out = classify_frames(stage, [cars(boxes)] * 4)
    assert asked == [2, 2, 1]  # five cars, two new a frame, then all known
    assert all("type" in a for a in out[-1].attributes), out[-1].attributes


def test_tracks_due_for_a_fresh_look_take_no_place_from_an_object_never_classified():
    """With ``reclassify_every``, the answered tracks due again were sorted with the new objects by
    score: four better-scored cars took the two places of every frame, and a fifth was never
    classified. Objects with no answer go first; the due tracks keep theirs meanwhile."""
    asked = []
    stage = CropClassification("c", {"vehicle": counting_route(asked, max_per_frame=2, reclassify_every=2)},
                               timeout_s=5, track_buffer=30)
    boxes = [[10 + 70 * i, 10, 60 + 70 * i, 60] for i in range(5)]
    out = classify_frames(stage, [cars(boxes, scores=[0.9, 0.85, 0.8, 0.75, 0.3])] * 6)
    assert "type" in out[2].attributes[4], [o.attributes[4] for o in out]  # its turn after the four new ones
    assert all("type" in a for o in out[2:] for a in o.attributes)


def test_boxes_the_tracker_merged_are_asked_for_once_and_share_the_answer():
    """A car also seen as a truck (two boxes, one track id) was two crops taking two places, the
    track published with two answers, and the second (the lower-scored box's) overwrote the first."""
    asked = []
    stage = CropClassification("c", {"vehicle": counting_route(asked, max_per_frame=2)}, timeout_s=5, track_buffer=30)
    merged = Detections(xyxy=np.array([[0, 0, 50, 50], [1, 1, 51, 51], [100, 0, 150, 50]], np.float32),
                        scores=np.array([0.9, 0.8, 0.7], np.float32), labels=("car", "truck", "car"),
                        categories=("vehicle",) * 3, track_ids=(7, 7, 8))
    out = classify_frames(stage, [merged] * 2)
    assert asked == [2], asked  # the track and the other car, in one request
    assert [a["type"]["label"] for o in out for a in o.attributes[:2]] == ["t1"] * 4


def test_a_track_the_detector_gives_another_label_is_asked_again_not_given_the_first_labels_answer():
    """The tracker matches within a category: a sign lost and found again as another sign at the
    same place (a dashcam passing sign after sign; GTSDB scenes 3, 12, 25) kept its track, and the
    first sign's class was published on the second until a fresh look was due (15 frames). An
    answer holds for its label; back to the first label, its answer is there again."""
    asked = []
    stage = CropClassification("c", {"sign": counting_route(asked, reclassify_every=15)}, timeout_s=5, track_buffer=30)

    def sign(label):
        return Detections(xyxy=np.array([[10, 10, 60, 60]], np.float32), scores=np.array([0.9], np.float32),
                          labels=(label,), categories=("sign",), track_ids=(3,))

    out = classify_frames(stage, [sign("speed limit 30"), sign("slippery road"), sign("slippery road"),
                                  sign("speed limit 30")])
    assert asked == [1, 1], asked
    assert [o.attributes[0]["type"]["label"] for o in out] == ["t1", "t2", "t2", "t1"]


def test_a_vehicle_the_detector_calls_a_car_then_a_truck_keeps_one_answer():
    """Answers by label are a sign classifier's (`answer_per_label`, default on for signs only): a
    vehicle flickering between car and truck was asked once under each label, and its attributes
    changed every frame (an `attributes` event each); a small box under the other label lost its
    answer."""
    asked = []
    stage = CropClassification("c", {"vehicle": counting_route(asked, reclassify_every=30)}, timeout_s=5,
                               track_buffer=30)

    def vehicle(label, box=(10, 10, 60, 60)):
        return Detections(xyxy=np.array([box], np.float32), scores=np.array([0.9], np.float32), labels=(label,),
                          categories=("vehicle",), track_ids=(3,))

    out = classify_frames(stage, [vehicle(("car", "truck")[k % 2]) for k in range(6)] + [vehicle("bus", (10, 10, 20, 20))])
    assert asked == [1], asked
    assert [o.attributes[0].get("type", {}).get("label") for o in out] == ["t1"] * 7


def test_an_answer_outlives_frames_where_the_box_is_too_small():
    asked = []
    stage = CropClassification("c", {"vehicle": counting_route(asked, reclassify_every=1)}, timeout_s=5,
                               track_buffer=30)
    big, small = [[10, 10, 60, 60]], [[10, 10, 20, 20]]  # the car drives away: 10x10 < 16
    out = classify_frames(stage, [cars(big), cars(small), cars(small)])
    assert asked == [1]
    assert [a[0].get("type", {}).get("label") for a in (o.attributes for o in out)] == ["t1", "t1", "t1"]
    assert all("unclassified" not in o.attributes[0] for o in out)


def test_a_yes_no_attribute_that_changes_is_an_event_and_too_small_leaves_with_the_answer():
    def seen(seq, attrs):
        return frame(seq, [obj(4, 60, category="pedestrian", label="person", attributes=attrs)])

    small = {"unclassified": {"classifier-pedestrian": "box 30x80 px is below 80x160"}}
    bag = {"has_bag": {"value": False, "probability": 0.2}}
    engine = EventEngine("cam", track_buffer=1)
    events = run(engine, [seen(1, small), seen(2, bag), seen(3, {"has_bag": {"value": True, "probability": 0.8}}),
                          seen(4, {"has_bag": {"value": True, "probability": 0.9}}), frame(5), frame(6)])
    changes = [e for e in events if e.kind == "attributes"]
    assert [e.seq for e in changes] == [2, 3]  # the answer came; the bag was seen (not a score change)
    end = events[-1]
    assert end.kind == "track_end" and end.attributes == {"has_bag": {"value": True, "probability": 0.9}}


def test_a_person_getting_out_of_a_parked_car_never_continues_the_cars_track():
    """ByteTrack matched on overlap alone: the person took the car's id, and their line crossing
    was counted as a vehicle's."""
    from pipeline.config import TrackerConfig
    from pipeline.schema import FrameMeta, FrameResult
    from pipeline.tracking import ObjectTracker

    def dets(objs):
        return Detections(xyxy=np.array([o[0] for o in objs], np.float32).reshape(-1, 4),
                          scores=np.array([o[1] for o in objs], np.float32), labels=tuple(o[2] for o in objs),
                          categories=tuple("vehicle" if o[2] == "car" else "pedestrian" for o in objs))

    tracker = ObjectTracker(TrackerConfig(), fps=4)
    engine = EventEngine("c", lines={"kerb": [[0, 420], [1280, 420]]}, track_buffer=30)
    car = ([400, 300, 560, 380], 0.9, "car")
    person = [([540, 250 + 20 * k, 590, 370 + 20 * k], 0.8, "person") for k in range(8)]  # hides the car
    ids = {}
    for k, objs in enumerate([[car]] * 4 + [[p] for p in person]):
        out = tracker.update(dets(objs), (720, 1280), ts=1000 + k * 0.25)
        meta = FrameMeta("c", k, 1000 + k * 0.25, None, 1280, 720)
        engine.update(FrameResult(meta, out, {}, {}), tracker.alive_ids(), tracker.origins)
        for label, tid in zip(out.labels, out.track_ids):
            ids.setdefault(label, set()).add(tid)
    assert ids["car"] == {1} and 1 not in ids["person"], ids
    counts = engine.take_counts()
    assert counts["line:kerb:out:pedestrian"] == 1 and not any(":vehicle" in k and "line" in k for k in counts), counts


def test_a_person_where_a_bicycles_track_was_lost_gets_a_track_of_their_own_at_once():
    """ultralytics drops the newer of a tracked and a lost track overlapping at IoU > 0.85,
    whatever their classes: a person standing where a bicycle was last seen was dropped as the
    lost bicycle's duplicate frame after frame, and had no track id for 8 s (its whole life)."""
    from pipeline.config import TrackerConfig
    from pipeline.tracking import ObjectTracker

    def one(box, label, category):
        return Detections(xyxy=np.array([box], np.float32), scores=np.array([0.9], np.float32),
                          labels=(label,), categories=(category,))

    tracker = ObjectTracker(TrackerConfig(), fps=4)
    bike = [tracker.update(one([100, 100, 140, 180], "bicycle", "vehicle"), (720, 1280), ts=k / 4).track_ids[0]
            for k in range(3)]
    person = [tracker.update(one([101, 98, 141, 180], "person", "pedestrian"), (720, 1280), ts=k / 4).track_ids[0]
              for k in range(3, 8)]
    assert bike[-1] == 1 and person[0] is None and person[1] not in (None, 1), (bike, person)  # its 2nd sighting
    assert len(set(person[1:])) == 1 and 1 in tracker.alive_ids(), person  # (the bicycle's track lives on, lost)


def test_one_label_of_two_categories_is_two_classes_to_the_tracker():
    """Two detectors may map one label to two categories (a COCO "traffic light" as a sign, a
    light detector's as a light): classes were keyed by label, so the second category took over
    the class and continued the first one's track."""
    from pipeline.config import TrackerConfig
    from pipeline.tracking import ObjectTracker

    tracker = ObjectTracker(TrackerConfig(), fps=4)
    box = np.array([[100, 100, 140, 180]], np.float32)
    ids = [tracker.update(Detections(xyxy=box, scores=np.array([0.9], np.float32), labels=("traffic light",),
                                     categories=(category,)), (720, 1280), ts=k / 4).track_ids[0]
           for k, category in enumerate(["sign"] * 3 + ["light"] * 3)]
    assert ids[2] == 1 and 1 not in ids[3:] and ids[-1] is not None, ids


def test_a_tracker_taken_over_from_a_snapshot_still_keeps_a_person_off_the_cars_track():
    """The snapshot carries which class is which category: restored, before the car's label is
    seen again, the person beside it must not continue the car's track."""
    from pipeline.config import TrackerConfig
    from pipeline.tracking import ObjectTracker

    def one(box, score, label, category):
        return Detections(xyxy=np.array([box], np.float32), scores=np.array([score], np.float32),
                          labels=(label,), categories=(category,))

    car = ([400, 300, 560, 380], 0.9, "car", "vehicle")
    tracker = ObjectTracker(TrackerConfig(), fps=4)
    # someone far off first (so that two categories are known; not near enough to be the person below)
    tracker.update(one(*([40, 60, 90, 180], 0.8, "person", "pedestrian")), (720, 1280), ts=999.5)
    car_ids = [tracker.update(one(*car), (720, 1280), ts=1000 + k * 0.25).track_ids[0] for k in range(8)]
    restored = ObjectTracker.restore(json.loads(json.dumps(tracker.snapshot())), TrackerConfig(), fps=4)
    person = [restored.update(one([540, 250 + 20 * k, 590, 370 + 20 * k], 0.8, "person", "pedestrian"), (720, 1280),
                              ts=1002 + k * 0.25).track_ids[0] for k in range(4)]
    assert car_ids[-1] is not None and car_ids[-1] not in person, (car_ids, person)


def test_a_crowded_scenes_snapshot_keeps_the_confirmed_tracks_first():
    """The tracker's half of a snapshot kept its 512 most recently seen tracks, unconfirmed ones
    among them, before older confirmed ones the event engine's half has open: those went on at the
    next owner without their tracker's state. It keeps the confirmed ones first, the most recently
    seen: the engine's 512 most recently seen tracks are the tracker's."""
    from pipeline.config import TrackerConfig
    from pipeline.schema import FrameMeta, FrameResult
    from pipeline.tracking import MAX_SNAPSHOT_TRACKS, ObjectTracker

    def grid(n, top=0):
        return [[c * 48, top + r * 45, c * 48 + 20, top + r * 45 + 40] for r, c in (divmod(i, 40) for i in range(n))]

    tracker, engine = ObjectTracker(TrackerConfig(), fps=4), EventEngine("cam")
    for k in range(4):  # 600 people on 3 frames; on the 4th 100 of them gone (lost) and 20 new (unconfirmed)
        boxes = grid(600) if k < 3 else grid(500) + grid(20, top=1000)
        dets = Detections(xyxy=boxes, scores=[0.9] * len(boxes), labels=["person"] * len(boxes),
                          categories=["pedestrian"] * len(boxes))
        out = tracker.update(dets, (1080, 1920), ts=k * 0.25)
        engine.update(FrameResult(FrameMeta("cam", k, k * 0.25, None, 1920, 1080), out, {}, {}),
                      tracker.alive_ids(), tracker.origins)
    state = tracker.snapshot()
    kept = [int(s["track_id"]) for pool in ("tracked", "lost") for s in state[pool]]
    recent = sorted(engine.snapshot()["tracks"], key=lambda t: (-t["last_frame"], t["id"]))[:MAX_SNAPSHOT_TRACKS]
    assert len(engine.open_tracks) == 600 and len(kept) == MAX_SNAPSHOT_TRACKS
    assert {t["id"] for t in recent} == set(kept), sorted({t["id"] for t in recent} - set(kept))[:10]


def test_a_reclassification_that_fails_keeps_the_tracks_earlier_answer():
    """Fresh looks failed (a classifier replica restarting) on two frames in a row, then the box
    was small: the track's answer was dropped with the failure and every later frame said
    `unclassified`; then the frames whose own fresh look failed were published without it (a
    classifier outage wiped every track's answer on every frame). The earlier answer stands."""
    asked = []

    async def flaky(crops):
        asked.append(len(crops))
        if 2 <= len(asked) <= 5:  # frames 2 and 3: each request and its one retry
            raise RuntimeError("classifier replica restarting")
        return [{"type": {"label": f"t{len(asked)}", "score": 0.9}} for _ in crops]

    route = ClassifierRoute(flaky, ClassifierConfig(weights="c.pt", imgsz=32, min_box=16, reclassify_every=1),
                            "classifier-vehicle")
    stage = CropClassification("c", {"vehicle": route}, timeout_s=5, track_buffer=30)
    big, small = [[10, 10, 60, 60]], [[10, 10, 20, 20]]
    image = np.zeros((200, 400, 3), np.uint8)

    async def go():
        return [await stage(image, dets, k) for k, dets in enumerate([cars(big), cars(big), cars(big), cars(small),
                                                                      cars(big)])]

    out = asyncio.run(go())
    labels = [o.attributes[0].get("type", {}).get("label") for o, _ in out]
    assert len(asked) == 6 and labels == ["t1", "t1", "t1", "t1", "t6"], (asked, [o.attributes for o, _ in out])
    assert [failed for _, failed in out] == [0] * 5  # nothing published without its classification
    assert all("unclassified" not in o.attributes[0] for o, _ in out)


def test_too_small_after_an_answer_is_no_attribute_change():
    """A track with an answer whose box is then too small with no cached answer (its camera just
    moved to another decoder, whose classifier cache started empty before answers were carried over; a
    classifier whose card cannot be read still carries none) was published `unclassified`,
    and the engine took that new key for a change: an `attributes` event where no label changed."""
    def seen(seq, attrs):
        return frame(seq, [obj(4, 60, attributes=attrs)])

    typed = {"type": {"label": "car", "score": 0.9}}
    small = {"unclassified": {"classifier-vehicle": "box 10x10 px is below 16x16"}}
    engine = EventEngine("cam", track_buffer=1)
    events = run(engine, [seen(1, typed), seen(2, small), seen(3, small), seen(4, {"type": {"label": "bus", "score": 0.8}})])
    changes = [(e.seq, e.attributes.get("type", {}).get("label")) for e in events if e.kind == "attributes"]
    assert changes == [(4, "bus")], changes
