"""What every command shares: exit codes, error lines, and riding out a Redis outage."""

from __future__ import annotations

import sys
import time
from typing import Callable, TypeVar

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
