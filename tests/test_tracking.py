"""Tracks that hold at the fps cameras are sampled at (issue 11, item 0), on the real detector.

Every frame of traffic.mp4 (24 fps) and vtest.avi (10 fps) goes through the shared YOLO11n
(OpenVINO INT8) once per module. The tracker sees the frames a 4 fps camera samples (the
`VideoSource` sampler on the file's own time); an independent IoU tracker run on every frame is
the oracle of which detections are one object. ByteTrack as ultralytics ships it gave an id to
46 % of the cars and 83 % of the pedestrians from their object's second sampled frame on (151 id
switches on vtest.avi); now 99 % of both, with 0 and 41 switches.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from pipeline.config import TrackerConfig
from pipeline.schema import Detections
from pipeline.sampling import FpsSampler
from pipeline.tracking import ObjectTracker

from .conftest import DETECTOR

CLIPS = {"traffic": ("traffic.mp4", "vehicle"), "walk": ("vtest.avi", "pedestrian")}
FPS = 4.0


class Clip:
    def __init__(self, category: str):
        self.category = category
        self.pts: list[float] = []
        self.shape: tuple[int, int] = (0, 0)
        self.dets: list[Detections] = []

    def sampled(self, fps: float = FPS) -> list[int]:
        sampler = FpsSampler(fps)
        return [i for i, t in enumerate(self.pts) if sampler.accept(t)]


@pytest.fixture(scope="module")
def clips(videos, models_dir) -> dict[str, Clip]:
    from pipeline.backends import load_detector
    from pipeline.config_models import DetectorConfig
    from pipeline.models import prepare_frame

    cfg = DetectorConfig(weights=DETECTOR, num_cpus=2)
    detector = load_detector(cfg, models_dir=models_dir)
    out = {}
    for name, (file, category) in CLIPS.items():
        clip = out[name] = Clip(category)
        cap = cv2.VideoCapture(str(videos / file))
        batch = []
        while True:
            ok, image = cap.read()
            if ok:
                clip.pts.append(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000)
                clip.shape = image.shape[:2]
                batch.append(prepare_frame(image, cfg.imgsz))
            if len(batch) == 8 or (batch and not ok):
                clip.dets += detector.detect_batch(batch)
                batch = []
            if not ok:
                break
        assert all(isinstance(d, Detections) for d in clip.dets)
    return out


# --- the oracle: an IoU tracker on every frame, written independently of pipeline/ -------------

def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def oracle(clip: Clip, *, min_iou: float = 0.3, max_gap: int = 6) -> list[list[int | None]]:
    """Per frame, per detection: its object (None: another category). Boxes of the category
    overlapping by more than 0.7 are one object (the detector's NMS is per label); an object
    continues the track whose last box it overlaps most (IoU ≥ 0.3, unseen ≤ 6 frames)."""
    last: dict[int, tuple[np.ndarray, int]] = {}
    numbers = itertools.count(1)
    out = []
    for f, d in enumerate(clip.dets):
        head: dict[int, int] = {}  # detection → the best-scored box of its object
        for i in sorted((i for i in range(len(d)) if d.categories[i] == clip.category), key=lambda i: -d.scores[i]):
            head[i] = next((h for h in set(head.values()) if iou(d.xyxy[[h]], d.xyxy[[i]])[0, 0] > 0.7), i)
        heads = sorted(set(head.values()))
        live = [t for t, (_, seen) in last.items() if f - seen <= max_gap]
        obj: dict[int, int] = {}
        if heads and live:
            m = iou(np.array([last[t][0] for t in live]), d.xyxy[heads])
            for r, c in zip(*linear_sum_assignment(-m)):
                if m[r, c] >= min_iou:
                    obj[heads[c]] = live[r]
        for h in heads:
            obj.setdefault(h, next(numbers))
            last[obj[h]] = (d.xyxy[h], f)
        out.append([obj[head[i]] if i in head else None for i in range(len(d))])
    return out


def track(clip: Clip, frames: list[int], cfg: TrackerConfig | None = None, *, with_time: bool = True) -> list[tuple]:
    tracker = ObjectTracker(cfg or TrackerConfig(), fps=FPS)
    return [tracker.update(clip.dets[i], clip.shape, ts=clip.pts[i] if with_time else None).track_ids for i in frames]


@dataclass
class Score:
    coverage: float  # share of the category's detections with an id, from their object's 2nd sampled frame on
    switches: int  # an object whose ids on a frame share none with its ids on its previous frame with ids
    ids: dict[int, set[int]] = field(default_factory=dict)  # object → every tracker id it had
    frames: dict[int, int] = field(default_factory=dict)  # object → sampled frames it is on


def score(clip: Clip, frames: list[int], ids: list[tuple]) -> Score:
    objects = oracle(clip)
    out = Score(0.0, 0)
    counted = covered = 0
    previous: dict[int, set[int]] = {}
    for f, tids in zip(frames, ids):
        now: dict[int, set[int]] = {}
        for obj, tid in zip(objects[f], tids):
            if obj is None:
                continue
            if obj in out.frames:
                counted, covered = counted + 1, covered + (tid is not None)
            if tid is not None:
                now.setdefault(obj, set()).add(tid)
        for obj in {o for o in objects[f] if o is not None}:
            out.frames[obj] = out.frames.get(obj, 0) + 1
        for obj, tids_now in now.items():
            out.switches += obj in previous and not tids_now & previous[obj]
            previous[obj] = tids_now
            out.ids.setdefault(obj, set()).update(tids_now)
    out.coverage = covered / counted
    return out


@pytest.mark.parametrize("name, max_switches", [
    ("traffic", 2),  # 0 measured
    # people cross and hide each other, and the oracle (no motion model) swaps them too: on every
    # frame, ultralytics' own ByteTrack disagrees with it 46 times. 41 measured at 4 fps (151 before)
    ("walk", 50),
])
def test_tracks_hold_at_4_fps(clips, name, max_switches):
    clip = clips[name]
    frames = clip.sampled()
    result = score(clip, frames, track(clip, frames))
    assert result.coverage >= 0.9, f"{name}: only {result.coverage:.1%} of detections carry an id at 4 fps"
    assert result.switches <= max_switches, f"{name}: {result.switches} id switches against the oracle"


def test_a_car_keeps_one_id_while_it_crosses_the_frame(clips):
    """Every car seen on at least 4 sampled frames (a second or more) keeps one id, but one."""
    clip = clips["traffic"]
    frames = clip.sampled()
    result = score(clip, frames, track(clip, frames))
    cars = {obj: ids for obj, ids in result.ids.items() if result.frames[obj] >= 4}
    several = {obj: ids for obj, ids in cars.items() if len(ids) > 1}
    assert len(cars) >= 20 and len(several) <= 1, several


def test_tracks_hold_when_frames_are_dropped(clips):
    """Every third sampled frame dropped (backpressure): 99 % covered, 37 switches (before this
    work: 65 %, 227)."""
    clip = clips["walk"]
    frames = [f for n, f in enumerate(clip.sampled()) if n % 3 != 2]
    result = score(clip, frames, track(clip, frames))
    assert result.coverage >= 0.9 and result.switches <= 50, (result.coverage, result.switches)


def car(x: float) -> Detections:
    return Detections(xyxy=np.array([[x, 100, x + 40, 130]]), scores=[0.8], labels=("car",), categories=("vehicle",))


def test_the_motion_model_steps_by_the_real_time_between_frames():
    """A car 40 px long at 200 px/s, sampled at 4 fps (50 px a frame, more than its length) with
    frames missing: predicted over the real gap, it keeps its id; stepping one frame per frame
    (no time given), it would not."""
    times = [0, 0.25, 0.5, 0.75, 1.0, 1.75, 2.0, 2.25, 3.0, 3.25, 3.5]  # 0.75 s gaps: two frames dropped
    for with_time, kept in ((True, True), (False, False)):
        tracker = ObjectTracker(TrackerConfig(), fps=FPS)
        ids = [tracker.update(car(10 + 200 * t), (720, 1280), ts=t if with_time else None).track_ids[0] for t in times]
        assert (len(set(ids[1:])) == 1 and None not in ids[1:]) is kept, ids


def test_duplicate_boxes_of_one_object_share_its_id():
    """The detector's NMS is per label: one car is sometimes also a truck (the pedestrian beside
    it is another object)."""
    tracker = ObjectTracker(TrackerConfig(), fps=FPS)
    for step in range(3):
        x = 10 + 30 * step
        dets = Detections(xyxy=np.array([[x, 100, x + 60, 140], [x + 1, 101, x + 61, 141], [x, 150, x + 60, 190]]),
                          scores=[0.8, 0.4, 0.7], labels=("car", "truck", "person"),
                          categories=("vehicle", "vehicle", "pedestrian"))
        ids = tracker.update(dets, (720, 1280), ts=step / FPS).track_ids
    assert ids[0] == ids[1] is not None and ids[2] not in (None, ids[0])


def test_a_restored_tracker_gives_the_same_ids(clips):
    """Snapshot mid-clip, through JSON, restored: fed the frames as published (boxes to 0.1 px,
    scores to 4 decimals), it numbers every object as the tracker that went on."""
    clip = clips["walk"]
    frames = clip.sampled()[:120]
    first = ObjectTracker(TrackerConfig(), id_offset=500, fps=FPS)
    for f in frames[:60]:
        first.update(clip.dets[f], clip.shape, ts=clip.pts[f])
    state = json.loads(json.dumps(first.snapshot()))
    second = ObjectTracker.restore(state, TrackerConfig(), id_offset=500, fps=FPS)
    assert second.alive_ids() == first.alive_ids() and len(first.alive_ids()) >= 3
    for f in frames[60:]:
        went_on = first.update(clip.dets[f], clip.shape, ts=clip.pts[f]).track_ids
        published = Detections.from_objects(clip.dets[f].to_objects())
        assert second.update(published, clip.shape, ts=clip.pts[f]).track_ids == went_on
    assert second.track_id_max == first.track_id_max > 500


def test_replayed_ids_are_adopted_even_when_two_objects_were_numbered_the_other_way_round():
    """Restoring a camera replays the frames the dead owner published; where the replay numbered
    two objects each with the other's published id, both take theirs (the second swap undid the
    first). A plain rename still hands the id it gives up to the track that held the published one."""
    import numpy as np

    from pipeline.config import TrackerConfig
    from pipeline.schema import Detections
    from pipeline.tracking import ObjectTracker

    def cars(xs):
        return Detections(xyxy=np.array([[x, 100, x + 100, 200] for x in xs], np.float32),
                          scores=np.full(len(xs), 0.9, np.float32), labels=("car",) * len(xs),
                          categories=("vehicle",) * len(xs))

    tracker = ObjectTracker(TrackerConfig(), fps=4)
    ours = tracker.update(cars([100, 600]), (720, 1280), ts=1000.0).track_ids
    assert tracker.adopt_ids(ours, (ours[1], ours[0])) == 2
    assert tracker.update(cars([102, 602]), (720, 1280), ts=1000.25).track_ids == (ours[1], ours[0])
    tracker.update(cars([104, 604, 1000]), (720, 1280), ts=1000.5)  # a third car (confirmed when seen again)
    three = tracker.update(cars([106, 606, 1002]), (720, 1280), ts=1000.75).track_ids
    assert None not in three
    tracker.adopt_ids(three, (three[2], three[1], three[0]))  # the first and the third swapped
    assert tracker.update(cars([108, 608, 1004]), (720, 1280), ts=1001.0).track_ids == (three[2], three[1], three[0])


def test_a_replay_numbers_objects_seen_once_by_the_published_frame_or_above_it():
    """A replay that sees an object once (unconfirmed here, no id in ``ours``) where the dead
    owner published it with an id: its track takes that id, and goes on under it live. One seen
    once and published without an id gets a new id above every published one (the replay had
    numbered it 1 and 2, ids the dead owner had given to other objects)."""
    from pipeline.config import TrackerConfig
    from pipeline.tracking import ObjectTracker

    cars = lambda k: _boxes([100 + 4 * k, 100, 200 + 4 * k, 200], [700 - 4 * k, 100, 800 - 4 * k, 200],  # noqa: E731
                            label="car", category="vehicle")
    tracker = ObjectTracker(TrackerConfig(), fps=4)
    tracker.update(_boxes(), (720, 1280), ts=1000.0)  # the snapshot's frame: nothing there yet
    ours = tracker.update(cars(1), (720, 1280), ts=1000.25).track_ids
    assert ours == (None, None)
    assert tracker.adopt_ids(ours, (7, None)) == 1
    assert tracker.alive_ids() == {7}  # confirmed there: a track the events hold open
    tracker.raise_next_id(7)
    live = tracker.update(cars(2), (720, 1280), ts=1000.5).track_ids
    assert live[0] == 7 and live[1] is not None and live[1] > 7, live
    # missed on a frame (lost, not dropped as a once-seen track would be), then found again
    tracker.update(_boxes([700 - 12, 100, 800 - 12, 200], label="car", category="vehicle"), (720, 1280), ts=1000.75)
    assert 7 in tracker.alive_ids()
    assert tracker.update(cars(4), (720, 1280), ts=1001.0).track_ids[0] == 7


def test_a_track_the_replay_confirmed_by_itself_is_numbered_above_every_published_id():
    """The replay confirmed an object the dead owner never numbered (published without an id):
    its track kept the replay's own number, 2, an id the dead owner had given another object
    after its snapshot. It goes on above the published ids; the snapshot's track keeps its id."""
    from pipeline.config import TrackerConfig
    from pipeline.tracking import ObjectTracker

    car = lambda k: [100 + 4 * k, 100, 200 + 4 * k, 200]  # noqa: E731
    other = lambda k: [700 - 4 * k, 300, 800 - 4 * k, 400]  # noqa: E731
    dead = ObjectTracker(TrackerConfig(), fps=4)
    for k in range(3):
        known = dead.update(_boxes(car(k), label="car", category="vehicle"), (720, 1280), ts=1000 + k * 0.25).track_ids
    assert known == (1,)
    state = json.loads(json.dumps(dead.snapshot()))
    replay = ObjectTracker.restore(state, TrackerConfig(), fps=4)
    for k in (3, 4):
        ours = replay.update(_boxes(car(k), other(k), label="car", category="vehicle"), (720, 1280),
                             ts=1000 + k * 0.25).track_ids
        replay.adopt_ids(ours, (1, None))
    assert ours == (1, 2)  # confirmed here, never there
    replay.raise_next_id(7)
    live = replay.update(_boxes(car(5), other(5), label="car", category="vehicle"), (720, 1280), ts=1001.25).track_ids
    assert live[0] == 1 and live[1] is not None and live[1] > 7, live


