"""EventEngine on synthetic tracked frames: lifecycle, zones, lines, ids, counts, snapshot/restore."""

from __future__ import annotations

import math
import json
from collections import Counter

import numpy as np
import pytest

from pipeline.events import EVENTS_SCHEMA, PATH_KEPT, PATH_POINTS, Event, EventEngine
from pipeline.geometry import GeometryError
from pipeline.schema import Detections, FrameMeta, FrameResult

T0 = 1_764_000_000.0
FPS = 4.0
STOP = {"stop": [[0, 0.5], [1, 0.5]]}  # y = 50 on 100×100 frames, drawn left → right: moving up is "in"
BOX_ZONE = {"box": [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8]]}


def obj(track_id, bottom, *, x=50.0, category="vehicle", label="car", score=0.9, attributes=None, size=10.0):
    """An object whose bottom-centre anchor is (x, bottom)."""
    return dict(track_id=track_id, bbox=[x - size / 2, bottom - size, x + size / 2, bottom], category=category,
                label=label, score=score, attributes=attributes or {})


def frame(seq, objects=(), *, camera="cam", width=100, height=100):
    dets = Detections(
        xyxy=np.array([o["bbox"] for o in objects], np.float32).reshape(-1, 4),
        scores=np.array([o["score"] for o in objects], np.float32),
        labels=[o["label"] for o in objects],
        categories=[o["category"] for o in objects],
        track_ids=[o["track_id"] for o in objects],
        attributes=[o["attributes"] for o in objects],
    )
    meta = FrameMeta(camera=camera, seq=seq, frame_ts=T0 + seq / FPS, pts=seq / FPS, width=width, height=height)
    return FrameResult(meta=meta, objects=dets, models={}, latency_ms={})


def ts(seq):
    return T0 + seq / FPS


def run(engine, frames):
    out = []
    for f in frames:
        out.extend(engine.update(f))
    return out


def kinds(events):
    return [(e.kind, e.track_id, e.seq) for e in events]


def crossing_frames():
    """Car 1 drives up the image across the stop line; pedestrian 2 walks down across it."""
    ups = [90, 70, 55, 30, 10]  # never exactly on the line (that counts as its right-hand side)
    return [frame(s, [obj(1, ups[s - 1]), obj(2, 100 - ups[s - 1], x=30, category="pedestrian", label="person")])
            for s in range(1, 6)]


def test_start_and_end_after_track_buffer_frames():
    engine = EventEngine("cam", track_buffer=3)
    seen = [frame(s, [obj(7, 60, score=0.5 + s / 10)]) for s in (1, 2, 3)]
    events = run(engine, seen)
    assert kinds(events) == [("track_start", 7, 1)]
    assert run(engine, [frame(s) for s in (4, 5, 6)]) == []  # missing 3 frames: ByteTrack may still re-find it
    (end,) = engine.update(frame(7))
    assert (end.kind, end.seq, end.ts) == ("track_end", 7, ts(7))
    assert end.duration_s == pytest.approx(ts(3) - ts(1)) and end.frames == 3 and end.best_score == pytest.approx(0.8)
    assert engine.open_tracks == [] and engine.update(frame(8)) == []


def test_a_track_seen_again_within_the_buffer_does_not_end():
    engine = EventEngine("cam", track_buffer=2)
    run(engine, [frame(1, [obj(3, 60)]), frame(2), frame(3), frame(4, [obj(3, 60)]), frame(5), frame(6)])
    assert engine.open_tracks == [3]
    (end,) = engine.update(frame(7))
    assert end.kind == "track_end" and end.frames == 2 and end.duration_s == pytest.approx(ts(4) - ts(1))


def test_objects_without_a_track_id_are_ignored():
    engine = EventEngine("cam", lines=STOP)
    assert run(engine, [frame(s, [obj(None, 90 - 20 * s)]) for s in range(1, 5)]) == []
    assert engine.take_counts() == Counter()


