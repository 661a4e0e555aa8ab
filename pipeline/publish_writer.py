"""The publisher's writer thread (a mixin of `Publisher`, pipeline/publish.py): it takes batches
off the queue, encodes them, sends them as script calls (`publish_wire`) while encoding the next,
and accounts for the answers: written, kept back while nobody holds a camera's lease, refused,
or back at the head of the queue while Redis is unreachable or refusing writes."""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from typing import Any

import redis

from .lease import REFUSED, UNHELD
from .publish_items import Item, call_command, encode_all, script_calls, take_out
from .publish_outcomes import account
from .publish_stats import events_in
from .redact import redact
from .streams import reconnect_if_demoted, warn_if_evicting

log = logging.getLogger("percept.publish")

RETRY_UNHELD_S = 0.1  # a camera's writes kept back while nobody holds its lease: tried again after this
UNHELD_FENCES_KEPT = 4096  # fences whose first unheld refusal is remembered, at most


class PublisherWriter:
    """`Publisher`'s writer thread (its attributes: the queue, lock, stats, wire, backoff)."""

    def _run(self) -> None:
        try:
            self._write()
        except BaseException as exc:  # a fault of ours: said once, and the replica's health check fails
            self.writer_failure = exc
            log.critical("publisher: the writer thread stopped; nothing more is written (%s: %s)",
                         type(exc).__name__, redact(str(exc)), exc_info=True)
            with self._cond:
                self._cond.notify_all()  # (a flush waiting on it returns)

    def _write(self) -> None:
        stalled = False  # the last batch was all kept back (no lease holder yet)
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._idle = True
                    self._cond.wait(1.0)
                self._idle = False
                if self._closing and (not self._queue or stalled or not self.stats.connected):
                    self._wire.drop()  # closing during an outage: what is left is counted as pending
                    return
                taken, self._queue = take_out(self._queue, self.batch, time.monotonic())  # (`take_batch`)
                self._in_flight = taken  # out of the queue, in flight: never dropped by the bound
                if not taken:  # every camera queued waits to retry writes nobody's lease covers yet
                    self._cond.wait(RETRY_UNHELD_S)
                    continue
            encode_all(taken)
            batch = [item for item in taken if self._encoded(item)]
            calls = script_calls(batch)
            failed = None  # (backing off outside the `except`: its traceback held the batch's packed bytes)
            try:
                results = self._send(calls)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                failed = f"redis unreachable ({redact(str(exc))})"
            except Exception as exc:  # anything else (an answer it cannot parse, NOPERM): the same, never the end
                log.exception("publisher: unexpected error writing to redis; retrying")
                failed = f"redis write failed ({type(exc).__name__}: {redact(str(exc))})"
            if failed is not None:
                self._unreachable(failed, taken, batch)
                taken = batch = calls = []  # (what the bound drops while the writer backs off is not held here)
                self._wait_to_retry()
                continue
            if calls:  # (a batch that sent nothing, every result unencodable, says nothing of Redis)
                if not self.stats.connected:
                    log.info("redis is back; flushing %d buffered results%s", len(self._queue), self._dropped_since())
                self.stats.connected = True
                if not self._eviction_checked:  # (once: a Redis that evicts loses streams, counts and leases)
                    self._eviction_checked = True
                    warn_if_evicting(self.client)
            with self._cond:  # (close() counts what is in flight as lost: not while it is counted here)
                if self._abandoned:
                    return self._answered_late(taken, calls, results)
                held, refusal = account(calls, results, self.stats, self._keep_refused)
                self._note_held_leases(calls, results)
                self._bytes -= sum(item.nbytes for item in taken)
                self._requeue(held)
            self._note_refusal(refusal)
            stalled = bool(batch) and len(held) == len(batch)
            if refusal:
                self._charge_encoded()
                with self._cond:
                    if not self._closing:  # Redis refuses writes for now: everyone waits
                        self._cond.wait(self._backoff.next())

    def _answered_late(self, taken: list[Item], calls: list[list[Item]], results: list[Any]) -> None:
        """The batch close() gave up on was answered after all: what Redis confirmed is counted
        as it is and no longer as lost (call holding the lock)."""
        self._wire.drop()
        held, _ = account(calls, results, self.stats, self._keep_refused)
        kept = {id(item) for item in held}
        answered = [item for item in taken if id(item) not in kept]  # (or not encodable: an error)
        for item in answered:
            (self.stats.dropped if item.is_frame else self.stats.dropped_other)[item.camera] -= 1
            self.stats.dropped_events[item.camera] -= events_in(item)
        if answered:
            log.warning("publisher: %d writes counted as lost at close were answered after it", len(answered))

    def _requeue(self, items: list[Item]) -> None:
        """Items of the batch in flight back at the head of the queue, in order, ahead of newer
        ones (call holding the lock; their bytes are counted again)."""
        self._in_flight = []
        for item in reversed(items):
            self._queue.appendleft(item)
            self._bytes += item.nbytes
        self._cond.notify_all()

    def _send(self, calls: list[list[Item]]) -> list[Any]:
        """The batch's script calls written and their answers read; the results queued next are
        encoded while Redis runs it."""
        if not calls:
            return []
        commands = [call_command(call, self.keys, self.maxlen, self._xadd) for call in calls]
        try:
            self._wire.send(commands)
            self._encode_ahead()
            return self._wire.receive()
        except BaseException:  # sent (a send that failed may have written part of it), its answers
            # lost: Redis may have run it
            for call in calls:
                for item in call:
                    item.sent = True
            raise

    def _unreachable(self, why: str, taken: list[Item], encoded: list[Item]) -> None:
        """Buffer (the batch's ``encoded`` items back at the head of the queue: results stay
        queued, in order, within the buffer's bounds; one that could not be encoded was counted
        once and goes); `_wait_to_retry` next."""
        if self.stats.connected:
            log.warning("%s; buffering %d results", why, len(self._queue) + len(taken))
        self.stats.connected = False
        with self._cond:
            if self._abandoned:  # counted as lost by close(): they stay so
                return
            self._bytes -= sum(item.nbytes for item in taken)
            self._requeue(encoded)
        self._charge_encoded()

    def _dropped_since(self) -> str:
        """The results the outage buffer dropped since the last time this was said (Redis went
        away, or refused writes), by camera, as the end of the line saying it is back ("" if
        none): said nowhere else but in the counters."""
        with self._cond:  # (counted by `_bound` under the lock, from callers' threads)
            dropped, self._outage_drops, self._drop_said = self._outage_drops, Counter(), False
        if not dropped:
            return ""
        cameras = ", ".join(f"{camera} {n}" for camera, n in sorted(dropped.items())[:20])
        return (f"; {sum(dropped.values())} results were dropped meanwhile, the oldest over the buffer's bound "
                f"(redis.buffer; counted in publish_dropped): {cameras}{', …' if len(dropped) > 20 else ''}")

    def _wait_to_retry(self) -> None:
        delay = self._backoff.next()
        with self._cond:
            if not self._closing and not self._abandoned:
                self._cond.wait(delay)

    def _charge_encoded(self) -> None:
        """While Redis is away, the results queued are encoded (once, as they would be when it is
        back) and charged their size on the wire: a result waiting as it was given is charged an
        estimate (`estimated_bytes`) and held several times that, its arrays and attributes (a
        4 MiB bound held 37 MiB of pedestrians with 8 attributes). Over the bound then, the
        oldest go (counted)."""
        with self._cond:
            todo = [item for item in self._queue if item.packed is None and item.entry is not None]
        encode_all(todo)
        with self._cond:  # (every one encoded: the batch tried last and those encoded ahead too)
            for item in self._queue:
                if item.packed is not None and item.entry is not None and not item.settled:
                    self._bytes += item.settle()
            self._bound()

    def _note_refusal(self, refusal: str | None) -> None:
        """Redis answers but refuses writes for now (READONLY, OOM, …): one line when it starts
        and one when it ends; the refused writes stay queued and are tried again after a backoff."""
        if refusal is None:
            self._backoff.reset()
            if self.stats.refusing is not None:
                log.info("redis accepts writes again; flushing %d buffered results%s", len(self._queue),
                         self._dropped_since())
            self.stats.refusing = None
        else:
            if reconnect_if_demoted(self.client, refusal):
                self._wire.drop()  # ours too: the next batch connects again
            if self.stats.refusing is None:
                self.stats.refusing = redact(refusal)
                log.warning("redis refuses writes (%s); buffering %d results", self.stats.refusing, len(self._queue))

    def _encoded(self, item: Item, count: bool = True) -> bool:
        """Encode the item's result if it is not yet; False (counted, logged) if that fails."""
        try:
            item.encode()
            return True
        except Exception as exc:  # a result that cannot be encoded is this frame's error only
            if count:
                self.stats.errors += 1
                log.error("camera %s: a result could not be encoded, not published: %s", item.camera, exc)
            return False

    def _encode_ahead(self) -> None:
        """Encode the results queued next (a failure: `_encoded` counts it)."""
        with self._cond:
            ahead = list(itertools.islice(self._queue, self.batch))
        encode_all(ahead)
        for item in ahead:
            self._encoded(item, count=False)

    def _keep_refused(self, item: Item, code: int) -> bool:
        """A write the lease check refused. Kept (True) while nobody holds the lease, for up to
        the fence's ``hold_s`` from the first of its writes refused so: after an outage longer
        than the TTL our supervisor takes the lease back, and then what was buffered is published.
        Otherwise it is dropped, and with it the writes queued behind it under the same fence
        (a camera removed during the outage: its 10 000 results went one batch per ``hold_s``,
        ~13 minutes holding the buffer). Every other refusal drops it."""
        if code == UNHELD and item.fence is not None:
            now = time.monotonic()
            if len(self._unheld_since) > UNHELD_FENCES_KEPT:  # (fences of cameras long gone)
                self._unheld_since.clear()
            first = self._unheld_since.setdefault(item.fence, now)
            if item.held_since is None or first < item.held_since:
                item.held_since = first
            if item.kept_while_unheld(now, RETRY_UNHELD_S):
                return True
        with self._cond:
            (self.stats.fenced if item.is_frame else self.stats.fenced_other)[item.camera] += 1
        why = "another replica holds its lease" if code == REFUSED else "nobody took its lease back in time"
        self._log_fenced(item.camera, why)
        return False

    def _note_held_leases(self, calls: list[list[Item]], results: list[Any]) -> None:
        """A run of results that got past the lease check: its fence's lease is held (by us)
        again, and a later time nobody holds it starts a new ``hold_s``."""
        for call, result in zip(calls, results):
            if isinstance(result, list) and call[0].entry is not None and call[0].fence is not None:
                self._unheld_since.pop(call[0].fence, None)
