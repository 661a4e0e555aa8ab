"""How the publisher's batches are made and kept, on a real redis-server: a camera's writes never
land out of order or twice when Redis changes its answer in the middle of a pipeline; the
buffer's bound never drops a batch being written; one camera's writes kept back (nobody holds its
lease) never hold up the others; a camera restarted while its results are still queued does not
publish their seqs again; after a failover behind one address the writes follow the new primary."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from pipeline.lease import Fence, acquire, renew
from pipeline.publish import Publisher
from pipeline.publish_items import Item, take_batch
from pipeline.redis_server import EmbeddedRedis
from pipeline.streams import StreamKeys, connect_redis

from .test_publish import result
from .waiting import wait_for

KEYS = StreamKeys("pbatch")


def seqs(client, camera="cam"):
    return [int(f[b"seq"]) for _, f in client.xrange(KEYS.detections(camera))]


def item(i, camera, kind="result", fence=None, retry_at=None):
    entry = ["1-1", i, "{}", 0, 0, 0] if kind == "result" else None
    it = Item(i, camera, 10, None if entry else ("EVALSHA",), kind == "result", fence, entry)
    it.retry_at = retry_at
    return it


def test_a_batch_holds_one_run_of_results_per_camera_and_skips_cameras_waiting_to_retry():
    f1, f2 = Fence("k", "t1", 1.0), Fence("k", "t2", 1.0)
    queue = [item(0, "a"), item(1, "b"), item(2, "a", "state"), item(3, "b"), item(4, "a"), item(5, "c"),
             item(6, "b", fence=f1), item(7, "d", retry_at=10.0), item(8, "d"), item(9, "c", fence=f2)]
    taken = [it.index for it in take_batch(queue, 256, now=5.0)]
    # a: its run, then a state write closes it (4 waits); b: 6 is under another fence; d waits
    # to be retried (8 behind it too); c: 9 is under another fence than 5
    assert taken == [0, 1, 2, 3, 5]
    assert [it.index for it in take_batch(queue, 3, now=5.0)] == [0, 1, 2]
    assert [it.index for it in take_batch(queue[7:], 256, now=11.0)] == [7, 8, 9]  # its retry is due


def big(seq, camera):
    from pipeline.schema import Detections, FrameMeta, FrameResult

    n = 120  # ~10 kB a result: a pipeline Redis reads in several events, serving others between them
    dets = Detections(xyxy=[[i, i, i + 30, i + 40] for i in range(n)], scores=[0.8] * n,
                      labels=("car",) * n, categories=("vehicle",) * n)
    return FrameResult(FrameMeta(camera, seq, 1_700_000_000 + seq * 0.1, seq * 0.1, 1920, 1080), dets,
                       {"detector": "m"}, {"total": 1.0})


def refusable(redis_server, maxlen: int):
    """An admin client of a Redis that refuses writes over ``maxmemory``, and a started publisher."""
    client = redis_server.client()
    client.config_set("maxmemory-policy", "noeviction")
    return client, Publisher(connect_redis(redis_server.url, socket_timeout=5), keys=KEYS, maxlen=maxlen).start()


def test_writes_accepted_again_in_the_middle_of_a_pipeline_lose_nothing(redis_server):
    client, pub = refusable(redis_server, 100_000)
    try:
        for trial in range(8):
            cam = f"c{trial}"
            client.config_set("maxmemory", "1")  # Redis refuses writes (OOM)
            for s in range(200):
                pub.publish(big(s, cam))
                if s % 8 == 7:
                    pub.camera_stats(cam, processed=s)  # a state write between a camera's results
            wait_for(lambda: pub.stats.refusing is not None, 10, "the publisher told writes are refused")
            threading.Thread(target=pub.flush, args=(0.01,), daemon=True).start()  # the writer retries now
            hold_s = 0.002 * trial
            if hold_s:
                time.sleep(hold_s)  # an offset, not a wait: Redis accepts again at a different moment each trial
            client.config_set("maxmemory", "0")
            assert pub.flush(30)
            assert seqs(client, cam) == list(range(200)), f"trial {trial}: {pub.stats}"
        assert sum(pub.stats.duplicates.values()) == 0 and pub.stats.errors == 0
    finally:
        pub.close()


def test_the_buffer_bound_never_drops_the_batch_being_written(redis_server):
    client = redis_server.client()
    pub = Publisher(connect_redis(redis_server.url, socket_timeout=5), keys=KEYS, maxlen=1000, max_buffer_entries=10)
    for s in range(10):
        pub.publish(result(s))
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # Redis stalls (a fork, a paused VM) while the batch is in flight
    try:
        pub.start()
        wait_for(lambda: len(pub._in_flight) == 10, 10, "the first 10 results in flight")
        for s in range(10, 20):
            pub.publish(result(s))  # over the bound: the oldest queued go, not the 10 being written
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    assert pub.flush(10)
    landed = seqs(client)
    assert landed == list(range(10)), landed
    assert pub.stats.published["cam"] == 10 and pub.stats.dropped["cam"] == 10, pub.stats
    pub.close()


def test_one_cameras_writes_kept_back_do_not_hold_up_the_others(redis_server):
    client = redis_server.client()
    pub = Publisher(connect_redis(redis_server.url, socket_timeout=5), keys=KEYS, maxlen=1000)
    pub.fence("a", KEYS.lease("a"), "me", hold_s=30.0)  # nobody holds a's lease (yet)
    client.set(KEYS.lease("b"), "me")
    pub.fence("b", KEYS.lease("b"), "me", hold_s=30.0)
    for s in range(800):
        pub.publish(result(s, "a"))
    pub.start()
    try:
        wait_for(lambda: pub.held > 0, 10, "camera a's results kept back")
        for s in range(5):
            pub.publish(result(s, "b"))
        wait_for(lambda: len(seqs(client, "b")) == 5, 10, "camera b's results landing")
        assert pub.stats.fenced["a"] == 0 and pub.held > 0  # a's still kept, not given up
        client.set(KEYS.lease("a"), "me")  # our supervisor takes a's lease back: they all land
        assert pub.flush(20)
        assert seqs(client, "a") == list(range(800))
    finally:
        pub.close()


def test_a_backlog_nobody_took_the_lease_of_goes_with_the_first_run_not_one_run_per_hold(redis_server):
    # a camera removed during an outage longer than its TTL: nobody takes its lease back, and
    # what it buffered goes after one hold_s in all (it went one batch per hold_s: 25 x 2 s here)
    client = redis_server.client()
    pub = Publisher(connect_redis(redis_server.url, socket_timeout=5), keys=KEYS, maxlen=1000, batch=16)
    pub.fence("gone", KEYS.lease("gone"), "me", hold_s=2.0)
    for s in range(400):
        pub.publish(result(s, "gone"))
    pub.start()
    try:
        wait_for(lambda: pub.stats.fenced["gone"] == 400, 20, "the whole backlog given up")
        assert not seqs(client, "gone")
        client.set(KEYS.lease("gone"), "me")  # held again (our supervisor took it back) ...
        pub.publish(result(400, "gone"))
        wait_for(lambda: seqs(client, "gone") == [400], 10, "a write under the lease held again")
        client.delete(KEYS.lease("gone"))  # ... and lost again: a new hold_s, not the old one's end
        pub.publish(result(401, "gone"))
        wait_for(lambda: pub.held > 0, 10, "the write kept back")
        assert pub.stats.fenced["gone"] == 400
        wait_for(lambda: pub.stats.fenced["gone"] == 401, 20, "the write given up after its own hold_s")
        pub.fence("gone", KEYS.lease("gone"), "me", hold_s=2.0)  # acquired again, nothing landed under it
        pub.publish(result(402, "gone"))
        wait_for(lambda: pub.held > 0, 10, "a write kept back again, for a new hold_s")
        client.set(KEYS.lease("gone"), "me")
        wait_for(lambda: seqs(client, "gone") == [400, 402], 10, "the write kept back landing")
    finally:
        pub.close(timeout=1)


def test_a_camera_restarted_while_its_results_are_queued_waits_for_them(redis_server):
    client, pub = refusable(redis_server, 1000)
    try:
        for s in range(5):
            pub.publish(result(s))
        assert pub.flush(5)
        client.config_set("maxmemory", "1")
        for s in range(5, 15):
            pub.publish(result(s))
        with pytest.raises(RuntimeError, match="its earlier results are still queued"):
            pub.resume_camera("cam")  # from the stream's top it would publish seqs 5..14 again
        client.config_set("maxmemory", "0")
        assert pub.resume_camera("cam")[0] == 15
    finally:
        pub.close()


class Endpoint:
    """A stable address (a DNS name, a Kubernetes Service) in front of whichever Redis is primary."""

    def __init__(self, target: int):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def test_after_a_failover_behind_one_address_writes_and_leases_follow_the_new_primary(tmp_path):
    import redis

    from pipeline.streams import reconnect_if_demoted

    with EmbeddedRedis(tmp_path / "x") as x, EmbeddedRedis(tmp_path / "y") as y:
        new_primary = y.client()
        new_primary.replicaof("127.0.0.1", x.port)
        endpoint = Endpoint(x.port)
        url = f"redis://127.0.0.1:{endpoint.port}/0"
        pub = Publisher(connect_redis(url, socket_timeout=5), keys=KEYS, maxlen=1000).start()
        leases = connect_redis(url, socket_timeout=5)  # the supervisor's own client
        try:
            lease = acquire(leases, KEYS.lease("cam"), "cam", ttl=30, token="me")
            pub.fence("cam", KEYS.lease("cam"), "me", hold_s=60)
            for s in range(3):
                pub.publish(result(s))
            assert pub.flush(5)
            wait_for(lambda: seqs(new_primary) == [0, 1, 2], 10, "the replica in sync")
            new_primary.replicaof("NO", "ONE")  # failover: y promoted, the address leads to it,
            endpoint.target = y.port  # x demoted to y's replica (its connections stay open)
            x.client().replicaof("127.0.0.1", y.port)
            pub.camera_state("cam", "online")  # a state write at the head: its READONLY comes as ReadOnlyError
            for s in range(3, 13):
                pub.publish(result(s))
            assert pub.flush(20), pub.stats.refusing  # it reconnected on READONLY: through to y
            assert seqs(new_primary) == list(range(13))
            assert new_primary.hget(KEYS.camera("cam"), "state") == b"online"
            with pytest.raises(redis.exceptions.ReadOnlyError) as refused:
                renew(lease, "me")  # the supervisor's pooled connection still reaches x
            assert reconnect_if_demoted(leases, refused.value)  # what its lease loops do then
            assert renew(lease, "me") and new_primary.get(KEYS.lease("cam")) == b"me"
        finally:
            pub.close()
            endpoint.listener.close()


def test_processed_counts_every_frame_written_as_it_lands(redis_server):
    """The camera hash's ``processed`` is what the next owner continues from: counted by the
    publishing script, it includes the frames written after the last stats write of an owner
    that died (a stats write every second left up to a second of frames out)."""
    pub = Publisher(connect_redis(redis_server.url, socket_timeout=5), keys=KEYS, maxlen=1000).start()
    try:
        for s in range(25):
            pub.publish(result(s))
        assert pub.flush(5)
        pub.publish(result(24))  # a retry of a frame already written: refused, not counted
        assert pub.flush(5)
        assert pub.resume_camera("cam") == (25, {"dropped": 0, "processed": 25, "publish_dropped": 0,
                                                 "classify_failed": 0, "track_id_max": 0, "seq_published": 24})
    finally:
        pub.close()


def test_a_result_waiting_encoded_is_kept_as_its_json_only():
    """An encoded result waiting for Redis (an outage) kept its FrameResult as well as its JSON:
    twice the memory the buffer's bound counts."""
    import gc
    import weakref

    from pipeline.publish_items import encode_all

    frame = result(3)
    gone = weakref.ref(frame)
    item = Item(0, "cam", 512, None, True, entry=["1-3", 3, frame, None, 0, 0])
    del frame
    encode_all([item])
    gc.collect()
    assert item.packed is not None and b'"seq":3' in b"".join(item.packed)
    assert gone() is None, "the FrameResult is still held by the queued item"