def test_line_crossing_in_both_directions_with_counts():
    engine = EventEngine("cam", lines=STOP)
    events = run(engine, crossing_frames())
    assert kinds(events) == [("track_start", 1, 1), ("track_start", 2, 1), ("line_cross", 1, 4), ("line_cross", 2, 4)]
    car, person = events[2], events[3]
    assert (car.line, car.direction, car.id) == ("stop", "in", "cam:1:line_cross:1")
    assert (person.direction, person.category, person.label) == ("out", "pedestrian", "person")
    assert engine.take_counts() == Counter({"tracks:vehicle": 1, "tracks:pedestrian": 1,
                                            "line:stop:in:vehicle": 1, "line:stop:out:pedestrian": 1})
    assert engine.take_counts() == Counter()  # deltas: taken once
    back = engine.update(frame(6, [obj(1, 80), obj(2, 60, x=30, category="pedestrian", label="person")]))
    assert [(e.track_id, e.direction, e.id) for e in back] == [(1, "out", "cam:1:line_cross:2")]


def test_zone_enter_and_exit_with_dwell():
    engine = EventEngine("cam", zones=BOX_ZONE, track_buffer=5)
    path = [95, 70, 50, 30, 10, 5]  # bottom-centre y: enters the box (20..80) at seq 2, leaves at seq 5
    events = run(engine, [frame(s, [obj(4, path[s - 1])]) for s in range(1, 7)])
    assert kinds(events) == [("track_start", 4, 1), ("zone_enter", 4, 2), ("zone_exit", 4, 5)]
    enter, exit_ = events[1], events[2]
    assert (enter.zone, enter.ts, exit_.zone, exit_.ts) == ("box", ts(2), "box", ts(5))
    assert exit_.dwell_s == pytest.approx(exit_.ts - enter.ts) and exit_.ended is False
    assert (enter.id, exit_.id) == ("cam:4:zone_enter:1", "cam:4:zone_exit:1")
    assert engine.take_counts() == Counter({"tracks:vehicle": 1, "zone:box:enter:vehicle": 1, "zone:box:exit:vehicle": 1})


def test_a_track_starting_inside_and_ending_inside_a_zone():
    engine = EventEngine("cam", zones=BOX_ZONE, track_buffer=1)
    events = run(engine, [frame(1, [obj(5, 50)]), frame(2, [obj(5, 52)]), frame(3), frame(4)])
    assert kinds(events) == [("track_start", 5, 1), ("zone_enter", 5, 1), ("zone_exit", 5, 4), ("track_end", 5, 4)]
    exit_ = events[2]
    assert exit_.ended is True and exit_.dwell_s == pytest.approx(ts(2) - ts(1))  # up to the last sighting


def test_attributes_change_emits_once_and_compares_labels_not_scores():
    def seen(seq, attrs):
        return frame(seq, [obj(9, 60, attributes=attrs)])

    car, truck = {"label": "car", "score": 0.6}, {"label": "truck", "score": 0.7}
    frames = [seen(1, {"type": car}), seen(2, {"type": {**car, "score": 0.9}}), seen(3, {"type": truck}),
              seen(4, {"type": {**truck, "score": 0.4}}), seen(5, {}), seen(6, {"type": truck})]
    engine = EventEngine("cam", track_buffer=2)
    events = run(engine, frames)
    assert kinds(events) == [("track_start", 9, 1), ("attributes", 9, 3)]
    assert events[0].attributes == {"type": car} and events[1].attributes == {"type": truck}
    assert events[1].id == "cam:9:attributes:1"
    (end,) = run(engine, [frame(7), frame(8), frame(9)])
    assert end.attributes == {"type": truck}  # final: the last answer (a frame without one keeps it)


def test_an_answer_arriving_after_start_is_an_attributes_event():
    engine = EventEngine("cam")
    events = run(engine, [frame(1, [obj(2, 60)]), frame(2, [obj(2, 60, attributes={"type": {"label": "bus"}})])])
    assert kinds(events) == [("track_start", 2, 1), ("attributes", 2, 2)]


