"""A camera's snapshot that is damaged (by hand, a bad restore of Redis, a bug elsewhere) never
keeps the camera from running: its next owner starts afresh, saying why (`restore_tracking`),
and tracks the frames that follow. Before, some damaged parts raised out of the restore on every
start (the camera never ran) or were taken in and failed every frame after (nothing published,
the bad snapshot never overwritten). Real conductor, publisher and redis-server; the detector is
a stand-in. And the first snapshot a camera owes (its first frame's, the one after a zone
change) is owed until it is written: a frame that failed does not take it with it."""

from __future__ import annotations

import json

import pytest

from pipeline.config import TrackerConfig
from pipeline.schema import Detections, FrameMeta, FrameResult
from pipeline.track_restore import restore_tracking
from pipeline.track_state import TrackSnapshots
from pipeline.tracking import ObjectTracker

from .test_handover_tracks import CAMERA, KEYS, _reader, run_until

CFG = TrackerConfig(snapshot_every=1000)

DAMAGE = {
    "events null": lambda s: s.__setitem__("events", None),
    "events a list": lambda s: s.__setitem__("events", []),
    "a Kalman mean of 4": lambda s: s["tracker"]["tracked"][0].__setitem__("mean", [1, 2, 3, 4]),
    "a covariance of 4x4": lambda s: s["tracker"]["tracked"][0].__setitem__("covariance", [[0.0] * 4] * 4),
    "a tracker frame 0x0": lambda s: s["tracker"].__setitem__("shape", [0, 0]),
    "an events frame 0x0": lambda s: s["events"].__setitem__("size", [0, 0]),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_snapshot_starts_the_camera_afresh_and_its_frames_are_tracked(redis_server, damage):
    client = redis_server.client()
    run_until(redis_server, 6, keep_tracks=True, cfg=CFG)  # a snapshot with the car's open track
    state = json.loads(client.hget(KEYS.trackstate("cam"), "json"))
    assert state["tracker"]["tracked"] and state["events"]["size"], state
    DAMAGE[damage](state)
    client.hset(KEYS.trackstate("cam"), "json", json.dumps(state))
    tracker, events, restored = restore_tracking(_reader(redis_server), CAMERA, CFG, track_id_max=5, file_time=False)
    assert restored.why_not.startswith("unreadable: "), restored
    for seq in range(100, 104):  # the frames after it: tracked, their events made
        meta = FrameMeta("cam", seq, 1_764_000_000 + seq / 4, None, 64, 36)
        found = tracker.update(Detections(xyxy=[[20, 5, 40, 25]], scores=[0.9], labels=("car",), categories=("vehicle",)),
                               (36, 64), ts=tracker.time_of(meta))
        events.update(FrameResult(meta, found, {}, {}), tracker.alive_ids(), tracker.origins)
    assert found.track_ids[0] is not None and found.track_ids[0] > 5 and events.open_tracks == [found.track_ids[0]]


class _Writes:
    """What `TrackSnapshots` writes (a stand-in publisher: the rule alone)."""

    class keys:
        @staticmethod
        def trackstate(camera):
            return f"trackstate:{camera}"

    def __init__(self):
        self.seqs: list[int] = []

    def fenced_hset(self, camera, key, mapping):
        self.seqs.append(int(mapping["seq"]))
        self.last = mapping


def _frame(seq: int) -> FrameMeta:
    return FrameMeta("cam", seq, 1_764_000_000 + seq, None, 64, 36)


@pytest.mark.parametrize("owed", ["the first frame's", "the one after a zone change"])
def test_a_snapshot_owed_by_a_frame_that_failed_is_taken_of_the_next_one(owed):
    """Frame 0's snapshot (or 10's, the first after a zone change) was held until it was
    published; the frame failed (a classifier raised), so it was thrown away and none was taken
    until the 1000th frame: an owner killed meanwhile left its tracks open for good (or its next
    owner replayed the frames under the old zones, entering the new zone twice)."""
    from pipeline.events import EventEngine

    writes = _Writes()
    snapshots = TrackSnapshots(writes, "cam", every=1000)
    tracker, events = ObjectTracker(CFG), EventEngine("cam")
    first = 0 if owed == "the first frame's" else 10
    for seq in range(first):  # (the zone change's case: frame 0's snapshot written, then 9 frames)
        snapshots.tracked(seq, tracker)
        snapshots.published(_frame(seq), events)
    if first:
        snapshots.geometry_changed()
    written = list(writes.seqs)
    snapshots.tracked(first, tracker)  # it fails: never published
    snapshots.tracked(first + 1, tracker)  # (tracked before the failure was known)
    snapshots.published(_frame(first + 1), events)
    for seq in (first + 2, first + 3):
        snapshots.tracked(seq, tracker)
        snapshots.published(_frame(seq), events)
    assert writes.seqs == written + [first + 2], writes.seqs


REPLAY_DAMAGE = {
    "best_score null": lambda s: s["events"]["tracks"][-1].update(best_score=None),
    "stride 0": lambda s: s["events"]["tracks"][-1].update(stride=0),
    "path empty": lambda s: s["events"]["tracks"][-1].update(path=[]),
    "tracklet_len null": lambda s: s["tracker"]["tracked"][-1].update(tracklet_len=None),
    "frame_ts -1": lambda s: s.update(frame_ts=-1),
    "frame_ts NaN": lambda s: s.update(frame_ts=float("nan")),
}


@pytest.mark.parametrize("damage", list(REPLAY_DAMAGE))
def test_a_damaged_snapshot_with_frames_after_it_never_keeps_the_camera_from_running(redis_server, damage):
    """Damage the restore took in and then tripped on — replaying the frames published since
    (TypeError, ZeroDivisionError; a frame_ts of -1 made the replay's stream id a Redis error) or
    making the frames after a handover (7 of 10 failed) — raised out of `restore_tracking` at
    every start (the camera "could not start", round after round) or failed its frames one by one."""
    from .test_failover_tracks import KEYS as FO_KEYS
    from .test_failover_tracks import Owner, published, scene

    frames = scene(40)
    client = redis_server.client()
    first = Owner(redis_server.url, "A")
    first.process(frames[:23])  # a snapshot at seq 19, seq 20..22 published after it
    first.publisher.close()
    client.delete(FO_KEYS.lease("cam"))  # SIGKILLed: its lease runs out
    state = json.loads(client.hget(FO_KEYS.trackstate("cam"), "json"))
    REPLAY_DAMAGE[damage](state)
    client.hset(FO_KEYS.trackstate("cam"), "json", json.dumps(state))
    second = Owner(redis_server.url, "B")  # (restore_tracking raised here)
    second.process(frames[23:33])  # (events.update raised here)
    second.publisher.close()
    seqs = [int(f[b"seq"]) for _, f in client.xrange(FO_KEYS.detections("cam"))]
    assert seqs == list(range(33)), seqs
    assert published(client)[0], "no event published"


def test_a_crowds_snapshot_too_big_keeps_its_most_recently_seen_tracks_not_nothing(monkeypatch):
    """The events keep up to 4096 open tracks but the snapshot is bounded to 2 MiB: ~2800 open
    tracks with two classifier answers each filled it, and then no snapshot was written at all
    (the last one went stale: a crash replayed past 1000 frames, a handover ended every track).
    The least recently seen tracks are left out until it fits (the bound made small here): the
    highest ids were cut instead, the tracks still in view, whose next owner then started them
    again (a second `track_start` each) while it ended old lost ones."""
    from pipeline import track_state
    from pipeline.events import EventEngine

    monkeypatch.setattr(track_state, "MAX_STATE_BYTES", 60_000)
    tracker, events, writes = ObjectTracker(CFG), EventEngine("cam"), _Writes()
    snapshots = TrackSnapshots(writes, "cam", every=1)
    n = 300
    recent = range(n - 79, n + 1)  # the tracks seen on the last frame (the high ids: the ones cut before)
    for seq in range(3):
        ids = list(range(1, n + 1)) if seq < 2 else list(recent)
        boxes = [[(i % 20) * 30 + seq, (i // 20) * 30, (i % 20) * 30 + 20 + seq, (i // 20) * 30 + 20] for i in ids]
        answers = [{"color": {"label": "white", "score": 0.9}, "type": {"label": "sedan", "score": 0.8}}] * len(ids)
        dets = Detections(xyxy=boxes, scores=[0.9] * len(ids), labels=["car"] * len(ids),
                          categories=["vehicle"] * len(ids), attributes=answers, track_ids=ids)
        meta = FrameMeta("cam", seq, 1_764_000_000 + seq, None, 640, 480)
        snapshots.tracked(seq, tracker)
        events.update(FrameResult(meta, dets, {}, {}), set(range(1, n + 1)))
        snapshots.published(meta, events)
    assert writes.seqs == [0, 1, 2], writes.seqs
    kept = json.loads(writes.last["json"])["events"]["tracks"]
    assert len(writes.last["json"]) <= 60_000 and len(recent) < len(kept) < n, (len(writes.last["json"]), len(kept))
    assert set(recent) <= {t["id"] for t in kept}, "a track seen on the last frame was left out"
    assert [t["id"] for t in kept] == sorted(t["id"] for t in kept)  # (kept in the snapshot's order)
