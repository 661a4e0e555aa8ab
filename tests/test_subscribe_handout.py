"""What a group reader hands out, and to whom (`pipeline.subscribe`, `percept subscribe`, real
redis-server): pages of ``messages(limit=N)`` never hand out an entry twice; entries read and
not handed out yet stay this reader's while its caller is slow, and go to the group's next
reader at once when it stops (``--count``, Ctrl-C, SIGTERM); a group Redis loses is made again
where it stood, not at the stream's start; behind one address, a failover is followed."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time

from pipeline.redis_server import EmbeddedRedis
from pipeline.streams import StreamKeys
from pipeline.subscribe import Subscriber

from .test_publish_batches import Endpoint
from .waiting import wait_for

KEYS = StreamKeys("handout")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add(client, seqs, pad: str = "") -> None:
    for s in seqs:
        client.xadd(KEYS.detections("cam"), {"v": "1", "camera": "cam", "seq": str(s),
                                             "json": json.dumps({"camera": "cam", "seq": s, "pad": pad})})


def seqs_of(msgs) -> list[int]:
    return [m.payload["seq"] for m in msgs]


def test_pages_of_a_group_reader_hand_out_each_entry_once(redis_server):
    """A worker pool paging with ``messages(limit=10)``, acking later, got entries 0-9 on every
    call: each call read the consumer's own pending list again, handed-out ones included."""
    client = redis_server.client()
    add(client, range(30))
    sub = Subscriber(client, KEYS, ["cam"], group="g", consumer="w", start="0", block_ms=100)
    assert [seqs_of(sub.messages(limit=10)) for _ in range(3)] == [list(range(0, 10)), list(range(10, 20)),
                                                                  list(range(20, 30))]


def test_a_lost_group_is_made_again_where_it_stood(redis_server):
    """A "$" reader that had read nothing yet (a quiet events stream) and whose group Redis lost
    (a restart from an older snapshot, XGROUP DESTROY) got the stream's whole kept history."""
    client = redis_server.client()
    add(client, range(50))
    sub = Subscriber(client, KEYS, ["cam"], group="g", block_ms=100)
    assert seqs_of(sub.messages(idle_timeout_s=0.3)) == []
    client.xgroup_destroy(KEYS.detections("cam"), "g")
    add(client, [50])
    assert seqs_of(sub.messages(limit=1, idle_timeout_s=5)) == [50]
    assert seqs_of(sub.messages(idle_timeout_s=0.3)) == []


def test_entries_a_slow_caller_has_not_taken_yet_are_not_handed_to_another_reader(redis_server):
    """A reader reads 100 entries at a time and hands them out as its caller takes them; those
    still waiting here went idle past ``claim_idle_ms`` and a second reader of the group claimed
    and handed them out too (70 of 100 twice in the audit's run)."""
    client = redis_server.client()
    add(client, range(12))
    slow = Subscriber(client, KEYS, ["cam"], group="g", consumer="slow", start="0", block_ms=100, claim_idle_ms=1000)
    other = Subscriber(client, KEYS, ["cam"], group="g", consumer="other", block_ms=100, claim_idle_ms=1000)
    got = {"slow": [], "other": []}
    done = threading.Event()

    def read_other() -> None:
        while not done.is_set():
            for msg in other.messages(idle_timeout_s=0.5):
                got["other"].append(msg.payload["seq"])
                other.ack(msg)

    reading = slow.messages(limit=12, idle_timeout_s=10)
    first = next(reading)  # (its read took all 12)
    reader = threading.Thread(target=read_other, daemon=True)
    reader.start()
    try:
        for msg in itertools.chain([first], reading):
            got["slow"].append(msg.payload["seq"])
            slow.ack(msg)
            time.sleep(0.25)  # the slow caller's own work (3 s for 12, past claim_idle_ms), not a wait
    finally:
        done.set()
        reader.join(10)
    assert sorted(got["slow"] + got["other"]) == list(range(12)), got  # each once, by one of them


def subscribe(redis_url: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, "-m", "cli", "subscribe", "cam", "--group", "g", "--redis", redis_url,
                             "--prefix", "handout", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=REPO)


