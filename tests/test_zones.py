"""Zones and lines: config validation with exact paths, units, and the runtime geometry
(anchor points, point in polygon, crossing direction, segment-only intersection)."""

from __future__ import annotations

import textwrap

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.config import CameraConfig, ConfigError, format_validation_error, load_config, parse_config
from pipeline.geometry import GeometryError, anchor_point, points_in_polygon, resolve_geometry
from pipeline.geometry_lines import line_crossing, line_crossings

SQUARE = [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]


def camera_errors(**geometry):
    with pytest.raises(ConfigError) as info:
        parse_config({"cameras": [{"id": "cam", "url": "x.mp4", **geometry}]}, env={})
    return info.value.errors


# --- config ---------------------------------------------------------------------------------


def test_zones_lines_and_anchor_parse_from_yaml_with_defaults(tmp_path):
    p = tmp_path / "percept.yaml"
    p.write_text(textwrap.dedent("""
        cameras:
          - id: traffic
            url: clip.mp4
            zones: {crossing: [[0.1, 0.5], [0.9, 0.5], [0.9, 1.0], [0.1, 1.0]]}
            lines: {stop: [[0, 0.6], [1, 0.6]]}
            anchor: center
          - {id: door, url: clip.mp4, zones: {porch: [[10, 10], [630, 10], [320, 470]]}}
    """))
    cfg = load_config(p, env={})
    cam, door = cfg.cameras
    assert cam.zones == {"crossing": [[0.1, 0.5], [0.9, 0.5], [0.9, 1.0], [0.1, 1.0]]}
    assert cam.lines == {"stop": [[0, 0.6], [1, 0.6]]} and cam.anchor == "center"
    assert door.zones["porch"][2] == [320, 470] and door.lines == {} and door.anchor == "bottom_center"
    assert CameraConfig.model_validate(cam.model_dump(mode="json")) == cam  # the registry's round trip


def test_zone_with_fewer_than_three_points_names_the_zone():
    assert camera_errors(zones={"crossing": [[0.1, 0.1], [0.5, 0.5]]}) == [
        "cameras[0].zones.crossing: a zone needs at least 3 points, got 2"
    ]


def test_zone_without_area_is_refused():
    assert camera_errors(zones={"flat": [[0, 0], [0.5, 0.5], [1, 1]]}) == [
        "cameras[0].zones.flat: a zone needs an area: its points are all on one line"
    ]


def test_a_zone_whose_edges_cross_is_refused_naming_them():
    """A bowtie (points listed out of order): "all on one line" was false for the symmetric one,
    and an uneven one, with an area, was accepted and then tested points oddly. Concave zones pass."""
    crossing = ("a zone's edges must not cross: the edge from point {} crosses the edge from point {} "
                "(list the points in order around the zone)")
    assert camera_errors(zones={"bow": [[0, 0], [1, 1], [1, 0], [0, 1]]}) == [
        "cameras[0].zones.bow: " + crossing.format(0, 2)]
    assert camera_errors(zones={"bow": [[0, 0], [0.4, 0], [0, 0.3], [0.9, 0.3]]}) == [
        "cameras[0].zones.bow: " + crossing.format(1, 3)]
    u = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 8], [8, 8], [8, 2], [0, 2]]
    assert parse_config({"cameras": [{"id": "cam", "url": "x.mp4", "zones": {"u": u}}]}, env={}).cameras[0].zones == {"u": u}


def test_zero_length_line_and_wrong_point_counts():
    assert camera_errors(lines={"stop": [[10, 20], [10, 20]]}) == [
        "cameras[0].lines.stop: a line needs two different points (zero length), got [10, 20] twice"
    ]
    assert camera_errors(lines={"stop": [[0, 0], [1, 1], [1, 0]]}) == [
        "cameras[0].lines.stop: a line needs exactly 2 points, got 3"
    ]
    assert camera_errors(lines={"stop": [[0, 0], [1, 1, 1]]}) == ["cameras[0].lines.stop[1]: a point is [x, y], got [1, 1, 1]"]


