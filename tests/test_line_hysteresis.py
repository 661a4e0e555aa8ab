"""Hysteresis at counting lines (`cameras[].line_margin`): an anchor on a line is on neither side."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.config import CameraConfig, format_validation_error
from pipeline.events import EventEngine
from pipeline.geometry_lines import line_bands, line_offsets
from tests.test_events import STOP, frame, obj, run

SIZE = 20.0  # box height: with the default margin (0.1) the band is 2 px on each side of y = 50
# a car below the line (right-hand side), then its anchor jittering on the line, then a real
# crossing up the image to y = 30
JITTER = [80, 50.8, 49.2, 50.6, 49.4, 51.0]


def car_frames(bottoms, *, start=1):
    return [frame(start + i, [obj(1, b, size=SIZE)]) for i, b in enumerate(bottoms)]


def crossings(events):
    return [(e.seq, e.direction) for e in events if e.kind == "line_cross"]


def test_an_anchor_jittering_on_a_line_counts_nothing_and_the_real_crossing_once():
    engine = EventEngine("cam", lines=STOP)
    assert crossings(run(engine, car_frames(JITTER))) == []
    assert crossings(run(engine, car_frames([30], start=7))) == [(7, "in")]
    assert engine.take_counts() == Counter({"tracks:vehicle": 1, "line:stop:in:vehicle": 1})
    # without hysteresis every movement across the line counts (what the margin is for)
    bare = EventEngine("cam", lines=STOP, line_margin=0)
    assert crossings(run(bare, car_frames(JITTER + [30]))) == [(3, "in"), (4, "out"), (5, "in"), (6, "out"), (7, "in")]


def test_stepping_onto_a_line_and_back_is_no_crossing_but_stepping_over_it_is():
    engine = EventEngine("cam", lines=STOP)
    assert crossings(run(engine, car_frames([80, 49.5, 80]))) == []  # 0.5 px past the line, inside its band
    assert crossings(run(engine, car_frames([47, 80], start=4))) == [(4, "in"), (5, "out")]  # 3 px: beyond it


def test_an_object_coming_closer_keeps_its_side_while_its_box_grows_and_its_crossing_counts():
    """Its last point clear of the band was taken under a smaller box: a larger box later must not
    judge that point again (it would fall inside the new band and the side be lost)."""
    # bottom 1 px below the line with a 5 px box (band 0.5: clear, below), then 1.5 px above it
    # with a 30 px box (band 3: inside), then clear above: one crossing, in
    grows = [frame(1, [obj(1, 51, size=5)]), frame(2, [obj(1, 48.5, size=30)]), frame(3, [obj(1, 40, size=30)])]
    assert crossings(run(EventEngine("cam", lines=STOP), grows)) == [(3, "in")]
    # in one step from clear below (small box) to clear above (larger box): counted at once
    jump = [frame(1, [obj(1, 51, size=5)]), frame(2, [obj(1, 45, size=30)])]
    assert crossings(run(EventEngine("cam", lines=STOP), jump)) == [(2, "in")]


def test_the_band_scales_with_the_box_across_the_line():
    level = np.array([[0, 50], [100, 50]], np.float64)
    upright = np.array([[50, 0], [50, 100]], np.float64)
    boxes = np.array([[10, 20, 30, 60], [0, 0, 100, 10]], np.float64)  # 20 wide × 40 high, 100 × 10
    assert line_bands(boxes, level, 0.1).tolist() == pytest.approx([4.0, 1.0])  # the height across a level line
    assert line_bands(boxes, upright, 0.1).tolist() == pytest.approx([2.0, 10.0])  # the width across an upright one
    diagonal = np.array([[0, 0], [100, 100]], np.float64)
    assert line_bands(boxes[:1], diagonal, 1.0)[0] == pytest.approx((20 + 40) / np.sqrt(2))
    assert line_offsets([[50, 40], [50, 60]], level).tolist() == pytest.approx([-10.0, 10.0])  # left: negative


def test_hysteresis_survives_a_change_of_owner():
    frames = car_frames(JITTER + [30])
    whole = EventEngine("cam", lines=STOP)
    expected = run(whole, frames)
    first = EventEngine("cam", lines=STOP)
    before = run(first, frames[:3])  # the last sighting inside the band, above the line
    second = EventEngine.restore(json.loads(json.dumps(first.snapshot())), "cam", lines=STOP)
    after = run(second, frames[3:])
    assert before + after == expected and crossings(after) == [(7, "in")]


def test_the_margin_changes_at_runtime_and_is_validated():
    engine = EventEngine("cam", lines=STOP)
    run(engine, car_frames([80, 50.8]))
    engine.reconfigure({}, STOP, anchor="bottom_center", line_margin=0)
    assert crossings(run(engine, car_frames([49.2, 50.6], start=3))) == [(3, "in"), (4, "out")]
    camera = CameraConfig(id="c", url="a.mp4", lines=STOP)
    assert camera.line_margin == 0.1 and EventEngine.for_camera(camera, track_buffer=30).line_margin == 0.1
    with pytest.raises(ValidationError) as err:
        CameraConfig(id="c", url="a.mp4", line_margin=-0.5)
    assert format_validation_error(err.value)[0].startswith("line_margin: ")


def test_a_track_first_seen_on_a_line_takes_that_side_until_it_is_seen_clear_of_the_band():
    engine = EventEngine("cam", lines=STOP)
    assert crossings(run(engine, car_frames([51, 49.5, 30]))) == [(3, "in")]  # first seen 1 px below
    # a change of owner while the track is still on the line keeps the side it was first seen on
    first = EventEngine("cam", lines=STOP)
    run(first, car_frames([51]))
    second = EventEngine.restore(json.loads(json.dumps(first.snapshot())), "cam", lines=STOP)
    assert crossings(run(second, car_frames([30], start=2))) == [(2, "in")]
    # once seen clear of the band, the first point no longer counts: jitter on the line is nothing
    engine = EventEngine("cam", lines=STOP)
    assert crossings(run(engine, car_frames([51, 80, 49.2, 50.8, 49.4]))) == []


def test_two_boxes_the_tracker_merged_under_one_id_count_no_crossing_whatever_their_order():
    """Overlapping boxes of one vehicle (a car and a truck box, IoU 0.8) share one track id; the
    engine took whichever came first, and the detector lists them in any order: the anchor jumped
    between the two bottoms (50 and 55, across the band of the line at y = 52.5) and a parked
    vehicle counted out, in, out. The track's box is their mean, whatever the order."""
    gate = {"gate": [[0, 0.525], [1, 0.525]]}
    car = obj(1, 50.0, size=20.0)
    truck = dict(obj(1, 55.0, size=25.0), label="truck", score=0.85)
    engine = EventEngine("cam", lines=gate)
    orders = [[car, truck], [truck, car]] * 4
    assert crossings(run(engine, [frame(i + 1, objs) for i, objs in enumerate(orders)])) == []
    # one id, one track: its label is the best scored box's
    assert [e.label for e in run(EventEngine("cam"), [frame(1, [truck, car])]) if e.kind == "track_start"] == ["car"]