def stuck_printing(client, consumer_pending: int = 1) -> bool:
    """The reader holds entries and has not spoken to Redis for a while: blocked on its output."""
    consumers = client.xinfo_consumers(KEYS.detections("cam"), "g")
    return any(c["pending"] >= consumer_pending and c["idle"] > 700 for c in consumers)


def test_a_reader_stopped_by_sigterm_leaves_what_it_did_not_print_to_the_next_at_once(redis_server):
    """``docker stop`` of a reader blocked on a slow pipe: the rest of its read stayed pending
    under its ``<host>-<pid>`` name, nobody's after it, and came to the next reader only after
    ``--claim-idle-ms``, out of order (or never, were it run shorter)."""
    client = redis_server.client()
    add(client, range(60), pad="x" * 4000)  # ~240 kB: more than the pipe holds, its reader blocks
    reader = subscribe(redis_server.url, "--from-start")
    try:
        wait_for(lambda: stuck_printing(client), 30, "the reader blocked on its full pipe")
        reader.send_signal(signal.SIGTERM)
        out, err = reader.communicate(timeout=30)
    finally:
        reader.kill()
    assert reader.returncode == 0, err
    printed = [json.loads(line)["seq"] for line in out.splitlines() if line.strip()]
    assert printed == list(range(len(printed))) and len(printed) < 60, printed
    nxt = Subscriber(client, KEYS, ["cam"], group="g", block_ms=100)  # claim_idle_ms: 30 s, as the CLI's
    rest = seqs_of(nxt.messages(idle_timeout_s=2))
    # (the line it was printing as the signal came went out whole: acked, not handed out again)
    assert rest and rest == list(range(rest[0], 60)) and rest[0] == len(printed), (len(printed), rest)


def test_a_group_reader_behind_one_address_follows_a_failover(tmp_path):
    """Behind a DNS name or a Service, the reader's pooled connection still reached the demoted
    primary: its XACK got READONLY, counted as an outage and retried on that connection until
    ``--timeout`` (exit 3), while the new primary answered."""
    with EmbeddedRedis(tmp_path / "x") as x, EmbeddedRedis(tmp_path / "y") as y:
        new_primary = y.client()
        new_primary.replicaof("127.0.0.1", x.port)
        endpoint = Endpoint(x.port)
        old = x.client()
        add(old, range(40), pad="x" * 4000)
        wait_for(lambda: new_primary.xlen(KEYS.detections("cam")) == 40, 10, "the replica in sync")
        reader = subscribe(f"redis://127.0.0.1:{endpoint.port}/0", "--from-start", "--count", "40", "--timeout", "20")
        try:
            wait_for(lambda: stuck_printing(old), 30, "the reader blocked on its full pipe")
            new_primary.replicaof("NO", "ONE")  # failover: y promoted, the address leads to it,
            endpoint.target = y.port  # x demoted to y's replica (the reader's connection stays open)
            old.replicaof("127.0.0.1", y.port)
            out, err = reader.communicate(timeout=60)
        finally:
            reader.kill()
            endpoint.listener.close()
        assert reader.returncode == 0, err
        assert [json.loads(line)["seq"] for line in out.splitlines()] == list(range(40))
        assert new_primary.xpending(KEYS.detections("cam"), "g")["pending"] == 0  # every one acked there


def test_two_cameras_entries_of_one_id_are_each_handed_out_once(redis_server):
    """The publisher's ids are ``<frame ms>-<seq>``: two cameras' frames of one millisecond and
    seq share one. Handed-out entries were known by their id alone: camera b's were never handed
    out while a's of the same id waited for their ack, or handed out again once a's was acked."""
    client = redis_server.client()
    for camera in ("a", "b"):
        for s in range(1, 5):
            client.xadd(KEYS.detections(camera), {"json": json.dumps({"camera": camera, "seq": s})}, id=f"1000-{s}")
    sub = Subscriber(client, KEYS, ["a", "b"], group="g", consumer="w", start="0", block_ms=100)
    pages = [[(m.camera, m.payload["seq"]) for m in sub.messages(limit=2, idle_timeout_s=0.3)] for _ in range(5)]
    handed = [x for page in pages for x in page]
    assert sorted(handed) == [(c, s) for c in "ab" for s in range(1, 5)], pages  # each once
    for msg in [m for m in sub.messages(idle_timeout_s=0.3)]:  # (nothing left to hand out)
        raise AssertionError(f"handed out again: {msg}")