def test_negative_and_non_finite_coordinates_name_the_point():
    assert camera_errors(zones={"z": [[0, 0], [-0.5, 1], [1, 0]]}) == [
        "cameras[0].zones.z[1]: coordinates must be >= 0, got [-0.5, 1]"
    ]
    assert camera_errors(lines={"l": [[0, 0], [1, float("inf")]]}) == [
        "cameras[0].lines.l[1]: coordinates must be finite numbers, got [1, inf]"
    ]


def test_bad_names_are_refused():
    assert camera_errors(zones={"front door": SQUARE}) == [
        "cameras[0].zones.front door: a zone name must match [A-Za-z0-9_-]+ (at most 64), got 'front door'"
    ]
    assert camera_errors(lines={"a:b": [[0, 0], [1, 1]]}) == [
        "cameras[0].lines.a:b: a line name must match [A-Za-z0-9_-]+ (at most 64), got 'a:b'"
    ]


def test_mixing_pixel_and_relative_units_names_the_odd_one():
    assert camera_errors(zones={"crossing": SQUARE}, lines={"stop": [[0, 300], [640, 300]]}) == [
        "cameras[0].lines.stop: in pixels (a value > 1) but zones.crossing is relative (all values in 0..1): "
        "one camera's zones and lines must all use the same unit"
    ]
    assert camera_errors(zones={"a": [[0, 0], [640, 0], [640, 480]], "b": SQUARE}) == [
        "cameras[0].zones.b: relative (all values in 0..1) but zones.a is in pixels: "
        "one camera's zones and lines must all use the same unit"
    ]
    # one value > 1 makes the whole zone pixel-valued: consistent with a pixel line
    parse_config({"cameras": [{"id": "c", "url": "x", "zones": {"a": [[0, 0], [40.5, 0.5], [3, 30]]},
                               "lines": {"l": [[0, 0], [5, 5]]}}]}, env={})


def test_errors_of_one_camera_as_the_api_and_registry_format_them():
    with pytest.raises(ValidationError) as info:
        CameraConfig.model_validate({"id": "cam", "url": "x", "zones": {"crossing": SQUARE},
                                     "lines": {"stop": [[0, 300], [640, 300]]}})
    (line,) = format_validation_error(info.value)
    assert line.startswith("lines.stop: in pixels (a value > 1) but zones.crossing is relative")


def test_other_geometry_errors_and_several_at_once():
    errs = camera_errors(zones={"a": [[0, 0]], "b": "nope"}, anchor="top")
    assert errs == [
        "cameras[0].zones.a: a zone needs at least 3 points, got 1",
        "cameras[0].zones.b: must be a valid list, got 'nope'",
        "cameras[0].anchor: must be 'bottom_center' or 'center', got 'top'",
    ]
    (err,) = camera_errors(lines={f"l{i}": [[0, 0], [1, 1]] for i in range(65)})
    assert err == "cameras[0].lines: at most 64 lines per camera, got 65"


def test_counts_are_checked_before_the_items():
    """Too many zones (or points) is one error, found before a single item is looked at: a request
    with 100 000 zones costs no more than one with 65 (the items here would each fail too)."""
    (err,) = camera_errors(zones={f"z{i}": [[0, 0]] for i in range(100_000)})
    assert err == "cameras[0].zones: at most 64 zones per camera, got 100000"
    (err,) = camera_errors(zones={"z": [[-1, 0]] * 10_000})
    assert err == "cameras[0].zones.z: a zone has at most 256 points, got 10000"
    (err,) = camera_errors(lines={"l": [[-1, 0]] * 3})
    assert err == "cameras[0].lines.l: a line needs exactly 2 points, got 3"
    (err,) = camera_errors(zones={"n" * 65: [[0, 0], [1, 0], [1, 1]]})
    assert err.startswith("cameras[0].zones." + "n" * 65 + ": a zone name must match [A-Za-z0-9_-]+ (at most 64)")


# --- runtime geometry -----------------------------------------------------------------------


