"""A camera handed over to another replica (a scale-up: `CameraSupervisor._hand_over_surplus`
stops it with ``keep_tracks``) keeps its open tracks: the conductor leaves a snapshot at its last
published frame instead of ending them, and the next owner continues them — one ``track_start``
for a car seen on both sides, its id unchanged, no ``track_end`` at the handover. A camera
stopped for any other reason still ends its tracks. Real conductors, publisher and redis-server;
the detector is a stand-in (one car, always in view)."""

from __future__ import annotations

import hashlib
import asyncio
import json

import pytest

from pipeline.conductor import CameraConductor
from pipeline.config import CameraConfig, TrackerConfig
from pipeline.publish import Publisher
from pipeline.redact import redact_url
from pipeline.schema import Detections
from pipeline.sources import VideoSource
from pipeline.streams import StreamKeys, connect_redis
import pipeline.track_state
from pipeline.track_restore import open_tracking, restore_tracking
from pipeline.track_state import source_of

from .test_conductor import PacedCapture
from .test_sources import Clock
from .waiting import wait_for

KEYS = StreamKeys("handover")
CAMERA = CameraConfig(id="cam", url="rtsp://cam.example/1")
CFG = TrackerConfig(snapshot_every=1000)  # no periodic snapshot: only the one a stop leaves


async def detect(inp):
    await asyncio.sleep(0.005)  # the detector's work, not a wait
    return Detections(xyxy=[[20, 5, 40, 25]], scores=[0.9], labels=("car",), categories=("vehicle",))


def owner(redis_url: str, *, frames: int = 10_000, is_file: bool = False, camera: CameraConfig = CAMERA,
          detect=detect, cfg: TrackerConfig = CFG, max_inflight: int = 2,
          classifiers=None) -> tuple[CameraConductor, Publisher]:
    """A replica's conductor for the camera, continuing what its previous owner left
    (`open_tracking`, as a replica starts a camera); ``frames``: 0 for a camera that never
    delivers one (it keeps reconnecting); ``detect``: the stand-in detector; ``classifiers``:
    category → routes."""
    publisher = Publisher(connect_redis(redis_url), keys=KEYS, maxlen=1000).start()
    seq, counters = publisher.resume_camera("cam")
    tracker, events, snapshots = open_tracking(publisher, camera, cfg, track_id_max=counters["track_id_max"],
                                               is_file=is_file)
    source = VideoSource("cam", lambda: PacedCapture(frames, Clock()), fps=0, is_file=False, seq_start=seq)
    conductor = CameraConductor(camera, source, detect=detect, classifiers=classifiers or {}, publisher=publisher, imgsz=64,
                                models={"detector": "stand-in"}, max_inflight=max_inflight, tracker=tracker, events=events,
                                track_state=snapshots)
    return conductor, publisher


def run_until(redis_server, frames: int, *, keep_tracks: bool, is_file: bool = False, camera: CameraConfig = CAMERA,
              **stand_in) -> None:
    """One owner publishes ``frames`` more frames (0: stopped before its first), then is
    stopped (handed over or not); ``stand_in``: `owner`'s detect, cfg, max_inflight and
    classifiers."""
    conductor, publisher = owner(redis_server.url, frames=10_000 if frames else 0, is_file=is_file, camera=camera,
                                 **stand_in)
    client = redis_server.client()
    start = client.xlen(KEYS.detections("cam"))

    async def drive():
        running = asyncio.create_task(conductor.run())
        await asyncio.to_thread(wait_for, lambda: client.xlen(KEYS.detections("cam")) >= start + frames
                                and conductor.source.state.value in ("online", "reconnecting"), 30,
                                f"{frames} frames published", 0.05)
        await conductor.stop(keep_tracks=keep_tracks)
        await asyncio.wait_for(running, 15)

    asyncio.run(drive())
    assert publisher.flush(5)
    publisher.close()
    assert client.xlen(KEYS.detections("cam")) >= start + frames