def test_an_object_new_in_the_replay_does_not_take_an_id_adopted_from_the_published_frames():
    """The dead owner numbered an object 3 in a frame the replay sees it once (its first sighting
    was in a frame that never reached the stream); the next new object of the replay must get
    an id above 3, not the 3 the counter had not passed yet (two objects under one id)."""
    from pipeline.config import TrackerConfig
    from pipeline.tracking import ObjectTracker

    x, p, q, r = [20, 20, 80, 80], [200, 20, 260, 80], [400, 300, 460, 360], [100, 300, 160, 360]
    frames = [[x], [x], [x, p, q], [x, q], [x, r], [x, r]]
    dead = ObjectTracker(TrackerConfig(), fps=4)
    published = []
    for k, boxes in enumerate(frames[:5]):
        published.append(dead.update(_boxes(*boxes, label="car", category="vehicle"), (480, 640),
                                     ts=100 + 0.25 * k).track_ids)
        if k == 1:
            state = json.loads(json.dumps(dead.snapshot()))
    assert published[3] == (1, 3), published  # q: 3 (2 went to p, seen once)
    replay = ObjectTracker.restore(state, TrackerConfig(), fps=4)
    for k in (3, 4):  # frame 2 was tracked there but never published
        ours = replay.update(_boxes(*frames[k], label="car", category="vehicle"), (480, 640), ts=100 + 0.25 * k)
        replay.adopt_ids(ours.track_ids, published[k])
    replay.raise_next_id(3)
    live = replay.update(_boxes(*frames[5], label="car", category="vehicle"), (480, 640), ts=101.25).track_ids
    assert live[0] == 1 and live[1] is not None and live[1] > 3, live


