"""A classifier that stops answering (`pipeline/classify.py`, pure asyncio, a fake classifier):
after one request that got no answer within the timeout the camera's frames stop waiting for it,
one probe at a time asks it again off the frames' path, and its first answer ends the outage."""

from __future__ import annotations

import asyncio

import numpy as np

import pipeline.classify as classify_module
from pipeline.classify import ClassifierRoute, CropClassification
from pipeline.config import ClassifierConfig
from pipeline.schema import Detections

from .waiting import wait_for

IMAGE = np.zeros((64, 64, 3), np.uint8)


def car(track: int | None = 7) -> Detections:
    return Detections(xyxy=np.array([[5, 5, 45, 45]], np.float32), scores=np.array([0.9], np.float32),
                      labels=("car",), categories=("vehicle",), track_ids=(track,), attributes=({},))


class Classifier:
    """Answers ``{"type": cab}`` per crop, or never while ``hung``; counts its calls."""

    def __init__(self):
        self.hung, self.calls = False, 0

    async def __call__(self, crops):
        self.calls += 1
        if self.hung:
            await asyncio.Event().wait()
        return [{"type": {"label": "cab", "score": 0.9}} for _ in crops]


def stage_with(classifier: Classifier, *, track_buffer: int | None = 30) -> CropClassification:
    route = ClassifierRoute(classifier, ClassifierConfig(weights="c.pt", imgsz=32, min_box=4, reclassify_every=1),
                            name="classifier-vehicle")
    return CropClassification("cam", {"vehicle": route}, timeout_s=0.2, track_buffer=track_buffer)


def test_frames_stop_waiting_for_a_classifier_that_gave_no_answer_and_go_on_when_it_answers(monkeypatch):
    """Every frame of a camera waited ``classify_timeout_s`` (10 s) for a classifier that hung,
    and asked it again: the camera ran at 2 frames a timeout and the hung classifier got 2 calls a
    frame."""
    monkeypatch.setattr(classify_module, "PROBE_EVERY_S", 600.0)

    async def scenario():
        classifier = Classifier()
        stage = stage_with(classifier, track_buffer=None)  # (no track: no last answer to keep)
        classifier.hung = True
        _, failed = await stage(IMAGE, car(None), 1)
        assert failed == 1 and classifier.calls == 2  # the request and its retry, the timeout waited
        for frame_no in range(2, 12):
            dets, failed = await stage(IMAGE, car(None), frame_no)
            assert failed == 1 and "type" not in dets.attributes[0]
        assert classifier.calls == 2, "the classifier was asked again on a frame: the frame waited for it"
        monkeypatch.setattr(classify_module, "PROBE_EVERY_S", 0.0)  # a probe due, and the classifier back
        classifier.hung = False
        _, failed = await stage(IMAGE, car(None), 12)  # sends the probe, does not wait for it
        assert failed == 1
        await asyncio.to_thread(wait_for, lambda: not stage._unanswering, 5, "the probe's answer to end the outage",
                                interval=0.01)
        assert classifier.calls == 3  # the probe
        dets, failed = await stage(IMAGE, car(None), 13)
        assert failed == 0 and dets.attributes[0]["type"]["label"] == "cab"

    asyncio.run(scenario())


def test_a_track_keeps_its_last_answer_while_its_classifier_is_not_answering(monkeypatch):
    monkeypatch.setattr(classify_module, "PROBE_EVERY_S", 600.0)

    async def scenario():
        classifier = Classifier()
        stage = stage_with(classifier)
        dets, _ = await stage(IMAGE, car(), 1)
        assert dets.attributes[0]["type"]["label"] == "cab"
        classifier.hung = True  # due again (reclassify_every 1): no answer in time
        dets, failed = await stage(IMAGE, car(), 2)
        assert failed == 0 and dets.attributes[0]["type"]["label"] == "cab"  # its last answer, not counted
        calls = classifier.calls
        for frame_no in range(3, 8):
            dets, failed = await stage(IMAGE, car(), frame_no)
            assert failed == 0 and dets.attributes[0]["type"]["label"] == "cab"
        assert classifier.calls == calls

    asyncio.run(scenario())


