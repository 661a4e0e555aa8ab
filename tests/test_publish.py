"""Publishing and subscribing against a real redis-server: order, at-most-once, outages, groups."""

import json
import time

from pipeline.publish import Publisher
from pipeline.publish_items import script_calls
from pipeline.schema import Detections, FrameMeta, FrameResult
from pipeline.streams import StreamKeys, camera_states, connect_redis
from pipeline.subscribe import Subscriber

KEYS = StreamKeys("t")


def result(seq, camera="cam", ts=None):
    meta = FrameMeta(camera, seq, ts if ts is not None else 1_700_000_000 + seq * 0.2, seq * 0.2, 640, 360)
    dets = Detections(xyxy=[[1, 2, 3, 4]], scores=[0.8], labels=("car",), categories=("vehicle",))
    return FrameResult(meta, dets, {"detector": "m"}, {"total": 1.0})


def publisher(server, **kw):
    return Publisher(connect_redis(server.url, socket_timeout=1, socket_connect_timeout=0.5), keys=KEYS, maxlen=1000, **kw).start()


def seqs(client, camera="cam"):
    return [int(fields[b"seq"]) for _, fields in client.xrange(KEYS.detections(camera))]


def test_entries_arrive_in_order_with_v1_fields(redis_server):
    pub = publisher(redis_server)
    for s in range(20):
        pub.publish(result(s))
    assert pub.flush(5)
    entries = redis_server.client().xrange(KEYS.detections("cam"))
    assert [int(f[b"seq"]) for _, f in entries] == list(range(20))
    eid, fields = entries[3]
    assert fields[b"v"] == b"1" and fields[b"camera"] == b"cam"
    assert json.loads(fields[b"json"])["id"] == "cam:3"
    assert eid.decode().endswith("-3")  # <frame ms>-<seq>
    pub.close()


def test_a_retried_publish_lands_once(redis_server):
    pub = publisher(redis_server)
    pub.publish(result(1))
    pub.publish(result(2))
    pub.publish(result(2))  # the retry of a publish whose first try landed
    assert pub.flush(5)
    assert seqs(redis_server.client()) == [1, 2]
    assert pub.stats.duplicates["cam"] == 1
    pub.close()


def test_one_batch_of_interleaved_cameras_lands_in_each_cameras_order(redis_server):
    """Everything queued before the writer starts goes in one pipeline: each camera's run of
    results is one script call, a state change between them splits the run, and a retry inside
    a run is refused alone while the results after it land."""
    client = redis_server.client()
    pub = Publisher(connect_redis(redis_server.url, socket_timeout=1), keys=KEYS, maxlen=1000)
    pub.publish(result(0, "a"))
    pub.publish(result(0, "b"))
    pub.publish(tracked(1, 4, camera="a"))
    pub.publish(tracked(1, 9, camera="a"))  # a retry of a:1: refused by its id, its track id not kept
    pub.camera_state("a", "online", fps=5)
    pub.publish(result(2, "a"))
    pub.publish(result(1, "b"))
    assert len(script_calls(list(pub._queue))) == 4  # a:0-1-1, b:0-1, the state, a:2
    pub.start()
    assert pub.flush(5)
    assert seqs(client, "a") == [0, 1, 2] and seqs(client, "b") == [0, 1]
    assert pub.stats.published == {"a": 3, "b": 2} and pub.stats.duplicates == {"a": 1}
    assert pub.stats.errors == 0
    state = camera_states(client, KEYS, ["a"])["a"]
    assert state["state"] == "online" and state["track_id_max"] == "4"
    pub.close()


def test_ids_stay_increasing_when_the_clock_goes_back(redis_server):
    pub = publisher(redis_server)
    pub.publish(result(1, ts=2_000_000_000.0))
    pub.publish(result(2, ts=1_000_000_000.0))
    assert pub.flush(5)
    assert seqs(redis_server.client()) == [1, 2]
    pub.close()


