"""Reading detection streams: plain XREAD, or consumer groups with XREADGROUP / XACK / XAUTOCLAIM.

Payloads are JSON only; nothing read from Redis is unpickled or evaluated.

    sub = Subscriber(client, StreamKeys("percept"), ["traffic"], group="alerts", consumer="a1")
    for msg in sub.messages(limit=10):
        handle(msg.payload)
        sub.ack(msg)
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import orjson
import redis

from .backoff import Backoff
from .streams import StreamKeys, reconnect_if_demoted, redis_unavailable

log = logging.getLogger("percept.subscribe")


@dataclass(frozen=True)
class Message:
    stream: str
    entry_id: str
    payload: dict[str, Any]

    @property
    def camera(self) -> str:
        return self.payload["camera"]


class Subscriber:
    def __init__(
        self,
        client: redis.Redis,
        keys: StreamKeys,
        cameras: list[str],
        *,
        group: str | None = None,
        consumer: str | None = None,
        start: str = "$",
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        events: bool = False,
    ):
        """``events``: read the cameras' event streams (``<prefix>:events:<camera>``, schema
        percept.events/v1) instead of their detections."""
        if not cameras:
            raise ValueError("subscribe needs at least one camera id")
        if consumer and not group:
            raise ValueError("--consumer needs --group")
        self.client = client
        # (a camera named twice is read once: its group's second creation was taken for one that existed)
        self.streams = list(dict.fromkeys(keys.events(c) if events else keys.detections(c) for c in cameras))
        self.group = group
        self.consumer = consumer or default_consumer()
        self._own_name = consumer is None  # named for this process: removed from the group when done
        self._pending_at: dict[Any, dict[str, Any]] = {}  # where `_pending_page` goes on, by stream
        # group entries handed out here and not acked, (stream, id): never handed out again here (two
        # cameras' entries may share an id: the publisher's ``<ms>-<seq>``)
        self._unacked: set[tuple[str, str]] = set()
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.joined: list[str] = []  # streams whose group was there already: read on from where it is
        if group:
            self._create_groups({s: start for s in self.streams})
        # "$" means "new from now on": pin it to the current last id once, so entries added
        # between two reads are not skipped (a group's: where it stood, should Redis lose it)
        self._last: dict[str, str] = {s: self._resolve(s, start) for s in self.streams}

    def _resolve(self, stream: str, start: str) -> str:
        if self.group:
            return self._group_at(stream) or start
        if start != "$":
            return start
        last = self.client.xrevrange(stream, count=1)
        if not last:
            return "0-0"
        eid = last[0][0]
        return eid.decode() if isinstance(eid, bytes) else eid

    def _create_groups(self, starts: dict[str, str]) -> None:
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, self.group, id=starts[stream], mkstream=True)
            except redis.ResponseError as exc:
                # Redis refusing writes (OOM, READONLY) refuses this before it looks for the group
                if "BUSYGROUP" not in str(exc) and not (redis_unavailable(exc) and self._group_exists(stream)):
                    raise
                self.joined.append(stream)  # (``start`` was where a new group would have started)

    def _group_info(self, stream: str) -> dict[Any, Any] | None:
        """XINFO GROUPS' entry of this reader's group on the stream; None if there is none (or no
        stream) or it cannot be read (a user allowed no XINFO)."""
        try:
            groups = self.client.xinfo_groups(stream)
        except redis.RedisError:
            return None
        return next((g for g in groups if (g.get("name") or g.get(b"name")) in (self.group, self.group.encode())),
                    None)

    def _group_at(self, stream: str) -> str | None:
        """The group's last delivered id on the stream (made with "$": the stream's top then),
        None if it cannot be read: a group Redis loses is made again there (`_recreate_groups`),
        not at "0", which handed a "$" reader the whole kept history."""
        info = self._group_info(stream)
        at = info and (info.get("last-delivered-id") or info.get(b"last-delivered-id"))
        return at.decode() if isinstance(at, bytes) else at

    def _group_exists(self, stream: str) -> bool:
        return self._group_info(stream) is not None

    def _recreate_groups(self) -> redis.RedisError | None:
        """The groups made again (after Redis lost them); what Redis answered if it cannot do it
        now (READONLY, LOADING, …: an outage). Each
        starts after the last entry read from its stream, or at its beginning if none was: what a
        stream holds now came after what was consumed (the publisher's outage buffer lands as
        soon as Redis is back, likely before this read; "$" would skip it)."""
        try:
            self._create_groups({s: "0" if self._last[s] in ("$", ">") else self._last[s] for s in self.streams})
        except redis.RedisError as exc:
            if not redis_unavailable(exc):
                raise
            return exc
        log.warning("consumer group %s was gone (its stream deleted, or redis restarted without its data?); created again",
                    self.group)
        return None

    def _decode(self, stream: bytes | str, entries: list[Any]) -> list[Message]:
        """The entries as messages; one that is none (deleted while pending, no JSON payload) is
        skipped and, in a group, acked: left pending it came back at every claim, for ever, and
        held its consumer in the group."""
        name = stream.decode() if isinstance(stream, bytes) else stream
        out, unusable = [], []
        for entry_id, fields in entries:
            eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            if not fields:  # deleted while pending (None, or {} as redis-py 8 parses it: no entry has no field)
                unusable.append(eid)
                continue
            raw = fields.get(b"json") or fields.get("json")
            try:  # (orjson: strict JSON, so no 1e400 / NaN read in and printed back as Infinity / NaN)
                payload = orjson.loads(raw)
            except (TypeError, ValueError, RecursionError):  # (orjson.JSONDecodeError is a ValueError)
                log.warning("%s %s: entry without a JSON payload; skipped%s", name, eid, " (acked)" if self.group else "")
                unusable.append(eid)
                continue
            out.append(Message(name, eid, payload))
        if self.group and unusable:
            self.client.xack(name, self.group, *unusable)
        return out

    def _pending_page(self, cap: int) -> list[Message]:
        """Up to ``cap`` entries this consumer read but never acked (it crashed), then entries
        idle on other, dead consumers, claimed with XAUTOCLAIM; each call goes on where the last
        one stopped (`_pending_at`), so a large backlog is neither held in memory at once nor
        claimed beyond what this reader takes. Empty once both are done for every stream."""
        out: list[Message] = []
        for stream in self.streams:
            at = self._pending_at.setdefault(stream, {"after": "0", "cursor": "0-0", "own": True, "claim": True})
            while at["own"] and len(out) < cap:
                own = self.client.xreadgroup(self.group, self.consumer, {stream: at["after"]},
                                             count=min(1000, cap - len(out)))
                entries = [entry for _, part in own or [] for entry in part]
                if not entries:
                    at["own"] = False
                    break
                # (handed out by an earlier call and not acked yet: not handed out twice)
                out.extend(m for m in self._decode(stream, entries) if (m.stream, m.entry_id) not in self._unacked)
                at.setdefault("own_ids", set()).update(e.decode() if isinstance(e, bytes) else e for e, _ in entries)
                gone = [entry_id for entry_id, fields in entries if not fields]
                if gone:  # deleted (trimmed) while pending: acked, so they stop coming back
                    self.client.xack(stream, self.group, *gone)
                at["after"] = entries[-1][0]
            while at["claim"] and len(out) < cap:
                reply = self.client.xautoclaim(stream, self.group, self.consumer, min_idle_time=self.claim_idle_ms,
                                               start_id=at["cursor"], count=min(100, cap - len(out)))
                at["cursor"], claimed = reply[0], reply[1]
                # (XAUTOCLAIM takes this consumer's own idle entries too: those it has just read,
                # or handed out and not acked yet, are not handed out twice)
                mine = at.get("own_ids", set())
                out.extend(m for m in self._decode(stream, claimed)
                           if m.entry_id not in mine and (m.stream, m.entry_id) not in self._unacked)
                if at["cursor"] in (b"0-0", "0-0"):  # one call scans at most 10 × COUNT: none claimed is not the end
                    at["claim"] = False
        return out

    def read(self, count: int = 100) -> list[Message]:
        """One blocking read (up to block_ms) across all streams."""
        if self.group:
            reply = self.client.xreadgroup(
                self.group, self.consumer, {s: ">" for s in self.streams}, count=count, block=self.block_ms
            )
        else:
            reply = self.client.xread(self._last, count=count, block=self.block_ms)
        out: list[Message] = []
        for stream, entries in reply or []:
            msgs = self._decode(stream, entries)
            if entries:
                last = entries[-1][0]
                self._last[stream.decode() if isinstance(stream, bytes) else stream] = (
                    last.decode() if isinstance(last, bytes) else last
                )
            out.extend(msgs)
        return out

    def messages(
        self,
        limit: int | None = None,
        *,
        idle_timeout_s: float | None = None,
        on_unreachable: Callable[[Exception | None], None] | None = None,
    ) -> Iterator[Message]:
        """Messages in stream order; with a group, first what is pending. Stops after ``limit``
        messages, or after ``idle_timeout_s`` without any (an outage counts as none). With
        ``on_unreachable``, a Redis outage is ridden out: it is called with the error when Redis
        goes away and with None when it is back; reading resumes after the last entry seen
        (groups: pending first)."""
        n = 0
        pending: bool | None = None  # reading the group's pending entries first (None: start them over)
        last_seen = time.monotonic()
        # a group reader claims, again and again, what readers that died since it started held
        claim_every_s, next_claim = max(1.0, self.claim_idle_ms / 1000), time.monotonic()
        backoff = Backoff(0.2, 5.0)
        down = False
        while limit is None or n < limit:
            try:
                if pending is None:
                    self._pending_at = {}
                    pending = bool(self.group)
                    next_claim = time.monotonic() + claim_every_s
                elif self.group and not pending and time.monotonic() >= next_claim:
                    self._pending_at = {s: {"after": "0", "cursor": "0-0", "own": False, "claim": True}
                                        for s in self.streams}
                    pending, next_claim = True, time.monotonic() + claim_every_s
                batch = self._pending_page(1000 if limit is None else min(1000, limit - n)) if pending else []
                before = dict(self._last)  # (a plain reader's place, before a read that may hand out fewer)
                if not batch:
                    pending = False
                    batch = self.read(count=100 if limit is None else min(100, limit - n))
            except redis.RedisError as exc:
                if self.group and ("NOGROUP" in str(exc) or str(exc).startswith("UNBLOCKED the stream key no longer")):
                    refused = self._recreate_groups()
                    if refused is None:
                        pending = None  # Redis came back without its data: the group is made again
                        continue
                    exc = refused  # it cannot be made again now (Redis refuses writes): an outage too
                if on_unreachable is None or not redis_unavailable(exc):
                    raise
                reconnect_if_demoted(self.client, exc)  # (a failover behind one address: the new primary next)
                if not down:
                    on_unreachable(exc)
                    down = True
                pending = None  # after an outage a group consumer re-reads what it had not acked
                wait = backoff.next()
                if idle_timeout_s is not None:
                    left = idle_timeout_s - (time.monotonic() - last_seen)
                    if left <= 0:
                        return
                    wait = min(wait, left)  # the deadline is not overslept
                time.sleep(wait)
                continue
            if down:
                on_unreachable(None)  # type: ignore[misc]
                down = False
                backoff.reset()
            if batch:
                last_seen = time.monotonic()
            elif idle_timeout_s is not None and time.monotonic() - last_seen > idle_timeout_s:
                return
            handed, read_at = 0, time.monotonic()
            try:
                while handed < len(batch):
                    if self.group and time.monotonic() - read_at > self.claim_idle_ms / 2000:
                        batch[handed:] = self._kept(batch[handed:], time.monotonic() - read_at)  # (a slow caller)
                        read_at = time.monotonic()
                        if handed >= len(batch):
                            break
                    msg = batch[handed]
                    if self.group:
                        self._unacked.add((msg.stream, msg.entry_id))
                    handed += 1
                    n += 1
                    yield msg
                    if limit is not None and n >= limit:
                        return
            finally:
                if handed < len(batch):  # stopped at ``limit`` (or by the caller, Ctrl-C)
                    if self.group:
                        self._release(batch[handed:], time.monotonic() - read_at)
                    else:
                        self._rewind(before, batch[:handed])

    def _claim_here(self, msgs: list[Message], idle_s: float, **options: Any) -> set[tuple[str, str]]:
        """XCLAIM of these entries to this consumer (JUSTID; ``options``: XCLAIM's), only those
        idle nearly ``idle_s``, as long as they have been idle here: one another reader claimed
        meanwhile (its idle time reset then) stays its. The (stream, id)s claimed."""
        min_idle = max(0, int(idle_s * 1000) - 100)
        claimed: set[tuple[str, str]] = set()
        for stream in dict.fromkeys(m.stream for m in msgs):
            ids = [m.entry_id for m in msgs if m.stream == stream]
            answer = self.client.xclaim(stream, self.group, self.consumer, min_idle, ids, justid=True, **options)
            claimed |= {(stream, c.decode() if isinstance(c, bytes) else c) for c in answer}
        return claimed

    def _kept(self, waiting: list[Message], idle_s: float) -> list[Message]:
        """Of the entries read and not handed out yet (the caller is slow, ``idle_s`` since they
        were read or made fresh), those still this consumer's, made fresh (`_claim_here` resets
        their idle time): left idle in its hands past ``claim_idle_ms``, another reader claimed
        them and both handed them out. (Redis away: all, as they are.)"""
        try:
            kept = self._claim_here(waiting, idle_s)
            kept |= self._trimmed_meanwhile([m for m in waiting if (m.stream, m.entry_id) not in kept])
        except redis.RedisError:
            return waiting
        return [m for m in waiting if (m.stream, m.entry_id) in kept]

    def _trimmed_meanwhile(self, unclaimed: list[Message]) -> set[tuple[str, str]]:
        """Of entries XCLAIM did not give back, those trimmed from the stream meanwhile (the
        publisher's MAXLEN; XCLAIM drops those from the group's pending list since Redis 7, and
        answers without them): still this reader's to hand out, their payload in hand (a slow
        reader near the trimming edge lost them without a word). Not those pending with another
        consumer, nor those still in the stream (another reader claimed, handed out and acked them)."""
        out: set[tuple[str, str]] = set()
        for m in unclaimed:
            pending = self.client.xpending_range(m.stream, self.group, min=m.entry_id, max=m.entry_id, count=1)
            if not pending and not self.client.xrange(m.stream, min=m.entry_id, max=m.entry_id, count=1):
                out.add((m.stream, m.entry_id))
        return out

    def release(self, msgs: list[Message]) -> None:
        """Messages handed out and not acked given back to the group at once (`_release`): the
        caller stops before it is done with them."""
        if self.group:
            self._release(msgs)
            self._unacked.difference_update((m.stream, m.entry_id) for m in msgs)

    def _release(self, unread: list[Message], idle_s: float = 0.0) -> None:
        """Entries read here and never handed out (stopped at ``limit``, by Ctrl-C or SIGTERM)
        are marked idle for ``claim_idle_ms`` (`_claim_here` … IDLE): the next reader of the
        group claims them at once, not after ``claim_idle_ms`` and out of order, nor never when
        it runs shorter than that (under another consumer name, a process's own). Best effort."""
        try:
            self._claim_here(unread, idle_s, idle=self.claim_idle_ms)
        except redis.RedisError:
            pass

    def _rewind(self, before: dict[str, str], handed: list[Message]) -> None:
        """A plain reader's place back to the last entry it handed out of each stream (else where
        it was before the read): one read takes up to ``count`` entries of every stream, and the
        rest of what it took were skipped by the next call."""
        for stream in self.streams:
            last = next((m.entry_id for m in reversed(handed) if m.stream == stream), None)
            self._last[stream] = last or before[stream]

    def ack(self, msg: Message) -> None:
        if self.group:
            self.client.xack(msg.stream, self.group, msg.entry_id)
            self._unacked.discard((msg.stream, msg.entry_id))

    def close(self) -> None:
        """A consumer named for this process (`default_consumer`) leaves its groups when it has
        nothing pending there (what it has is claimed by another reader after ``claim_idle_ms``)."""
        if not (self.group and self._own_name):
            return
        for stream in self.streams:
            if not self.client.xpending_range(stream, self.group, min="-", max="+", count=1, consumername=self.consumer):
                self.client.xgroup_delconsumer(stream, self.group, self.consumer)


def default_consumer() -> str:
    """``<host>-<pid>``: two readers of a group never share a consumer (each would read the
    other's unacked entries as its own) unless they are given one name."""
    return f"{socket.gethostname()}-{os.getpid()}"
