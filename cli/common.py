"""What every command shares: exit codes, error lines, and riding out a Redis outage."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable, TypeVar

import redis

from pipeline.redact import redact, redact_url

EXIT_UNAVAILABLE = 3  # a service the config names is unreachable, or a model cannot be loaded
EXIT_INTERRUPTED = 130
T = TypeVar("T")


def fail(message: str, code: int) -> int:
    print(f"percept: {message}", file=sys.stderr, flush=True)
    return code


def say(message: str) -> None:
    print(f"percept: {message}", flush=True)


class RedisOutage:
    """One line when Redis goes away (``redis unreachable at … — retrying``), one when it is
    back; foreground loops call `attempt` and carry on with ``default`` meanwhile."""

    def __init__(self, url: str | None):
        self.where = redact_url(url or "?")
        self.down = False

    def notice(self, exc: Exception | None) -> None:
        if exc is not None and not self.down:
            print(f"percept: redis unreachable at {self.where} — retrying ({redact(type(exc).__name__)})",
                  file=sys.stderr, flush=True)
            self.down = True
        elif exc is None and self.down:
            print(f"percept: redis at {self.where} is back", file=sys.stderr, flush=True)
            self.down = False

    def attempt(self, fn: Callable[[], T], default: T) -> T:
        try:
            value = fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.notice(exc)
            return default
        self.notice(None)
        return value

    def until_back(self, fn: Callable[[], T], *, timeout_s: float | None = None, interval_s: float = 1.0) -> T:
        """``fn()`` retried through an outage (up to ``timeout_s``, then the error is raised)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                value = fn()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.notice(exc)
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                time.sleep(interval_s)
                continue
            self.notice(None)
            return value


def call_api(api: str, method: str, path: str, body: Any = None, *, wait_s: float,
             timeout: float = 30.0) -> tuple[int, Any]:
    """(HTTP status, JSON answer) of a request to the graph's ingress at ``api``. A 503 (the
    graph's Redis unreachable) is retried every second until ``wait_s`` has passed, with one line
    saying so; other errors are answers. An unreachable ingress raises ``URLError``/``OSError``."""
    url = api.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read() or b"{}")
            except ValueError:
                answer = {"detail": exc.reason}
            if exc.code != 503 or time.monotonic() >= deadline:
                return exc.code, answer
            if not said:
                print(f"percept: redis unreachable at the graph behind {api} — retrying", file=sys.stderr, flush=True)
                said = True
            time.sleep(1.0)  # the next try (the loop ends at the deadline above)