def test_a_camera_whose_stream_consumers_emptied_goes_on_at_a_replica_whose_clock_is_behind(redis_server):
    """Consumers trim what they read (XTRIM MAXLEN 0): the next owner found no entry to prime its
    id clock with, and its clock was 3 s behind the last owner's: Redis refused every frame as at
    or below the stream's top, counted as "duplicates" only, never written, without a word. The
    same for the events stream."""
    first = publisher(redis_server)
    for s in range(5):
        first.publish(result(s, ts=1_700_000_100 + s * 0.1), events=[("track_start", json.dumps({"kind": "track_start"}))])
    assert first.flush(5)
    first.close()
    client = redis_server.client()
    client.xtrim(KEYS.detections("cam"), maxlen=0)
    client.xtrim(KEYS.events("cam"), maxlen=0)
    nxt = publisher(redis_server)
    seq, _ = nxt.resume_camera("cam")
    for s in range(seq, seq + 10):  # its clock 3 s behind
        nxt.publish(result(s, ts=1_700_000_097 + (s - seq) * 0.1), events=[("track_end", json.dumps({"kind": "track_end"}))])
    assert nxt.flush(5)
    assert seqs(client) == list(range(seq, seq + 10)) and client.xlen(KEYS.events("cam")) == 10
    assert sum(nxt.stats.duplicates.values()) == 0
    nxt.close()


def test_outage_buffers_in_order_then_flushes(redis_server):
    pub = publisher(redis_server)
    for s in range(5):
        pub.publish(result(s))
    assert pub.flush(5)
    redis_server.kill()
    for s in range(5, 25):
        pub.publish(result(s))
        time.sleep(0.05)  # frames arriving at 20 fps, not a wait
    assert not pub.stats.connected and pub.pending > 0
    redis_server.start()
    assert pub.flush(15)
    assert seqs(redis_server.client()) == list(range(25))  # gapless, in order, nothing lost
    assert sum(pub.stats.dropped.values()) == 0
    pub.close()


def test_full_outage_buffer_drops_oldest_and_counts(redis_server):
    # started once everything is queued: nothing is in flight (never dropped) while it fills
    pub = Publisher(connect_redis(redis_server.url, socket_timeout=1, socket_connect_timeout=0.5), keys=KEYS,
                    maxlen=1000, max_buffer_entries=5)
    redis_server.kill()
    pub.camera_state("cam", "reconnecting")  # the oldest: dropped first, counted apart from frames
    for s in range(12):
        pub.publish(result(s))
    redis_server.start()
    pub.start()
    assert pub.flush(15)
    assert seqs(redis_server.client()) == list(range(7, 12))
    assert pub.stats.dropped["cam"] == 7 and pub.stats.dropped_other["cam"] == 1
    pub.camera_stats("cam", fps=1.0)
    assert pub.flush(5)
    assert camera_states(redis_server.client(), KEYS, ["cam"])["cam"]["publish_dropped"] == "7"
    pub.close()


def test_a_full_outage_buffer_drops_frames_but_keeps_the_events_they_carry(redis_server):
    """A frame dropped by the outage buffer took its `zone_enter` and the zone's counter with
    it, while the later `zone_exit` landed: exits above enters, the zone's occupancy below zero
    for good. The frame goes (counted); what it caused stays, in order, each camera's kept
    events as one entry of the bound; events written without a frame (a stop's track ends)
    stay too."""
    client = redis_server.client()
    # started once everything is queued: nothing is in flight (never dropped) while it fills
    pub = Publisher(connect_redis(redis_server.url, socket_timeout=1, socket_connect_timeout=0.5), keys=KEYS,
                    maxlen=1000, max_buffer_entries=6)
    redis_server.kill()
    for s in range(12):
        kind = ("zone_enter", "zone_exit")[s % 2] if s < 8 else None  # frames 0-7 carry an event each
        events = [(kind, json.dumps({"kind": kind, "seq": s}))] if kind else []
        pub.publish(result(s), events=events, counts={f"zone:z:{kind.split('_')[1]}": 1} if kind else None)
        if s == 9:  # a camera stopping meanwhile: its track ends, without a frame
            pub.publish_events("cam", 1_700_000_002.0, [("track_end", json.dumps({"kind": "track_end"}))],
                               {"tracks:vehicle": 1})
    assert pub.pending == 6 and pub.stats.dropped["cam"] == 8 and not pub.stats.dropped_other
    redis_server.start()
    pub.start()
    assert pub.flush(15)
    assert seqs(client) == list(range(8, 12))  # frames 0-7 dropped: their events, merged, took one entry
    kinds = [f[b"kind"].decode() for _, f in client.xrange(KEYS.events("cam"))]
    assert kinds == ["zone_enter", "zone_exit"] * 4 + ["track_end"], kinds
    assert client.hgetall(KEYS.counts("cam")) == {b"zone:z:enter": b"4", b"zone:z:exit": b"4",
                                                  b"tracks:vehicle": b"1"}
    pub.close()