def test_relative_coordinates_scale_with_the_frame_and_pixels_stay():
    geo = resolve_geometry({"z": SQUARE}, {"l": [[0, 0.5], [1, 0.5]]}, "bottom_center", 200, 100)
    np.testing.assert_allclose(geo.zones["z"], [[50, 25], [150, 25], [150, 75], [50, 75]])
    np.testing.assert_allclose(geo.lines["l"], [[0, 50], [200, 50]])
    px = resolve_geometry({"z": [[10, 10], [100, 10], [100, 50]]}, {}, "center", 640, 480)
    np.testing.assert_allclose(px.zones["z"], [[10, 10], [100, 10], [100, 50]])
    edge = resolve_geometry({}, {"l": [[320, 0], [320, 480]]}, "center", 640, 480)  # the frame's edge is inside
    np.testing.assert_allclose(edge.lines["l"], [[320, 0], [320, 480]])


def test_a_line_along_the_frames_edge_is_refused_naming_it():
    """``lines: {exit: [[0, 1], [1, 1]]}`` ("count what leaves at the bottom") was taken: an
    anchor is kept inside the frame, so it was never beyond that line, and never counted."""
    from pipeline.config import ConfigError, parse_config

    for line in ([[0, 1], [1, 1]], [[0, 0], [0, 0.7]], [[5, 0], [600, 0]]):
        with pytest.raises(ConfigError) as caught:
            parse_config({"cameras": [{"id": "a", "url": "a.mp4", "lines": {"exit": line}}]}, env={})
        assert caught.value.errors == [f"cameras[0].lines.exit: {line[0]} → {line[1]} runs along the frame's edge, which "
                                       "no object can be beyond: it would never be crossed; draw it inside the frame"]
    for line in ([[0, 480], [640, 480]], [[639.2, 10], [639.2, 400]]):  # the far edges
        with pytest.raises(GeometryError, match=r"^cam\.lines\.exit: .* runs along the edge of the 640x480 frame, "
                                                r"which no object's anchor is beyond \(x 0\.5\.\.638\.5, y 0\.5\.\.478\.5\)"):
            resolve_geometry({}, {"exit": line}, "bottom_center", 640, 480, where="cam")
    for line in ([[0, 0.99], [1, 0.99]], [[0, 0], [640, 480]], [[600, 478], [640, 470]]):  # through where anchors are
        resolve_geometry({}, {"exit": line}, "bottom_center", 640, 480, where="cam")


def test_pixel_points_outside_the_frame_are_a_clear_error_at_runtime():
    with pytest.raises(GeometryError) as info:
        resolve_geometry({"z": [[10, 10], [700, 10], [100, 50]]}, {}, "bottom_center", 640, 480, where="cameras[door]")
    assert str(info.value) == (
        "cameras[door].zones.z[1]: [700, 10] is outside the 640x480 frame (pixel coordinates: x in 0..640, y in 0..480)"
    )
    with pytest.raises(GeometryError, match=r"cameras\[door\]\.lines\.l\[1\]: \[5, 481\] is outside"):
        resolve_geometry({}, {"l": [[0, 0], [5, 481]]}, "bottom_center", 640, 480, where="cameras[door]")
    with pytest.raises(GeometryError, match="mix pixel and relative"):
        resolve_geometry({"z": SQUARE}, {"l": [[0, 0], [5, 5]]}, "bottom_center", 640, 480)


def test_anchor_points():
    box = [10, 20, 30, 60]
    np.testing.assert_allclose(anchor_point(box), [20, 60])
    np.testing.assert_allclose(anchor_point(box, "center"), [20, 40])
    np.testing.assert_allclose(anchor_point(np.array([box, [0, 0, 4, 2]]), "bottom_center"), [[20, 60], [2, 2]])
    assert anchor_point(np.zeros((0, 4))).shape == (0, 2)


