"""Run benchmarks/rtsp_server.py (gst-rtsp-server under Debian's /usr/bin/python3): looping clips as
live RTSP cameras on loopback, for `percept bench` and the tests.

Stdlib only. Example::

    with RtspServer({"cam": "/work/shared/data/videos/vtest.avi", "synth": "testsrc"}) as srv:
        url = srv.url("cam")          # rtsp://127.0.0.1:PORT/cam
        srv.kill(); srv.start()       # simulate a crash and a restart on the same port

Mount specs are ``PATH[@WxH][@FPS][@bframes]`` or ``testsrc[@WxH][@FPS][@bframes]`` (see rtsp_server.py).
"""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

SERVER_SCRIPT = Path(__file__).resolve().with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"
HOST = "127.0.0.1"


def gst_rtsp_available() -> bool:
    """True if Debian's python3 can import GstRtspServer (use for pytest skip marks)."""
    try:
        return subprocess.run(
            [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import GstRtspServer"],
            capture_output=True, timeout=30, env=_clean_env()).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _clean_env() -> dict[str, str]:
    # Don't leak the venv's/pyenv's Python settings into Debian's interpreter.
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop}


class RtspServer:
    """Looping video files as live RTSP cameras on loopback, as a context manager."""

    def __init__(self, mounts: dict[str, str], *, port: int | None = None,
                 user: str | None = None, password: str | None = None, nice: int = 0, encode_once: bool = False):
        if not mounts:
            raise ValueError("need at least one mount")
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        self.mounts = {m.strip("/"): spec for m, spec in mounts.items()}
        self.port = port  # None: first start() binds a free port, later starts reuse it
        self.user, self.password = user, password
        self.proc: subprocess.Popen | None = None
        self._stderr = None
        self.nice = nice  # the server's scheduling niceness (it stands for cameras on other machines)
        self.encode_once = encode_once  # the clips encoded at start, their H.264 looped (rtsp_server.py --encode-once)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, timeout: float | None = None) -> "RtspServer":
        """Ready within ``timeout`` seconds (default 15; 90 with ``encode_once``: ~6 s of encoding
        for the shared clips on an idle core, at nice 19 on a busy machine much longer)."""
        if self.running:
            raise RuntimeError("RTSP server already running")
        cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--host", HOST, "--port", str(self.port or 0)]
        if self.encode_once:
            cmd.append("--encode-once")
        env = _clean_env()
        if self.user is not None:  # (the password in its environment: not on a command line anyone can read)
            cmd += ["--user", self.user, "--password-env", "RTSP_SERVER_PASSWORD"]
            env["RTSP_SERVER_PASSWORD"] = self.password
        cmd += [f"{m}={spec}" for m, spec in self.mounts.items()]
        self._close_stderr()
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: can't fill up and block
        nice = self.nice
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=env,
                                     preexec_fn=(lambda: os.nice(nice)) if nice else None)
        try:
            line = self._read_ready_line(timeout if timeout is not None else 90.0 if self.encode_once else 15.0)
        except BaseException:  # (a SIGTERM's SystemExit while it encodes: no __exit__ would ever stop it)
            self._terminate(signal.SIGKILL)
            self._close_stderr()
            raise
        if not line.startswith("ready rtsp://"):
            self._terminate(signal.SIGKILL)
            raise RuntimeError(f"rtsp_server.py failed to start (rc={self.proc.returncode}, "
                               f"stdout={line!r}):\n{self.stderr_text()}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def _read_ready_line(self, timeout: float) -> str:
        assert self.proc and self.proc.stdout
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if sel.select(left):
                    return self.proc.stdout.readline().decode(errors="replace").strip()
        return ""

    def stop(self) -> None:
        """SIGTERM (clean shutdown), SIGKILL if still alive after 5 s."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, to simulate a crash; start() may be called again (same port)."""
        self._terminate(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the server hangs (sockets stay open, nothing is sent)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        if not self.running:
            raise RuntimeError("RTSP server not running")
        self.proc.send_signal(sig)

    def _terminate(self, sig: int) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            if sig != signal.SIGKILL:
                proc.send_signal(signal.SIGCONT)  # a paused process can't act on SIGTERM
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # -- info ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def url(self, mount: str, *, with_auth: bool = True) -> str:
        if self.port is None:
            raise RuntimeError("start() the server first")
        cred = ""
        if with_auth and self.user is not None:
            cred = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}@"
        return f"rtsp://{cred}{HOST}:{self.port}/{mount.strip('/')}"

    def __enter__(self) -> "RtspServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._close_stderr()