def events_of(client) -> list[dict]:
    return [json.loads(f[b"json"]) for _, f in client.xrange(KEYS.events("cam"))]


@pytest.mark.parametrize("keep_tracks", [True, False], ids=["handed-over", "stopped"])
def test_a_camera_handed_over_keeps_its_tracks(redis_server, keep_tracks):
    client = redis_server.client()
    run_until(redis_server, 8, keep_tracks=keep_tracks)
    first = events_of(client)
    [started] = [e["track_id"] for e in first if e["kind"] == "track_start"]
    state = json.loads(client.hget(KEYS.trackstate("cam"), "json"))
    top_id, top = client.xrevrange(KEYS.detections("cam"), count=1)[0]
    last_seq = int(top[b"seq"])
    assert state["seq"] == last_seq
    if keep_tracks:  # a snapshot at the last frame, nothing ended
        assert "tracker" in state and not state.get("closed")
        assert [e["kind"] for e in first] == ["track_start"]
        tracker, events, restored = restore_tracking(_reader(redis_server), CAMERA, CFG, track_id_max=started,
                                                     file_time=False)
        assert (restored.seq, restored.replayed, restored.why_not) == (last_seq, 0, "")
        assert events.open_tracks == [started]
    else:  # ended here: the next owner starts afresh
        assert state.get("closed") is True
        assert [(e["kind"], e["track_id"]) for e in first] == [("track_start", started), ("track_end", started)]
        # it ended at the last frame it was seen in, not when the stop's events were written
        assert first[-1]["seq"] == last_seq and first[-1]["ts"] == json.loads(top[b"json"])["frame_ts"]

    run_until(redis_server, 8, keep_tracks=False)  # the next owner
    later = events_of(client)[len(first):]
    ids = {o["track_id"] for _, f in client.xrange(KEYS.detections("cam"), min=b"(" + top_id)
           for o in json.loads(f[b"json"])["objects"]}
    if keep_tracks:  # the same car, the same track: it ends once, at the next owner's stop
        assert ids == {started}
        assert [(e["kind"], e["track_id"]) for e in later] == [("track_end", started)]
    else:
        assert len(ids) == 1 and ids.pop() > started
        assert [e["kind"] for e in later] == ["track_start", "track_end"]


def _reader(redis_server) -> Publisher:
    """A publisher that only reads (restore_tracking's client and keys); never started."""
    return Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000)


def test_tracks_handed_over_end_where_they_cannot_go_on(redis_server, monkeypatch):
    """Handed over, a file camera (it restarts from its beginning elsewhere) ends its tracks; so
    does a camera whose snapshot cannot be written (too big); and tracks a replica resumed but
    never published from end at the frame it resumed them from when it stops."""
    client = redis_server.client()
    run_until(redis_server, 8, keep_tracks=True, is_file=True)
    assert json.loads(client.hget(KEYS.trackstate("cam"), "json")).get("closed") is True
    assert [e["kind"] for e in events_of(client)] == ["track_start", "track_end"]

    client.flushall()
    monkeypatch.setattr(pipeline.track_state, "MAX_STATE_BYTES", 90)  # a closed state fits, a snapshot not
    run_until(redis_server, 8, keep_tracks=True)
    assert [e["kind"] for e in events_of(client)] == ["track_start", "track_end"]
    monkeypatch.undo()

    client.flushall()
    run_until(redis_server, 8, keep_tracks=True)  # a snapshot at its last frame
    state = json.loads(client.hget(KEYS.trackstate("cam"), "json"))
    run_until(redis_server, 0, keep_tracks=True)  # resumed, handed over again before its first frame
    assert json.loads(client.hget(KEYS.trackstate("cam"), "json"))["seq"] == state["seq"]
    assert [e["kind"] for e in events_of(client)] == ["track_start"]
    run_until(redis_server, 0, keep_tracks=False)  # resumed, then removed before its first frame
    assert json.loads(client.hget(KEYS.trackstate("cam"), "json")).get("closed") is True
    ended = [e for e in events_of(client) if e["kind"] == "track_end"]
    assert len(ended) == 1 and ended[0]["seq"] == state["seq"]