def test_a_track_given_a_published_id_the_replay_had_dropped_outlives_a_missed_frame():
    """A car first seen on the snapshot's frame was confirmed there on a frame that never reached
    the stream: the replay's own track of it, seen once, was dropped, and ByteTrack kept its id
    among the removed. When the replay saw the car again and gave its new track the published id,
    ByteTrack dropped that track at its first missed frame (it takes the lost out of the removed by
    id): the car came back under a new id (counted twice) and its published track never ended."""
    from pipeline.config import TrackerConfig
    from pipeline.tracking import ObjectTracker

    still = [100, 100, 180, 160]
    xs = {4: 400, 5: 404, 6: None, 7: 412, 8: 416, 9: None, 10: None, 11: 428, 12: 432, 13: 436}

    def frame(k: int) -> Detections:
        moving = [[xs[k], 300, xs[k] + 80, 360]] if xs.get(k) is not None else []
        return _boxes(still, *moving, label="car", category="vehicle")

    dead = ObjectTracker(TrackerConfig(), fps=4)
    published = {}
    for k in range(11):
        ids = dead.update(frame(k), (720, 1280), ts=1000 + 0.25 * k).track_ids
        if k == 4:
            state = json.loads(json.dumps(dead.snapshot()))
        if k > 4 and k != 5:  # frame 5 (the car's second sighting: its id) never reached the stream
            published[k] = ids
    assert published[7] == (1, 2), published
    replay = ObjectTracker.restore(state, TrackerConfig(), fps=4)
    for k, ids in published.items():
        ours = replay.update(frame(k), (720, 1280), ts=1000 + 0.25 * k).track_ids
        replay.adopt_ids(ours, ids)
    replay.raise_next_id(2)
    assert replay.alive_ids() == {1, 2}, "the published track 2 ended in the replay, its end never published"
    live = [replay.update(frame(k), (720, 1280), ts=1000 + 0.25 * k).track_ids for k in (11, 12, 13)]
    assert live == [(1, 2)] * 3, live


