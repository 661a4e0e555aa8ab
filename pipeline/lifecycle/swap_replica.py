"""The replica's side of a hot swap (`pipeline.lifecycle.swap` explains the whole protocol).

A model deployment holds a `ModelSwapper`: it loads the model the replica starts with (the
desired weights when a swap was made before, else the config's), then every ``poll_s`` reports
what it serves and reads the desired weights. When they change it takes the deployment's swap
lock (one replica loads at a time, so the others keep their full speed meanwhile), loads the new
weights in a worker thread while ``current`` keeps serving, and switches ``current`` in one
assignment. Callers read ``current`` once per batch, so a batch finishes on the model it started
with. A load that fails leaves the old model serving and is reported (the API rolls back).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

from ..models import model_name
from .swap import Desired, ReplicaReport, SwapKeys, model_facts, read_desired, swapped_cfg

log = logging.getLogger("percept.swap")

POLL_S = 1.0
LOCK_TTL_S = 30.0  # renewed while loading; a replica that dies holding it frees it after this


class ModelSwapper:
    def __init__(self, *, client: Any, keys: SwapKeys, replica: str, kind: str, cfg: Any,
                 load: Callable[[Any], Any], poll_s: float = POLL_S):
        self.client = client
        self.keys = keys
        self.kind = kind  # "detector" | "classifier"
        self.base_cfg = cfg
        self.load = load  # config section → backend (blocking; run in a worker thread)
        self.poll_s = poll_s
        self.current: Any = None  # the backend serving now
        self.report = ReplicaReport(replica, model_name(cfg), cfg.weights, getattr(cfg, "card", None), 0)
        self._failed_record: tuple[int, float] | None = None  # (generation, requested_at) it could not load
        self._left = False  # the replica stopped (`leave`): no report is written again
        self._report_lock = threading.Lock()  # the report's writes and its delete, one at a time
        # Redis's clock minus this machine's: reports are stamped in Redis's time, which the API
        # judges them by (hosts whose clocks differ by more than `LIVE_S` would never be live)
        self._clock_offset = 0.0

    async def start(self) -> Any:
        """The model this replica starts with: the desired weights; when those do not load, the
        weights they replaced; else the config's."""
        try:
            self._note_clock(await asyncio.to_thread(self.client.time))
            desired = await asyncio.to_thread(self._desired)
        except Exception as exc:  # Redis down at start: the config's weights; `follow` catches up
            log.warning("%s: desired weights unreadable (%s: %s); starting on the config's", self.keys.deployment,
                        type(exc).__name__, exc)
            desired = None
        if desired is not None and desired.generation > 0:
            try:
                self._switch(await self._load_reported(self._cfg(desired), desired.generation), desired)
            except Exception as exc:
                self._failed(desired, exc)
                await self._start_on_previous(desired)
        if self.current is None:
            self._switch(await self._load_reported(self.base_cfg, 0), None)
        await self._send()
        return self.current

    async def _load_reported(self, cfg: Any, generation: int) -> Any:
        """``load(cfg)`` in a worker thread, this replica reported as loading meanwhile: a swap
        recorded while a replica starts waits for it (it counted only the replicas up, and one
        that then failed the new weights was never rolled back)."""
        self.report.loading = generation
        await self._send()
        loading = asyncio.ensure_future(asyncio.to_thread(self.load, cfg))
        try:
            while not (await asyncio.wait({loading}, timeout=self.poll_s))[0]:
                await self._send()  # live however long the load takes
        finally:
            self.report.loading = None
        return loading.result()

    async def _start_on_previous(self, desired: Desired) -> None:
        """The recorded weights failed to load at start: the weights they replaced, where a swap
        put those (the rollback the API writes goes there too), else the config's (the caller)."""
        before = desired.previous
        cfg = self.base_cfg
        if not before or (before["weights"], before.get("card")) == (cfg.weights, getattr(cfg, "card", None)):
            return
        cfg = swapped_cfg(cfg, before["weights"], before.get("card"))
        try:
            model = await self._load_reported(cfg, desired.generation)
        except Exception as exc:
            log.warning("%s: cannot load %s either: %s: %s; starting on the config's", self.keys.deployment,
                        cfg.weights, type(exc).__name__, exc)
            return
        self._switch(model, None)
        r = self.report
        r.weights, r.card, r.model = before["weights"], before.get("card"), model_name(cfg)

    async def follow(self) -> None:
        """Forever: report, and swap when the desired weights change."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis outage: the current model keeps serving; try again
                log.warning("%s: swap round failed: %s: %s", self.keys.deployment, type(exc).__name__, exc)

    def _is_new(self, desired: Desired) -> bool:
        """A record this replica has not acted on: a higher generation than it serves (and not
        one it failed to load), or a generation it has passed that names other weights: Redis
        lost its data and numbers swaps from 1 again (generations only grow otherwise)."""
        r = self.report
        if (desired.generation, desired.requested_at) == self._failed_record:
            return False  # the API rolls back
        if desired.generation > r.generation:
            return True
        return desired.generation < r.generation or (desired.weights, desired.card) != (r.weights, r.card)

    async def _round(self) -> None:
        desired = await asyncio.to_thread(self._exchange)
        r = self.report
        if desired is None or not self._is_new(desired):
            return
        if desired.previous is None and (desired.weights, desired.card) == (r.weights, r.card):
            # a rollback to what it serves (a swap to the same path again reloads it: the file may
            # have been written again, as `models finetune --out` does); the failure it rolls back
            # is over (`models served` kept showing it beside a rollout done)
            r.generation, r.error, r.failed_generation, r.failed_requested_at = desired.generation, None, None, None
            await self._send()
            return
        # thread_local=False: acquired, renewed and released from different worker threads
        lock = self.client.lock(self.keys.lock, timeout=LOCK_TTL_S, thread_local=False)
        if not await asyncio.to_thread(lock.acquire, blocking=False):
            return  # another replica is loading; this one keeps serving and tries next round
        try:
            await self._swap(desired, lock)
        finally:
            try:
                await asyncio.to_thread(lock.release)
            except Exception as exc:  # expired or Redis gone: it frees itself after LOCK_TTL_S
                log.warning("%s: swap lock not released (%s: %s); it expires in %.0f s", self.keys.deployment,
                            type(exc).__name__, exc, LOCK_TTL_S)

    async def _swap(self, desired: Desired, lock: Any) -> None:
        self.report.loading = desired.generation
        await self._send()
        log.info("%s: loading %s (generation %d)", self.keys.deployment, desired.weights, desired.generation)
        t0 = time.monotonic()
        loading = asyncio.ensure_future(asyncio.to_thread(self.load, self._cfg(desired)))
        await self._while_loading(loading, lock)
        self.report.loading = None
        try:
            model = loading.result()
        except Exception as exc:
            self._failed(desired, exc)
        else:
            self.report.load_s = round(time.monotonic() - t0, 2)
            self._switch(model, desired)
            log.info("%s: now serving %s (loaded in %.1f s)", self.keys.deployment, desired.model, self.report.load_s)
        await self._send()

    async def _while_loading(self, loading: asyncio.Future, lock: Any) -> None:
        """Until the load ends: the report (``loading``) each ``poll_s``, so the API keeps
        counting this replica as live and loading however long the load takes, and the lock
        renewed every third of its TTL."""
        renewed = time.monotonic()
        while not (await asyncio.wait({loading}, timeout=self.poll_s))[0]:
            await self._send()
            if time.monotonic() - renewed >= LOCK_TTL_S / 3:
                try:
                    await asyncio.to_thread(lock.reacquire)  # still loading: keep the lock
                    renewed = time.monotonic()
                except Exception as exc:  # Redis outage: the load goes on; renewed next tick
                    log.warning("%s: swap lock not renewed: %s: %s", self.keys.deployment, type(exc).__name__, exc)

    def _switch(self, model: Any, desired: Desired | None) -> None:
        """The swap itself: one assignment (batches read ``current`` once, when they start)."""
        self.current = model
        r = self.report
        if desired is not None:
            r.weights, r.card, r.generation, r.model = desired.weights, desired.card, desired.generation, desired.model
            r.swapped_at = time.time() + self._clock_offset
            r.error = None  # (a replica that started on other weights than recorded keeps saying why)
        r.facts = model_facts(self.kind, model)

    def _failed(self, desired: Desired, exc: Exception) -> None:
        log.warning("%s: cannot load %s: %s: %s; %s keeps serving", self.keys.deployment, desired.weights,
                    type(exc).__name__, exc, self.report.model)
        # the error first: a report written meanwhile (its heartbeat runs in a thread) that says
        # the generation failed always says why
        self.report.error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        self.report.failed_generation, self.report.failed_requested_at = desired.generation, desired.requested_at
        self._failed_record = (desired.generation, desired.requested_at)

    def _cfg(self, desired: Desired) -> Any:
        return swapped_cfg(self.base_cfg, desired.weights, desired.card)

    def _desired(self) -> Desired | None:
        """At start: the record, a record made under another config voided (`read_desired`)."""
        return read_desired(self.client, self.keys, self.base_cfg, void_stale=True)

    def _exchange(self) -> Desired | None:
        """One round trip: this replica's report out (its heartbeat), the desired weights in."""
        self.report.ts = time.time() + self._clock_offset
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        pipe.get(self.keys.desired)
        with self._report_lock:  # (`_write_report`)
            if not self._left:
                pipe.hset(self.keys.replicas, self.report.replica, self.report.to_json())
            redis_time, desired, *_ = pipe.execute()
        self._note_clock(redis_time)
        return Desired.read(desired, self.base_cfg)

    def _note_clock(self, redis_time: tuple[int, int]) -> None:
        """Redis's ``TIME`` answer (seconds, microseconds) against this machine's clock."""
        seconds, micros = redis_time
        self._clock_offset = seconds + micros / 1e6 - time.time()

    async def _send(self) -> None:
        self.report.ts = time.time() + self._clock_offset
        try:
            await asyncio.to_thread(self._write_report, self.report.to_json())
        except Exception as exc:
            log.warning("%s: report not written: %s: %s", self.keys.deployment, type(exc).__name__, exc)

    def _write_report(self, report: str) -> None:
        """The report written unless the replica left, in one step with `leave` (a load still
        running after the replica left: a report on its way as it left came after its delete,
        a ghost "loading" replica the API waited for)."""
        with self._report_lock:
            if not self._left:
                self.client.hset(self.keys.replicas, self.report.replica, report)

    async def leave(self) -> None:
        """The replica stops: its report goes (the API stops waiting for it), and none comes again."""
        def delete() -> None:
            with self._report_lock:
                self._left = True
                self.client.hdel(self.keys.replicas, self.report.replica)

        try:
            await asyncio.to_thread(delete)
        except Exception:
            self._left = True
