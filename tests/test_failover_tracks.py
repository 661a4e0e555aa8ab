"""Open tracks survive a change of owner, and lines count what the detections say (issue 11, items
2 and 4).

Without Ray (a real redis-server and `Publisher`): an owner dies between two snapshots and the
next one continues exactly as if nothing had happened; a replica that lost the camera cannot
overwrite its state; a camera stopped cleanly starts afresh. On the real graph (Ray Serve, the
shared detector): traffic.mp4 with a line across the road counts, by direction, what an
independent tracker finds in the published detections; and a decoder replica SIGKILLed while
cars are on the road: the survivor continues their tracks, counts each crossing once and never
reuses an id.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from pipeline.config import CameraConfig, PerceptConfig, TrackerConfig
from pipeline.events import EventEngine, events_json
from pipeline.lease import acquire
from pipeline.publish import Publisher
from pipeline.schema import Detections, FrameMeta, FrameResult
from pipeline.streams import StreamKeys, connect_redis
from pipeline.track_restore import restore_tracking
from pipeline.track_state import TrackSnapshots, source_of
from pipeline.tracking import ObjectTracker

KEYS = StreamKeys("fo")
T0 = 1_764_000_000.0
W, H = 640, 360
GATE = {"gate": [[320, 0], [320, 359]]}  # drawn downwards: moving right is "in", left "out"
CAMERA = CameraConfig(id="cam", url="rtsp://cam.example/1", fps=4, lines=GATE)
CFG = TrackerConfig(snapshot_every=5)


def scene(n_frames: int = 60) -> list[tuple[FrameMeta, Detections]]:
    """Cars 60 px long at 4 fps, each moving 70 px a frame (more than its length) across the
    gate, one entering every 4 frames, directions alternating; a second box (a
    "truck") on some cars, as the detector's per-label NMS gives."""
    rng = np.random.default_rng(7)
    frames = []
    for f in range(n_frames):
        boxes, labels, scores = [], [], []
        for k in range(f // 4 + 1):
            age = f - 4 * k
            right = k % 2 == 0
            x = -50 + 70 * age if right else W - 10 - 70 * age
            if not -40 < x < W - 20:
                continue
            y = (100, 240, 160, 300)[k % 4] + rng.normal(0, 1)  # two lanes each way
            box = [x + rng.normal(0, 1.5), y, x + 60 + rng.normal(0, 1.5), y + 30]
            boxes.append(box), labels.append("car"), scores.append(float(rng.uniform(0.4, 0.9)))
            if k % 5 == 1 and age % 3 == 0:
                boxes.append([v + 1 for v in box]), labels.append("truck"), scores.append(0.3)
        meta = FrameMeta("cam", f, T0 + f / 4, f / 4, W, H)
        frames.append((meta, Detections(xyxy=np.array(boxes, np.float32).reshape(-1, 4), scores=scores,
                                        labels=labels, categories=["vehicle"] * len(labels))))
    return frames


class Owner:
    """A decoder replica's part for one camera, as the conductor does it: track, snapshot, event,
    publish in one fenced write, in seq order."""

    def __init__(self, url: str, token: str, *, lease_ttl: float = 60, camera: CameraConfig = CAMERA):
        self.client = connect_redis(url)
        self.lease = acquire(self.client, KEYS.lease("cam"), "cam", ttl=lease_ttl, token=token)
        assert self.lease is not None, f"{token} could not take the lease"
        self.publisher = Publisher(self.client, keys=KEYS, maxlen=10_000).start()
        self.publisher.fence("cam", KEYS.lease("cam"), token)
        track_id_max = self.publisher.resume_camera("cam")[1]["track_id_max"]
        self.tracker, self.events, self.restored = restore_tracking(
            self.publisher, camera, CFG, track_id_max=track_id_max, file_time=False)
        self.snapshots = TrackSnapshots(self.publisher, "cam", every=CFG.snapshot_every, source=source_of(camera))

    def process(self, frames) -> None:
        for meta, dets in frames:
            tracked = self.tracker.update(dets, (meta.height, meta.width), ts=self.tracker.time_of(meta))
            self.snapshots.tracked(meta.seq, self.tracker)
            result = FrameResult(meta, tracked, {}, {})
            events = self.events.update(result, self.tracker.alive_ids(), self.tracker.origins)
            self.publisher.publish(result, events_json(events), self.events.take_counts())
            self.snapshots.published(meta, self.events)
        assert self.publisher.flush(10)

    def stop(self, seq: int, ts: float) -> None:
        """A clean stop: open tracks end, the state says so."""
        events = self.events.close(seq, ts)
        self.publisher.publish_events("cam", ts, events_json(events), self.events.take_counts())
        self.snapshots.closed(seq)
        assert self.publisher.flush(10)


def reference(frames, end: tuple[int, float]) -> tuple[list[dict], Counter]:
    """What one owner that never died publishes: events (payloads) and counts."""
    tracker, events = ObjectTracker(CFG, fps=4), EventEngine.for_camera(CAMERA, track_buffer=CFG.track_buffer)
    out = []
    for meta, dets in frames:
        tracked = tracker.update(dets, (meta.height, meta.width), ts=meta.frame_ts)
        out += events.update(FrameResult(meta, tracked, {}, {}), tracker.alive_ids(), tracker.origins)
    out += events.close(*end)
    return [e.to_payload() for e in out], events.take_counts()


def published(client) -> tuple[list[dict], Counter]:
    events = [json.loads(f[b"json"]) for _, f in client.xrange(KEYS.events("cam"))]
    counts = Counter({k.decode(): int(v) for k, v in client.hgetall(KEYS.counts("cam")).items()})
    return events, counts


def test_the_next_owner_continues_the_tracks_exactly(redis_server):
    """The owner dies 3 frames after its last snapshot, with a car crossing the gate in those 3
    frames and cars on the road: the next owner's events and counts are those of an owner that
    never died — no second start, the crossing counted once, the ends where they belong."""
    frames = scene()
    dies_after = 28  # snapshots after frames 4, 9, …, 24: frames 25..27 are replayed
    end = (len(frames) - 1, T0 + 100)
    expected, expected_counts = reference(frames, end)
    replayed_crossings = [e for e in expected if e["kind"] == "line_cross" and 24 < e["seq"] < dies_after]
    assert replayed_crossings, "the scene must cross the gate between the snapshot and the death"

    first = Owner(redis_server.url, "A")
    first.process(frames[:dies_after])
    first.client.delete(KEYS.lease("cam"))  # SIGKILLed: its lease runs out
    second = Owner(redis_server.url, "B")
    assert (second.restored.seq, second.restored.replayed, second.restored.differed) == (24, 3, 0)
    continued = set(second.events.open_tracks)
    second.process(frames[dies_after:])
    second.stop(*end)

    events, counts = published(second.client)
    assert events == expected
    assert counts == expected_counts and counts["line:gate:in:vehicle"] + counts["line:gate:out:vehicle"] >= 8
    later = {e["track_id"] for e in events if e["seq"] >= dies_after and e["kind"] == "line_cross"}
    assert continued & later, "a car on the road at the death crosses the gate after it"


def test_whatever_frame_the_owner_dies_after_the_next_owner_publishes_each_event_once(redis_server):
    """A snapshot taken on the frame ByteTrack removed a lost track (it leaves the lost pool only
    at the next frame) restored it as lost: after a replay of one frame it ended a frame late at
    the next owner, and its zone_exit and track_end were published twice (occupancy −1). Every
    frame to die after, against an owner that never died."""
    zoned = CameraConfig(id="cam", url="rtsp://cam.example/1", fps=4, zones={"all": [[0, 0], [639, 0], [639, 359], [0, 359]]})
    frames = scene()
    end = (len(frames) - 1, T0 + 100)
    tracker, engine = ObjectTracker(CFG, fps=4), EventEngine.for_camera(zoned, track_buffer=CFG.track_buffer)
    expected = []
    for meta, dets in frames:
        tracked = tracker.update(dets, (meta.height, meta.width), ts=meta.frame_ts)
        expected += [e.to_payload() for e in engine.update(FrameResult(meta, tracked, {}, {}), tracker.alive_ids(),
                                                           tracker.origins)]
    expected += [e.to_payload() for e in engine.close(*end)]
    for dies_after in range(20, len(frames) - 2):
        redis_server.client().flushall()
        first = Owner(redis_server.url, "A", camera=zoned)
        first.process(frames[:dies_after])
        first.publisher.close()
        first.client.delete(KEYS.lease("cam"))  # SIGKILLed: its lease runs out
        second = Owner(redis_server.url, "B", camera=zoned)
        second.process(frames[dies_after:])
        second.stop(*end)
        events, counts = published(second.client)
        second.publisher.close()
        assert [e["id"] for e in events] == [e["id"] for e in expected], dies_after
        assert counts["zone:all:enter:vehicle"] == counts["zone:all:exit:vehicle"], (dies_after, counts)


def test_a_detections_stream_trimmed_past_the_snapshot_is_replayed_across_the_gap(redis_server):
    """A consumer trimmed the detections stream (``XTRIM MINID``, or a small ``redis.maxlen``)
    past the snapshot's frame before the owner died: the replay goes on from the frames left,
    across the gap, taking the published ids of the tracks it finds again (`adopt_ids`) — each
    track still starts once and ends once, and the next owner's ids are above every published one."""
    frames = scene()
    dies_after = 28
    first = Owner(redis_server.url, "A")
    first.process(frames[:dies_after])
    client = first.client
    gone = [eid for eid, f in client.xrange(KEYS.detections("cam")) if int(f[b"seq"]) <= 25]
    client.xtrim(KEYS.detections("cam"), minid=gone[-1].decode().split("-")[0] + "-26", approximate=False)
    assert int(client.xrange(KEYS.detections("cam"), count=1)[0][1][b"seq"]) == 26  # frames 0..25 gone
    client.delete(KEYS.lease("cam"))  # SIGKILLed
    second = Owner(redis_server.url, "B")
    assert (second.restored.seq, second.restored.replayed) == (24, 2), second.restored
    second.process(frames[dies_after:])
    second.stop(len(frames) - 1, T0 + 100)

    events, _ = published(second.client)
    starts = Counter(e["track_id"] for e in events if e["kind"] == "track_start")
    ends = Counter(e["track_id"] for e in events if e["kind"] == "track_end")
    assert starts == ends and set(starts.values()) == {1}, (starts - ends, ends - starts)
    expected, _ = reference(frames, (len(frames) - 1, T0 + 100))
    assert len(starts) == sum(e["kind"] == "track_start" for e in expected), "a car became two tracks"


def test_a_replica_that_lost_the_camera_cannot_overwrite_its_state(redis_server):
    frames = scene(30)
    first = Owner(redis_server.url, "A", lease_ttl=60)
    first.process(frames[:12])
    first.client.delete(KEYS.lease("cam"))  # paused past its lease
    second = Owner(redis_server.url, "B")
    second.process(frames[12:20])
    state = second.client.hgetall(KEYS.trackstate("cam"))
    assert int(state[b"seq"]) == 16  # its fifth frame
    first.process(frames[20:25])  # wakes up, goes on, stops: none of it lands
    first.stop(24, T0 + 50)
    assert second.client.hgetall(KEYS.trackstate("cam")) == state
    assert max(int(f[b"seq"]) for _, f in second.client.xrange(KEYS.detections("cam"))) == 19


def test_a_camera_stopped_cleanly_starts_afresh_above_its_ids(redis_server):
    frames = scene(40)
    first = Owner(redis_server.url, "A")
    first.process(frames[:20])
    highest = first.tracker.track_id_max
    first.stop(19, T0 + 5)
    first.client.delete(KEYS.lease("cam"))
    second = Owner(redis_server.url, "B")
    assert second.restored.why_not == "closed" and second.events.open_tracks == []
    second.process(frames[20:])
    events = published(second.client)[0]
    ended = {e["track_id"] for e in events if e["kind"] == "track_end" and e["seq"] == 19}
    later = [e["track_id"] for e in events if e["kind"] == "track_start" and e["seq"] >= 20]
    assert highest >= 5 and len(ended) >= 3 and later and min(later) > highest, (highest, ended, later)


def test_a_camera_whose_url_changed_ends_the_tracks_it_left(redis_server):
    """The owner dies two frames after a snapshot; the camera comes back with another URL (a new
    version of the service): its next owner replays the two frames, ends every track open after
    them — exactly the events one owner stopping there publishes — and starts afresh."""
    frames = scene()
    first = Owner(redis_server.url, "A")
    first.process(frames[:22])  # a snapshot at seq 19, then two frames
    first.client.delete(KEYS.lease("cam"))  # died
    second = Owner(redis_server.url, "B", camera=CAMERA.model_copy(update={"url": "rtsp://cam.example/2"}))
    assert second.restored.why_not == "another source" and second.events.open_tracks == []
    assert second.publisher.flush(10)
    expected, counts = reference(frames[:22], end=(21, T0 + 21 / 4))
    events, published_counts = published(second.client)
    assert [(e["kind"], e["track_id"], e["seq"]) for e in events] == [
        (e["kind"], e["track_id"], e["seq"]) for e in expected]
    assert any(e["kind"] == "track_end" and e["seq"] == 21 for e in events) and published_counts == counts
    assert json.loads(second.client.hget(KEYS.trackstate("cam"), "json")).get("closed") is True


# --- on the real graph -------------------------------------------------------------------------

def vehicles(payload: dict) -> list[tuple[list[float], float, int | None]]:
    """(box, score, track id) of the frame's vehicles, one per object: boxes of the category
    overlapping by more than 0.7 are one object (the detector's NMS is per label), the
    best-scored stands for it."""
    objects = sorted((o for o in payload["objects"] if o["category"] == "vehicle"), key=lambda o: -o["score"])
    kept: list[dict] = []
    for o in objects:
        if all(_iou(np.array([o["bbox"]]), np.array([k["bbox"]]))[0, 0] <= 0.7 for k in kept):
            kept.append(o)
    return [(o["bbox"], o["score"], o["track_id"]) for o in kept]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def oracle_crossings(payloads: list[dict], line_x: float, *, max_gap_s: float, clock: str = "frame_ts",
                     during: tuple[float, float] = (0, float("inf"))) -> Counter:
    """Crossings of the vertical line x = ``line_x`` by direction, from the published detections
    alone: an IoU tracker (each track's box moved by its last velocity, IoU ≥ 0.3, a track unseen
    for more than ``max_gap_s`` is over); a track whose box centre goes from left of the line to
    right of it crossed "in", the other way "out" (counted if the frame is ``during`` that time).
    ``clock``: the frames' time, "pts" for a file read faster than real time."""
    from scipy.optimize import linear_sum_assignment

    tracks: list[dict] = []
    counts: Counter = Counter()
    for p in payloads:
        t = p[clock]
        live = [tr for tr in tracks if 0 < t - tr["t"] <= max_gap_s]
        boxes = np.array([b for b, _, _ in vehicles(p)], np.float64).reshape(-1, 4)
        matched: dict[int, dict] = {}
        if live and len(boxes):
            predicted = np.array([tr["box"] + np.tile(tr["v"], 2) * (t - tr["t"]) for tr in live])
            m = _iou(predicted, boxes)
            for r, c in zip(*linear_sum_assignment(-m)):
                if m[r, c] >= 0.3:
                    matched[c] = live[r]
        for c, box in enumerate(boxes):
            x = (box[0] + box[2]) / 2
            tr = matched.get(c)
            if tr is None:
                tracks.append({"box": box, "t": t, "v": np.zeros(2)})
                continue
            before = (tr["box"][0] + tr["box"][2]) / 2
            if during[0] <= p["frame_ts"] <= during[1] and (before <= line_x < x or x <= line_x < before):
                counts["in" if before <= line_x else "out"] += 1
            centre = lambda b: np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])  # noqa: E731
            tr.update(v=(centre(box) - centre(tr["box"])) / (t - tr["t"]), box=box, t=t)
    return counts


