"""A decoder replica starting while Redis is away (`pipeline.streams.once_redis_answers`, which
its constructor's Redis reads go through; real redis-server): it waits for Redis instead of
failing, as Serve gave up on a deployment after three failed constructors (DEPLOY_FAILED)."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
import redis

from pipeline.backoff import Backoff
from pipeline.redis_server import EmbeddedRedis
from pipeline.streams import once_redis_answers

from .waiting import wait_for


def test_a_start_while_redis_is_away_waits_for_it_and_says_so_once(tmp_path, caplog):
    server = EmbeddedRedis(tmp_path / "redis").start()
    port = server.port
    server.stop()
    client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=0.5)
    out: dict = {}

    def start() -> None:
        out["got"] = asyncio.run(once_redis_answers(lambda: client.set("seeded", 1) and client.get("seeded"),
                                                    "seeding the camera registry", backoff=Backoff(0.05, 0.2)))

    with caplog.at_level(logging.WARNING, logger="percept.streams"):
        worker = threading.Thread(target=start, daemon=True)
        worker.start()
        said = lambda: [r.getMessage() for r in caplog.records if "seeding the camera registry" in r.getMessage()]  # noqa: E731
        wait_for(lambda: said(), 30, "the wait said")
        back = EmbeddedRedis(tmp_path / "redis", port=port).start()
        try:
            worker.join(60)
            assert out.get("got") == b"1", out
        finally:
            back.stop()
    assert len(said()) == 1 and said()[0].startswith("redis unavailable while seeding the camera registry ("), said()


def test_a_refusal_or_a_stop_is_not_waited_out(tmp_path):
    """Wrong credentials are no outage: said at once. A replica Serve stops while it waits ends."""
    with EmbeddedRedis(tmp_path / "redis", password="the-right-one") as server:
        wrong = redis.Redis(port=server.port, password="not-it", socket_timeout=2)
        with pytest.raises(redis.AuthenticationError):
            asyncio.run(once_redis_answers(wrong.ping, "x", backoff=Backoff(0.05, 0.1)))
    gone = redis.Redis(port=1, socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        asyncio.run(once_redis_answers(gone.ping, "x", stopping=lambda: True))