def test_ids_and_payloads_are_deterministic_across_runs():
    frames = crossing_frames() + [frame(6), frame(7)]

    def once():
        engine = EventEngine("cam", zones=BOX_ZONE, lines=STOP, track_buffer=1)
        return [e.to_payload() for e in run(engine, frames) + engine.close(8, ts(8))]

    first, second = once(), once()
    assert first == second and len(first) == 10
    assert len({p["id"] for p in first}) == len(first)
    assert [p["id"] for p in first if p["track_id"] == 1] == [
        "cam:1:track_start", "cam:1:zone_enter:1", "cam:1:line_cross:1", "cam:1:zone_exit:1", "cam:1:track_end"]


def test_payloads_are_json_with_the_kinds_fields():
    engine = EventEngine("cam", zones=BOX_ZONE, lines=STOP, track_buffer=1)
    events = run(engine, crossing_frames()) + engine.close(9, ts(9))
    by_kind = {}
    for e in events:
        by_kind.setdefault(e.kind, json.loads(e.to_json()))
    common = {"schema", "id", "camera", "kind", "ts", "seq", "track_id", "category", "label"}
    assert set(by_kind) == {"track_start", "zone_enter", "zone_exit", "line_cross", "track_end"}
    assert set(by_kind["track_start"]) == common | {"bbox", "attributes"}
    assert set(by_kind["zone_enter"]) == common | {"zone"}
    assert set(by_kind["zone_exit"]) == common | {"zone", "dwell_s", "ended"}
    assert set(by_kind["line_cross"]) == common | {"line", "direction"}
    assert set(by_kind["track_end"]) == common | {"duration_s", "frames", "best_score", "attributes", "path"}
    start = by_kind["track_start"]
    assert start["schema"] == EVENTS_SCHEMA and start["bbox"] == [45.0, 80.0, 55.0, 90.0]
    assert start["camera"] == "cam" and start["seq"] == 1 and start["ts"] == ts(1)


def test_track_end_path_is_a_bounded_summary():
    engine = EventEngine("cam", track_buffer=1)
    run(engine, [frame(s, [obj(1, 95 - 0.8 * s, x=5 + 0.8 * s)]) for s in range(1, 101)])
    assert all(len(t["path"]) <= PATH_KEPT for t in engine.snapshot()["tracks"])
    (end,) = engine.close(101, ts(101))
    path = end.path
    assert path["first"] == [5.8, 89.2] and path["last"] == [85.0, 10.0]  # box centres
    assert len(path["points"]) == PATH_POINTS and path["points"][0] == path["first"] and path["points"][-1] == path["last"]
    xs = [p[0] for p in path["points"]]
    assert xs == sorted(xs)


def test_close_ends_every_open_track_and_exits_its_zones():
    engine = EventEngine("cam", zones=BOX_ZONE)
    run(engine, [frame(1, [obj(1, 50), obj(2, 95)]), frame(2, [obj(1, 50), obj(2, 95)])])
    engine.take_counts()
    events = engine.close(3, ts(3))
    assert kinds(events) == [("zone_exit", 1, 3), ("track_end", 1, 3), ("track_end", 2, 3)]
    assert all(e.ts == ts(3) for e in events) and events[0].ended is True
    assert engine.take_counts() == Counter({"zone:box:exit:vehicle": 1})
    assert engine.open_tracks == [] and engine.close(4, ts(4)) == []


