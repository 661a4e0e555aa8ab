"""The keep-latest slot's rule for a late consumer (`pipeline/frame_slot.py`), on a fake clock:
pure logic (the whole hand-off runs in test_conductor.py with a real reader)."""

from __future__ import annotations

import types

import pytest

import pipeline.frame_slot
from pipeline.frame_slot import HELD_AT_MOST_S, LatestFrameSlot


@pytest.fixture
def clock(monkeypatch):
    now = types.SimpleNamespace(t=1000.0)
    monkeypatch.setattr(pipeline.frame_slot, "time", types.SimpleNamespace(monotonic=lambda: now.t))
    return now


def frame(name: str, decode_ms: float):
    return types.SimpleNamespace(name=name, decode_ms=decode_ms)


def test_a_costly_frame_held_for_a_late_consumer_is_made_again_after_ten_times_its_cost_or_0_2_s(clock):
    """A 4K camera (57 ms a frame) whose conductor was later than it expected had every frame
    read converted and thrown away but the last: 6–7 conversions a frame taken under load. Now
    a frame held is made again once it waited 10 times the cost, at most 0.2 s: never older."""
    slot = LatestFrameSlot()
    slot.want(False, at=clock.t + 0.1)  # busy, free in 0.1 s (as it expects)
    assert not slot.wants_frame()
    clock.t += 0.1
    assert slot.wants_frame()  # (due: made, so that it is ready then)
    slot.put(frame("first", 57))
    made, put_at, oldest = 1, clock.t, 0.0
    for _ in range(40):  # the consumer late by 1.2 s, a frame read every 30 ms
        clock.t += 0.03
        oldest = max(oldest, clock.t - put_at)
        if slot.wants_frame():
            slot.put(frame(f"again{made}", 400 if made == 2 else 57))  # (one slow sample: 0.4 s)
            made, put_at = made + 1, clock.t
    assert 5 <= made <= 8, made  # (41 before; 0.2 s apart: the 10 × cost bound, 0.57 s, is longer)
    assert oldest <= HELD_AT_MOST_S + 0.03 + 1e-9, oldest  # (a frame read after the bound replaces it)
    assert slot.get(timeout=0).name == f"again{made - 1}" and slot.dropped == made - 1


def test_a_cheap_frame_is_replaced_by_every_newer_one_and_a_free_consumer_takes_each(clock):
    slot = LatestFrameSlot()
    slot.want(False, at=clock.t)
    for k in range(5):  # 1 ms a frame, one every 30 ms: each newer one made
        clock.t += 0.03
        assert slot.wants_frame()
        slot.put(frame(f"f{k}", 1))
    assert slot.get(timeout=0).name == "f4" and slot.dropped == 4
    slot.want(True)  # free: every frame made, whatever it costs
    slot.put(frame("big", 500))
    clock.t += 0.03
    assert slot.wants_frame()


def test_a_frame_not_due_yet_drops_the_one_held(clock):
    """Before the consumer expects to be free, a frame read is skipped and one still held is
    dropped (what is taken is never older than a frame read and skipped), costly or not."""
    slot = LatestFrameSlot()
    slot.put(frame("held", 57))
    slot.want(False, at=clock.t + 5)
    clock.t += 0.03
    assert not slot.wants_frame() and slot.get(timeout=0) is None and slot.dropped == 1