def test_point_in_polygon_concave_and_against_opencv():
    u_shape = np.array([[0, 0], [30, 0], [30, 30], [20, 30], [20, 10], [10, 10], [10, 30], [0, 30]], float)
    inside = points_in_polygon([[5, 20], [25, 20], [15, 20], [40, 5], [15, 5]], u_shape)
    assert inside.tolist() == [True, True, False, False, True]  # [15, 20]: in the notch
    rng = np.random.default_rng(7)
    star = np.array([[50 + r * np.cos(a), 50 + r * np.sin(a)]
                     for a, r in zip(np.linspace(0, 2 * np.pi, 14, endpoint=False), [40, 15] * 7)])
    pts = rng.uniform(0, 100, (2000, 2))
    ours = points_in_polygon(pts, star)
    theirs = np.array([cv2.pointPolygonTest(star.astype(np.float32), (float(x), float(y)), True) for x, y in pts])
    clear = np.abs(theirs) > 1e-3  # off the boundary
    assert np.array_equal(ours[clear], theirs[clear] > 0) and 0 < ours.sum() < len(pts)


def test_crossing_direction_hand_drawn_example():
    # Drawn left → right across a 100×100 frame at y = 60: walking from point 1 to point 2, the
    # right-hand side is the lower part of the image (y down). Moving up the image is "in".
    geo = resolve_geometry({}, {"stop": [[0, 0.6], [1, 0.6]]}, "bottom_center", 100, 100)
    stop = geo.lines["stop"]
    assert line_crossing([50, 80], [50, 40], stop) == "in"
    assert line_crossing([50, 40], [50, 80], stop) == "out"
    assert line_crossing([50, 80], [55, 70], stop) is None  # moved, did not cross
    assert line_crossing([50, 40], [50, 80], stop[::-1]) == "in"  # swapping the points swaps directions
    # drawn top → bottom at x = 50: the right-hand side is the image's left half
    down = np.array([[50, 0], [50, 100]], float)
    assert line_crossing([40, 50], [60, 50], down) == "in"
    assert line_crossing([60, 50], [40, 50], down) == "out"


def test_only_the_segment_counts_not_the_infinite_line():
    short = np.array([[0, 60], [50, 60]], float)
    assert line_crossing([80, 80], [80, 40], short) is None  # beside its end
    assert line_crossing([50, 80], [50, 40], short) == "in"  # through its end point
    assert line_crossing([20, 80], [20, 40], short) == "in"
    assert line_crossing([-10, 80], [60, 40], short) == "in"  # diagonal, through the middle
    assert line_crossing([90, 80], [40, 40], short) is None  # diagonal, misses the segment


def test_a_point_on_the_line_counts_as_the_right_hand_side():
    stop = np.array([[0, 60], [100, 60]], float)
    assert line_crossing([50, 80], [50, 60], stop) is None  # onto the line: still right-hand side
    assert line_crossing([50, 60], [50, 40], stop) == "in"  # one crossing in all for 80 → 60 → 40
    assert line_crossing([50, 40], [50, 60], stop) == "out"


def test_line_crossings_agree_with_a_parametric_reference():
    rng = np.random.default_rng(3)
    prev, cur = rng.uniform(0, 100, (500, 2)), rng.uniform(0, 100, (500, 2))
    p1, p2 = np.array([20.0, 30.0]), np.array([80.0, 70.0])
    d = p2 - p1

    def reference(a, b):  # solve a + t·(b − a) = p1 + u·d; "in" when moving to the left of d
        m = b - a
        den = m[0] * d[1] - m[1] * d[0]
        t = ((p1 - a)[0] * d[1] - (p1 - a)[1] * d[0]) / den
        u = ((p1 - a)[0] * m[1] - (p1 - a)[1] * m[0]) / den
        if not (0 <= t <= 1 and 0 <= u <= 1):
            return 0
        return 1 if d[0] * m[1] - d[1] * m[0] < 0 else -1

    out = line_crossings(prev, cur, np.array([p1, p2]))
    assert out.tolist() == [reference(a, b) for a, b in zip(prev, cur)]
    assert (out == 1).any() and (out == -1).any() and (out == 0).any()
    assert [line_crossing(a, b, [p1, p2]) for a, b in zip(prev[:50], cur[:50])] == [
        {1: "in", -1: "out", 0: None}[k] for k in out[:50].tolist()]