def test_tracks_left_on_another_source_end_at_the_next_owner(redis_server):
    """A camera whose URL changed while it moved (a new version of the service) does not continue
    the tracks its snapshot left on the old source: its next owner ends them at the snapshot's
    frame, then starts afresh above their ids."""
    client = redis_server.client()
    run_until(redis_server, 8, keep_tracks=True)
    state = json.loads(client.hget(KEYS.trackstate("cam"), "json"))
    assert state["source"] == source_of(CAMERA)
    [started] = [e["track_id"] for e in events_of(client)]
    run_until(redis_server, 8, keep_tracks=False, camera=CAMERA.model_copy(update={"url": "rtsp://cam.example/2"}))
    events = [(e["kind"], e["track_id"], e["seq"]) for e in events_of(client)]
    assert events[:2] == [("track_start", started, 0), ("track_end", started, state["seq"])], events
    assert [kind for kind, _, _ in events[2:]] == ["track_start", "track_end"] and events[2][1] > started


def test_tracks_handed_over_to_a_version_without_tracking_end_there(redis_server):
    """The next version turned tracking off: nobody continues the tracks the snapshot holds, so
    the camera's next owner ends them as it starts (`track_restore.end_left_tracks`)."""
    client = redis_server.client()
    run_until(redis_server, 8, keep_tracks=True)
    state = json.loads(client.hget(KEYS.trackstate("cam"), "json"))
    [started] = [e["track_id"] for e in events_of(client)]
    publisher = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    try:
        assert open_tracking(publisher, CAMERA, TrackerConfig(enabled=False), track_id_max=started,
                             is_file=False) == (None, None, None)
        assert publisher.flush(5)
    finally:
        publisher.close()
    assert [(e["kind"], e["track_id"], e["seq"]) for e in events_of(client)] == [
        ("track_start", started, 0), ("track_end", started, state["seq"])]
    assert json.loads(client.hget(KEYS.trackstate("cam"), "json")).get("closed") is True


def test_a_source_is_its_url_without_credentials():
    """What a snapshot names as its source: a new password is the same camera, another host or
    stream is not; no password in it."""
    def source(url: str) -> str:
        return source_of(CameraConfig(id="cam", url=url))

    assert source("rtsp://viewer:old-secret@cam.example/1") == source("rtsp://viewer:new-secret@cam.example/1")
    assert source("rtsp://cam.example/1?password=a") == source("rtsp://cam.example/1?password=b")
    assert len({source("rtsp://cam.example/1"), source("rtsp://cam.example/2"), source("rtsp://other/1")}) == 3
    assert "secret" not in source("rtsp://viewer:old-secret@cam.example/1")

    # the values of its variables are not in it either (a 6-digit pin in an unsalted digest was
    # found again by trying them all), while its host still is
    from pipeline.config_env import resolve_camera

    def with_pin(pin: str, host: str = "cam.example") -> CameraConfig:
        written = CameraConfig(id="dock", url=f"http://{host}/video.cgi?user=admin&pin=${{CAM_DOCK_PIN}}")
        return resolve_camera(written, {"CAM_DOCK_PIN": pin})

    pinned = source_of(with_pin("482916"))
    assert pinned == source_of(with_pin("777777")) != source_of(with_pin("482916", "other.example"))
    assert all(hashlib.sha256(redact_url(f"http://cam.example/video.cgi?user=admin&pin={pin}").encode())
               .hexdigest()[:16] != pinned for pin in ("482916", "***"))