def _boxes(*boxes, label="person", category="pedestrian"):
    return Detections(xyxy=np.array(boxes, np.float32).reshape(-1, 4), scores=np.full(len(boxes), 0.9, np.float32),
                      labels=(label,) * len(boxes), categories=(category,) * len(boxes))


def test_a_live_camera_back_after_an_outage_longer_than_its_track_buffer_starts_new_tracks():
    """A track lost for longer than ``track_buffer`` intervals has ended: someone standing near
    where it was two hours later is someone new. A tracker taken over from a snapshot
    (`resume_across_pause`) goes on across its handover's pause instead, up to `HANDOVER_PAUSE_S`."""
    standing = [[500, 100, 560, 260]]
    tracker = ObjectTracker(TrackerConfig(), fps=4)
    ids = [tracker.update(_boxes(*standing), (720, 1280), ts=1000 + k * 0.25).track_ids[0] for k in range(4)]
    before = ids[-1]
    assert before is not None
    state = json.loads(json.dumps(tracker.snapshot()))
    # a stall of 10 s (a detector retry, a replica restart): beyond track_buffer, not an outage
    assert tracker.update(_boxes(*standing), (720, 1280), ts=1010.75).track_ids == (before,)
    later = tracker.update(_boxes([530, 100, 590, 260]), (720, 1280), ts=1000 + 7200).track_ids
    assert later == (None,) and before not in tracker.alive_ids()
    restored = ObjectTracker.restore(state, TrackerConfig(), fps=4)
    restored.resume_across_pause()
    assert restored.update(_boxes([505, 100, 565, 260]), (720, 1280), ts=1000 + 20).track_ids == (before,)
    # ... but not across the whole service down for two hours (killed, its snapshot left behind)
    service_back = ObjectTracker.restore(state, TrackerConfig(), fps=4)
    service_back.resume_across_pause()
    assert service_back.update(_boxes([505, 100, 565, 260]), (720, 1280), ts=1000 + 7200).track_ids == (None,)
    assert before not in service_back.alive_ids()
    # a lease of an hour: its handover may take that long (the dead owner's cameras wait it out)
    long_lease = ObjectTracker.restore(state, TrackerConfig(), fps=4)
    long_lease.resume_across_pause(lease_ttl_s=3600)
    assert long_lease.update(_boxes([505, 100, 565, 260]), (720, 1280), ts=1000 + 3700).track_ids == (before,)


