"""The embedded, private redis-server: free loopback port, AOF on, data under a state dir."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import redis

from .redact import redact

log = logging.getLogger("percept.redis_server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_line(name: str, value: str) -> bytes:
    """One line of redis.conf setting ``name`` to ``value`` exactly: every byte as a ``\\xHH``
    escape inside double quotes (spaces, quotes, backslashes and newlines cannot break it)."""
    return f'{name} "'.encode() + b"".join(b"\\x%02x" % byte for byte in value.encode()) + b'"\n'


def _ends_with_its_parent() -> Callable[[], None]:
    """What the child runs before exec: SIGTERM for it when the thread that started it ends
    (Linux's ``PR_SET_PDEATHSIG``), so that a server percept started stops, its data written, when
    percept dies without unwinding. libc is looked up here, in the parent (the child of a process
    with threads runs as little as it can before exec)."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG


class RedisServerError(RuntimeError):
    pass


class EmbeddedRedis:
    """``with EmbeddedRedis(state_dir) as r: r.url`` — started on enter, stopped on exit.

    `kill()` / `start()` simulate an outage in tests; data survives in the AOF under ``state_dir``."""

    def __init__(self, state_dir: str | Path, *, port: int | None = None, password: str | None = None,
                 binary: str = "redis-server", appendfsync: str = "everysec"):
        self.appendfsync = appendfsync  # "always": a SIGKILL loses nothing it answered (everysec: up to ~2 s under load)
        self.state_dir = Path(state_dir)
        self.port = port
        self.password = password
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_from = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)

    def start(self, timeout: float = 10.0) -> "EmbeddedRedis":
        exe = shutil.which(self.binary)
        if exe is None:
            raise RedisServerError(
                "redis-server is not installed: install it (Debian: apt-get install redis-server) "
                "or set redis.url in the config to an existing server"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                "--appendfsync", self.appendfsync, "--dir", str(self.state_dir.resolve()), "--daemonize", "no",
                "--loglevel", "warning", "--logfile", str(self.log_path.resolve())]
        if self.password:  # from its stdin, not its command line (which every local user reads: ps)
            args.insert(1, "-")
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0  # this start's lines only
        # its own session: a Ctrl-C (SIGINT to the terminal's process group) stops percept, which
        # stops this server last, after the decoders flushed what they held; and it ends with the
        # thread that started it when that is the main one (a percept killed, or ended by Ray's
        # worker, left it running for good)
        ends_with_us = sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE if self.password else subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                     preexec_fn=_ends_with_its_parent() if ends_with_us else None)
        if self.password:
            try:
                self.proc.stdin.write(config_line("requirepass", self.password))
                self.proc.stdin.close()
            except BrokenPipeError:  # it ended at once: `_until_up` says why
                pass
        try:
            return self._until_up(timeout)
        except BaseException:  # (a signal while it loads its data too: it runs in a session of its own)
            self.stop()
            raise

    def _until_up(self, timeout: float) -> "EmbeddedRedis":
        deadline = time.monotonic() + timeout
        client = self.client()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                err = (err + "\n" + self._log_tail()).strip()  # its fatal error is in its log file
                raise RedisServerError(f"redis-server exited with {self.proc.returncode}: "
                                       f"{redact(err.strip()[-500:], (self.password or '',))}")
            try:
                if client.ping():
                    log.info("private redis-server on %s (data in %s)", self.url, self.state_dir)
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        raise RedisServerError(f"redis-server did not answer on port {self.port} within {timeout:.0f} s")

    def revive(self, timeout: float = 60.0) -> str | None:
        """Started again (same port, same data: what the AOF kept; ``timeout`` to load it) unless
        it runs: why it had ended, in words; None while it runs. Raises RedisServerError when it
        cannot start."""
        if self.proc is not None and self.proc.poll() is None:
            return None
        code = None if self.proc is None else self.proc.returncode
        last = self._log_tail().splitlines()[-1:] if code is not None and code >= 0 else []
        why = ("not running" if code is None else f"killed by signal {-code}" if code < 0 else f"exited with {code}")
        self.proc = None
        self.start(timeout)
        return why + "".join(f" ({redact(line, (self.password or '',))})" for line in last)

    @property
    def log_path(self) -> Path:
        """Its log (warnings and its last words): beside its data."""
        return self.state_dir / "redis-server.log"

    def _log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_from)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(line for line in lines[-5:] if line.strip())

    def kill(self) -> None:
        """SIGKILL: an abrupt outage (AOF keeps what was fsynced)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # redis-server flushes the AOF and exits on SIGTERM
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
