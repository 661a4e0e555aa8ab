"""Video-aware autoscaling arithmetic (the Serve policy in deployments/autoscaling.py calls it).

Ray Serve's default policy scales on ongoing requests, which keep-latest backpressure caps at
``cameras × max_inflight`` whether or not the model keeps up. What users feel is lag: how old a
frame is when the model gets it (capture → batch start, slot and queue waits included). So the
detector reports recent frame age and frames waiting per replica, and the wanted replica count
is the current one scaled by the worst of lag / target and waiting / target.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Sequence


class FrameAgeMeter:
    """Ages of frames at batch start over a sliding window; bounded memory on 24/7 streams."""

    def __init__(self, window_s: float = 5.0, maxlen: int = 2048):
        self.window_s = window_s
        self._ages: deque[tuple[float, float]] = deque(maxlen=maxlen)
        self.waiting = 0

    def observe(self, frame_ts: Sequence[float | None], now: float | None = None) -> None:
        now = time.time() if now is None else now
        for ts in frame_ts:
            if ts is not None:
                self._ages.append((now, max(0.0, now - ts)))

    def lag_s(self, now: float | None = None) -> float:
        """Mean frame age over the window (0 when idle)."""
        now = time.time() if now is None else now
        while self._ages and now - self._ages[0][0] > self.window_s:
            self._ages.popleft()
        return sum(a for _, a in self._ages) / len(self._ages) if self._ages else 0.0


def desired_replicas(
    current: int,
    lag_s: Sequence[float],
    waiting: Sequence[float],
    *,
    target_lag_s: float,
    target_waiting: float,
) -> int:
    """Replicas wanted so that lag and frames waiting come back to their targets."""
    if current <= 0:
        return 1
    lag = max(lag_s, default=0.0)
    per_replica_waiting = sum(waiting) / current if waiting else 0.0
    load = max(lag / target_lag_s, per_replica_waiting / target_waiting)
    return max(1, math.ceil(current * load)) if load > 0 else max(1, current - 1)
