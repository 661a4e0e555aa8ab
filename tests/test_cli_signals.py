"""The way out of a foreground command, on real processes: Ctrl-C while it waits, and a reader
that stops reading its output (``| head -1``): an exit code, never a traceback."""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import threading

from .conftest import REPO
from .waiting import wait_for


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """An API whose Redis is away: 503 to everything (what `percept cameras` waits out)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b'{"detail": "redis unavailable"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_ctrl_c_while_a_command_waits_exits_130_without_a_traceback():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}"
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
        server.shutdown()
    assert proc.returncode == 130 and "Traceback" not in err, (proc.returncode, said, err)


def test_a_reader_that_stops_reading_ends_subscribe_quietly(redis_server):
    client = redis_server.client()
    for seq in range(3000):
        # (~0.4 MB in all: more than a pipe holds, so the command still writes when its reader goes)
        client.xadd("pipe:detections:cam", {"v": "1", "camera": "cam", "seq": str(seq),
                                            "json": f'{{"seq": {seq}, "pad": "{"x" * 120}"}}'})
    proc = subprocess.Popen([sys.executable, "-m", "cli", "subscribe", "cam", "--redis", redis_server.url,
                             "--prefix", "pipe", "--from-start", "--count", "3000"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().startswith(b'{"seq":0,')
        proc.stdout.close()  # as `| head -1` does
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode()
    assert proc.returncode == 0 and "Traceback" not in err, (proc.returncode, err)
