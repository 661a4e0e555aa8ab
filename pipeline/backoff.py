"""Exponential backoff, for whatever retries a connection: a camera's reconnects, the publisher's and
the subscribers' Redis, camera leases."""

from __future__ import annotations


class Backoff:
    """Exponential backoff: initial, ×factor per failure, capped; `reset()` after a success."""

    def __init__(self, initial: float = 0.5, cap: float = 10.0, factor: float = 2.0):
        if initial <= 0 or cap < initial or factor < 1:
            raise ValueError("backoff needs 0 < initial <= cap and factor >= 1")
        self.initial, self.cap, self.factor = initial, cap, factor
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * self.factor)
        return delay

    def reset(self) -> None:
        self._next = self.initial
