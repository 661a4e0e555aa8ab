"""A camera hash left saying ``online`` by a decoder that is gone (its Ray killed, the whole
service crashed, no decoder with room to take it) was shown ``online`` for good by `top`, the
run console, `GET /cameras` and `cameras ls`. A live state nobody rewrote for 30 s (the decoder
writes its numbers every second) is shown ``stale``, saying for how long (real redis-server)."""

from __future__ import annotations

import time

from cli.cameras import _ls_row
from cli.run_console import status_lines
from cli.top import camera_rows
from pipeline.config import CameraConfig
from pipeline.registry import CameraRegistry
from pipeline.streams import STALE_S, StreamKeys

from .test_api_input import api_app

KEYS = StreamKeys("stale")


def test_a_live_state_nobody_rewrote_is_shown_stale_everywhere(redis_server, monkeypatch):
    from fastapi.testclient import TestClient

    client = redis_server.client()
    now = time.time()
    hashes = {"gone": ("online", now - STALE_S - 40), "fresh": ("online", now - 1), "lost": ("reconnecting", now - 600),
              "done": ("stopped", now - 600), "old": ("online", None)}  # (old: written before updated_at was)
    for cid, (state, updated) in hashes.items():
        CameraRegistry(client, KEYS).add(CameraConfig(id=cid, url=f"rtsp://cam.local/{cid}"))
        client.hset(KEYS.camera(cid), mapping={"state": state, "fps": "4.0",
                                               **({"updated_at": f"{updated:.3f}"} if updated else {})})
    rows = {r.camera: r for r in camera_rows(client, KEYS.prefix, 5)}
    shown = {cid: rows[cid].state for cid in hashes}
    assert shown == {"gone": "stale", "fresh": "online", "lost": "stale", "done": "stopped", "old": "online"}, shown
    assert rows["gone"].error.startswith("no word from its decoder for 70 s (its last state: online)"), rows["gone"].error
    lines = {line.split()[0]: line for line in status_lines(client, KEYS, list(hashes))}
    assert lines["gone"].split()[1] == "stale" and "error: no word from its decoder" in lines["gone"], lines["gone"]
    assert lines["fresh"].split()[1] == "online"
    with api_app(redis_server.url, KEYS.prefix, monkeypatch) as app, TestClient(app) as api:
        listed = {c["id"]: c for c in api.get("/cameras").json()}
    assert {cid: c["state"] for cid, c in listed.items()} == shown, listed
    assert "error: no word from its decoder for" in _ls_row(listed["lost"]) and "(its last state: reconnecting)" in \
        listed["lost"]["last_error"], listed["lost"]


def test_while_redis_refuses_writes_top_says_so_not_stale(redis_server):
    """Nobody can rewrite a hash then: `top` showed every camera stale where the others showed it
    held (writes refused)."""
    client = redis_server.client()
    CameraRegistry(client, KEYS).add(CameraConfig(id="held", url="rtsp://cam.local/held"))
    client.hset(KEYS.camera("held"), mapping={"state": "online", "updated_at": f"{time.time() - 300:.3f}"})
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    try:
        [row] = camera_rows(client, KEYS.prefix, 5)
    finally:
        client.config_set("maxmemory", "0")
    assert row.state == "online", row
    [row] = camera_rows(client, KEYS.prefix, 5)
    assert row.state == "stale", row