def test_restore_mid_track_continues_without_a_second_start_and_counts_a_crossing_once():
    frames = crossing_frames() + [frame(6), frame(7)]
    whole = EventEngine("cam", zones=BOX_ZONE, lines=STOP, track_buffer=1)
    expected = run(whole, frames)
    expected_counts = whole.take_counts()

    first = EventEngine("cam", zones=BOX_ZONE, lines=STOP, track_buffer=1)
    before = run(first, frames[:3])  # both tracks on the line's far sides, not crossed yet
    state = json.loads(json.dumps(first.snapshot()))  # through Redis
    second = EventEngine.restore(state, "cam", BOX_ZONE, STOP, track_buffer=1)
    after = run(second, frames[3:])

    assert [e.kind for e in after].count("track_start") == 0
    crossings = [e for e in after if e.kind == "line_cross"]
    assert [(e.track_id, e.direction) for e in crossings] == [(1, "in"), (2, "out")]
    assert before + after == expected  # same events, same ids, as without the change of owner
    assert first.take_counts() + second.take_counts() == expected_counts
    assert expected_counts["line:stop:in:vehicle"] == 1


def test_a_crossing_between_the_snapshot_and_the_next_owners_first_frame_counts_once():
    first = EventEngine("cam", lines=STOP)
    run(first, [frame(1, [obj(1, 90)]), frame(2, [obj(1, 70)])])
    second = EventEngine.restore(first.snapshot(), "cam", lines=STOP)
    events = run(second, [frame(5, [obj(1, 20)]), frame(6, [obj(1, 10)])])  # frames 3, 4 went with the old owner
    assert [(e.kind, e.direction, e.id) for e in events] == [("line_cross", "in", "cam:1:line_cross:1")]
    assert second.take_counts() == Counter({"line:stop:in:vehicle": 1})


def test_snapshot_is_bounded_to_open_tracks_and_json():
    engine = EventEngine("cam", zones=BOX_ZONE, track_buffer=1)
    run(engine, [frame(1, [obj(1, 50), obj(2, 60)]), frame(2, [obj(2, 60)]), frame(3, [obj(2, 60)])])
    state = engine.snapshot()
    assert json.loads(json.dumps(state)) == state
    assert [t["id"] for t in state["tracks"]] == [2] and state["tracks"][0]["zones"] == {"box": ts(1)}


def test_restore_refuses_another_camera_or_schema_and_drops_removed_zones():
    engine = EventEngine("cam", zones=BOX_ZONE)
    engine.update(frame(1, [obj(1, 50)]))
    state = engine.snapshot()
    with pytest.raises(ValueError, match="camera 'cam' cannot continue camera 'other'"):
        EventEngine.restore(state, "other")
    with pytest.raises(ValueError, match="unsupported event state"):
        EventEngine.restore({**state, "schema": "x"}, "cam")
    with pytest.raises(ValueError, match="malformed event state"):
        EventEngine.restore({**state, "tracks": [{"id": 1}]}, "cam")
    moved = EventEngine.restore(state, "cam")  # the zone was removed meanwhile: left on the next frame
    [left] = moved.update(frame(2))
    assert (left.kind, left.zone, left.ended, left.dwell_s, left.seq) == ("zone_exit", "box", False, 0.0, 2)
    assert moved.take_counts() == {"zone:box:exit:vehicle": 1}
    assert [e.kind for e in moved.close(3, ts(3))] == ["track_end"]


def test_geometry_is_resolved_from_the_frame_size():
    engine = EventEngine("cam", lines={"stop": [[0, 0.5], [1, 0.5]]})
    big = [frame(s, [obj(1, y, x=300)], width=640, height=480) for s, y in ((1, 300), (2, 200))]  # line at y = 240
    assert [e.kind for e in run(engine, big)] == ["track_start", "line_cross"]
    small = [frame(s, [obj(2, y, x=30)], width=100, height=100) for s, y in ((3, 60), (4, 40))]  # resized: y = 50
    assert [e.kind for e in run(engine, small)] == ["track_start", "line_cross"]
    bad = EventEngine("cam", zones={"z": [[10, 10], [700, 10], [100, 50]]})
    with pytest.raises(GeometryError, match=r"cameras\[cam\]\.zones\.z\[1\]: \[700, 10\] is outside the 640x480 frame"):
        bad.update(frame(1, width=640, height=480))  # the first frame, even without objects