def read_all(client, keys: StreamKeys, camera: str) -> tuple[list[dict], list[dict], Counter]:
    """Detections, events and counters of a camera, read at one instant (they are written together)."""
    pipe = client.pipeline(transaction=True)
    pipe.xrange(keys.detections(camera))
    pipe.xrange(keys.events(camera))
    pipe.hgetall(keys.counts(camera))
    frames, events, counts = pipe.execute()
    return ([json.loads(f[b"json"]) for _, f in frames], [json.loads(f[b"json"]) for _, f in events],
            Counter({k.decode(): int(v) for k, v in counts.items()}))


def counted_by_events(events: list[dict]) -> Counter:
    keys = {"track_start": "tracks:{category}", "zone_enter": "zone:{zone}:enter:{category}",
            "zone_exit": "zone:{zone}:exit:{category}", "line_cross": "line:{line}:{direction}:{category}"}
    return Counter(keys[e["kind"]].format(**e) for e in events if e["kind"] in keys)


def graph_config(redis_url: str, prefix: str, camera: dict, models_dir: str, **extra) -> PerceptConfig:
    from pipeline.config import parse_config

    from .conftest import DETECTOR

    return parse_config({
        "redis": {"url": redis_url, "stream_prefix": prefix},
        "cameras": [{**camera, "lines": {"gate": [[0.5, 0], [0.5, 1]]}}],
        "detector": {"weights": DETECTOR, "num_cpus": 1, "threads": 2, "batch": {"max_size": 4, "wait_ms": 10}},
        "models_dir": models_dir, **extra,
    }, env={})


