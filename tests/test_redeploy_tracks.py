"""A redeploy keeps the tracks; a camera a redeploy drops and a delete end them (the real graph:
Ray Serve, the shared detector, live RTSP cameras).

Serve stops a decoder replica in two cases: the application stays (a scale-down, a new version
rolled out) or it is deleted (``percept run``'s end, ``serve delete``). In the first the replica
hands its cameras over (`deployments.decoder.application_stays`): their open tracks go on at the
next owner under their ids, one ``track_start`` and one ``track_end`` each. In the second every
open track ends."""

from __future__ import annotations

import operator
import time
from collections import Counter

import pytest

from pipeline.streams import StreamKeys

from .test_failover_tracks import graph_config, read_all, vehicles

KEYS = StreamKeys("redeploy")


def open_tracks(events: list[dict]) -> set[int]:
    kinds = Counter((e["kind"], e["track_id"]) for e in events if e["kind"] in ("track_start", "track_end"))
    return {t for kind, t in kinds if kind == "track_start" and not kinds[("track_end", t)]}


def track_balance(events: list[dict]) -> tuple[Counter, Counter]:
    return (Counter(e["track_id"] for e in events if e["kind"] == "track_start"),
            Counter(e["track_id"] for e in events if e["kind"] == "track_end"))


@pytest.mark.integration
@pytest.mark.xfail(strict=False, reason="known fault (README, redeploy): on a loaded machine the new replica restores "
                   "the open tracks but often matches none to the next detections; failed in 5 of 6 runs alone on "
                   "2026-12-02, with the code before that day's changes too")
def test_a_redeploy_hands_the_tracks_over_a_dropped_camera_and_a_delete_end_them(
        ray_session, redis_server, rtsp_server_cls, slow_traffic, models_dir):
    """Two cameras, two decoder replicas. A new version with one decoder: the tracks of both go
    on under their ids. A newer one without ``lane``: its tracks end (no owner continues them).
    The delete: ``road``'s tracks end. Every track starts once and ends once."""
    from ray import serve

    from deployments.graph import build_app

    from .waiting import wait_for

    server = rtsp_server_cls({"road": f"{slow_traffic}@3", "lane": f"{slow_traffic}@3"}).start()

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
        wait_for(lambda: open_tracks(read_all(client, KEYS, "road")[1]), 120, "a car tracked on the road")
        owner, redeployed_at = client.get(KEYS.lease("road")), time.time()
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
    open_then = open_tracks([e for e in events if e["ts"] <= redeployed_at])
    ids_after = {t for f in frames[frames_then:] for _, _, t in vehicles(f) if t is not None}  # the new replica's
    assert open_then & ids_after, f"no track open at the redeploy ({sorted(open_then)}) went on after it"
    for cam in ("road", "lane"):  # the delete ended the road's tracks; every track once
        starts, ends = track_balance(read_all(client, KEYS, cam)[1])
        assert starts and max(starts.values()) == 1, (cam, [t for t, n in starts.items() if n > 1])
        assert ends == starts, (cam, {t: (starts[t], ends[t]) for t in starts.keys() | ends.keys() if starts[t] != ends[t]})