def test_a_box_clipped_at_the_frame_edge_is_inside_a_zone_drawn_to_that_edge():
    """The detector clips boxes to the frame: a car cut off at the bottom has its bottom-centre
    anchor on the frame's edge, inside the zone that reaches it (no exit, no second enter)."""
    engine = EventEngine("cam", zones={"low": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}, track_buffer=5)
    path = [80, 100, 100, 90]  # bottom edge y: in the zone, clipped at the frame's bottom, back up
    events = run(engine, [frame(s, [obj(1, path[s - 1])]) for s in range(1, 5)])
    assert kinds(events) == [("track_start", 1, 1), ("zone_enter", 1, 1)], kinds(events)
    right = run(EventEngine("cam", zones={"side": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]}), [frame(1, [obj(2, 50, x=100)])])
    assert [e.kind for e in right] == ["track_start", "zone_enter"]
    for margin in (0.0, 0.1):  # a pixel zone drawn to the last pixel's index (99, as tools give it): never inside
        events = run(EventEngine("cam", zones={"bay": [[0, 50], [99, 50], [99, 99], [0, 99]]}, zone_margin=margin),
                     [frame(s, [obj(3, 100, x=50, size=30)]) for s in range(1, 4)])
        assert kinds(events) == [("track_start", 3, 1), ("zone_enter", 3, 1)], (margin, kinds(events))


def test_a_camera_back_at_another_resolution_neither_crosses_lines_nor_loses_counts():
    """A reconnect at another frame size: a still object crosses no line (its last anchor was in
    the old pixels) and leaves no pixel zone: pixel zones and lines are in the first frame's
    pixels, scaled as the tracks are (they stayed put: a parked car inside one got a zone_exit
    it never made). A pixel zone outside the first frame fails before any track ends."""
    engine = EventEngine("cam", lines={"gate": [[0.6, 0], [0.6, 1]]})
    still = [frame(1, [obj(1, 500, x=1000)], width=1920, height=1080),  # x 0.52 of the width
             frame(2, [obj(1, 170, x=333)], width=640, height=360)]  # the same place, smaller
    assert [e.kind for e in run(engine, still)] == ["track_start"]
    pixel = EventEngine("cam", zones={"z": [[1000, 500], [1900, 500], [1900, 1000]]},
                        lines={"gate": [[1500, 0], [1500, 1080]]})
    pixel.update(frame(1, [obj(3, 600, x=1700)], width=1920, height=1080), alive={3})  # inside z
    restored = EventEngine.restore(pixel.snapshot(), "cam", pixel.zones, pixel.lines)  # (a next owner)
    for engine in (pixel, restored):
        assert [e.kind for e in run(engine, [frame(2, [obj(3, 400, x=1133)], width=1280, height=720)])] == []
    pixel.reconfigure(pixel.zones, pixel.lines, anchor="center")  # the same points: still the first frame's
    assert [e.kind for e in run(pixel, [frame(3, [obj(3, 400, x=1133)], width=1280, height=720)])] == []
    with pytest.raises(GeometryError):
        EventEngine("cam", zones=pixel.zones).update(frame(1, [], width=1280, height=720))


def test_frames_of_another_camera_are_refused():
    with pytest.raises(ValueError, match="camera 'other'"):
        EventEngine("cam").update(frame(1, camera="other"))


def test_event_count_keys():
    base = dict(camera="c", seq=1, ts=0.0, track_id=1, category="vehicle", label="car")
    assert Event("line_cross", **base, n=1, line="stop", direction="out").count_keys() == ["line:stop:out:vehicle"]
    assert Event("zone_enter", **base, n=1, zone="z").count_keys() == ["zone:z:enter:vehicle"]
    assert Event("track_end", **base).count_keys() == [] and Event("track_start", **base).id == "c:1:track_start"


def test_the_track_label_is_its_most_frequent_detector_label():
    engine = EventEngine("cam", track_buffer=1)
    frames = [frame(1, [obj(1, 60, label="truck")]), frame(2, [obj(1, 60)]), frame(3, [obj(1, 60)]), frame(4)]
    start, end = run(engine, frames) + run(engine, [frame(5)])
    assert (start.label, end.label) == ("truck", "car")