def test_a_line_moved_past_a_parked_vehicle_counts_nothing_live_or_at_the_next_owner():
    """A track's side of a line is the point it was last seen clear of the line's band: moved
    (same name, other points) at runtime or between owners, the line judged a parked vehicle from
    that old point and counted it. Sides are kept only for lines that did not move."""
    moved = {"stop": [[0, 0.47], [1, 0.47]]}  # y = 50 → y = 47
    parked = car_frames([45, 49.5])  # clear above the line, then inside its band (side kept from 45)
    engine = EventEngine("cam", lines=STOP)
    assert crossings(run(engine, parked)) == []
    snapshot = json.loads(json.dumps(engine.snapshot()))
    engine.reconfigure(None, moved, anchor=engine.anchor)
    assert crossings(run(engine, car_frames([49.5, 49.5], start=3))) == []
    restored = EventEngine.restore(snapshot, "cam", lines=moved)
    assert crossings(run(restored, car_frames([49.5, 49.5], start=3))) == []
    # an unmoved line keeps the side across owners: the vehicle driving on still counts once
    kept = EventEngine.restore(snapshot, "cam", lines=STOP)
    assert crossings(run(kept, car_frames([53, 60], start=3))) == [(3, "out")]



def test_a_line_moved_while_a_vehicle_steps_over_it_keeps_no_mark_of_the_old_line():
    """A car that stepped over a line inside its band carries a mark of it, which counts its
    crossing once it is seen clear. The line moved at runtime (same name), the mark stayed: the
    car's next step, passing beside the moved segment's end, was counted. A restore dropped such
    marks already; a reconfigure now does too."""
    moved = {"stop": [[0, 0.3], [0.4, 0.3]]}  # y = 50 across → y = 30, x 0..40 only
    over = [frame(i + 1, [obj(1, y, x=60, size=SIZE)]) for i, y in enumerate([70, 51, 49])]
    away = [frame(4, [obj(1, 10, x=60, size=SIZE)])]  # crosses y = 30 at x = 60: beside the new segment
    engine = EventEngine("cam", lines=STOP)
    assert crossings(run(engine, over)) == []  # (inside the band: not yet counted)
    snapshot = json.loads(json.dumps(engine.snapshot()))
    engine.reconfigure(None, moved, anchor=engine.anchor)
    assert crossings(run(engine, away)) == []
    restored = EventEngine.restore(snapshot, "cam", lines=STOP)  # the next owner, the old config, then the change
    restored.reconfigure(None, moved, anchor=restored.anchor)
    assert crossings(run(restored, away)) == []
    # the line kept where it was: the mark counts the crossing once the car is seen clear
    kept = EventEngine("cam", lines=STOP)
    assert crossings(run(kept, over + away)) == [(4, "in")]

