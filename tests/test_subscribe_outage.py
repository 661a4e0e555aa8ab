"""`percept subscribe` rides out a Redis restart: one line when Redis goes, then it carries on
after the last entry it printed (plain XREAD and consumer groups), on a real redis-server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from pipeline.streams import StreamKeys

from .conftest import REPO
from .waiting import hold, wait_for

KEYS = StreamKeys("subout")


def _add(client, start: int, n: int) -> None:
    for seq in range(start, start + n):
        client.xadd(KEYS.detections("cam"), {"v": "1", "camera": "cam", "seq": str(seq),
                                             "json": json.dumps({"camera": "cam", "seq": seq})})


@pytest.mark.parametrize("group", [None, "alerts"])
def test_subscribe_survives_a_redis_restart(redis_server, tmp_path, group):
    client = redis_server.client()
    client.config_set("appendfsync", "always")  # every ack is on disk before the SIGKILL
    _add(client, 0, 10)
    args = [sys.executable, "-m", "cli", "subscribe", "cam", "--redis", redis_server.url, "--prefix", "subout",
            "--from-start", "--count", "20"]
    if group:
        args += ["--group", group, "--consumer", "c1"]
    out = (tmp_path / "out.txt").open("w")
    proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "out.txt").read_text().count("\n") >= 10, 30, "the first 10 entries printed")
        redis_server.kill()
        hold(3, "redis-server SIGKILLed for 3 s")
        assert proc.poll() is None, f"percept subscribe exited during the outage: {proc.stderr.read()}"
        redis_server.start()
        client.config_set("appendfsync", "always")
        _add(client, 10, 10)
        wait_for(lambda: proc.poll() is not None, 60, "subscribe to print 20 entries and exit")
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
    stderr = proc.stderr.read()
    assert proc.returncode == 0, stderr
    assert stderr.count("redis unreachable at redis://127.0.0.1:") == 1, stderr
    seqs = [json.loads(line)["seq"] for line in (tmp_path / "out.txt").read_text().splitlines()]
    assert seqs == list(range(20)), seqs


@pytest.mark.parametrize("start", ["0", "$"])
def test_a_group_reader_rides_out_a_read_only_redis_and_a_lost_group(redis_server, start):
    """XREADGROUP is a write: on a replica (after a failover) Redis refuses it for now — ridden
    out like an outage; a group Redis lost (restarted without its data) is created again, after
    the last entry read: what was written before the reader noticed is not skipped, whether the
    group first started at the beginning or at "$" (new entries only, the default)."""
    from pipeline.redis_server import free_port
    from pipeline.subscribe import Subscriber

    client = redis_server.client()
    sub = Subscriber(client, KEYS, ["cam"], group="alerts", consumer="c1", start=start, block_ms=100)
    _add(client, 0, 3)
    notices: list = []
    messages = sub.messages(on_unreachable=notices.append)

    def take(n, out):  # read and acknowledge, as `percept subscribe --group` does
        for _ in range(n):
            msg = next(messages)
            sub.ack(msg)
            out.append(msg.payload["seq"])
        return out

    assert take(3, []) == [0, 1, 2]
    client.replicaof("127.0.0.1", free_port())  # read-only now, its data kept
    got: list = []
    reader = threading.Thread(target=take, args=(4, got), daemon=True)
    reader.start()
    wait_for(lambda: notices and notices[0] is not None, 10, "the reader noticing Redis refuses its reads")
    assert type(notices[0]).__name__ == "ReadOnlyError", notices
    client.replicaof("NO", "ONE")
    _add(client, 3, 2)
    wait_for(lambda: len(got) >= 2 or not reader.is_alive(), 10, "entries read again once Redis accepts writes")
    assert got[:2] == [3, 4] and notices[-1] is None, (got, notices)
    client.flushall()  # as a restart without persistence: the stream and its group are gone
    _add(client, 5, 2)  # the publisher's outage buffer lands before the reader's next read
    reader.join(15)
    assert got == [3, 4, 5, 6], got


def test_a_reader_with_a_timeout_stops_during_an_outage(redis_server, capsys):
    """``--timeout S`` is a deadline: an outage counts as S without messages."""
    from cli.main import main
    from pipeline.subscribe import Subscriber

    sub = Subscriber(redis_server.client(), KEYS, ["cam"], block_ms=100)
    redis_server.kill()
    ended = threading.Event()
    notices: list = []

    def read() -> None:
        list(sub.messages(idle_timeout_s=1, on_unreachable=notices.append))
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    wait_for(ended.is_set, 20, "the reader ending 1 s into the outage (--timeout 1)")
    assert notices and notices[0] is not None
    # and a consumer without a group is a bad argument, said before connecting
    assert main(["subscribe", "cam", "--consumer", "a1", "--redis", redis_server.url]) == 2
    assert "--consumer needs --group" in capsys.readouterr().err
    assert main(["subscribe", "cam", "--claim-idle-ms", "5000", "--redis", redis_server.url]) == 2  # (was ignored)
    assert "--claim-idle-ms needs --group" in capsys.readouterr().err


def test_a_deadline_that_ends_during_an_outage_exits_3(redis_server, capsys):
    """``subscribe --timeout`` and ``top --duration`` ending while Redis is away: exit 3 saying so
    (both exited 0, as if there had been nothing to read)."""
    from cli.main import main

    client = redis_server.client()
    done: dict = {}
    reader = threading.Thread(target=lambda: done.update(rc=main(["subscribe", "cam", "--timeout", "8",
                                                                  "--redis", redis_server.url])), daemon=True)
    reader.start()
    wait_for(lambda: any(c.get("cmd") == "xread" for c in client.client_list()), 20, "the subscriber reading")
    redis_server.kill()
    reader.join(60)
    assert done.get("rc") == 3
    err = capsys.readouterr().err
    assert "redis unreachable at redis://127.0.0.1" in err and "— retrying (ConnectionError: " in err, err  # (why)
    assert err.rstrip().endswith(f"redis still unreachable at {redis_server.url} when --timeout ended"), err
    assert main(["top", "--duration", "1", "--interval", "0.2", "--redis", redis_server.url]) == 3
    err = capsys.readouterr().err
    assert err.rstrip().endswith(f"redis still unreachable at {redis_server.url} when --duration ended"), err
    # --once does not retry: one line, with why (it said "retrying (ConnectionError)", then the address alone)
    assert main(["top", "--once", "--redis", redis_server.url]) == 3
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"percept: redis unreachable at {redis_server.url} (ConnectionError: Error 111 "), line
    assert "retrying" not in line, line


def test_a_group_reader_whose_ack_meets_an_outage_ends_at_its_timeout(redis_server, monkeypatch, capsys):
    """Redis goes away between printing an entry and acking it (killed by the print itself):
    ``--timeout 2`` still ends the command, exit 3 saying so (the ack was retried for ever)."""
    import io
    import sys

    from cli.main import main

    _add(redis_server.client(), 0, 1)

    class RedisGoesWithTheFirstLine(io.StringIO):
        def write(self, text: str) -> int:
            if text.strip() and not self.getvalue():
                redis_server.kill()
            return super().write(text)

    printed = RedisGoesWithTheFirstLine()
    monkeypatch.setattr(sys, "stdout", printed)
    done: dict = {}
    reader = threading.Thread(target=lambda: done.update(rc=main(
        ["subscribe", "cam", "--prefix", "subout", "--group", "g", "--from-start", "--timeout", "2",
         "--redis", redis_server.url])), daemon=True)
    reader.start()
    reader.join(60)
    assert not reader.is_alive(), "still retrying the ack 60 s later"
    assert done.get("rc") == 3 and json.loads(printed.getvalue())["seq"] == 0, (done, printed.getvalue())
    assert capsys.readouterr().err.rstrip().endswith("when --timeout ended")


def test_a_restarted_group_consumer_gets_all_it_had_not_acked(redis_server):
    """1500 entries read and not acked (the reader crashed): the same consumer started again
    gets every one of them first, not only the first 1000; an entry trimmed away meanwhile is
    acked, so it stops coming back."""
    from pipeline.subscribe import Subscriber

    client = redis_server.client()
    _add(client, 0, 1500)

    def reader() -> Subscriber:
        return Subscriber(client, KEYS, ["cam"], group="g", consumer="c1", start="0", block_ms=100)

    read = [m.payload["seq"] for m in reader().messages(limit=1500)]  # never acked
    assert read == list(range(1500))
    first = client.xrange(KEYS.detections("cam"), count=1)[0][0]
    client.xdel(KEYS.detections("cam"), first)
    again = [m.payload["seq"] for m in reader().messages(idle_timeout_s=1)]
    assert again == list(range(1, 1500)), (len(again), again[:3], again[-3:])
    assert client.xpending(KEYS.detections("cam"), "g")["pending"] == 1499  # the trimmed one acked


def test_a_lost_group_that_cannot_be_made_again_yet_is_ridden_out(redis_server):
    """Redis lost the group and refuses writes for now (out of memory, a failing disk): making the
    group again failed, and the reader ended with the NOGROUP error instead of riding it out."""
    from pipeline.subscribe import Subscriber

    client = redis_server.client()
    sub = Subscriber(client, KEYS, ["cam"], group="g", consumer="c1", start="0", block_ms=100)
    _add(client, 0, 2)
    notices: list = []
    messages = sub.messages(on_unreachable=notices.append)
    got = [next(messages).payload["seq"] for _ in range(2)]
    pipe = client.pipeline(transaction=True)  # at once: the group gone and every write refused
    pipe.delete(KEYS.detections("cam"))
    pipe.config_set("maxmemory", 1)
    pipe.execute()
    reader = threading.Thread(target=lambda: got.extend(next(messages).payload["seq"] for _ in range(2)), daemon=True)
    reader.start()
    wait_for(lambda: notices or not reader.is_alive(), 10, "the reader noticing it cannot make its group again")
    # (what it is told is why: Redis refuses writes; a NOGROUP there read as refused credentials)
    assert reader.is_alive() and notices and "maxmemory" in str(notices[0]), notices
    client.config_set("maxmemory", 0)
    _add(client, 2, 2)
    reader.join(15)
    assert got == [0, 1, 2, 3] and notices[-1] is None, (got, notices)


def test_two_group_readers_without_a_consumer_name_never_share_one(redis_server):
    """A reader of group g holds an entry it has not acked yet (still handling it); a second
    `percept subscribe --group g` started without ``--consumer`` must not take that entry as
    its own unacked one (both were the consumer "percept-subscriber"), only new entries; done,
    it leaves the group, while the first reader stays a member with its entry pending."""
    from pipeline.subscribe import Subscriber

    client = redis_server.client()
    _add(client, 0, 1)
    first = Subscriber(client, KEYS, ["cam"], group="g", start="0", block_ms=100)
    held = next(first.messages(limit=1))  # read, not acked yet
    _add(client, 1, 1)
    proc = subprocess.run([sys.executable, "-m", "cli", "subscribe", "cam", "--redis", redis_server.url, "--prefix",
                           "subout", "--group", "g", "--timeout", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["seq"] for line in proc.stdout.splitlines()] == [1], proc.stdout
    members = {c["name"].decode(): c["pending"] for c in client.xinfo_consumers(KEYS.detections("cam"), "g")}
    assert members == {first.consumer: 1}, members
    first.ack(held)
    first.close()
    assert client.xinfo_consumers(KEYS.detections("cam"), "g") == []


def test_a_reader_not_allowed_to_leave_its_group_still_ends_well(redis_server):
    """Leaving the group at the end is a courtesy: a user whose ACL refuses XPENDING (NOPERM)
    printed and acked everything, then exited 3 with a redis error."""
    client = redis_server.client()
    client.acl_setuser("reader", enabled=True, passwords=["+readerpw"], keys=["*"], commands=["+@all", "-xpending"])
    _add(client, 0, 2)
    url = redis_server.url.replace("redis://", "redis://reader:readerpw@")
    proc = subprocess.run([sys.executable, "-m", "cli", "subscribe", "cam", "--redis", url, "--prefix", "subout",
                           "--group", "g", "--from-start", "--count", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["seq"] for line in proc.stdout.splitlines()] == [0, 1]


def test_a_stream_deleted_under_a_group_reader_is_no_outage(redis_server):
    """A stream deleted while a group reader blocks on it (a user's DEL, an expiry) answers the
    read "UNBLOCKED the stream key no longer exists": the reader said Redis was unreachable and
    waited with the outage backoff; the group is made again there and the reader goes on."""
    from pipeline.subscribe import Subscriber

    client = redis_server.client()
    sub = Subscriber(client, KEYS, ["cam"], group="gone", consumer="c1", start="0", block_ms=5000)
    _add(client, 0, 1)
    notices: list = []
    messages = sub.messages(on_unreachable=notices.append)
    assert next(messages).payload["seq"] == 0
    got: list = []
    reader = threading.Thread(target=lambda: got.append(next(messages).payload["seq"]), daemon=True)
    reader.start()
    wait_for(lambda: any(c.get("cmd") == "xreadgroup" for c in client.client_list()), 10, "the reader blocking")
    client.delete(KEYS.detections("cam"))
    wait_for(lambda: client.exists(KEYS.detections("cam")), 10, "the group made again (its stream with it)")
    _add(client, 1, 1)
    reader.join(15)
    assert got == [1] and notices == [], (got, notices)
