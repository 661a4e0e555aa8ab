"""A publisher closing with writes it could not confirm (real redis-server): what it still held
is counted as lost, once, and logged; a write answered after close() gave up on it is counted as
what it became instead."""

import socket
import threading

import pytest

from pipeline.publish import Publisher
from pipeline.streams import connect_redis

from .test_publish import KEYS, publisher, result, seqs
from .test_publish_batches import Endpoint
from .waiting import wait_for


def test_closing_during_an_outage_counts_and_logs_what_is_lost(redis_server, caplog):
    """A replica stopping while Redis is down: what its publisher still held is lost; it was
    gone without a count or a line."""
    pub = publisher(redis_server)
    for s in range(3):
        pub.publish(result(s))
    assert pub.flush(5)
    redis_server.kill()
    for s in range(3, 8):
        pub.publish(result(s))
    pub.publish(result(0, "other"))
    pub.camera_state("cam", "stopped")
    with caplog.at_level("ERROR", logger="percept.publish"):
        pub.close(timeout=1)
    assert pub.stats.dropped == {"cam": 5, "other": 1} and pub.stats.dropped_other == {"cam": 1}
    assert pub.pending == 0 and dict(pub.stats.published) == {"cam": 3}
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "7 writes not confirmed (redis unreachable): counted as lost" in line and "by camera: cam 6, other 1" in line, line


def test_a_write_after_close_is_counted_as_lost_not_kept_for_ever(redis_server, caplog):
    """A conductor still stopping publishes after its replica closed the publisher: the writes
    sat in a queue nobody would write, uncounted and unlogged."""
    pub = publisher(redis_server)
    pub.publish(result(0))
    pub.close(timeout=5)
    with caplog.at_level("ERROR", logger="percept.publish"):
        pub.publish(result(1))
        pub.camera_state("cam", "stopped")
    assert pub.pending == 0 and pub.stats.dropped == {"cam": 1} and pub.stats.dropped_other == {"cam": 1}
    assert seqs(redis_server.client()) == [0]
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(lines) == 2 and all("1 writes not confirmed (given after close())" in line for line in lines), lines


