"""Readers of several cameras and long-running group readers (`pipeline.subscribe`, real
redis-server): what a reader that died after this one started held is claimed, a limit skips
nothing of the entries one read took, and a consumer's own entries are not handed out twice."""

from __future__ import annotations

import json
import threading

from pipeline.streams import StreamKeys
from pipeline.subscribe import Subscriber

from .waiting import wait_for

KEYS = StreamKeys("groups")


def add(client, camera: str, seqs) -> None:
    for s in seqs:
        client.xadd(KEYS.detections(camera), {"v": "1", "camera": camera, "seq": str(s),
                                              "json": json.dumps({"camera": camera, "seq": s})})


def test_a_running_group_reader_claims_what_a_reader_that_died_since_held(redis_server):
    """A reader restarted under another name (``<host>-<pid>``) within ``--claim-idle-ms`` of its
    crash found the dead one's entries not idle yet, and never looked again: they stayed pending
    for good while it read everything new."""
    client = redis_server.client()
    add(client, "cam", range(5))
    dead = Subscriber(client, KEYS, ["cam"], group="g", consumer="host-111", start="0", block_ms=100)
    assert [m.payload["seq"] for m in dead.messages(limit=5)] == list(range(5))  # and dies, nothing acked
    alive = Subscriber(client, KEYS, ["cam"], group="g", block_ms=100, claim_idle_ms=1000)
    got: list[int] = []

    def read() -> None:  # (rides out the fixture's Redis stopping after the test, until its idle timeout)
        for msg in alive.messages(idle_timeout_s=10, on_unreachable=lambda exc: None):
            got.append(msg.payload["seq"])
            alive.ack(msg)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    add(client, "cam", range(5, 10))
    wait_for(lambda: set(got) == set(range(10)), 30, "every entry read, the dead reader's too")
    assert sorted(got) == list(range(10)), got  # each once
    assert client.xpending(KEYS.detections("cam"), "g")["pending"] == 0


def test_a_plain_reader_with_a_limit_over_several_cameras_skips_nothing(redis_server):
    """One read takes up to ``count`` entries of every stream; ``messages(limit=1)`` handed out one
    and the next call went on after all of them: camera b's entries were never read."""
    client = redis_server.client()
    add(client, "a", range(3))
    add(client, "b", range(3))
    sub = Subscriber(client, KEYS, ["a", "b"], start="0", block_ms=100)
    got = [(m.camera, m.payload["seq"]) for _ in range(6) for m in sub.messages(limit=1, idle_timeout_s=1)]
    assert sorted(got) == [(c, s) for c in "ab" for s in range(3)], got


def test_a_restarted_consumer_claiming_at_once_gets_its_own_entries_once(redis_server):
    """``claim_idle_ms=0``: the consumer's own unacked entries, read back first, were claimed
    again right after (XAUTOCLAIM takes its own idle entries too) and handed out twice."""
    client = redis_server.client()
    add(client, "cam", range(3))
    first = Subscriber(client, KEYS, ["cam"], group="g", consumer="c1", start="0", block_ms=100)
    assert [m.payload["seq"] for m in first.messages(limit=3)] == [0, 1, 2]  # and stops, nothing acked
    again = Subscriber(client, KEYS, ["cam"], group="g", consumer="c1", block_ms=100, claim_idle_ms=0)
    assert [m.payload["seq"] for m in again.messages(idle_timeout_s=1.5)] == [0, 1, 2]


def test_a_group_reader_starts_while_redis_refuses_writes_when_its_group_is_there(redis_server):
    """Redis at its maxmemory (noeviction): creating the group is refused before Redis looks for
    it, so a reader of an existing group could not start at all, though reading works."""
    client = redis_server.client()
    add(client, "cam", range(3))
    client.xgroup_create(KEYS.detections("cam"), "g", id="0")
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    try:
        reader = Subscriber(client, KEYS, ["cam"], group="g", start="0", block_ms=100)
        assert [m.payload["seq"] for m in reader.messages(limit=3)] == [0, 1, 2]
    finally:
        client.config_set("maxmemory", "0")


def test_a_group_reader_acks_the_entries_it_cannot_hand_out(redis_server, caplog):
    """An entry without a JSON payload was skipped but never acked: it stayed pending, came back
    at every claim (a warning each time, in every reader) and kept its consumer in the group.
    Numbers JSON cannot hold (1e400, NaN, Infinity: Python's parser took them as floats) are no
    JSON payload either: `percept subscribe` printed them back as ``Infinity``, which is not JSON."""
    client = redis_server.client()
    stream = KEYS.detections("odd")
    client.xadd(stream, {"foo": "bar"})
    client.xadd(stream, {"json": "{not json"})
    client.xadd(stream, {"json": "[" * 100_000 + "]" * 100_000})  # (deeper than Python's stack: a crash, for ever)
    for number in ("1e400", "NaN", "-Infinity"):
        client.xadd(stream, {"json": '{"camera": "odd", "seq": %s}' % number})
    add(client, "odd", [7])
    sub = Subscriber(client, KEYS, ["odd"], group="g", start="0", block_ms=100, claim_idle_ms=0)
    got = []
    with caplog.at_level("WARNING", logger="percept.subscribe"):
        for msg in sub.messages(idle_timeout_s=1.5):  # (claims every second: the skipped ones would come back)
            got.append(msg.payload["seq"])
            sub.ack(msg)
    assert got == [7]
    assert client.xpending(stream, "g")["pending"] == 0
    said = [r.getMessage() for r in caplog.records if "without a JSON payload" in r.getMessage()]
    assert len(said) == 6 and all(m.endswith("skipped (acked)") for m in said), said
    sub.close()  # nothing pending: it leaves the group
    assert client.xinfo_consumers(stream, "g") == []