def test_engine_for_a_configured_camera():
    from pipeline.config import CameraConfig

    cam = CameraConfig(id="cam", url="x", lines={"stop": [[0, 50], [100, 50]]}, anchor="center")
    engine = EventEngine.for_camera(cam, track_buffer=4)
    assert (engine.anchor, engine.track_buffer, engine.lines) == ("center", 4, {"stop": [[0, 50], [100, 50]]})
    events = run(engine, [frame(1, [obj(1, 60)]), frame(2, [obj(1, 50)])])  # centre y 55 → 45: crossed
    assert [(e.kind, e.direction) for e in events] == [("track_start", None), ("line_cross", "in")]


def test_zones_and_lines_changed_at_runtime_apply_to_open_tracks():
    engine = EventEngine("cam", zones=BOX_ZONE, track_buffer=5)
    run(engine, [frame(1, [obj(1, 62)])])  # inside "box"
    # "box" removed, "top" added, a line added: the track leaves the removed zone on the next
    # frame (its dwell up to its last sighting; occupancy back to 0), no second start, and
    # enters the new zone on its next sighting
    engine.reconfigure({"top": [[0, 0], [1, 0], [1, 0.6], [0, 0.6]]}, STOP, anchor="bottom_center")
    engine.take_counts()
    events = run(engine, [frame(2, [obj(1, 58)]), frame(3, [obj(1, 56)])])
    assert kinds(events) == [("zone_exit", 1, 2), ("zone_enter", 1, 2)]
    assert (events[0].zone, events[0].ended, events[0].dwell_s, events[1].zone) == ("box", False, 0.0, "top")
    assert engine.take_counts() == {"zone:box:exit:vehicle": 1, "zone:top:enter:vehicle": 1}
    # zones removed and a new anchor: the track leaves "top", and the jump from the old anchor
    # point (bottom 56, below the line) to the new one (centre 49, above it) is not a crossing
    engine.reconfigure({}, STOP, anchor="center")
    events = run(engine, [frame(4, [obj(1, 54)]), frame(5, [obj(1, 53)])])
    assert kinds(events) == [("zone_exit", 1, 4)] and (events[0].zone, events[0].dwell_s) == ("top", round(ts(3) - ts(2), 3))
    crossed = run(engine, [frame(6, [obj(1, 64)])])  # centre 48 → 59: down across y = 50
    assert [(e.kind, e.direction) for e in crossed] == [("line_cross", "out")]


def test_a_track_ends_when_the_tracker_drops_it_not_before():
    """With the tracker's alive ids, a track lost for longer than track_buffer frames but still
    held by the tracker (it may bring it back) stays open; it ends on the frame it is dropped."""
    engine = EventEngine("cam", track_buffer=2)
    run(engine, [frame(1, [obj(1, 50)])])
    assert engine.update(frame(2), alive={1}) == [] and engine.update(frame(3), alive={1}) == []
    assert engine.update(frame(4), alive={1}) == []  # past track_buffer, but still held: open
    assert kinds(engine.update(frame(5, [obj(1, 52)]), alive={1})) == []  # brought back: no second start
    ended = engine.update(frame(6), alive=set())
    assert kinds(ended) == [("track_end", 1, 6)]


def test_a_line_crossed_between_a_tracks_first_sighting_and_its_confirmation_counts():
    """At 4 fps a fast car can be across the line by the time the tracker confirms it: the box
    it was first seen at (``origins``) is where the crossing is judged from."""
    engine = EventEngine("cam", lines=STOP)
    first_seen = obj(None, 70)["bbox"]  # below the line
    events = engine.update(frame(1, [obj(1, 40)]), {1}, {1: first_seen})  # confirmed above it
    assert kinds(events) == [("track_start", 1, 1), ("line_cross", 1, 1)] and events[1].direction == "in"
    # a track known already, or first seen on the same side, judges nothing from an origin
    assert engine.update(frame(2, [obj(1, 30)]), {1}, {1: obj(None, 90)["bbox"]}) == []
    assert kinds(engine.update(frame(3, [obj(1, 30), obj(2, 20)]), {1, 2}, {2: obj(None, 30)["bbox"]})) == [
        ("track_start", 2, 3)]