def test_frames_stop_waiting_for_a_classifier_whose_requests_fail_frame_after_frame(monkeypatch):
    """A classifier that fails at once (its deployment unavailable, a replica crash-looping) was
    asked on every frame, each request retried after its pause: every frame with a new object
    waited 0.2 s, the camera at 5 fps at most for as long as the errors lasted. After
    `FAILED_IN_A_ROW` frames in a row it is not waited for; a probe's answer ends that."""
    monkeypatch.setattr(classify_module, "PROBE_EVERY_S", 600.0)

    class Failing(Classifier):
        failing = True

        async def __call__(self, crops):
            if self.failing:
                self.calls += 1
                raise RuntimeError("Deployment 'classifier-vehicle' is unavailable")
            return await super().__call__(crops)

    async def scenario():
        classifier = Failing()
        stage = stage_with(classifier, track_buffer=None)
        for frame_no in range(1, classify_module.FAILED_IN_A_ROW + 1):
            _, failed = await stage(IMAGE, car(None), frame_no)
            assert failed == 1
        assert classifier.calls == 2 * classify_module.FAILED_IN_A_ROW and stage._unanswering, classifier.calls
        for frame_no in range(10, 20):
            dets, failed = await stage(IMAGE, car(None), frame_no)
            assert failed == 1 and "type" not in dets.attributes[0]
        assert classifier.calls == 2 * classify_module.FAILED_IN_A_ROW, "a frame waited for the failing classifier"
        monkeypatch.setattr(classify_module, "PROBE_EVERY_S", 0.0)
        classifier.failing = False
        await stage(IMAGE, car(None), 20)  # sends the probe
        await asyncio.to_thread(wait_for, lambda: not stage._unanswering, 5, "the probe's answer to end it",
                                interval=0.01)
        dets, failed = await stage(IMAGE, car(None), 21)
        assert failed == 0 and dets.attributes[0]["type"]["label"] == "cab"

    asyncio.run(scenario())


def test_a_classifier_failing_now_and_then_is_still_waited_for():
    """Two failed frames, then an answer: the count starts again (only failures in a row count)."""
    class Flaky(Classifier):
        async def __call__(self, crops):
            self.calls += 1
            if self.calls <= 4 or 6 <= self.calls <= 9:  # frames 1-2 fail (request + retry), 3 answers, 4-5 fail
                raise RuntimeError("replica restarting")
            return [{"type": {"label": "cab", "score": 0.9}} for _ in crops]

    async def scenario():
        stage = stage_with(Flaky(), track_buffer=None)
        outcomes = [(await stage(IMAGE, car(None), frame_no))[1] for frame_no in range(1, 6)]
        assert outcomes == [1, 1, 0, 1, 1] and not stage._unanswering, outcomes

    asyncio.run(scenario())


def test_frames_in_flight_together_ask_once_for_a_new_track(monkeypatch):
    """A big object's crop is cut in a thread (`OFF_LOOP_PIXELS`); the frames a batched detector
    answered together each got there before any had put its answer in the track's cache, and each
    asked the classifier for the same new track (4 frames in flight: 4 requests for one car)."""
    monkeypatch.setattr(classify_module, "OFF_LOOP_PIXELS", 0)  # (every crop cut in a thread)

    async def scenario():
        classifier = Classifier()
        route = ClassifierRoute(classifier, ClassifierConfig(weights="c.pt", imgsz=32, min_box=4, reclassify_every=0),
                                name="classifier-vehicle")  # (a track classified once)
        stage = CropClassification("cam", {"vehicle": route}, timeout_s=5.0, track_buffer=30)
        results = await asyncio.gather(*(stage(IMAGE, car(7), frame_no) for frame_no in (1, 2, 3, 4)))
        assert classifier.calls == 1, classifier.calls
        assert all(dets.attributes[0]["type"]["label"] == "cab" and failed == 0 for dets, failed in results)

    asyncio.run(scenario())


def test_one_crop_the_classifier_cannot_classify_is_no_outage():
    """A request answered with one item's failure (a crop it could not take) counted as a failed
    request: after `FAILED_IN_A_ROW` frames of that one object, the classifier was taken for
    not answering, and every other object went unclassified for `PROBE_EVERY_S`."""
    class OneBadCrop(Classifier):
        async def __call__(self, crops):
            self.calls += 1
            return [RuntimeError("bad crop") if crop.mean() > 100 else {"type": {"label": "cab", "score": 0.9}}
                    for crop in crops]

    image = np.zeros((64, 128, 3), np.uint8)
    image[:, :64] = 255  # the left car's crop is "bad"
    left, right = [5, 5, 45, 45], [80, 5, 120, 45]

    async def scenario():
        stage = stage_with(OneBadCrop())
        for frame_no in range(1, classify_module.FAILED_IN_A_ROW + 2):
            _, failed = await stage(image, Detections(np.array([left], np.float32), np.array([0.9], np.float32),
                                                      ("car",), ("vehicle",), (1,)), frame_no)
            assert failed == 1
        both = Detections(np.array([left, right], np.float32), np.array([0.9, 0.8], np.float32), ("car", "car"),
                          ("vehicle", "vehicle"), (1, 2))
        dets, failed = await stage(image, both, 10)
        assert not stage._unanswering and failed == 1 and dets.attributes[1]["type"]["label"] == "cab"

    asyncio.run(scenario())