def test_entries_another_reader_claimed_meanwhile_are_not_handed_out_here(redis_server):
    """A slow caller's waiting entries are made fresh by one XCLAIM that takes only those idle
    as long as they have been here: one another reader claimed meanwhile is its, not handed out
    here too. (One command: a check, then a claim at min-idle 0, could take it back when the
    other's claim fell between them; that window is not made here.)"""
    client = redis_server.client()
    add(client, range(6))
    slow = Subscriber(client, KEYS, ["cam"], group="g", consumer="slow", start="0", block_ms=100, claim_idle_ms=1000)
    reading = slow.messages(limit=6, idle_timeout_s=5)  # (its read takes all 6)
    handed = [next(reading).payload["seq"]]
    time.sleep(0.6)  # the slow caller's own work (past half of claim_idle_ms), not a wait
    stream = KEYS.detections("cam")
    ids = [eid.decode() for eid, _ in client.xrange(stream)]
    client.xclaim(stream, "g", "other", 0, ids[3:5], justid=True)  # another reader takes 3 and 4 now
    handed += [m.payload["seq"] for m in itertools.islice(reading, 3)]  # what its read took: all handed out
    reading.close()
    assert handed == [0, 1, 2, 5], handed


def test_entries_trimmed_from_the_stream_while_a_slow_caller_held_them_are_still_handed_out(redis_server):
    """XCLAIM of an entry trimmed from the stream (the publisher's MAXLEN) drops it from the
    group's pending list and leaves it out of its answer (Redis 7): a slow group reader near the
    trimming edge lost entries it had read, payload in hand, without a word. One another reader
    claimed, handed out and acked meanwhile is still not handed out here."""
    client = redis_server.client()
    add(client, range(8))
    stream = KEYS.detections("cam")
    slow = Subscriber(client, KEYS, ["cam"], group="g", consumer="slow", start="0", block_ms=100, claim_idle_ms=1000)
    reading = slow.messages(limit=8, idle_timeout_s=5)
    handed = [next(reading).payload["seq"]]
    ids = [eid.decode() for eid, _ in client.xrange(stream)]
    client.xtrim(stream, minid=ids[4], approximate=False)  # 0-3 trimmed: a new frame in, MAXLEN reached
    client.xclaim(stream, "g", "other", 0, [ids[6]], justid=True)
    client.xack(stream, "g", ids[6])  # another reader took 6 and is done with it
    time.sleep(0.6)  # the slow caller's own work (past half of claim_idle_ms), not a wait
    handed += [m.payload["seq"] for m in reading]
    assert handed == [0, 1, 2, 3, 4, 5, 7], handed


def test_entries_given_back_at_a_stop_leave_those_another_reader_claimed_meanwhile_to_it(redis_server):
    """Giving back at a stop is one XCLAIM at the idle the entries have here, as making them
    fresh is: at min-idle 0 it took back what another reader had claimed and handed out."""
    client = redis_server.client()
    add(client, range(6))
    slow = Subscriber(client, KEYS, ["cam"], group="g", consumer="slow", start="0", block_ms=100, claim_idle_ms=1000)
    reading = slow.messages(limit=6, idle_timeout_s=5)  # (its read takes all 6)
    assert next(reading).payload["seq"] == 0
    time.sleep(0.3)  # the slow caller's own work, not a wait
    stream = KEYS.detections("cam")
    ids = [eid.decode() for eid, _ in client.xrange(stream)]
    client.xclaim(stream, "g", "other", 0, ids[3:5], justid=True)  # another reader takes 3 and 4 now
    reading.close()  # the caller stops: 1, 2 and 5 go back to the group, 3 and 4 stay the other's
    owners = {p["message_id"].decode(): p["consumer"].decode()
              for p in client.xpending_range(stream, "g", "-", "+", 10)}
    assert [owners[i] for i in ids[1:]] == ["slow", "slow", "other", "other", "slow"], owners
    nxt = Subscriber(client, KEYS, ["cam"], group="g", consumer="next", block_ms=100, claim_idle_ms=1000)
    assert seqs_of(nxt.messages(limit=3, idle_timeout_s=2)) == [1, 2, 5]  # at once: idle as if long gone