@pytest.mark.integration
def test_line_counts_by_direction_match_the_published_detections(ray_session, redis_server, videos, models_dir):
    """traffic.mp4, every frame once (a file read as fast as the graph goes, nothing dropped),
    a line across the road: the counts by direction equal, within one, what an independent
    tracker finds in the published detections; every track ends once, after its start."""
    from ray import serve

    from deployments.graph import build_app

    from .waiting import wait_for

    keys = StreamKeys("lines")
    camera = {"id": "road", "url": str(videos / "traffic.mp4"), "fps": 0, "realtime": False, "backpressure": "wait"}
    serve.run(build_app(graph_config(redis_server.url, "lines", camera, models_dir)), name="percept-lines",
              route_prefix="/lines", logging_config={"enable_access_log": False})
    client = redis_server.client()
    try:
        def finished():
            frames, events, _ = read_all(client, keys, "road")
            state = client.hget(keys.camera("road"), "state")
            starts = sum(e["kind"] == "track_start" for e in events)
            return state == b"stopped" and len(frames) >= 470 and starts == sum(e["kind"] == "track_end" for e in events)
        wait_for(finished, 400, "traffic.mp4 processed to its end, its tracks ended")
    finally:
        serve.delete("percept-lines")
    frames, events, counts = read_all(client, keys, "road")
    assert [f["seq"] for f in frames] == list(range(len(frames)))
    started: dict[int, dict] = {}
    for e in events:
        if e["kind"] == "track_start":
            assert e["track_id"] not in started, f"track {e['track_id']} started twice"
            started[e["track_id"]] = e
        elif e["kind"] == "track_end":
            start = started.pop(e["track_id"])  # KeyError: an end without its start
            assert e["seq"] >= start["seq"] and e["ts"] >= start["ts"], (start, e)
    assert not started, f"tracks that never ended: {sorted(started)}"
    assert counts == counted_by_events(events)
    oracle = oracle_crossings(frames, frames[0]["width"] / 2, max_gap_s=1.0, clock="pts")
    ours = {d: counts[f"line:gate:{d}:vehicle"] for d in ("in", "out")}
    assert sum(oracle.values()) >= 15 and all(abs(ours[d] - oracle[d]) <= 1 for d in ("in", "out")), (ours, oracle)


