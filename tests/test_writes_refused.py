"""Redis up and answering reads but refusing writes (over ``maxmemory``, a replica after a
failover): the camera hashes still say ``online`` (the last state written) while every result
waits in its decoder's outage buffer. `GET /cameras`, `cameras ls` and `run`'s console said
online and nothing else; now they say that Redis refuses writes (real redis-server)."""

from __future__ import annotations

import contextlib

import pytest
import redis

from cli.cameras import _ls_row
from cli.run_console import status_lines
from pipeline.config import CameraConfig
from pipeline.registry import CameraRegistry
from pipeline.streams import StreamKeys, writes_refused

from .test_api_input import api_app

KEYS = StreamKeys("refw")


@contextlib.contextmanager
def over_maxmemory(client: redis.Redis):
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    try:
        yield
    finally:
        client.config_set("maxmemory", "0")


@contextlib.contextmanager
def read_only_replica(client: redis.Redis):
    client.replicaof("127.0.0.1", "1")  # (a primary that is not there: a replica, read-only, its data kept)
    try:
        yield
    finally:
        client.replicaof("NO", "ONE")


def test_writes_refused_says_why_redis_refuses_writes_and_writes_nothing(redis_server):
    client = redis_server.client()
    assert writes_refused(client, KEYS) is None
    with over_maxmemory(client):
        assert writes_refused(client, KEYS).startswith("OOM "), writes_refused(client, KEYS)
    with read_only_replica(client):
        assert writes_refused(client, KEYS).startswith("READONLY "), writes_refused(client, KEYS)
    client.config_set("min-replicas-to-write", "1")  # (no replica: refused with its code, not "ResponseError:")
    try:
        assert writes_refused(client, KEYS).startswith("NOREPLICAS "), writes_refused(client, KEYS)
    finally:
        client.config_set("min-replicas-to-write", "0")
    assert writes_refused(client, KEYS) is None and client.keys("refw:*") == []  # (asked with a write of nothing)


def test_a_user_who_may_not_set_is_not_told_writes_are_refused(redis_server):
    """A reader's ACL without SET (a monitoring user) refuses the question, not the writes."""
    admin = redis_server.client()
    admin.acl_setuser("watcher", enabled=True, passwords=["+watchpw"], keys=["*"], commands=["+@read", "+ping", "+hello"])
    watcher = redis.Redis(port=admin.connection_pool.connection_kwargs["port"], username="watcher", password="watchpw")
    assert writes_refused(watcher, KEYS) is None


def test_the_run_console_and_cameras_ls_say_redis_refuses_writes_beside_online(redis_server, monkeypatch):
    from fastapi.testclient import TestClient

    client = redis_server.client()
    CameraRegistry(client, KEYS).add(CameraConfig(id="gate", url="rtsp://cam.local/gate"))
    client.hset(KEYS.camera("gate"), mapping={"state": "online", "fps": "5.0"})
    with api_app(redis_server.url, KEYS.prefix, monkeypatch) as app, TestClient(app, raise_server_exceptions=False) as api:
        [listed] = api.get("/cameras").json()
        assert (listed["state"], listed["writes_refused"]) == ("online", None), listed
        assert "held" not in _ls_row(listed) and [line.split()[:2] for line in status_lines(client, KEYS, ["gate"])] == \
            [["gate", "online"]]
        with over_maxmemory(client):
            [listed] = api.get("/cameras").json()
            assert listed["state"] == "online" and listed["writes_refused"].startswith("OOM "), listed
            assert "held: redis refuses writes (OOM " in _ls_row(listed), _ls_row(listed)
            lines = status_lines(client, KEYS, ["gate"])
        assert len(lines) == 2 and lines[0].startswith("redis refuses writes (OOM ") and lines[1].startswith("gate "), lines
        with read_only_replica(client):
            assert api.get("/cameras").json()[0]["writes_refused"].startswith("READONLY ")
        assert api.get("/cameras").json()[0]["writes_refused"] is None


@pytest.mark.parametrize("state", ["reconnecting", "failed"])
def test_a_camera_not_online_keeps_its_own_error_in_cameras_ls(state):
    row = _ls_row({"id": "gate", "state": state, "fps": 0.0, "dropped": 0, "publish_dropped": 0, "lag_s": None,
                   "url": "rtsp://cam.local/gate", "last_error": "connection refused", "writes_refused": "OOM x"})
    assert row.endswith("error: connection refused"), row