def test_zones_and_lines_without_the_tracker_are_refused_naming_the_camera():
    """Events follow tracks: with the tracker off, zones and lines would count nothing, silently."""
    from pipeline.config import ConfigError, parse_config

    cams = [{"id": "a", "url": "a.mp4"}, {"id": "b", "url": "b.mp4", "lines": {"kerb": [[0, 0.5], [1, 0.5]]}}]
    with pytest.raises(ConfigError) as err:
        parse_config({"tracker": {"enabled": False}, "cameras": cams}, env={})
    assert err.value.errors == ["cameras[1].lines: zones and lines need the tracker (tracker.enabled is false)"]
    assert parse_config({"cameras": cams}, env={}).cameras[1].lines  # with it: fine


def test_a_relative_zone_drawn_just_past_the_frame_edge_is_refused_not_read_as_a_2px_zone():
    assert camera_errors(zones={"road": [[0, 0.5], [1.01, 0.5], [1.01, 1.01], [0, 1.01]]}) == [
        "cameras[0].zones.road: a value of 1.01 makes it pixels, at most 2 px across: relative coordinates are "
        "0..1 (for the frame's edge write 1)"]
    assert camera_errors(lines={"stop": [[0, 0.5], [1.0001, 0.5]]})[0].startswith("cameras[0].lines.stop: a value of 1.0001")
    parse_config({"cameras": [{"id": "c", "url": "x", "zones": {"road": [[0, 360], [1280, 360], [1280, 720]]}}]}, env={})


def test_a_relative_zone_with_one_value_in_pixels_by_mistake_is_refused_naming_the_point():
    """``[0, 10]`` for ``[0, 1.0]`` among fractions made the whole zone pixels: a sliver in the
    frame's first pixel that nothing ever entered, with no word."""
    assert camera_errors(zones={"road": [[0, 0.5], [1, 0.5], [1, 1], [0, 10]]}) == [
        "cameras[0].zones.road: 3 of its points are relative (0..1) but [0, 10] is not, which makes it pixels (a "
        "sliver in the frame's first pixel): give every point as a fraction of the frame (0..1), or every point in "
        "pixels"]
    # pixels with a corner at the frame's origin, or one point in the first pixel, are pixels as before
    for road in ([[0, 0], [1280, 0], [1280, 720]], [[0, 0], [640, 0], [640, 360], [0, 360]]):
        parse_config({"cameras": [{"id": "c", "url": "x", "zones": {"road": road}}]}, env={})


def test_an_anchor_jittering_on_a_zone_edge_enters_once_and_a_real_exit_still_counts():
    """Hysteresis at zone edges (`cameras[].zone_margin`): someone standing on the edge of a queue
    zone, the detector's box bottom moving ±1 px, entered and left it on every other frame (each a
    visitor, dwell cut into pieces). Within the band a track stays where it was."""
    from collections import Counter

    from pipeline.events import EventEngine

    from .test_events import frame, obj

    zone = {"queue": [[0.2, 0.5], [0.8, 0.5], [0.8, 0.9], [0.2, 0.9]]}  # y 50..90 on 100×100 frames
    jitter = [52, 49.8, 50.3, 49.6, 50.4, 49.9, 50.2]  # first seen clear inside, then on the edge (box 10: band 1 px)
    steps = [frame(i + 1, [obj(1, b, label="person", category="pedestrian")]) for i, b in enumerate(jitter)]
    steps.append(frame(len(jitter) + 1, [obj(1, 30, label="person", category="pedestrian")]))  # clearly out

    def counts(margin):
        engine = EventEngine("cam", zones=zone, zone_margin=margin)
        kinds = Counter(e.kind for f in steps for e in engine.update(f))
        return kinds["zone_enter"], kinds["zone_exit"]

    assert counts(0.1) == (1, 1)
    assert counts(0.0)[0] >= 3  # without it every step over the edge is a visit


