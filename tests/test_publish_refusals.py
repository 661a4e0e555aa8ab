"""The publisher when Redis answers but refuses writes for now (OOM, READONLY), or answers what
redis-py cannot parse: nothing is lost or counted as failed, the writer thread lives on (real
redis-server)."""

import pytest

from pipeline.streams import camera_states

from .test_publish import KEYS, publisher, result, seqs
from .waiting import wait_for


@pytest.mark.parametrize("refusal", ["OOM", "READONLY"])
def test_writes_redis_refuses_for_now_are_kept_and_land_when_it_accepts_again(redis_server, refusal, caplog):
    """Redis up but refusing writes — over maxmemory, or a replica after a failover — is an
    outage too: nothing is counted as failed or lost; once it accepts writes, all land in order."""
    from pipeline.redis_server import free_port

    pub = publisher(redis_server)
    admin = redis_server.client()
    for s in range(3):
        pub.publish(result(s))
    assert pub.flush(5)
    pub.camera_state("cam", "online")
    assert pub.flush(5)
    if refusal == "OOM":
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
    else:
        admin.replicaof("127.0.0.1", free_port())  # a master that is not there: read-only, data kept
    for s in range(3, 23):
        pub.publish(result(s))
    pub.camera_state("cam", "reconnecting", error="x")
    wait_for(lambda: pub.stats.refusing is not None, 10, "the publisher noticing the refusal")
    assert refusal in pub.stats.refusing and pub.pending == 21 and not pub.flush(0.5), pub.stats
    assert pub.stats.errors == 0 and seqs(admin) == [0, 1, 2]
    if refusal == "OOM":
        admin.config_set("maxmemory", "0")
    else:
        admin.replicaof("NO", "ONE")
    assert pub.flush(20)
    assert seqs(admin) == list(range(23)) and pub.stats.errors == 0 and pub.stats.refusing is None
    assert camera_states(admin, KEYS, ["cam"])["cam"]["state"] == "reconnecting"
    assert sum(pub.stats.dropped.values()) == 0 and caplog.text.count("redis refuses writes") == 1, caplog.text
    pub.close()


def answers_lost_once(monkeypatch) -> list[int]:
    """The first batch's answers lost (an answer redis-py cannot parse; its connection dropped):
    what Redis ran stays run. The list returned gets an entry when that happened."""
    import redis

    from pipeline.publish_wire import Wire

    real, failures = Wire.receive, []

    def garbled_once(self):
        if not failures:
            failures.append(1)
            self.drop()
            raise redis.InvalidResponse("Protocol Error: b'?'")
        return real(self)

    monkeypatch.setattr(Wire, "receive", garbled_once)
    return failures


def test_an_unexpected_error_on_the_wire_does_not_end_the_writer(redis_server, monkeypatch):
    """An answer redis-py cannot parse (not a connection error) is retried like an outage: the
    writer thread lives on; what had landed is refused the second time (at most once), and
    counted as published, not as a duplicate (its first answer was lost: the metrics' published
    count must equal the stream's length)."""
    failures = answers_lost_once(monkeypatch)
    pub = publisher(redis_server)
    for s in range(5):
        pub.publish(result(s))
    assert pub.flush(10) and failures
    assert seqs(redis_server.client()) == list(range(5)) and pub.stats.duplicates["cam"] == 0
    assert pub.stats.published["cam"] == 5 and pub.stats.errors == 0
    pub.publish(result(5))
    assert pub.flush(5) and seqs(redis_server.client()) == list(range(6)) and pub.stats.published["cam"] == 6
    pub.close()


def test_a_state_change_whose_answer_was_lost_is_written_once(redis_server, monkeypatch):
    """The connection breaks after Redis wrote a camera's state change: sent again, it must not
    add a second entry to the status stream."""
    failures = answers_lost_once(monkeypatch)
    pub = publisher(redis_server)
    pub.camera_state("cam", "connecting")  # two changes in one batch: the retry sends both again
    pub.camera_state("cam", "online")
    assert pub.flush(10) and failures
    pub.camera_state("cam", "reconnecting", error="gone")
    assert pub.flush(10)
    client = redis_server.client()
    states = [f[b"state"] for _, f in client.xrange(KEYS.status) if f[b"camera"] == b"cam"]
    assert states == [b"connecting", b"online", b"reconnecting"], states
    assert client.hget(KEYS.camera("cam"), "state") == b"reconnecting"
    pub.close()