def test_frames_tracked_but_not_published_at_a_handover_leave_the_tracks_to_the_next_owner(redis_server, monkeypatch):
    """A snapshot must describe exactly the frames published up to it, so none is taken at the
    stop of a camera whose last tracked frames were not published (one held up past the stop's
    grace by a slow classifier): it ended its tracks, and the next owner gave the same car a new
    id. The last snapshot written stays instead; the next owner replays the frames published
    since, as after a crash, and continues the track."""
    client = redis_server.client()
    conductor, publisher = owner(redis_server.url)
    publish = publisher.publish

    def publish_first_eight(result, *args, **kwargs):
        if result.meta.seq >= 8:
            raise RuntimeError("injected: this frame cannot be published")
        return publish(result, *args, **kwargs)

    monkeypatch.setattr(publisher, "publish", publish_first_eight)

    async def drive():
        running = asyncio.create_task(conductor.run())
        await asyncio.to_thread(wait_for, lambda: conductor.counters.failed >= 3, 30, "frames tracked, not published",
                                0.05)
        await conductor.stop(keep_tracks=True)
        await asyncio.wait_for(running, 15)

    asyncio.run(drive())
    assert publisher.flush(5)
    publisher.close()
    last_seq = int(client.xrevrange(KEYS.detections("cam"), count=1)[0][1][b"seq"])  # (the slot may skip one)
    assert last_seq <= 7
    state = json.loads(client.hget(KEYS.trackstate("cam"), "json"))
    assert not state.get("closed") and "tracker" in state and state["seq"] <= last_seq, state
    first = events_of(client)
    [started] = [e["track_id"] for e in first if e["kind"] == "track_start"]
    assert [e["kind"] for e in first] == ["track_start"]
    run_until(redis_server, 8, keep_tracks=False)  # the next owner: the same car, the same track
    assert [(e["kind"], e["track_id"]) for e in events_of(client)] == [("track_start", started),
                                                                       ("track_end", started)]


@pytest.mark.parametrize("every", [20, 0])
def test_an_owner_killed_before_its_first_periodic_snapshot_leaves_its_tracks_to_the_next(redis_server, monkeypatch,
                                                                                            every):
    """The first snapshot came with the `snapshot_every`-th frame: an owner killed before it
    (SIGKILL, a node lost) left no snapshot, the next owner started afresh, and the tracks it
    had opened never ended (no `track_end`, zones never left). Each owner now leaves one at its
    first published frame: the next replays from there and ends them where they end. With
    `snapshot_every: 0` (no periodic snapshot, no handover) that one too: it wrote none."""
    client = redis_server.client()
    cfg = TrackerConfig(snapshot_every=every, track_buffer=5)
    with monkeypatch.context() as killed:
        killed.setattr(CameraConductor, "_leave_tracks", lambda self: None)  # nothing more from it
        run_until(redis_server, 8, keep_tracks=False, cfg=cfg)
    assert [e["kind"] for e in events_of(client)] == ["track_start"]
    run_until(redis_server, 8, keep_tracks=False, cfg=cfg)  # the next owner runs, then stops
    kinds = [(e["kind"], e["track_id"]) for e in events_of(client)]
    started = [tid for kind, tid in kinds if kind == "track_start"]
    ended = [tid for kind, tid in kinds if kind == "track_end"]
    assert sorted(started) == sorted(ended) and len(set(ended)) == len(ended), kinds  # each once