def test_a_zone_narrower_than_two_bands_still_records_who_walks_through_it():
    """A doorway strip 10 px tall and a person 60 px tall (band 6 px each side): no point of the
    strip is a band from both edges, so with bands uncapped nobody walking through ever entered
    it. An edge's band is at most a quarter of the zone's extent across it."""
    from collections import Counter

    from pipeline.events import EventEngine

    from .test_events import frame, obj

    strip = {"doorway": [[0, 0.4], [1, 0.4], [1, 0.5], [0, 0.5]]}  # y 40..50
    walk = [frame(i + 1, [obj(1, 30 + i, size=60, label="person", category="pedestrian")]) for i in range(30)]
    engine = EventEngine("cam", zones=strip, zone_margin=0.1)
    kinds = Counter(e.kind for f in walk for e in engine.update(f))
    assert kinds["zone_enter"] == 1 and kinds["zone_exit"] == 1, kinds
    # the same strip as the narrow arm of an L (a sidewalk turning a corner): the zone is wide
    # elsewhere, and the cap by its whole extent left the strip no inside at all
    corner = {"sidewalk": [[0, 0], [0.1, 0], [0.1, 0.4], [1, 0.4], [1, 0.5], [0, 0.5]]}
    engine = EventEngine("cam", zones=corner, zone_margin=0.1)
    walk = [frame(i + 1, [obj(1, 30 + i, x=60, size=60, label="person", category="pedestrian")]) for i in range(30)]
    kinds = Counter(e.kind for f in walk for e in engine.update(f))
    assert kinds["zone_enter"] == 1 and kinds["zone_exit"] == 1, kinds


def test_a_car_along_the_bottom_of_the_frame_changes_zone_where_the_zones_meet():
    """Two lanes drawn down to the frame's bottom edge, a car along that edge (its bottom-centre
    anchor on it, as for any box cut off there) changing lane: the anchor was within its band of
    the zones' bottom edges all along, so it stayed in the zone it had, left it at the seam and
    never entered the other (the right lane's occupancy one short)."""
    from collections import Counter

    from pipeline.events import EventEngine

    from .test_events import frame, obj

    lanes = {"left": [[0, 0.5], [0.5, 0.5], [0.5, 1], [0, 1]], "right": [[0.5, 0.5], [1, 0.5], [1, 1], [0.5, 1]]}
    engine = EventEngine("cam", zones=lanes, zone_margin=0.1)
    drive = [frame(i + 1, [obj(1, 100, x=20 + 2 * i, size=20)]) for i in range(31)]  # x 20 → 80 along the bottom
    events = [e for f in drive for e in engine.update(f)]
    zone_events = [(e.kind, e.zone) for e in events if e.kind.startswith("zone_")]
    assert zone_events == [("zone_enter", "left"), ("zone_exit", "left"), ("zone_enter", "right")], zone_events
    # inside the frame, a zone's edges keep their bands: a car along a drawn edge does not flicker
    inner = {"bay": [[0.2, 0.5], [0.8, 0.5], [0.8, 0.9], [0.2, 0.9]]}
    engine = EventEngine("cam", zones=inner, zone_margin=0.1)
    jitter = [frame(i + 1, [obj(1, 90 + (1 if i % 2 else -1), x=50, size=20)]) for i in range(20)]
    kinds = Counter(e.kind for f in jitter for e in engine.update(f))
    assert kinds["zone_enter"] + kinds["zone_exit"] <= 1, kinds


def test_a_line_shorter_than_a_pixel_is_refused_naming_it():
    """Two points that differ by 1e-16 passed (not the same point), scaled to one pixel: the
    line's band divided by zero, NaN, and it never counted, silently."""
    from pipeline.config import ConfigError, parse_config
    from pipeline.geometry import GeometryError, resolve_geometry

    for line in ([[0.9350724237877682, 0.2], [0.9350724237877683, 0.2]], [[100, 100], [100.5, 100]]):
        with pytest.raises(ConfigError) as caught:
            parse_config({"cameras": [{"id": "a", "url": "a.mp4", "lines": {"gate": line}}]}, env={})
        assert caught.value.errors[0].startswith("cameras[0].lines.gate: a line must be at least"), caught.value.errors
    ok = {"gate": [[0.5, 0.2], [0.502, 0.2]]}  # valid, 4 px at 1920 …
    assert parse_config({"cameras": [{"id": "a", "url": "a.mp4", "lines": ok}]}, env={}).cameras[0].lines
    with pytest.raises(GeometryError, match=r"cam\.lines\.gate: shorter than a pixel on the 320x240 frame"):
        resolve_geometry({}, ok, "bottom_center", 320, 240, where="cam")  # … less than a pixel at 320