def test_camera_state_goes_to_hash_and_status_stream(redis_server):
    pub = publisher(redis_server)
    pub.camera_state("cam", "reconnecting", error="cannot open rtsp://admin:pw@10.1.1.1/x", url="rtsp://***@10.1.1.1/x")
    pub.camera_state("cam", "online")
    assert pub.flush(5)
    client = redis_server.client()
    state = camera_states(client, KEYS, ["cam"])["cam"]
    assert state["state"] == "online" and state["url"] == "rtsp://***@10.1.1.1/x"
    status = client.xrange(KEYS.status)
    assert [f[b"state"] for _, f in status] == [b"reconnecting", b"online"]
    assert b"admin:pw" not in status[0][1][b"error"]
    pub.close()


def test_last_published_continues_seq(redis_server):
    pub = publisher(redis_server)
    assert pub.last_published("cam") is None
    for s in (4, 5, 6):
        pub.publish(result(s))
    assert pub.flush(5)
    pub.camera_stats("cam", dropped=3)  # processed: counted as each frame lands
    assert pub.flush(5)
    fresh = publisher(redis_server)
    assert fresh.last_published("cam")[1] == 6
    next_seq, counters = fresh.resume_camera("cam")
    assert next_seq == 7
    assert counters.items() >= {"dropped": 3, "processed": 3, "publish_dropped": 0, "track_id_max": 0}.items()
    pub.close()
    fresh.close()


def test_a_camera_whose_stream_was_emptied_continues_above_its_last_seq(redis_server):
    """Consumers that trim what they have read (or delete the newest entry) left the restarted
    camera at seq 0 again: ids `cam:0`… published twice, dropped by subscribers that de-duplicate."""
    client = redis_server.client()
    pub = publisher(redis_server)
    for s in (4, 5, 6):
        pub.publish(result(s))
    assert pub.flush(5)
    client.xdel(KEYS.detections("cam"), client.xrevrange(KEYS.detections("cam"), count=1)[0][0])
    assert publisher(redis_server).resume_camera("cam")[0] == 7  # its newest entry deleted
    client.xtrim(KEYS.detections("cam"), maxlen=0)
    assert publisher(redis_server).resume_camera("cam")[0] == 7  # its stream emptied
    pub.close()


def test_a_track_that_lived_only_in_dropped_frames_still_raises_the_top_track_id(redis_server):
    """The outage buffer kept a dropped frame's events but not its highest track id: track 41's
    start and end landed while track_id_max stayed below it, and a fresh tracker (after a clean
    stop) numbered a new car 41 again — two tracks with one id on the events stream."""
    client = redis_server.client()
    pub = Publisher(connect_redis(redis_server.url, socket_timeout=1, socket_connect_timeout=0.5), keys=KEYS,
                    maxlen=1000, max_buffer_entries=2)
    redis_server.kill()
    for s in range(6):
        r = result(s)
        if s < 2:  # track 41 starts and ends in frames the buffer drops
            r = FrameResult(r.meta, Detections(xyxy=[[1, 2, 3, 4]], scores=[0.8], labels=("car",),
                                               categories=("vehicle",), track_ids=(41,)), r.models, r.latency_ms)
        kind = ("track_start", "track_end")[s] if s < 2 else None
        pub.publish(r, events=[(kind, json.dumps({"kind": kind, "track_id": 41}))] if kind else [])
    assert pub.stats.dropped["cam"] >= 2
    redis_server.start()
    pub.start()
    assert pub.flush(15)
    assert [f[b"kind"] for _, f in client.xrange(KEYS.events("cam"))] == [b"track_start", b"track_end"]
    assert client.hget(KEYS.camera("cam"), "track_id_max") == b"41"
    pub.close()