def test_tracker_and_engine_restored_from_json_give_the_same_ids_and_events():
    """Both snapshotted after frame 4, through JSON, restored: the rest of the clip gives the
    same track ids and the same events (ids included) as the pair that went on."""
    from pipeline.config import TrackerConfig
    from pipeline.tracking import ObjectTracker

    def car_frames():
        out = []
        for s in range(1, 21):  # two cars up the image across the stop line, 9 px a frame
            cars = [obj(None, 99 - 9 * (s - k), x=20 + 30 * i, size=8.0) for i, k in enumerate((0, 6)) if 0 <= s - k < 11]
            out.append(frame(s, cars))
        return out

    def step(tracker, engine, f):
        tracked = tracker.update(f.objects, (100, 100), ts=f.meta.frame_ts)
        events = engine.update(FrameResult(f.meta, tracked, {}, {}), tracker.alive_ids(), tracker.origins)
        return tracked.track_ids, [e.to_payload() for e in events]

    frames = car_frames()
    tracker, engine = ObjectTracker(TrackerConfig(), fps=FPS), EventEngine("cam", lines=STOP)
    for f in frames[:4]:
        step(tracker, engine, f)
    state = json.loads(json.dumps({"tracker": tracker.snapshot(), "events": engine.snapshot()}))
    restored = (ObjectTracker.restore(state["tracker"], TrackerConfig(), fps=FPS),
                EventEngine.restore(state["events"], "cam", lines=STOP))
    went_on = [step(tracker, engine, f) for f in frames[4:]]
    assert [step(*restored, f) for f in frames[4:]] == went_on
    events = [p for _, ps in went_on for p in ps]
    assert [p["kind"] for p in events].count("line_cross") == 2 and not any(p["kind"] == "track_start" and
                                                                            p["track_id"] == 1 for p in events)


def test_a_restored_or_reconfigured_engine_at_another_frame_size_counts_no_crossing():
    """A next owner (or a reconfigured engine) whose camera came back at another resolution
    compared the last anchor point, in the old frame's pixels, with the new one: the same car,
    not moving, crossed the stop line. The frame size is now kept, in the snapshot too."""
    def restored(engine):
        return EventEngine.restore(json.loads(json.dumps(engine.snapshot())), "cam", lines=STOP)

    def reconfigured(engine):
        engine.reconfigure(None, STOP, anchor="bottom_center")
        return engine

    for carry_on in (restored, reconfigured):
        engine = EventEngine("cam", lines=STOP)
        engine.update(frame(1, [obj(1, 80)]))  # below the line (y = 50 of 100)
        events = carry_on(engine).update(frame(2, [obj(1, 160, x=100, size=20)], width=200, height=200))
        assert not [e for e in events if e.kind == "line_cross"], (carry_on.__name__, kinds(events))


def test_a_restored_engine_with_another_anchor_counts_no_crossing():
    """A redeploy that changed ``anchor`` handed over a snapshot taken with the old one: the
    same box, its bottom below the line and its centre above, crossed it. `reconfigure` already
    forgot the anchor points on such a change; `restore` now does too."""
    engine = EventEngine("cam", lines=STOP)
    engine.update(frame(1, [obj(1, 60, size=30)]))  # bottom 60 (below), centre 45 (above)
    state = json.loads(json.dumps(engine.snapshot()))
    restored = EventEngine.restore(state, "cam", lines=STOP, anchor="center")
    events = restored.update(frame(2, [obj(1, 60, size=30)]))
    assert not [e for e in events if e.kind == "line_cross"], kinds(events)