def test_a_camera_back_at_another_resolution_keeps_its_tracks():
    """The same scene from the camera's other stream: every track's box and motion are scaled to
    the new frame, so each object keeps its id (and nothing at the old pixels takes one)."""
    tracker = ObjectTracker(TrackerConfig(), fps=4)
    cars = lambda k, s: _boxes([(300 + 6 * k) / s, 600 / s, (600 + 6 * k) / s, 800 / s],  # noqa: E731
                               [(1200 - 6 * k) / s, 600 / s, (1500 - 6 * k) / s, 800 / s], label="car", category="vehicle")
    ids = [tracker.update(cars(k, 1), (1080, 1920), ts=1000 + k * 0.25).track_ids for k in range(4)]
    assert None not in ids[-1]
    assert tracker.update(cars(4, 3), (360, 640), ts=1001.0).track_ids == ids[-1]
    assert tracker.update(cars(5, 3), (360, 640), ts=1001.25).track_ids == ids[-1]


def test_ids_adopted_from_the_published_frame_carry_the_tracks_first_sighting():
    """Replaying another owner's frames, a track confirmed on this frame under another id than
    the published one was renamed, but its first sighting (``origins``, from which a line
    crossed before the confirmation is judged) stayed under the old id: the engine, looking
    it up under the published id, missed that crossing."""
    import numpy as np

    from pipeline.config import TrackerConfig
    from pipeline.schema import Detections
    from pipeline.tracking import ObjectTracker

    def car(x):
        return Detections(xyxy=np.array([[x, 100, x + 80, 150]] if x is not None else [], np.float32).reshape(-1, 4),
                          scores=np.array([0.9] if x is not None else [], np.float32),
                          labels=("car",) if x is not None else (), categories=("vehicle",) if x is not None else ())

    tracker = ObjectTracker(TrackerConfig(), fps=4)
    tracker.update(car(None), (360, 640), ts=1000)
    tracker.update(car(100), (360, 640), ts=1000.25)
    ours = tracker.update(car(110), (360, 640), ts=1000.5).track_ids
    assert ours == (1,) and 1 in tracker.origins
    assert tracker.adopt_ids(ours, (7,)) == 1
    assert set(tracker.origins) == {7} and tracker.alive_ids() == {7}