def test_consumer_group_acks_resumes_and_reclaims(redis_server):
    pub = publisher(redis_server)
    for s in range(6):
        pub.publish(result(s))
    assert pub.flush(5)
    client = redis_server.client()

    a = Subscriber(client, KEYS, ["cam"], group="g", consumer="a", start="0", block_ms=100)
    got = []
    for msg in a.messages(limit=3):
        got.append(msg.payload["seq"])
        a.ack(msg)
    assert got == [0, 1, 2]

    # consumer "dead" reads two entries and dies without acking
    dead = Subscriber(client, KEYS, ["cam"], group="g", consumer="dead", block_ms=100)
    assert [m.payload["seq"] for m in dead.read(count=2)] == [3, 4]

    # a new consumer reclaims them (idle threshold 0 for the test) and then reads the rest;
    # acked entries are never delivered again
    b = Subscriber(client, KEYS, ["cam"], group="g", consumer="b", block_ms=100, claim_idle_ms=0)
    seen = []
    for msg in b.messages(idle_timeout_s=0.5):
        seen.append(msg.payload["seq"])
        b.ack(msg)
    assert seen == [3, 4, 5]
    assert client.xpending(KEYS.detections("cam"), "g")["pending"] == 0
    pub.close()


def test_a_dead_consumers_entries_are_claimed_behind_a_thousand_fresh_ones(redis_server):
    """XAUTOCLAIM scans at most 10 × COUNT pending entries a call: a call that claims nothing
    (the oldest 1050 were just taken over, not idle) is not the end of the scan."""
    client = redis_server.client()
    stream = KEYS.detections("cam")
    for s in range(1100):
        client.xadd(stream, {"json": json.dumps({"camera": "cam", "seq": s})})
    client.xgroup_create(stream, "g", id="0")
    assert len(client.xreadgroup("g", "dead", {stream: ">"}, count=1100)[0][1]) == 1100
    ids = [eid for eid, _ in client.xrange(stream)]
    client.xclaim(stream, "g", "alive", 0, ids[:1050], idle=0)  # taken over just now: not idle
    client.xclaim(stream, "g", "dead", 0, ids[1050:], idle=600_000)  # idle for 10 minutes
    b = Subscriber(client, KEYS, ["cam"], group="g", consumer="b", block_ms=100, claim_idle_ms=300_000)
    claimed = [m.payload["seq"] for m in b.messages(limit=50, idle_timeout_s=1)]
    assert claimed == list(range(1050, 1100))


def test_a_reader_taking_one_entry_of_a_large_backlog_claims_and_holds_no_more(redis_server):
    """The pending entries (its own and a dead consumer's) were all read and claimed before the
    first was given: a reader wanting one held the whole backlog in memory and took every idle
    entry of the group from the readers that would have handled them. Read a page at a time,
    it claims what it takes; the next reader goes on with the rest."""
    client = redis_server.client()
    stream = KEYS.detections("backlog")
    client.delete(stream)
    for s in range(3000):
        client.xadd(stream, {"json": json.dumps({"camera": "backlog", "seq": s})})
    client.xgroup_create(stream, "g", id="0")
    assert len(client.xreadgroup("g", "dead", {stream: ">"}, count=3000)[0][1]) == 3000
    client.xclaim(stream, "g", "dead", 0, [eid for eid, _ in client.xrange(stream)], idle=600_000)  # idle 10 minutes
    one = Subscriber(client, KEYS, ["backlog"], group="g", consumer="one", block_ms=100, claim_idle_ms=300_000)
    assert [m.payload["seq"] for m in one.messages(limit=1, idle_timeout_s=1)] == [0]
    assert client.xpending(stream, "g")["consumers"] == [{"name": b"dead", "pending": 2999},
                                                          {"name": b"one", "pending": 1}]
    rest = Subscriber(client, KEYS, ["backlog"], group="g", consumer="rest", block_ms=100, claim_idle_ms=300_000)
    assert [m.payload["seq"] for m in rest.messages(limit=2999, idle_timeout_s=1)] == list(range(1, 3000))