def _status(api: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(api + "/status", timeout=10) as resp:
        return json.loads(resp.read())


def owner_pid(api: str, owner: str) -> int:
    """The pid of decoder replica ``owner`` (`/status` lists every replica, whichever answers)."""
    from .waiting import wait_for

    return wait_for(lambda: next((d["pid"] for d in _status(api)["decoders"] if d["owner"] == owner), None), 30,
                    f"replica {owner} listed by /status")


def heading_for(client, keys: StreamKeys, camera: str, line_x: float, near: tuple[float, float]) -> bool:
    """A tracked car heading for the gate, ``near`` px away from it, in the newest frame."""
    last = [json.loads(f[b"json"]) for _, f in client.xrevrange(keys.detections(camera), count=4)]
    if len(last) < 4:
        return False
    now, then = ({t: (b[0] + b[2]) / 2 for b, _, t in vehicles(p) if t is not None} for p in (last[0], last[-1]))
    return any(near[0] < (line_x - x) * np.sign(x - then[t]) < near[1] for t, x in now.items()
               if t in then and abs(x - then[t]) > 5)


@pytest.mark.integration
def test_decoder_killed_while_cars_are_on_the_road(ray_session, redis_server, rtsp_server_cls, slow_traffic, models_dir):
    """Two decoder replicas; the one running the camera (a live RTSP stream) is SIGKILLed as a
    car nears the gate. The other continues the open tracks: they keep their ids and end once, the
    car crosses the gate under its id and is counted once, no id is given again, and around the
    failover the counts by direction equal, within one, what an independent tracker finds in the
    published detections (across the gap)."""
    import os
    import signal
    import time

    from ray import serve

    from deployments.graph import build_app

    from .waiting import wait_for

    keys = StreamKeys("failover")
    server = rtsp_server_cls({"road": f"{slow_traffic}@3"}).start()
    config = graph_config(redis_server.url, "failover", {"id": "road", "url": server.url("road"), "fps": 4}, models_dir,
                          decoder={"replicas": 2, "lease_ttl_s": 3}, tracker={"snapshot_every": 4})
    serve.run(build_app(config), name="percept-failover", route_prefix="/failover",
              logging_config={"enable_access_log": False})
    client = redis_server.client()
    try:
        wait_for(lambda: client.xlen(keys.detections("road")) >= 20, 180, "the camera publishing")
        wait_for(lambda: heading_for(client, keys, "road", W / 2, (30, 100)), 120, "a car 1-3 s from the gate")
        owner, api = client.get(keys.lease("road")), ray_session.serve_http_url + "/failover"
        wait_for(lambda: len(_status(api)["decoders"]) == 2, 30, "/status listing both decoder replicas")
        os.kill(owner_pid(api, owner.decode()), signal.SIGKILL)
        killed_at = time.time()
        wait_for(lambda: client.get(keys.lease("road")) not in (None, owner), 60, "another replica takes the camera")
        new_owner = client.get(keys.lease("road")).decode()
        wait_for(lambda: _status(api)["cameras"].get("road", {}).get("owner") == new_owner, 30,
                 "/status showing the camera on its new replica")
        frames_then = client.xlen(keys.detections("road"))
        wait_for(lambda: client.xlen(keys.detections("road")) >= frames_then + 36, 120, "12 s of frames from it")
    finally:
        serve.delete("percept-failover")
        server.stop()
    check_failover(*read_all(client, keys, "road"), killed_at)


def check_failover(frames: list[dict], events: list[dict], counts: Counter, killed_at: float) -> None:
    before = [f for f in frames if f["frame_ts"] <= killed_at]
    after = [f for f in frames if f["frame_ts"] > killed_at]
    gap = after[0]["frame_ts"] - before[-1]["frame_ts"]
    assert gap >= 2, f"no failover gap ({gap:.1f} s)"
    # the tracks open when the replica died went on with the survivor and ended once, after it
    open_then = {e["track_id"] for e in events if e["kind"] == "track_start" and e["ts"] <= killed_at} - {
        e["track_id"] for e in events if e["kind"] == "track_end" and e["ts"] <= killed_at}
    ids_after = {t for f in after for _, _, t in vehicles(f) if t is not None}
    assert open_then & ids_after, f"no track open at the kill ({sorted(open_then)}) went on after a {gap:.1f} s gap"
    ends = Counter(e["track_id"] for e in events if e["kind"] == "track_end")
    assert all(ends[t] == 1 for t in open_then), {t: ends[t] for t in open_then}
    # the car heading for the gate crossed it under its id, once; no continued track crossed twice
    crossings = Counter(e["track_id"] for e in events if e["kind"] == "line_cross" and e["track_id"] in open_then)
    assert any(e["kind"] == "line_cross" and e["ts"] > killed_at and e["track_id"] in open_then for e in events), \
        "no car on the road at the kill crossed the gate under its own id after the failover"
    twice = [(e["track_id"], e["seq"], e["direction"], round(e["ts"] - killed_at, 2)) for e in events
             if e["kind"] == "line_cross" and crossings[e["track_id"]] > 1]
    assert max(crossings.values()) == 1, (crossings, f"gap {gap:.1f} s; (id, seq, direction, s after the kill)", twice)
    # no id given twice: a track starts once; an id first seen after the failover is a new one
    starts = Counter(e["track_id"] for e in events if e["kind"] == "track_start")
    assert max(starts.values()) == 1, [t for t, n in starts.items() if n > 1]
    highest_before = max((t for f in before for o in f["objects"] if (t := o["track_id"]) is not None), default=0)
    assert all(t > highest_before for t in ids_after - open_then), (highest_before, sorted(ids_after - open_then))
    # around the failover, the gate counts what the published detections show, once
    assert counts == counted_by_events(events)
    window = (killed_at - 10, after[0]["frame_ts"] + 10)
    oracle = oracle_crossings(frames, W / 2, max_gap_s=gap + 2, during=window)
    ours = Counter(e["direction"] for e in events if e["kind"] == "line_cross" and window[0] <= e["ts"] <= window[1])
    assert sum(ours.values()) >= 1 and all(abs(ours[d] - oracle[d]) <= 1 for d in ("in", "out")), (ours, oracle)
