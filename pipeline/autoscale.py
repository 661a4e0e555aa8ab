"""Video-aware autoscaling arithmetic (the Serve policy in deployments/autoscaling.py calls it).

Ray Serve's default policy scales on ongoing requests, which keep-latest backpressure caps at
``cameras × max_inflight`` whether or not the model keeps up. What users feel is lag: how old a
frame is when the model gets it (capture → batch start, slot and queue waits included). So the
detector reports recent frame age, frames waiting and how busy its model was; a replica count
goes up with the worst of lag / target, waiting / target and busy / `TARGET_BUSY` (with few
cameras, keep-latest drops frames long before lag or the queue shows it: a saturated model is
busy all the time), and comes down one at a time, only while lag and the queue are under their
targets and the others would be at most `DOWN_BUSY` busy without this one, with what waits
spread over them at most ``DOWN_BUSY / TARGET_BUSY`` of its target. In between it holds:
lag does not shrink with more replicas once they keep up (it is then the service time), so
lag alone would scale a deployment that keeps up back to one replica, over and over.

A replica's warm-up is not load: frames captured before it was ready (queued while the model
loaded) or in its first ``warmup_s`` after (that backlog draining) are old for a reason another
replica would not fix, so they are not counted as lag, frames waiting then count as 0, and a
light load never scales up.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

WARMUP_S = 5.0  # after a replica is ready: its startup backlog drains, its first batches run
TARGET_BUSY = 0.85  # above this share of the time running, a replica is saturated: one more
DOWN_BUSY = 0.6  # one replica fewer only when the others would be at most this busy


class FrameAgeMeter:
    """Ages of frames at batch start over a sliding window; bounded memory on 24/7 streams.

    All on this host's steady clock: a frame is known by when it was captured on that clock
    (`captured`: now less the age it arrived with), so a wall clock stepped by NTP neither hides
    the lag (stepped back an hour, every frame looked captured before the warm-up ended: lag 0
    for the hour) nor invents it (stepped forward, the frames queued then looked an hour old and
    the deployment was scaled to its maximum). Until ``ready()`` is called every frame counts (a
    meter of its own, as in tests); after it, only frames captured from ``warmup_s`` past
    readiness, and frames waiting from then on."""

    def __init__(self, window_s: float = 5.0, maxlen: int = 2048, warmup_s: float = 0.0):
        self.window_s = window_s
        self.warmup_s = warmup_s
        self._warm_until = float("-inf")  # the warm-up's end: frames captured before it are not lag
        self._ages: deque[tuple[float, float]] = deque(maxlen=maxlen)  # (time seen, age)
        self.waiting = 0  # frames (crops) in this replica: queued, forming a batch or in one running
        self.in_batches = 0  # of them, in batches running now (`running`): not waiting

    @contextmanager
    def running(self, frames: int) -> Iterator[None]:
        """A batch of ``frames`` runs: they are no longer waiting while it does."""
        self.in_batches += frames
        try:
            yield
        finally:
            self.in_batches -= frames

    @staticmethod
    def _now(now: float | None) -> float:
        return time.monotonic() if now is None else now  # (``now``: the steady clock's time, in tests)

    @classmethod
    def captured(cls, age_s: float | None, now: float | None = None) -> float | None:
        """When a frame of age ``age_s`` arriving now was captured, on the steady clock."""
        return None if age_s is None else cls._now(now) - max(0.0, age_s)

    def ready(self, now: float | None = None) -> None:
        """The replica is ready (model loaded and warmed up): its warm-up ends ``warmup_s`` later."""
        self._warm_until = self._now(now) + self.warmup_s

    def warming_up(self, now: float | None = None) -> bool:
        return self._now(now) < self._warm_until

    def observe(self, captured: Sequence[float | None], now: float | None = None) -> None:
        """Frames captured at ``captured`` (`captured`) start a batch now."""
        now = self._now(now)
        for at in captured:
            if at is not None and at >= self._warm_until:
                self._ages.append((now, max(0.0, now - at)))

    def waiting_now(self, now: float | None = None) -> float:
        """Frames waiting in this replica, not those of the batches running (a detector keeping
        up with full batches of 16 read as 16 waiting, at the target: overloaded); 0 during
        warm-up (the startup backlog)."""
        return 0.0 if self.warming_up(now) else float(max(0, self.waiting - self.in_batches))

    def lag_s(self, now: float | None = None) -> float:
        """Mean frame age over the window (0 when idle)."""
        now = self._now(now)
        while self._ages and now - self._ages[0][0] > self.window_s:
            self._ages.popleft()
        return sum(a for _, a in self._ages) / len(self._ages) if self._ages else 0.0


def requests_floor(ongoing: float, target_ongoing_requests: float | None) -> int:
    """Serve's own signal as a floor (``replicas.target_ongoing_requests``): the replicas the
    requests in flight need at that many each (0: no floor)."""
    if not target_ongoing_requests or ongoing <= 0:
        return 0
    return math.ceil(ongoing / target_ongoing_requests)


# replicas that have not started after this long (no node has room for them) no longer hold a
# deployment at its target: it is judged on the running ones again, and may go down
STARTING_AT_MOST_S = 300.0


def settled_decision(want: int, running: int, target: int | None, starting_for_s: float = 0.0) -> int:
    """The decision Serve gets, from ``want`` (`desired_replicas` on the ``running`` replicas)
    and the ``target`` Serve is moving to: Serve's delays compare a decision with the target,
    not with the running replicas, so while replicas start (a model loading, a node joining) a
    "hold" at the running count read as a scale-down, and after its delay the replicas still
    starting were cancelled, under load too. Up: at least the target; hold or down: the target
    until the running replicas reach it (then down by the policy's own step), or until they have
    been short of it for `STARTING_AT_MOST_S` (``starting_for_s``)."""
    if target is None or target <= 0 or starting_for_s >= STARTING_AT_MOST_S:
        return want
    if want > running:
        return max(want, target)
    return want if running == target else target


def desired_replicas(
    current: int,
    lag_s: Sequence[float],
    waiting: Sequence[float],
    busy: Sequence[float] = (),
    *,
    target_lag_s: float,
    target_waiting: float,
) -> int:
    """Replicas wanted (module doc): more when lag, frames waiting or busy time pass their
    targets; one fewer when all are well under them; else as many as now. ``busy``: each
    replica's share of time running its model (none reported: judged on lag and waiting)."""
    if current <= 0:
        return 1
    lag = max(lag_s, default=0.0)
    per_replica_waiting = sum(waiting) / current if waiting else 0.0
    util = sum(busy) / len(busy) if busy else None
    load = max(lag / target_lag_s, per_replica_waiting / target_waiting, (util or 0.0) / TARGET_BUSY)
    if load > 1:
        return max(current + 1, math.ceil(current * load))
    if current == 1:
        return 1
    if util is None:  # nothing says the others could take this one's work but an idle deployment
        return current - 1 if load == 0 else current
    # the others would take this one's share of the work and of what waits: both with the same
    # margin under their targets (a classifier's waiting crops passed the target again at one
    # replica fewer, and it went up and down every delay)
    fewer = current - 1
    waiting_after = sum(waiting) / fewer if waiting else 0.0
    calm = waiting_after / target_waiting <= DOWN_BUSY / TARGET_BUSY
    return fewer if calm and util * current / fewer <= DOWN_BUSY else current