def test_plain_subscriber_from_start_and_new_only(redis_server):
    pub = publisher(redis_server)
    pub.publish(result(0))
    assert pub.flush(5)
    client = redis_server.client()
    assert [m.payload["seq"] for m in Subscriber(client, KEYS, ["cam"], start="0", block_ms=100).messages(limit=1)] == [0]
    new_only = Subscriber(client, KEYS, ["cam"], block_ms=100)
    assert new_only.read() == []
    pub.publish(result(1))
    assert pub.flush(5)
    assert [m.payload["seq"] for m in new_only.read()] == [1]
    pub.close()


def tracked(seq, *track_ids, camera="cam"):
    r = result(seq, camera)
    n = len(track_ids)
    dets = Detections(xyxy=[[1, 2, 3, 4]] * n, scores=[0.8] * n, labels=("car",) * n, categories=("vehicle",) * n,
                      track_ids=track_ids)
    return FrameResult(r.meta, dets, r.models, r.latency_ms)


def test_fenced_publish_is_refused_when_another_replica_holds_the_lease(redis_server):
    client = redis_server.client()
    client.set(KEYS.lease("cam"), "other", px=10_000)
    pub = publisher(redis_server)
    pub.fence("cam", KEYS.lease("cam"), "me")
    for s in range(3):
        pub.publish(result(s))
    pub.camera_state("cam", "stopped")
    assert pub.flush(5)
    assert seqs(client) == [] and client.hgetall(KEYS.camera("cam")) == {} and client.xlen(KEYS.status) == 0
    assert pub.stats.fenced["cam"] == 3 and pub.stats.duplicates["cam"] == 0 and pub.stats.errors == 0
    pub.close()


def test_fenced_publish_lands_with_our_token_and_keeps_the_highest_track_id(redis_server):
    client = redis_server.client()
    client.set(KEYS.lease("cam"), "me", px=10_000)
    pub = publisher(redis_server)
    pub.fence("cam", KEYS.lease("cam"), "me")
    pub.publish(tracked(0, 3, 7))
    pub.publish(tracked(1, 2))  # a later frame with only older tracks: the maximum stays
    pub.publish(tracked(1, 9))  # a retry: refused by the entry id, at most once
    pub.camera_state("cam", "online")
    assert pub.flush(5)
    assert seqs(client) == [0, 1]
    assert pub.stats.fenced["cam"] == 0 and pub.stats.duplicates["cam"] == 1
    state = camera_states(client, KEYS, ["cam"])["cam"]
    assert state["state"] == "online" and state["track_id_max"] == "7"
    next_seq, counters = pub.resume_camera("cam")
    assert next_seq == 2 and counters["track_id_max"] == 7
    pub.close()


def test_results_kept_while_the_lease_is_free_land_when_we_take_it_back(redis_server):
    """Redis was down longer than the TTL: the lease expired; what was buffered is published once
    the same owner holds the lease again, and refused if another replica took it."""
    client = redis_server.client()
    pub = publisher(redis_server)
    pub.fence("a", KEYS.lease("a"), "me")
    pub.fence("b", KEYS.lease("b"), "me")
    pub.fence("c", KEYS.lease("c"), "me")
    client.set(KEYS.lease("c"), "me", px=10_000)
    for s in range(4):
        pub.publish(result(s, "a"))
        pub.publish(result(s, "b"))
    pub.publish(result(0, "c"))  # a camera whose lease is held is not held up behind them
    assert not pub.flush(1)
    assert seqs(client, "a") == seqs(client, "b") == [] and seqs(client, "c") == [0]
    client.set(KEYS.lease("a"), "me", px=10_000)
    client.set(KEYS.lease("b"), "other", px=10_000)
    assert pub.flush(5)
    assert seqs(client, "a") == [0, 1, 2, 3] and seqs(client, "b") == []
    assert pub.stats.fenced == {"b": 4}
    pub.close()


