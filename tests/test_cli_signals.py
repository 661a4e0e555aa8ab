"""The way out of a foreground command, on real processes: Ctrl-C while it waits, and a reader
that stops reading its output (``| head -1``): an exit code, never a traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

from .conftest import REPO
from .http import answering
from .waiting import wait_for


def test_ctrl_c_while_a_command_waits_exits_130_without_a_traceback():
    with answering(503, b'{"detail": "redis unavailable"}') as api:  # an API whose Redis is away
        _interrupted_while_waiting(api)


def _interrupted_while_waiting(api: str) -> None:
    # (SIGINT as a terminal leaves it: a suite run in the background, as `make test &`, ignores it,
    # and a Python started so never turns it into KeyboardInterrupt)
    proc = subprocess.Popen([sys.executable, "-m", "cli", "cameras", "--api", api, "--wait", "120", "ls"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        said: list[str] = []
        wait_for(lambda: said.append(proc.stderr.readline()) or "retrying" in said[-1] or proc.poll() is not None, 60,
                 "the command saying it waits for the API")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, (proc.returncode, said, err)


def _subscribe_to_head_1(redis_server, prefix: str, *options: str) -> tuple[int, str]:
    """``percept subscribe cam … | head -1`` over 3000 entries (~0.4 MB in all: more than a pipe
    holds, so the command still writes when its reader goes): its exit code and stderr."""
    client = redis_server.client()
    for seq in range(3000):
        client.xadd(f"{prefix}:detections:cam", {"v": "1", "camera": "cam", "seq": str(seq),
                                                 "json": f'{{"seq": {seq}, "pad": "{"x" * 120}"}}'})
    proc = subprocess.Popen([sys.executable, "-m", "cli", "subscribe", "cam", "--redis", redis_server.url,
                             "--prefix", prefix, "--from-start", *options], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().startswith(b'{"seq":0,')
        proc.stdout.close()  # as `| head -1` does
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, proc.stderr.read().decode()


def test_a_reader_that_stops_reading_ends_subscribe_quietly(redis_server):
    code, err = _subscribe_to_head_1(redis_server, "pipe", "--count", "3000")
    assert code == 0 and "Traceback" not in err, (code, err)


def test_sigterm_ends_a_group_reader_which_leaves_its_group(redis_server):
    """systemd or ``docker stop`` ends ``subscribe --group`` with SIGTERM: Python died without its
    cleanup, and every restart left another ``<host>-<pid>`` consumer in the group."""
    client = redis_server.client()
    proc = subprocess.Popen([sys.executable, "-m", "cli", "subscribe", "cam", "--redis", redis_server.url,
                             "--prefix", "term", "--group", "g"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: client.exists("term:detections:cam") and client.xinfo_consumers("term:detections:cam", "g")
                 or proc.poll() is not None, 60, "the reader joining its group")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, (proc.returncode, err)
    assert client.xinfo_consumers("term:detections:cam", "g") == [], "its consumer stayed in the group"


def test_ctrl_c_on_top_while_redis_is_away_is_its_usual_way_out():
    """Ctrl-C on ``percept top`` during an outage said "redis still unreachable … when --duration
    ended" (no --duration was given) and exited 3."""
    from pipeline.redis_server import free_port

    proc = subprocess.Popen([sys.executable, "-m", "cli", "top", "--redis", f"redis://127.0.0.1:{free_port()}/0",
                             "--interval", "0.5"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # (a read never blocks the wait)
    try:
        wait_for(lambda: any(line.startswith("percept top") for line in lines) or proc.poll() is not None, 60,
                 "top showing its first screen")
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err and "--duration" not in err, (proc.returncode, err)


def test_ctrl_c_while_the_command_still_imports_its_modules_exits_without_a_traceback():
    """The first ~0.4 s of a command import its modules (and build its parser, which imports
    some more): Ctrl-C there printed a KeyboardInterrupt traceback. Sent at moments through that
    time and a little after, counted from when the command holds Ctrl-C for its imports (what
    comes before is Python's own start-up, where any program prints a traceback): 130 (or `top`'s
    usual 0 once it runs), never a traceback.

    Run as users run it, the installed `percept` script. (Two ways it failed, 1 in 60 sends each on
    a loaded machine, before the interrupt was held until the imports end: pydantic turned one that
    landed while it built a model's schema into a SchemaError traceback, exit 1; and under
    `python -m`, one that landed in an `exec` of a string ended the process by SIGINT itself, -2.)"""
    import time
    from pathlib import Path

    percept = Path(sys.executable).with_name("percept")
    assert percept.exists(), f"{percept}: the console script `make setup` installs"
    for delay in (0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7):
        proc = subprocess.Popen([str(percept), "top", "--redis", "redis://127.0.0.1:1/0"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            wait_for(lambda: _holds_ctrl_c(proc.pid), 60, "the command holding Ctrl-C while it imports", 0.002)
        except BaseException:
            proc.kill()
            raise
        time.sleep(delay)  # the moment the signal is sent: what the test is about, not a wait for a state
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode in (130, 0) and "Traceback" not in err, (delay, proc.returncode, err[-2000:])


def _holds_ctrl_c(pid: int) -> bool:
    blocked = next(line for line in open(f"/proc/{pid}/status") if line.startswith("SigBlk:"))
    return bool(int(blocked.split()[1], 16) & (1 << (signal.SIGINT - 1)))


def test_ctrl_c_while_a_long_line_waits_on_a_full_pipe_leaves_no_line_cut(redis_server):
    """A crowded frame's line (12 kB) written to a reader slower than the command: Ctrl-C in the
    middle of its write left it cut (no newline, no JSON) for whoever reads on."""
    import fcntl
    import json
    import termios

    client = redis_server.client()
    for seq in range(40):  # (~480 kB: the pipe fills)
        client.xadd("cut:detections:cam", {"v": "1", "camera": "cam", "seq": str(seq),
                                           "json": json.dumps({"seq": seq, "pad": "x" * 12_000})})
    proc = subprocess.Popen([sys.executable, "-m", "cli", "subscribe", "cam", "--redis", redis_server.url,
                             "--prefix", "cut", "--from-start"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    def writing_into_a_full_pipe() -> bool:  # (its main thread in write(1, …), held: the pipe is full)
        queued = int.from_bytes(fcntl.ioctl(proc.stdout.fileno(), termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)
        return queued > 60_000 and open(f"/proc/{proc.pid}/syscall").read().startswith("1 0x1 ")

    try:  # (the pipe holds some 64 kB: the command is held in the middle of a line's write)
        wait_for(lambda: proc.poll() is not None or writing_into_a_full_pipe(), 60,
                 "the pipe full, the command writing into it")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    *lines, tail = out.split(b"\n")
    assert proc.returncode == 130 and tail == b"" and len(lines) >= 5, (proc.returncode, len(lines), tail[-80:], err)
    assert [json.loads(line)["seq"] for line in lines] == list(range(len(lines)))


def test_a_group_reader_whose_output_is_cut_gives_the_entry_back_at_once(redis_server, capsys):
    """``subscribe --group g | head -1``: the entry whose line met the closed pipe stayed pending
    on the gone consumer, fresh, so the group's next reader got the entries after it first and
    that one 30 s later (`--claim-idle-ms`), out of order."""
    import json

    from cli.main import main

    client = redis_server.client()
    stream = "hg:detections:cam"
    code, err = _subscribe_to_head_1(redis_server, "hg", "--group", "g")
    assert code == 0, err
    cut = client.xpending(stream, "g")["min"]  # (its first entry not acked: the one it was writing)
    first = json.loads(client.xrange(stream, cut, cut)[0][1][b"json"])["seq"]
    assert main(["subscribe", "cam", "--redis", redis_server.url, "--prefix", "hg", "--group", "g", "--count", "3"]) == 0
    assert [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()] == [first, first + 1, first + 2]