def test_a_burst_of_frames_a_millisecond_apart_does_not_lose_a_moving_car():
    """``fps: 0`` and a reader catching up: 12 frames 1 ms apart made the usual interval 1 ms,
    so the next 40 ms gap counted as 40 intervals and the car (moving 4 px a frame at 25 fps)
    was lost and came back under a new id (counted twice)."""
    from pipeline.tracking import ObjectTracker

    def car(x):
        return Detections(xyxy=np.array([[x, 100, x + 60, 160]], np.float32), scores=np.array([0.9]),
                          labels=("car",), categories=("vehicle",))

    tracker = ObjectTracker(TrackerConfig(), fps=0)
    t, x, ids = 0.0, 0.0, []
    for gap, step, n in ((0.04, 4, 20), (0.001, 0.1, 12), (0.04, 4, 20)):
        for _ in range(n):
            t, x = t + gap, x + step
            ids.append(tracker.update(car(x), (360, 640), t, steady_ts=t).track_ids[0])
    assert set(ids[5:]) == {ids[5]} and ids[5] is not None, ids


def test_the_tracker_keeps_a_short_tail_of_removed_tracks_and_the_same_ids(clips, monkeypatch):
    """ByteTrack kept the last 1000 removed tracks (~7 MB a camera); 50 give the same ids."""
    import pipeline.tracking as tracking

    tail = tracking.REMOVED_KEPT
    for name, clip in clips.items():
        frames = list(range(len(clip.dets)))  # every frame: the most tracks come and go
        runs = {}
        for kept in (tail, 10**9):
            monkeypatch.setattr(tracking, "REMOVED_KEPT", kept)
            tracker = ObjectTracker(TrackerConfig(), fps=FPS)
            ids = [tracker.update(clip.dets[i], clip.shape, ts=clip.pts[i]).track_ids for i in frames]
            runs[kept] = (ids, len(tracker._tracker.removed_stracks))
        (short, in_short), (whole, in_whole) = runs.values()
        assert in_short <= 50 < in_whole, (name, in_short, in_whole)
        assert short == whole, name


def test_tracks_that_expire_together_all_end_past_the_tail_of_removed_tracks(monkeypatch):
    """80 people lost at once (a stall): every one of their tracks ends when the buffer runs out,
    as with ByteTrack's whole list of removed tracks; none comes back under its old id after."""
    import pipeline.tracking as tracking

    crowd = Detections(xyxy=np.array([[20 * (i % 40), 300 * (i // 40), 20 * (i % 40) + 15, 300 * (i // 40) + 40]
                                      for i in range(80)], np.float32),
                       scores=[0.8] * 80, labels=("person",) * 80, categories=("pedestrian",) * 80)
    runs = []
    for kept in (tracking.REMOVED_KEPT, 10**9):
        monkeypatch.setattr(tracking, "REMOVED_KEPT", kept)
        tracker = ObjectTracker(TrackerConfig(), fps=FPS)
        seen = [tracker.update(crowd, (720, 1280), ts=k / FPS).track_ids for k in range(3)]
        alive, t = [], 3 / FPS
        while len(alive) < 2 or alive[-1] or alive[-2]:  # empty frames until none is left for two
            tracker.update(Detections(), (720, 1280), ts=t)
            alive.append(len(tracker.alive_ids()))
            t += 1 / FPS
        back = tracker.update(crowd, (720, 1280), ts=t).track_ids
        runs.append((seen, alive, set(back) & set(seen[-1])))
    assert runs[0] == runs[1] and not runs[0][2] and 80 in runs[0][1], runs[0][1:]