def test_a_file_read_faster_than_real_time_measures_dwell_and_duration_on_its_own_time(redis_server):
    """A recording processed as fast as it decodes (`realtime: false`): its frames' wall times
    are when they were read (a 10-minute file in 1 minute), so dwell and durations came out ~10x
    too short. They are measured on the file's own time now, as the tracker already was; events
    keep the capture time as their ``ts``."""
    from dataclasses import replace

    from pipeline.config import CameraConfig, TrackerConfig
    from pipeline.publish import Publisher
    from pipeline.streams import StreamKeys, connect_redis
    from pipeline.track_restore import open_tracking

    def fast(seq, objects=()):  # read 10 times faster than its frames' own times (pts)
        result = frame(seq, objects)
        return replace(result, meta=replace(result.meta, frame_ts=T0 + seq / FPS / 10))

    publisher = Publisher(connect_redis(redis_server.url), keys=StreamKeys("ft"), maxlen=100)
    camera = CameraConfig(id="cam", url="recording.mp4", realtime=False, zones=BOX_ZONE)
    try:
        _, engine, _ = open_tracking(publisher, camera, TrackerConfig(), track_id_max=0, is_file=True)
    finally:
        publisher.close()
    events = []
    for seq in range(9):  # inside the box zone for 8 frames = 2 s of the file
        events += engine.update(fast(seq, [obj(1, 50)]))
    for seq in range(9, 9 + 31):  # gone: ended after the track buffer
        events += engine.update(fast(seq), alive=set() if seq > 9 else {1})
    exit_ = next(e for e in events if e.kind == "zone_exit")
    end = next(e for e in events if e.kind == "track_end")
    assert exit_.dwell_s == pytest.approx(2.0) and end.duration_s == pytest.approx(2.0), events
    assert end.ts == pytest.approx(T0 + 10 / FPS / 10)  # stamped with the capture (read) time


def test_tracks_of_a_file_on_its_own_time_settled_from_the_events_stream_keep_their_durations():
    """A snapshot of a file read faster than real time holds the file's own times; ending its
    tracks from the events stream (`settle_left_tracks`) took the events' read times as the last
    sighting: durations of 54 years."""
    engine = EventEngine("cam", BOX_ZONE, file_time=True)
    for seq in range(4):
        engine.update(frame(seq, [obj(1, 50)]))
    state = engine.snapshot()
    settled = EventEngine.restore(state, "cam", BOX_ZONE, file_time=bool(state.get("file_time")))
    settled.apply_published([{"kind": "attributes", "track_id": 1, "ts": T0 + 2.0, "id": "cam:1:attributes:1"},
                             {"kind": "track_start", "track_id": 2, "ts": T0 + 2.5, "id": "cam:2:track_start"}])
    ends = {(e.kind, e.track_id): e for e in settled.close(10, T0 + 3)}
    assert ends["track_end", 1].duration_s == pytest.approx(0.75) and ends["zone_exit", 1].dwell_s == pytest.approx(0.75)
    assert ends["track_end", 2].duration_s == 0.0  # known from its track_start only


def test_a_file_frame_without_a_finite_position_is_timed_on_its_capture_time():
    """A file on its own time whose position reads NaN (a broken index) put NaN in the track's
    times: the snapshot wrote it as null, and the next owner failed to restore the camera."""
    from dataclasses import replace

    engine = EventEngine("cam", BOX_ZONE, file_time=True)
    for seq in range(3):
        f = frame(seq, [obj(1, 50)])
        engine.update(replace(f, meta=replace(f.meta, pts=float("nan"))) if seq != 1 else f)
    state = json.loads(json.dumps(engine.snapshot()))
    restored = EventEngine.restore(state, "cam", BOX_ZONE, file_time=True)
    ends = {e.kind: e for e in restored.close(3, T0 + 1)}
    assert math.isfinite(ends["track_end"].duration_s) and math.isfinite(ends["zone_exit"].dwell_s), ends