def test_a_stopped_camera_keeps_its_pixel_zones_in_the_frame_size_they_were_drawn_in(redis_server):
    """Zones drawn on 1920x1080, the camera back at 1280x720: scaled while it ran; after a stop
    (its tracks ended, `closed`) the next owner read the same numbers as 720p pixels, another
    part of the picture."""
    from pipeline.events import EventEngine
    from pipeline.track_state import TrackSnapshots, end_tracks

    from .test_events import frame, obj

    camera = CameraConfig(id="px", url="rtsp://cam.example/px", zones={"door": [[150, 150], [600, 150], [600, 900]]})
    engine = EventEngine.for_camera(camera, track_buffer=30)
    for seq, (w, h) in enumerate(((1920, 1080), (1280, 720)), 1):
        engine.update(frame(seq, [obj(1, 0.5 * h, x=0.2 * w, size=0.1 * h)], camera="px", width=w, height=h))
    assert engine.geometry(1280, 720).zones["door"][0].tolist() == [100, 100]
    publisher = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    end_tracks(publisher, "px", engine, (2, 0.0), TrackSnapshots(publisher, "px", every=0))
    assert publisher.flush(5)
    publisher.close()
    _, events, restored = restore_tracking(_reader(redis_server), camera, CFG, track_id_max=1, file_time=False)
    assert restored.why_not == "closed" and events.open_tracks == []
    assert events.geometry(1280, 720).zones["door"][0].tolist() == [100, 100]  # not [150, 150]


def test_a_zone_removed_before_a_crash_is_left_at_the_next_owner_not_in_its_replay(redis_server, monkeypatch):
    """The owner (killed) published a car entering zone `lot`; the zone was removed since. The next
    owner replayed the frames under the new zones, so the exit happened in the replay, whose
    events are not published: `lot` was never left (occupancy +1 for good). The replay is under
    the snapshot's zones now; the zone is left at the first live frame."""
    client = redis_server.client()
    cfg = TrackerConfig(snapshot_every=20, track_buffer=5)
    with_lot = CameraConfig(id="cam", url=CAMERA.url, zones={"lot": [[0, 0], [1, 0], [1, 1], [0, 1]]})
    start = len(events_of(client))
    with monkeypatch.context() as killed:
        killed.setattr(CameraConductor, "_leave_tracks", lambda self: None)  # nothing more from it
        run_until(redis_server, 8, keep_tracks=False, cfg=cfg, camera=with_lot)
    assert [(e["kind"], e.get("zone")) for e in events_of(client)[start:]] == [("track_start", None), ("zone_enter", "lot")]
    run_until(redis_server, 8, keep_tracks=False, cfg=cfg, camera=CAMERA)  # the next owner, `lot` gone
    later = [(e["kind"], e.get("zone")) for e in events_of(client)[start + 2:]]
    assert later == [("zone_exit", "lot"), ("track_end", None)], later


def test_a_change_of_zones_snapshots_the_next_frame_tracked():
    from pipeline.track_state import TrackSnapshots
    from pipeline.tracking import ObjectTracker

    snapshots, tracker = TrackSnapshots(None, "cam", every=1000), ObjectTracker(CFG)
    for seq in (1, 2):
        snapshots.tracked(seq, tracker)
    snapshots.geometry_changed()
    for seq in (3, 4):
        snapshots.tracked(seq, tracker)
    assert sorted(snapshots._held) == [1, 3]  # the first frame's, then the one after the change


def test_a_file_cameras_tracks_left_by_an_owner_that_died_end_at_the_next(redis_server, monkeypatch):
    """A file starts again from its beginning at its next owner: a clean stop ended its tracks,
    but those an owner killed left open went on into the restarted file (objects at its start
    took ids of objects seen a minute into it)."""
    client = redis_server.client()
    cfg = TrackerConfig(snapshot_every=20, track_buffer=5)
    start = len(events_of(client))
    with monkeypatch.context() as killed:
        killed.setattr(CameraConductor, "_leave_tracks", lambda self: None)  # nothing more from it
        run_until(redis_server, 8, keep_tracks=False, cfg=cfg, is_file=True)
    [first] = [e["track_id"] for e in events_of(client)[start:] if e["kind"] == "track_start"]
    run_until(redis_server, 8, keep_tracks=False, cfg=cfg, is_file=True)
    kinds = [(e["kind"], e["track_id"]) for e in events_of(client)[start + 1:]]
    assert kinds[0] == ("track_end", first) and [k for k, _ in kinds[1:]] == ["track_start", "track_end"], kinds
    assert kinds[1][1] > first, kinds