def test_zone_exits_on_one_frame_come_in_config_order_as_documented():
    """Two zones left on one frame: their exits came in the order they were entered, not in
    config order (pipeline/events.py's docstring)."""
    from pipeline.events import EventEngine
    from tests.test_events import frame, obj, run

    engine = EventEngine("cam", zones={"a": [[0, 0], [60, 0], [60, 60], [0, 60]],
                                       "b": [[0, 40], [60, 40], [60, 100], [0, 100]]})
    frames = [frame(1, [obj(1, 80, x=30.0)]), frame(2, [obj(1, 50, x=30.0)]), frame(3, [obj(1, 50, x=90.0)])]
    events = run(engine, frames)
    assert [(e.kind, e.zone) for e in events if e.kind.startswith("zone")] == [
        ("zone_enter", "b"), ("zone_enter", "a"), ("zone_exit", "a"), ("zone_exit", "b")], events


def test_a_pixel_zone_left_unchanged_by_a_runtime_change_keeps_its_frame_size():
    """A camera back at half its resolution has its pixel zone scaled; then only a line is moved
    at runtime (``PUT {"lines": …}``: the zones sent again as they were). Every pixel shape was
    then read in the next frame's pixels, the unchanged zone too: twice its size, and a parked car
    inside it got a zone_exit it never made. Only the changed shapes are the next frame's now,
    also at the camera's next owner."""
    from pipeline.events import EventEngine

    from .test_events import frame, obj, run

    zones = {"lot": [[20, 20], [90, 20], [90, 90], [20, 90]]}  # drawn on a 200 × 200 stream
    engine = EventEngine("cam", zones=zones, lines={"gate": [[150, 0], [150, 200]]})
    parked = [frame(1, [obj(1, 30, x=30)], width=200, height=200)]  # anchor (30, 30): inside
    parked += [frame(s, [obj(1, 15, x=15, size=5)], width=100, height=100) for s in (2, 3)]  # the same, smaller
    assert [e.kind for e in run(engine, parked)] == ["track_start", "zone_enter"]
    engine.reconfigure(zones, {"gate": [[60, 0], [60, 100]]}, anchor="bottom_center")  # the line moved, in 100 px
    assert [e.kind for e in run(engine, [frame(s, [obj(1, 15, x=15, size=5)]) for s in (4, 5, 6)])] == []
    geo = engine.geometry(100, 100)
    assert geo.zones["lot"].max() == pytest.approx(45) and geo.lines["gate"][0][0] == pytest.approx(60)
    restored = EventEngine.restore(engine.snapshot(), "cam", engine.zones, engine.lines)  # (the next owner)
    assert [e.kind for e in run(restored, [frame(7, [obj(1, 15, x=15, size=5)])])] == []
    assert restored.geometry(100, 100).zones["lot"].max() == pytest.approx(45)


def test_pixel_zones_scaled_to_a_frame_of_no_size_are_a_geometry_error_not_a_crash():
    """A newest frame saying 0x0 (hand-written data): PUT was a 500 (ZeroDivisionError)."""
    from pipeline.geometry import in_frame_pixels, resolve_geometry

    zones = in_frame_pixels({"z": [[10, 20], [30, 20], [30, 40]]}, "zones", {"zones:z": (0, 0)}, 0, 0)
    with pytest.raises(GeometryError, match="0x0"):
        resolve_geometry(zones, {}, "bottom_center", 0, 0)
    assert in_frame_pixels({"z": [[10, 20]]}, "zones", {"zones:z": (100, 100)}, 200, 200) == {"z": [[20.0, 40.0]]}