def test_a_side_known_before_a_change_of_resolution_holds_after_it():
    """At another frame size the points a track's side was taken from were forgotten: a track
    inside the line's band just then took its side from that point, and walking back out of the
    band to where it came from counted as a crossing. The points are scaled to the new size."""
    engine = EventEngine("cam", lines=STOP)
    came = [frame(1, [obj(1, 45, size=SIZE)]), frame(2, [obj(1, 50.5, size=SIZE)])]  # clear above, then in the band
    back = [frame(3, [obj(1, 101, x=100, size=2 * SIZE)], width=200, height=200),  # the same place, twice the size
            frame(4, [obj(1, 90, x=100, size=2 * SIZE)], width=200, height=200)]  # back up where it came from
    assert crossings(run(engine, came + back)) == []
    # and a real crossing after the change still counts
    assert crossings(run(engine, [frame(5, [obj(1, 130, x=100, size=2 * SIZE)], width=200, height=200)])) == [(5, "out")]


SHORT = {"door": [[0, 0.5], [0.5, 0.5]]}  # y = 50 from x = 0 to 50: its right end mid-frame


def _path(points, *, start=1):
    return [frame(start + i, [obj(1, y, x=x, size=SIZE)]) for i, (x, y) in enumerate(points, 0)]


@pytest.mark.parametrize("margin", [0.1, 0.0])
def test_a_crossing_near_the_lines_end_is_judged_on_the_path_taken_not_the_way_round_the_band(margin):
    """Inside the band the side holds from the last point clear of it, and the crossing was judged
    on the straight way from there to the next clear point: a car over the segment at x 49 that
    walked off past its end was not counted, and one that went round the end was."""
    over = _path([(48, 60), (49, 49), (60, 40)])  # over the segment at x ≈ 48.9, then beside its end
    assert crossings(run(EventEngine("cam", lines=SHORT, line_margin=margin), over)) == [(2 if margin == 0 else 3, "in")]
    around = _path([(45, 60), (60, 51), (60, 49), (45, 40)])  # round the end (x 60), never over it
    assert crossings(run(EventEngine("cam", lines=SHORT, line_margin=margin), around)) == []


def test_a_crossing_inside_the_band_is_still_counted_after_a_handover_there():
    """The step that went over the segment was inside the band on the owner that stopped: the next
    owner, restored from its snapshot, counts the exit from the band on the other side."""
    first = EventEngine("cam", lines=SHORT)
    run(first, _path([(48, 60), (49, 49)]))
    second = EventEngine.restore(json.loads(json.dumps(first.snapshot())), "cam", lines=SHORT)
    assert crossings(run(second, _path([(60, 40)], start=3))) == [(3, "in")]