def test_a_batch_whose_send_failed_after_it_reached_redis_is_counted_published_once(redis_server, monkeypatch):
    """A send that times out after Redis took the batch (a large pipeline, a slow socket) left
    its results marked unsent: tried again, each was refused as already written and counted a
    duplicate, not published. Here the first send lands whole and then fails."""
    import redis

    from pipeline.publish_wire import Wire

    real, failed = Wire.send, []

    def send(self, commands):
        real(self, commands)
        if not failed:  # written whole, then the write's timeout: the connection goes, as in `send`
            failed.append(len(commands))
            self.drop()
            raise redis.TimeoutError("Timeout writing to socket")

    monkeypatch.setattr(Wire, "send", send)
    pub = Publisher(connect_redis(redis_server.url), keys=StreamKeys("sendfail"), maxlen=1000)
    for s in range(10):
        pub.publish(result(s))
    pub.start()
    try:
        assert pub.flush(10) and failed
        assert [int(f[b"seq"]) for _, f in redis_server.client().xrange(StreamKeys("sendfail").detections("cam"))] \
            == list(range(10))
        assert pub.stats.published["cam"] == 10 and pub.stats.duplicates["cam"] == 0, pub.stats
    finally:
        pub.close()


def test_a_run_answered_written_counts_every_frame_and_confirms_the_newest():
    """`account` counts a run Redis wrote whole at once: each frame published, the newest one
    confirmed; one answer else in the run (an id already written) is counted as it is."""
    from pipeline.publish_outcomes import account
    from pipeline.publish_stats import PublisherStats

    def run(camera, n):
        out = [item(i, camera) for i in range(n)]
        for i, it in enumerate(out):
            it.entry[0] = f"1000-{i}"
        return out

    stats = PublisherStats()
    held, refusal = account([run("a", 3), run("b", 2)], [[1, 1, 1], [1, b"ERR ... equal or smaller than the target "
                                                                     b"stream top item"]], stats, lambda *_: False)
    assert (held, refusal) == ([], None)
    assert stats.published == {"a": 3, "b": 1} and stats.duplicates == {"b": 1}, stats
    assert stats.confirmed == {"a": "1000-2", "b": "1000-0"}, stats


def test_the_outage_buffer_keeps_writes_sent_before_redis_stopped_answering():
    """Redis paused (SIGSTOP: a stalled server, a VM pause) ran the batch sent before the socket
    timed out when it woke; the bound evicted those writes (put back after the timeout) first,
    counted as dropped though they landed (`publish_dropped` said 94 lost of 351, all 351 in the
    stream). Writes not sent go first; the sent ones' retry tells what became of them."""
    from collections import deque

    from pipeline.publish_items import evict_oldest
    from pipeline.publish_stats import PublisherStats

    queue = deque(item(i, "cam") for i in range(10))
    for it in list(queue)[:4]:
        it.sent = True
    stats = PublisherStats()
    evict_oldest(queue, stats, full=lambda freed: len(queue) > 6)
    assert [it.index for it in queue] == [0, 1, 2, 3, 8, 9] and stats.dropped["cam"] == 4
    only_sent = deque(item(i, "cam") for i in range(3))
    for it in only_sent:
        it.sent = True
    evict_oldest(only_sent, stats, full=lambda freed: len(only_sent) > 1)
    assert len(only_sent) == 3 and stats.dropped["cam"] == 4  # (the bound passed by one batch at most)
