"""Waiting in tests: on a condition with a deadline, never on a bare sleep.

`wait_for` polls a condition until it holds or the deadline passes (the test then fails naming
what it waited for). `hold` is for the few places where a test *makes* something last a given
time (an outage of 5 s, a process paused past a TTL): the duration is the fault being injected,
not a stand-in for readiness."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """The first truthy value of ``pred()``; fails the test naming ``what`` after ``timeout`` s.
    Exceptions from ``pred`` (a server still down while we poll) count as 'not yet'."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = pred()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polled again until the deadline
            last_exc = exc
        if time.monotonic() >= deadline:
            why = f" (last error: {type(last_exc).__name__}: {last_exc})" if last_exc else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for: {what}{why}")
        time.sleep(interval)


def hold(seconds: float, why: str) -> None:
    """Let an injected fault last ``seconds`` (``why`` says which); not a wait for a condition."""
    assert why, "say which fault lasts this long"
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


def seconds_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> float:
    """How long it took for ``pred`` to hold (`wait_for`'s deadline and failure)."""
    t0 = time.monotonic()
    wait_for(pred, timeout, what, interval)
    return time.monotonic() - t0
