"""A redeploy keeps the tracks; a camera a redeploy drops and a delete end them (the real graph:
Ray Serve, the shared detector, live RTSP cameras).

Serve stops a decoder replica in two cases: the application stays (a scale-down, a new version
rolled out) or it is deleted (``percept run``'s end, ``serve delete``). In the first the replica
hands its cameras over (`deployments.decoder.application_stays`): their open tracks go on at the
next owner under their ids, one ``track_start`` and one ``track_end`` each. In the second every
open track ends."""

from __future__ import annotations

import operator
from collections import Counter

import pytest

from pipeline.streams import StreamKeys

from .test_failover_tracks import graph_config, read_all, vehicles

KEYS = StreamKeys("redeploy")


def open_tracks(events: list[dict]) -> set[int]:
    kinds = Counter((e["kind"], e["track_id"]) for e in events if e["kind"] in ("track_start", "track_end"))
    return {t for kind, t in kinds if kind == "track_start" and not kinds[("track_end", t)]}


def cars_with_road_ahead(frames: list[dict], events: list[dict], room: float, settled: int = 4) -> set[int]:
    """Open tracks wholly in view (clear of the frame's sides) in each of the newest ``settled``
    frames, with more than ``room`` of the frame's width ahead of them in the direction they
    have moved since first seen: cars whose motion the tracker knows and that stay in view a
    while. A car near its exit may leave while the redeploy pauses the camera (it then rightly
    ends), and one still entering has a box that grows at the edge, so its motion is not yet
    known well enough to find it again after seconds."""
    if len(frames) < settled:
        return set()
    width = frames[-1]["width"]
    first_box: dict[int, list[float]] = {}
    for frame in frames:
        for box, _, track in vehicles(frame):
            first_box.setdefault(track, box)

    def in_view(frame: dict) -> dict[int, list[float]]:
        return {t: box for box, _, t in vehicles(frame) if box[0] > 0.01 * width and box[2] < 0.99 * width}

    recent, open_ids, out = [in_view(f) for f in frames[-settled:]], open_tracks(events), set()
    for track, box in recent[-1].items():
        if track in open_ids and all(track in seen for seen in recent):
            right = box[0] + box[2] >= first_box[track][0] + first_box[track][2]
            if (width - box[2] if right else box[0]) > room * width:
                out.add(track)
    return out


def track_balance(events: list[dict]) -> tuple[Counter, Counter]:
    return (Counter(e["track_id"] for e in events if e["kind"] == "track_start"),
            Counter(e["track_id"] for e in events if e["kind"] == "track_end"))


@pytest.mark.integration
def test_a_redeploy_hands_the_tracks_over_a_dropped_camera_and_a_delete_end_them(
        ray_session, redis_server, rtsp_server_cls, slower_traffic, models_dir):
    """Two cameras, two decoder replicas. A new version with one decoder, rolled out while a car
    on the road has most of it ahead: that car's track goes on under its id. A newer one
    without ``lane``: its tracks end (no owner continues them). The delete: ``road``'s tracks
    end. Every track starts once and ends once.

    ``serve.run`` gives every deployment a new version, so the detector restarts too and the
    cameras pause for some 10 s on a loaded 2-core machine (more in a busy suite): the clip runs
    at 1/16 speed (a car crosses in ~48 s) and the redeploy waits for a car wholly in view for
    a few frames with half the road ahead of it. A car that leaves the picture during the
    pause ends (no successor), as it should, and so may one that was still entering (its
    motion is not known yet); at 1/8 speed with any open car, one of those two happened in
    most runs."""
    from ray import serve

    from deployments.graph import build_app

    from .waiting import wait_for

    server = rtsp_server_cls({"road": f"{slower_traffic}@3", "lane": f"{slower_traffic}@3"}).start()

    def config(replicas: int, ids: tuple[str, ...]):
        base = graph_config(redis_server.url, "redeploy", {"id": "road", "url": server.url("road"), "fps": 4},
                            models_dir, decoder={"replicas": replicas, "lease_ttl_s": 9},  # (stops release it: no wait)
                            tracker={"track_buffer": 120})  # lost tracks kept ~30 s: a loaded machine starts slower
        return base.model_copy(update={"cameras": [base.cameras[0].model_copy(update={"id": i, "url": server.url(i)})
                                                   for i in ids]})

    options = {"name": "percept-redeploy", "route_prefix": "/redeploy", "logging_config": {"enable_access_log": False}}
    client = redis_server.client()
    serve.run(build_app(config(2, ("road", "lane"))), **options)
    try:
        for cam in ("road", "lane"):
            wait_for(lambda: client.xlen(KEYS.detections(cam)) >= 12, 180, f"{cam} publishing")
        entering = wait_for(lambda: cars_with_road_ahead(*read_all(client, KEYS, "road")[:2], 0.5), 180,
                            "a car tracked on the road with most of it ahead")
        owner = client.get(KEYS.lease("road"))
        serve.run(build_app(config(1, ("road", "lane"))), **options)  # a new version: Serve replaces every replica
        wait_for(lambda: client.get(KEYS.lease("road")) not in (None, owner), 60, "the new replica takes the road")
        frames_then = client.xlen(KEYS.detections("road"))  # the old replica's frames landed before it let go
        wait_for(lambda: client.xlen(KEYS.detections("road")) >= frames_then + 24, 120, "8 s of frames from it")
        serve.run(build_app(config(1, ("road",))), **options)  # a newer one without the lane
        wait_for(lambda: operator.eq(*track_balance(read_all(client, KEYS, "lane")[1])), 60,
                 "every lane track ended once the lane is gone")
    finally:
        serve.delete("percept-redeploy")  # returns once its replicas have stopped
        server.stop()
    frames, events, _ = read_all(client, KEYS, "road")
    ids_after = {t for f in frames[frames_then:] for _, _, t in vehicles(f) if t is not None}  # the new replica's
    assert entering & ids_after, f"none of the cars with the road ahead at the redeploy ({sorted(entering)}) went on"
    for cam in ("road", "lane"):  # the delete ended the road's tracks; every track once
        starts, ends = track_balance(read_all(client, KEYS, cam)[1])
        assert starts and max(starts.values()) == 1, (cam, [t for t, n in starts.items() if n > 1])
        assert ends == starts, (cam, {t: (starts[t], ends[t]) for t in starts.keys() | ends.keys() if starts[t] != ends[t]})