def test_closing_while_redis_takes_connections_but_never_answers_counts_what_is_lost(caplog):
    """Redis stopped (SIGSTOP) or a half-open connection: the write under way blocks for the
    client's socket timeout (5 s). close() waited 2 s for the writer, then returned with nothing
    counted or logged, and the results died with the process."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog), never answers
    try:
        pub = Publisher(connect_redis(f"redis://127.0.0.1:{listener.getsockname()[1]}/0"), keys=KEYS,
                        maxlen=100).start()
        for s in range(5):
            pub.publish(result(s))
        with caplog.at_level("ERROR", logger="percept.publish"):
            pub.close(timeout=1)
        assert pub.stats.dropped == {"cam": 5}, pub.stats.dropped
        (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert "5 writes not confirmed" in line and "by camera: cam 5" in line, line
    finally:
        listener.close()


class DrippingProxy(Endpoint):
    """The failover tests' proxy in front of the real redis-server: what the client sends goes
    through at once; Redis's answers too, until `drip` is set: then one byte a second (each read
    of the client waits less than its socket timeout, the whole answer longer than close()
    waits), until `release` is set."""

    def __init__(self, target: int):
        self.drip, self.release = threading.Event(), threading.Event()
        super().__init__(target)

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        if a.getpeername()[1] != self.target:  # the client's requests
            return super()._pipe(a, b)
        try:
            while data := a.recv(65536):
                while self.drip.is_set() and not self.release.is_set() and len(data) > 1:
                    b.sendall(data[:1])
                    data = data[1:]
                    self.release.wait(1.0)  # (the fault: an answer that trickles in)
                b.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.release.set()
        self.listener.close()


def test_a_write_answered_after_close_gave_up_is_counted_once_as_what_it_became(redis_server, caplog):
    """close() gives up on a write whose answer trickles in (each read within the socket timeout)
    and counts everything it held as lost. The writer then got its answer, counted those frames as
    published too, and went on to write the rest it had just counted as lost: 5 results, 5 lost
    and 5 published."""
    proxy = DrippingProxy(redis_server.port)
    try:
        pub = Publisher(connect_redis(f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=3, socket_connect_timeout=0.5),
                        keys=KEYS, maxlen=100).start()
        pub.publish(result(0, "warmup"))  # the connection made and the scripts loaded at full speed
        assert pub.flush(10)
        proxy.drip.set()
        for s in range(5):
            pub.publish(result(s))
        with caplog.at_level("WARNING", logger="percept.publish"):
            pub.close(timeout=0.5)
            assert pub.stats.dropped["cam"] == 5, pub.stats.dropped  # nothing confirmed at close
            proxy.release.set()
            wait_for(lambda: not pub._thread.is_alive(), 30, "the writer ending after its late answer")
        written = len(seqs(redis_server.client()))
        published, dropped = pub.stats.published["cam"], pub.stats.dropped["cam"]
        assert written >= 1 and (published, dropped) == (written, 5 - written), (written, published, dropped)
        assert any(f"{written} writes counted as lost at close were answered after it" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
    finally:
        proxy.close()


def test_a_camera_key_of_another_type_costs_its_numbers_not_frames_already_written(redis_server):
    """The counts hash or the camera hash holding another type (not written by percept): the
    publishing script failed after the frames' XADDs, so written frames were reported failed,
    and the frames after them in that call were lost, counted in `errors` alone."""
    import json as json_

    from .test_publish import KEYS as KEYS_

    client = redis_server.client()
    for key in (KEYS_.counts("odd"), KEYS_.camera("odd")):
        client.delete(KEYS_.detections("odd"), KEYS_.events("odd"), KEYS_.counts("odd"), KEYS_.camera("odd"))
        client.set(key, "a string")
        pub = publisher(redis_server)
        for s in range(5):
            events = [("zone_enter", json_.dumps({"kind": "zone_enter", "seq": s}))] if s in (1, 3) else []
            pub.publish(result(s, "odd"), events=events, counts={"zone:z:enter": 1} if events else None)
        assert pub.flush(5)
        pub.close()
        assert seqs(client, "odd") == list(range(5)) and pub.stats.published == {"odd": 5}, (key, pub.stats)
        assert pub.stats.errors == 0 and pub.stats.dropped == {}, (key, pub.stats)


def test_events_lost_are_counted_one_by_one(redis_server, caplog):
    """The events of frames the outage buffer dropped are merged into one write per camera; once
    that went too, it counted as one in ``dropped_other``: 95 frames' 475 events were lost and
    counted as 5. Each event lost is counted (``dropped_events``) and the loss logged; so are
    the events still held when the publisher closes during the outage."""
    import json

    pub = Publisher(connect_redis(redis_server.url, socket_timeout=1, socket_connect_timeout=0.5), keys=KEYS,
                    maxlen=1000, max_buffer_entries=10_000, max_buffer_bytes=20_000)  # (not started: nothing in flight)
    redis_server.kill()
    with caplog.at_level("ERROR", logger="percept.publish"):
        for s in range(100):
            events = [("zone_enter", json.dumps({"seq": s, "k": k, "pad": "x" * 150})) for k in range(5)]
            pub.publish(result(s), events, {"zone:a:enter:vehicle": 5})
        with pub._cond:
            held = sum(item.entry[4] for item in pub._queue if item.entry)
        assert pub.stats.dropped_events["cam"] == 500 - held > 0, (pub.stats.dropped_events, held)
        assert "events lost (and " in caplog.text
        pub.start()
        pub.close(timeout=1)
    assert pub.stats.dropped_events["cam"] == 500, pub.stats.dropped_events  # (the rest lost at close)


# (Python calls the decoder's async __del__ itself when the object goes: a coroutine nobody awaits)
@pytest.mark.filterwarnings("ignore:coroutine 'DecoderDeployment.__del__' was never awaited")
def test_a_writer_stopped_by_a_fault_says_so_and_its_replica_is_unhealthy(redis_server, monkeypatch, caplog):
    """A fault of ours in the writer thread (not Redis: those it retries) ended the thread with a
    traceback on stderr only: the decoder went on queueing results nobody would write (dropped by
    the bound), its cameras `online`, its health check passing, a flush waiting out its timeout."""
    import time
    from types import SimpleNamespace

    import pipeline.publish_writer as W
    from deployments.decoder import DecoderDeployment

    def broken(*args, **kwargs):
        raise KeyError("a fault of ours")

    pub = publisher(redis_server)
    pub.publish(result(0))
    assert pub.flush(5) and pub.writing
    monkeypatch.setattr(W, "account", broken)
    with caplog.at_level("CRITICAL", logger="percept.publish"):
        pub.publish(result(1))
        started = time.monotonic()
        assert not pub.flush(60)  # (it returns as the writer stops, not after its timeout)
        assert time.monotonic() - started < 30
    assert not pub.writing and isinstance(pub.writer_failure, KeyError)
    assert any("the writer thread stopped" in r.getMessage() for r in caplog.records), caplog.text

    cls = DecoderDeployment.func_or_class
    replica = cls.__new__(cls)
    running = SimpleNamespace(done=lambda: False)
    replica._task = replica._status_task = replica._metrics_task = running
    replica.publisher = pub
    with pytest.raises(RuntimeError, match="^publisher stopped: KeyError: 'a fault of ours'"):
        replica.check_health()
    pub.close(timeout=1)
    assert pub.stats.dropped == {"cam": 1} and pub.pending == 0  # (what it held: counted as lost)
