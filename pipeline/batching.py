"""Batches that fill without a fixed wait: the batcher of the detectors and the classifiers.

A fixed wait (Serve's ``@serve.batch``: a batch leaves when full or ``batch_wait`` after it
opened) costs every frame up to the wait at low load, and still cuts batches short at high load.
`AdaptiveBatcher` knows where frames come from: each item carries its camera, and the batcher
keeps per camera the time of its last frame and the usual time between its frames. A batch
leaves, as soon as the runner is free, when

- it holds ``max_batch_size`` items, or
- no camera is missing that should send before the wait ends: every camera that is sending to
  this replica (a frame within ~2× its usual interval) and whose next frame is due before the
  batch's wait ends has an item in the batch — so at full load the batch leaves the moment the
  last camera's frame lands, and at low load a lone frame leaves at once (the other cameras'
  next frames are not due within the wait), or
- the wait (``batch_wait_s`` from the batch's first item) has expired, or
- the model was busy less than ``wait_above_busy`` of the last second (the detector: 0.75):
  with the model idle that often, small batches cost no throughput, and a wait would only add
  to the frame's latency.

One batch runs at a time (the model uses the cores), or, while the model is busy, ``concurrency``
batches for a model that overlaps them (OpenVINO's infer requests: the next batch's frames start
while the last ones of the batch before still run, so no core idles at a batch's tail); items
arriving meanwhile form the next batch. The rule is `BatchPolicy` (pure, tested with explicit times); `AdaptiveBatcher` is the
asyncio mechanism around it. Ray-free.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Mapping, TypeVar

from .config_errors import ConfigError
from .config_models import BatchConfig, batch_from_user_config

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("percept.batching")


@dataclass
class _Camera:
    last: float  # time of its last item
    interval: float | None = None  # moving average of the time between its items


@dataclass
class BatchPolicy:
    """When a batch leaves (the rules in the module's docstring). Times are seconds on one clock."""

    max_batch_size: int = 8
    batch_wait_s: float = 0.02
    active_factor: float = 2.0  # a camera is sending while its last item is within this × its interval
    smoothing: float = 0.3  # weight of the newest interval in a camera's average
    # below this share of busy time over the last `busy_window_s` a batch never waits for other
    # cameras (0: always may): with the model idle that often, waiting buys no throughput and
    # costs the frame its latency
    wait_above_busy: float = 0.0
    busy_window_s: float = 1.0
    cameras: dict[Hashable, _Camera] = field(default_factory=dict)
    runs: deque[tuple[float, float]] = field(default_factory=deque)  # (start, end) of recent batches
    running: list[float] = field(default_factory=list)  # starts of the batches running now

    def began(self, start: float) -> None:
        """A batch started at ``start`` (it counts as busy until it ends: `ran`)."""
        self.running.append(start)

    def ran(self, start: float, end: float) -> None:
        """A batch ran from ``start`` to ``end``."""
        if start in self.running:
            self.running.remove(start)
        self.runs.append((start, end))
        while self.runs and self.runs[0][1] < end - self.busy_window_s:
            self.runs.popleft()

    def busy(self, now: float) -> float:
        """The share of the last `busy_window_s` that batches were running, the ones running now
        up to ``now`` (counted once ended, a model busy without a pause on batches of a second
        looked half idle, and never scaled up); time when two overlapped counts once (summed, an
        overlapping pair looked busier than the model was)."""
        total, reach = 0.0, now - self.busy_window_s  # reach: the end of what is counted so far
        for s, e in sorted([*self.runs, *((start, now) for start in self.running)]):
            s, e = max(s, reach), min(e, now)
            if e > s:
                total += e - s
                reach = e
        return total / self.busy_window_s

    def arrived(self, key: Hashable | None, now: float) -> None:
        """An item of camera ``key`` (None: unknown, never waited for) arrived at ``now``."""
        if key is None:
            return
        cam = self.cameras.get(key)
        if cam is None:  # (a new camera: the silent ones forgotten first, else at low load, where no
            self._forget_silent(now)  # batch waits and `expected` is never asked, they stayed for good)
            self.cameras[key] = _Camera(now)
            return
        gap = max(now - cam.last, 0.0)
        cam.interval = gap if cam.interval is None else (1 - self.smoothing) * cam.interval + self.smoothing * gap
        cam.last = now

    def _forget_silent(self, now: float) -> None:
        """Cameras that stopped sending (or moved to another replica) are forgotten."""
        for key, cam in list(self.cameras.items()):
            if cam.interval is None:  # one item so far: no rhythm to expect yet
                silent = now - cam.last > 10 * max(self.batch_wait_s, 0.1)
            else:
                silent = now - cam.last > self.active_factor * cam.interval + self.batch_wait_s
            if silent:
                del self.cameras[key]

    def expected(self, now: float, until: float) -> list[Hashable]:
        """The cameras still sending whose next item is due by ``until``; forgets silent ones."""
        self._forget_silent(now)
        return [key for key, cam in self.cameras.items() if cam.interval is not None and cam.last + cam.interval <= until]

    def release_in(self, now: float, opened: float, keys: Sequence[Hashable | None]) -> float:
        """Seconds until a batch opened at ``opened`` holding items of ``keys`` leaves if nothing
        else arrives; 0: now."""
        if len(keys) >= self.max_batch_size:
            return 0.0
        deadline = opened + self.batch_wait_s
        if now >= deadline:
            return 0.0
        if self.wait_above_busy and self.busy(now) < self.wait_above_busy:
            return 0.0
        present = set(keys)
        if all(key in present for key in self.expected(now, deadline)):
            return 0.0
        return deadline - now


@dataclass
class _Item(Generic[T]):
    key: Hashable | None
    value: T
    future: asyncio.Future
    arrived: float


class AdaptiveBatcher(Generic[T, R]):
    """``await batcher.submit(camera, item)`` → that item's result from ``run_batch(items)``
    (a list of results in item order; an exception it raises fails every item of the batch)."""

    def __init__(self, run_batch: Callable[[list[T]], Awaitable[Sequence[R]]], *, max_batch_size: int = 8,
                 batch_wait_s: float = 0.02, wait_above_busy: float = 0.0, concurrency: int = 1,
                 clock: Callable[[], float] = time.monotonic):
        self.policy = BatchPolicy(max_batch_size=max_batch_size, batch_wait_s=batch_wait_s,
                                  wait_above_busy=wait_above_busy)
        self._run_batch = run_batch
        self._clock = clock
        self.concurrency = concurrency  # batches running at once (a model that overlaps them: 2)
        self._running: dict[asyncio.Task[None], list[_Item[T]]] = {}  # batches running, by their task
        self._pending: list[_Item[T]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    def busy_share(self) -> float:
        """The share of the last second the model was running (0..1; batches that overlap count once
        at most): how loaded this replica is, for the autoscaling policy."""
        return min(1.0, self.policy.busy(self._clock()))

    def set_max_batch_size(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {size}")
        self.policy.max_batch_size = size
        self._poke()

    def set_batch_wait_s(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"batch_wait_s must be >= 0, got {seconds}")
        self.policy.batch_wait_s = seconds
        self._poke()

    async def submit(self, key: Hashable | None, value: T) -> R:
        loop = asyncio.get_running_loop()
        now = self._clock()
        self.policy.arrived(key, now)
        item = _Item(key, value, loop.create_future(), now)
        self._pending.append(item)
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._loop(), name="adaptive-batcher")
        self._poke()
        return await item.future

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            self._pending = [i for i in self._pending if not i.future.done()]  # callers that gave up
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = self._clock()
            delay = self.policy.release_in(now, self._pending[0].arrived, [i.key for i in self._pending])
            if delay > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except (asyncio.TimeoutError, TimeoutError):
                    pass
                continue
            batch = self._pending[: self.policy.max_batch_size]
            del self._pending[: len(batch)]
            if self.concurrency <= 1:
                await self._run(batch)
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running[task] = batch  # (close() cancels its callers too: a task cancelled before it
            task.add_done_callback(self._batch_done)  # started never runs `_run`'s own cancel)
            while len(self._running) >= self._allowed():  # the runner is free again when one ends
                self._wake.clear()
                await self._wake.wait()

    def _allowed(self) -> int:
        """Batches that may run at once: ``concurrency`` while the model is busy (the policy's
        ``wait_above_busy``), else one (at low load an overlapping batch would only share the
        cores with the one running and slow both)."""
        policy = self.policy
        if policy.wait_above_busy and policy.busy(self._clock()) < policy.wait_above_busy:
            return 1
        return self.concurrency

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._poke()

    async def _run(self, batch: list[_Item[T]]) -> None:
        self.batches += 1
        self.items += len(batch)
        start = self._clock()
        self.policy.began(start)
        try:
            results = await self._run_batch([i.value for i in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch handler returned {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:  # closing: the batch's callers are not left waiting
            for i in batch:
                i.future.cancel()
            raise
        except Exception as exc:  # every item of the batch gets the error
            for i in batch:
                if not i.future.done():
                    i.future.set_exception(exc)
            return
        finally:
            self.policy.ran(start, self._clock())
        for i, result in zip(batch, results):
            if not i.future.done():
                i.future.set_result(result)

    async def close(self) -> None:
        for task, batch in list(self._running.items()):
            task.cancel()
            for i in batch:
                if not i.future.done():
                    i.future.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for i in self._pending:
            if not i.future.done():
                i.future.cancel()
        self._pending.clear()


def reconfigured(name: str, user_config: Mapping[str, Any], current: BatchConfig, batcher: AdaptiveBatcher[Any, Any],
                 on_max_size: Callable[[int], None] | None = None) -> BatchConfig:
    """A model replica's Serve ``user_config`` applied to its batcher, validated as a whole first
    (`batch_from_user_config`): one that is refused is logged naming the key and leaves the batches
    as they were (raised, half of it was applied, and a replica that raised it at its start was
    stopped, and its replacement too: the deployment crash-looped). The settings now."""
    try:
        batch = batch_from_user_config(user_config, current)
    except ConfigError as exc:
        log.error("%s: user_config not applied (batches stay %d, %g ms): %s", name, current.max_size, current.wait_ms,
                  "; ".join(exc.errors))
        return current
    batcher.set_max_batch_size(batch.max_size)
    batcher.set_batch_wait_s(batch.wait_ms / 1000)
    if on_max_size is not None:
        on_max_size(batch.max_size)
    return batch