def test_after_unfence_frames_are_refused_here_and_state_only_lands_while_nobody_holds_it(redis_server):
    client = redis_server.client()
    client.set(KEYS.lease("cam"), "me", px=10_000)
    pub = publisher(redis_server)
    pub.fence("cam", KEYS.lease("cam"), "me")
    pub.publish(result(0))
    assert pub.flush(5)
    client.delete(KEYS.lease("cam"))  # released
    pub.unfence("cam")
    pub.publish(result(1))  # a conductor still finishing: refused here
    pub.publish_events("cam", 1.0, [("track_end", "{}")])  # its tracks' ends too: not a frame
    pub.camera_state("cam", "stopped")  # nobody holds it: a late state change still lands
    assert pub.flush(5)
    assert seqs(client) == [0] and pub.stats.fenced["cam"] == 1 and pub.stats.fenced_other["cam"] == 1
    assert camera_states(client, KEYS, ["cam"])["cam"]["state"] == "stopped"
    client.set(KEYS.lease("cam"), "other", px=10_000)  # another replica runs it now
    pub.camera_state("cam", "failed", error="late")
    assert pub.flush(5)
    assert camera_states(client, KEYS, ["cam"])["cam"]["state"] == "stopped"
    assert pub.stats.fenced_other == {"cam": 2} and pub.stats.fenced == {"cam": 1}  # counted, apart from frames
    pub.close()


def test_fence_survives_a_redis_restart(redis_server):
    """Scripts are gone after a restart; the pipeline loads them again."""
    client = redis_server.client()
    # what is tested is the script reload, not AOF timing: with everysec a busy machine may not
    # have written entry 0 yet when the server is killed
    client.config_set("appendfsync", "always")
    pub = publisher(redis_server)
    pub.fence("cam", KEYS.lease("cam"), "me")
    client.set(KEYS.lease("cam"), "me")
    pub.publish(result(0))
    assert pub.flush(5)
    redis_server.kill()
    redis_server.start()
    client = redis_server.client()
    client.set(KEYS.lease("cam"), "me")
    pub.publish(result(1))
    assert pub.flush(15)
    assert seqs(client) == [0, 1]
    pub.close()


def test_results_are_encoded_on_the_writer_and_survive_a_script_flush(redis_server):
    """The caller queues the result itself (its JSON is made on the writer thread); a result that
    cannot be encoded is counted as an error and the others land; after someone flushes Redis'
    scripts the refused calls are sent again, scripts loaded first: nothing lost, nothing twice."""
    client = redis_server.client()
    pub = Publisher(connect_redis(redis_server.url, socket_timeout=1), keys=KEYS, maxlen=1000)
    pub.publish(result(0))
    assert isinstance(pub._queue[0].entry[2], FrameResult), "the caller does not encode"
    bad = result(1)
    bad = FrameResult(bad.meta, bad.objects.with_attribute("type", {0: {1: "not a str key"}}), bad.models,
                      bad.latency_ms)
    pub.publish(bad)
    pub.publish(result(2))
    pub.start()
    assert pub.flush(5)
    assert seqs(client) == [0, 2] and pub.stats.errors == 1
    for round_ in range(3):
        client.script_flush()
        for s in range(3 + 3 * round_, 6 + 3 * round_):
            pub.publish(result(s))
        assert pub.flush(5)
    assert seqs(client) == [0, 2, *range(3, 12)]
    assert pub.stats.published["cam"] == 11 and pub.stats.duplicates["cam"] == 0
    pub.close()


def test_results_packed_on_the_writer_are_the_bytes_redis_py_would_send():
    """`resp_args` / `packed_call` write what redis-py's own packer writes for the same call
    (text, bytes, ints, floats, non-ASCII), and refuse what it refuses."""
    import pytest
    import redis
    from redis.connection import Connection

    from pipeline.publish_wire import packed_call, resp_args, resp_frame_run

    conn = Connection()
    head = ("EVALSHA", "ab" * 20, 2, "k:1", "k:2", "", 100_000, "cam-é", "1")
    runs = [["1700000000000-0", 0, b'{"a":1}', 7, 0, 0], ["1700000000200-1", 1, "ünï", -3, 2.5, 1e-7]]
    expected = b"".join(conn.pack_command(*head, *runs[0], *runs[1]))
    call = packed_call(head, [(resp_args(r),) for r in runs], sum(len(r) for r in runs))
    assert call.name == "EVALSHA" and call.data == expected
    for run in (runs[0], ["1700000000000-12345", 12345, b"x" * 2500, 0, 0, 0]):
        assert b"".join(resp_frame_run(*run[:4])) == resp_args(run), "the common run's shortcut"
    for bad in (None, True, object()):
        with pytest.raises(redis.DataError):
            resp_args(["x", bad])
