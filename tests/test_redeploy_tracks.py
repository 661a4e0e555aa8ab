"""A redeploy keeps the tracks, a delete ends them (the real graph: Ray Serve, the shared
detector, a live RTSP camera).

Serve stops a decoder replica in two cases: the application stays (a scale-down, a new version
rolled out) or it is deleted (``percept run``'s end, ``serve delete``). In the first the replica
hands its cameras over (`deployments.decoder.application_stays`): their open tracks go on at the
next owner under their ids, one ``track_start`` and one ``track_end`` each. In the second every
open track ends."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from pipeline.streams import StreamKeys

from .test_failover_tracks import graph_config, read_all, vehicles

KEYS = StreamKeys("redeploy")


def open_tracks(events: list[dict]) -> set[int]:
    kinds = Counter((e["kind"], e["track_id"]) for e in events if e["kind"] in ("track_start", "track_end"))
    return {t for kind, t in kinds if kind == "track_start" and not kinds[("track_end", t)]}


@pytest.mark.integration
def test_a_redeploy_hands_the_tracks_over_and_a_delete_ends_them(ray_session, redis_server, rtsp_server_cls,
                                                                  slow_traffic, models_dir):
    from ray import serve

    from deployments.graph import build_app

    from .waiting import wait_for

    server = rtsp_server_cls({"road": f"{slow_traffic}@3"}).start()
    camera = {"id": "road", "url": server.url("road"), "fps": 4}
    config = lambda replicas: graph_config(redis_server.url, "redeploy", camera, models_dir,  # noqa: E731
                                           decoder={"replicas": replicas, "lease_ttl_s": 3},
                                           tracker={"track_buffer": 120})  # lost tracks kept ~30 s: the pause is longer on a loaded machine
    options = {"name": "percept-redeploy", "route_prefix": "/redeploy", "logging_config": {"enable_access_log": False}}
    client = redis_server.client()
    serve.run(build_app(config(2)), **options)
    try:
        wait_for(lambda: client.xlen(KEYS.detections("road")) >= 12, 180, "the camera publishing")
        wait_for(lambda: open_tracks(read_all(client, KEYS, "road")[1]), 120, "a car tracked on the road")
        owner, redeployed_at = client.get(KEYS.lease("road")), time.time()
        serve.run(build_app(config(1)), **options)  # a new version with one decoder: Serve replaces both
        wait_for(lambda: client.get(KEYS.lease("road")) not in (None, owner), 60, "the new replica takes the camera")
        frames_then = client.xlen(KEYS.detections("road"))  # the old replica's frames landed before it let go
        wait_for(lambda: client.xlen(KEYS.detections("road")) >= frames_then + 24, 120, "8 s of frames from it")
    finally:
        serve.delete("percept-redeploy")  # returns once its replicas have stopped
        server.stop()
    frames, events, _ = read_all(client, KEYS, "road")
    open_then = open_tracks([e for e in events if e["ts"] <= redeployed_at])
    ids_after = {t for f in frames[frames_then:] for _, _, t in vehicles(f) if t is not None}  # the new replica's
    assert open_then & ids_after, f"no track open at the redeploy ({sorted(open_then)}) went on after it"
    starts = Counter(e["track_id"] for e in events if e["kind"] == "track_start")
    ends = Counter(e["track_id"] for e in events if e["kind"] == "track_end")
    assert max(starts.values()) == 1, [t for t, n in starts.items() if n > 1]
    # the delete ended every track, once
    assert ends == starts, {t: (starts[t], ends[t]) for t in starts.keys() | ends.keys() if starts[t] != ends[t]}
