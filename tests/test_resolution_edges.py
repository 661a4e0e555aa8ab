"""Pixel zones and lines near the frame's far edges when a camera comes back at another
resolution (`pipeline/geometry.py: rescaled`, `in_frame_pixels`): a shape keeps the side of a
clipped box's anchor it was on, and a line anchors could cross stays crossable."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.events import EventEngine
from pipeline.geometry import rescaled
from pipeline.schema import Detections, FrameMeta, FrameResult


def frame(seq: int, boxes: list[tuple[int, list[float]]], width: int, height: int) -> FrameResult:
    dets = Detections(xyxy=np.array([b for _, b in boxes], np.float32).reshape(-1, 4),
                      scores=np.full(len(boxes), 0.9, np.float32), labels=("car",) * len(boxes),
                      categories=("vehicle",) * len(boxes), track_ids=tuple(t for t, _ in boxes))
    return FrameResult(FrameMeta("cam", seq, 1.7e9 + seq / 4, None, width, height), dets, {}, {})


def kinds(events) -> list[tuple[str, int, str | None]]:
    return [(e.kind, e.track_id, e.zone) for e in events]


@pytest.mark.parametrize("zone_margin", [None, 0.0])
def test_a_zone_drawn_to_the_last_pixel_row_holds_a_clipped_car_after_an_upscale(zone_margin):
    """Drawn on 1280x720 to row 719 (the last pixel's index), the zone's edge was scaled to
    1078.5 of 1080, above a bottom-clipped box's anchor (1078.5, `Geometry.anchors`): a new car
    there was never counted, and with ``zone_margin: 0`` a parked one got a `zone_exit`."""
    dock = {"dock": [[0, 400], [1279, 400], [1279, 719], [0, 719]]}
    engine = EventEngine("cam", zones=dock, **({} if zone_margin is None else {"zone_margin": zone_margin}))

    def car(k: float, x: float = 600) -> list[float]:  # cut off by the frame's bottom
        return [(x - 80) * k, 560 * k, (x + 80) * k, 720 * k]

    assert kinds(engine.update(frame(1, [(1, car(1))], 1280, 720))) == [("track_start", 1, None), ("zone_enter", 1, "dock")]
    later = engine.update(frame(2, [(1, car(1.5)), (2, car(1.5, x=200))], 1920, 1080))
    assert kinds(later) == [("track_start", 2, None), ("zone_enter", 2, "dock")]
    assert engine.geometry(1920, 1080).zones["dock"][:, 1].max() == 1079  # the last pixel's index still


def test_a_clipped_car_outside_a_zone_short_of_the_edge_stays_outside_after_a_downscale():
    """The other way: a zone ending 2 px above the bottom (718 of 720) and a bottom-clipped car
    outside it; at 640x480 the scaled edge had to stay above the anchor."""
    lot = {"lot": [[0, 400], [1279, 400], [1279, 718], [0, 718]]}
    engine = EventEngine("cam", zones=lot, zone_margin=0.0)
    assert kinds(engine.update(frame(1, [(1, [520, 560, 680, 720])], 1280, 720))) == [("track_start", 1, None)]
    assert kinds(engine.update(frame(2, [(1, [260, 373.3, 340, 480])], 640, 480))) == []


@pytest.mark.parametrize("line", [[[0, 477], [640, 477]], [[0, 0.8], [640, 0.8]], [[638.2, 0], [638.2, 480]]])
def test_a_pixel_line_near_an_edge_goes_on_working_when_the_camera_comes_back_smaller(line):
    """A line anchors could cross at 640x480, within 3 px of an edge, was 'along the edge' of the
    320x240 frame it was scaled to, and the camera failed (and stayed failed at that size)."""
    engine = EventEngine("cam", lines={"exit": line})
    engine.update(frame(1, [], 640, 480))
    engine.update(frame(2, [], 320, 240))  # raised GeometryError
    assert np.abs(engine.geometry(320, 240).lines["exit"] - np.asarray(line) / 2).max() <= 2  # (where it was)


def test_rescaled_keeps_order_the_edges_and_proportion_inside():
    for old, new in itertools.product([2, 3, 5, 100, 480, 704, 720, 1080], [1, 3, 100, 240, 360, 800, 1080, 3840]):
        values = sorted({0, 0.5, 1, 10, old / 3, old - 3, old - 2, old - 1.6, old - 1.5, old - 1.2, old - 1, old - 0.5, old})
        out = [rescaled(v, old, new) for v in values if 0 <= v <= old]
        assert out == sorted(out) and out[0] == 0 and out[-1] == new, (old, new, out)
        if min(old, new) >= 100:
            assert rescaled(old - 1, old, new) == new - 1 and rescaled(old / 3, old, new) == pytest.approx(new / 3)


def test_a_relative_line_near_an_edge_works_at_every_resolution():
    """``[[0, 0.997], [1, 0.997]]`` is crossable at 1920x1080 (y 1076.8) but fell in the outer
    pixels' band at 640x480 (478.6, anchors at most 478.5): a camera back at 480p failed with
    "runs along the edge … draw it inside the frame", though the config had been accepted."""
    for width, height in ((1920, 1080), (640, 480), (320, 240)):
        engine = EventEngine("cam", lines={"exit": [[0, 0.997], [1, 0.997]]}, line_margin=0.0)
        events = []
        for seq, bottom in enumerate((0.8, 0.9, 0.95, 1.0, 1.0), start=1):  # a car leaving at the bottom
            box = [width * 0.4, (bottom - 0.2) * height, width * 0.5, bottom * height]
            events += engine.update(frame(seq, [(1, box)], width, height))
        assert [(e.kind, e.line, e.direction) for e in events if e.kind == "line_cross"] == [("line_cross", "exit", "out")]
        assert engine.geometry(width, height).lines["exit"][0, 1] == pytest.approx(min(0.997 * height, height - 1.51))