@pytest.mark.parametrize("before, after", [((704, 576), (800, 600)), ((1280, 720), (1296, 972)),
                                           ((2560, 1440), (2592, 1944))])
def test_a_pixel_zone_on_the_frames_edge_stays_inside_when_the_resolution_changes(before, after):
    """704·(800/704) is 800.0000000000001: a zone drawn to the frame's edge was 'outside the
    800x600 frame' after the camera's resolution changed, and the camera failed on every retry."""
    from pipeline.events import EventEngine
    from pipeline.schema import Detections, FrameMeta, FrameResult

    (w, h) = before
    engine = EventEngine("cam", {"all": [[0, 0], [w, 0], [w, h], [0, h]]}, {"edge": [[w, 0], [0, h]]})
    for k, (width, height) in enumerate([before, after]):
        engine.update(FrameResult(FrameMeta("cam", k, 1.0 + k, None, width, height), Detections(), {}, {}))
    zone = engine.geometry(*after).zones["all"]
    assert zone.max(axis=0).tolist() == [after[0], after[1]]


def test_a_wall_clock_step_is_no_dwell():
    """NTP setting an edge box's clock 3 days forward while a car stood in a zone: its dwell and
    its track's duration are the 2 s it was seen (the steady clock), not 3 days; the events keep
    their capture times (wall clock, as published)."""
    from pipeline.events import EventEngine
    from pipeline.schema import Detections, FrameMeta, FrameResult

    engine = EventEngine("cam", {"all": [[0, 0], [1, 0], [1, 1], [0, 1]]}, None, track_buffer=2)
    car = Detections(xyxy=np.array([[100, 100, 200, 180]], np.float32), scores=np.array([0.9]), labels=("car",),
                     categories=("vehicle",), track_ids=(7,))
    events = []
    for k in range(9):
        wall = 1.7e9 + k * 0.25 + (3 * 86400 if k >= 4 else 0)
        meta = FrameMeta("cam", k, wall, None, 640, 360, steady_ts=100 + k * 0.25)
        events += engine.update(FrameResult(meta, car if k < 8 else Detections(), {}, {}), {7} if k < 8 else set())
    by_kind = {e.kind: e for e in events}
    assert by_kind["zone_exit"].dwell_s == 1.75 and by_kind["track_end"].duration_s == 1.75
    assert by_kind["zone_enter"].ts == 1.7e9 and by_kind["track_end"].ts == 1.7e9 + 2.0 + 3 * 86400


def test_a_wall_clock_step_is_no_dwell_at_the_next_owner_either():
    """The same step before a handover: the next owner (another reader, its own steady clock)
    took the stepped wall clock for its durations, against enter times on the steady timeline of
    the snapshot: a dwell of 3 days at its first exit."""
    import json

    from pipeline.events import EventEngine
    from pipeline.schema import Detections, FrameMeta, FrameResult

    zones = {"all": [[0, 0], [1, 0], [1, 1], [0, 1]]}
    engine = EventEngine("cam", zones, None, track_buffer=2)
    car = Detections(xyxy=np.array([[100, 100, 200, 180]], np.float32), scores=np.array([0.9]), labels=("car",),
                     categories=("vehicle",), track_ids=(7,))
    events = []
    for k in range(9):
        if k == 6:  # handed over: restored from the snapshot, frames from another reader
            engine = EventEngine.restore(json.loads(json.dumps(engine.snapshot())), "cam", zones, None, track_buffer=2)
        wall = 1.7e9 + k * 0.25 + (3 * 86400 if k >= 4 else 0)
        meta = FrameMeta("cam", k, wall, None, 640, 360, steady_ts=(100 if k < 6 else 5) + k * 0.25)
        events += engine.update(FrameResult(meta, car if k < 8 else Detections(), {}, {}), {7} if k < 8 else set())
    by_kind = {e.kind: e for e in events}
    assert by_kind["zone_exit"].dwell_s == 1.75 and by_kind["track_end"].duration_s == 1.75
