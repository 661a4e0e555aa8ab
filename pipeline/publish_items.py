"""The publisher's queue items and how a pipeline batch of them becomes script calls
(pipeline/publish.py; the scripts are in pipeline/lease.py)."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import redis

from .lease import Fence
from .publish_stats import PublisherStats, count_events_lost
from .publish_wire import Command, evalsha, packed_call, resp_args, resp_frame_run, writable
from .redact import redact
from .schema import SCHEMA_VERSION, FrameResult
from .streams import StreamKeys, parse_entry_id, persist_camera_data

log = logging.getLogger("percept.publish")

ITEM_HEAP = 576  # an item's own objects beside its parts' bytes (`Item.settle`): 545-590 measured (tracemalloc)


@dataclass(slots=True)
class Item:
    index: int
    camera: str
    nbytes: int
    command: tuple[Any, ...] | None  # its one script call (None: a result, `entry`)
    is_frame: bool
    fence: Fence | None = None
    entry: list[Any] | None = None  # a result's part of a `FENCED_PUBLISH` call (see lease.py)
    held_since: float | None = None  # monotonic time it was first kept back (lease unheld)
    retry_at: float | None = None  # kept back: not sent again before this monotonic time
    packed: tuple[bytes, ...] | None = None  # `entry` in RESP, in parts (the JSON one of them: `encode`)
    # sent in a batch whose answers were lost (the connection broke after the send): Redis may
    # have run it, so its id refused as written when it is sent again means it landed then
    sent: bool = False
    events_kept: bool = False  # what a frame dropped by the outage buffer carried: its events
    settled: bool = False  # waiting out an outage: packed compactly, charged what it holds (`settle`)

    def events_only(self) -> "Item | None":
        """The events and counter increments this frame's entry carries, without the frame: the
        outage buffer drops a frame and keeps them (a `zone_enter` dropped while its `zone_exit`
        landed left the zone's occupancy below zero for good). None: the frame carries none."""
        entry = self.entry
        if not self.is_frame or entry is None or (entry[4] == 0 and entry[5 + 3 * entry[4]] == 0):
            return None
        rest = entry[4:]
        nbytes = 64 + sum(len(x) for x in rest if isinstance(x, str))
        # its highest track id goes with the events (the script raises track_id_max with it): a
        # track that lived only in dropped frames is not numbered again by a fresh tracker
        top = entry[3] if entry[3] is not None else (
            max(filter(None, entry[2].objects.track_ids), default=0) if isinstance(entry[2], FrameResult) else 0)
        return Item(self.index, self.camera, nbytes, None, False, self.fence, ["", "", "", top, *rest],
                    held_since=self.held_since, retry_at=self.retry_at, sent=self.sent, events_kept=True)

    def merged(self, later: "Item") -> "Item":
        """Two kept events-only items of one camera as one (this one's events first)."""
        def parts(entry: list[Any]) -> tuple[list[Any], list[Any]]:
            ne = entry[4]
            return entry[5:5 + 3 * ne], entry[6 + 3 * ne:]

        events, counts = parts(self.entry)  # type: ignore[arg-type]
        more_events, more_counts = parts(later.entry)  # type: ignore[arg-type]
        top = max(self.entry[3], later.entry[3])  # type: ignore[index]
        entry = ["", "", "", top, (len(events) + len(more_events)) // 3, *events, *more_events,
                 (len(counts) + len(more_counts)) // 2, *counts, *more_counts]
        return Item(self.index, self.camera, self.nbytes + later.nbytes, None, False, self.fence, entry,
                    held_since=self.held_since, retry_at=self.retry_at, events_kept=True)

    def settle(self) -> int:
        """Packed (`encode`) and waiting out an outage: its parts copied to their own size (orjson
        leaves each JSON in a 4 KiB buffer) and charged what it holds, its parts and
        `ITEM_HEAP`; returns the change of its charge."""
        self.packed = tuple(bytes(memoryview(part)) for part in self.packed)  # type: ignore[union-attr]
        size = sum(len(part) for part in self.packed) + ITEM_HEAP
        change, self.nbytes, self.settled = size - self.nbytes, size, True
        return change

    def kept_while_unheld(self, now: float, retry_s: float) -> bool:
        """Refused because nobody holds the lease: kept (True), to be tried again in ``retry_s``,
        for up to its fence's ``hold_s`` (after an outage longer than the TTL our supervisor takes
        the lease back, and then what was buffered is published)."""
        if self.fence is None:
            return False
        if self.held_since is None:
            self.held_since = now
        if now - self.held_since >= self.fence.hold_s:
            return False
        self.retry_at = now + retry_s  # the other cameras' writes go on meanwhile
        return True

    def encode(self, json: bytes | None = None) -> None:
        """``entry`` packed for the wire, once: the writer thread does it, not the caller. The
        result (``entry[2]``) becomes its JSON (``json`` if given: `encode_all`) and a highest
        track id left None (``entry[3]``) is taken from it (raises what the encoder raises)."""
        entry = self.entry
        if entry is None or self.packed is not None:
            return
        body = entry[2]
        if isinstance(body, FrameResult):
            if entry[3] is None:
                entry[3] = max(filter(None, body.objects.track_ids), default=0)  # None and 0 skipped
            body = body.to_json_bytes() if json is None else json
        if len(entry) == 6 and entry[4] == entry[5] == 0:  # a frame alone, the common case
            self.packed = resp_frame_run(entry[0], entry[1], body, entry[3])
        else:
            self.packed = (resp_args([*entry[:2], body, *entry[3:]]),)
        entry[2] = None  # the result is its JSON now: not kept twice while it waits (an outage)


ENCODE_TOGETHER = 32  # results rounded in one array (16-64: ~13 µs a result to JSON; 256: ~18, one by one ~17)


def encode_all(items: Sequence[Item]) -> None:
    """`Item.encode` of each item not yet encoded, their results' JSON made together
    (`FrameResult.many_to_json_bytes`, `ENCODE_TOGETHER` at a time: ~4 µs a result less than
    one by one). A chunk that fails is left to `Item.encode` one by one, where each failure is
    its own item's."""
    todo = [item for item in items if item.packed is None and item.entry is not None
            and isinstance(item.entry[2], FrameResult)]
    for at in range(0, len(todo), ENCODE_TOGETHER):
        chunk = todo[at:at + ENCODE_TOGETHER]
        try:
            texts = FrameResult.many_to_json_bytes([item.entry[2] for item in chunk])  # type: ignore[index]
            for item, text in zip(chunk, texts):
                item.encode(text)
        except Exception:
            continue


def evict_oldest(queue: deque[Item], stats: "PublisherStats", *, full: Callable[[int], bool]) -> int:
    """The outage buffer's bound: the oldest writes are dropped (counted) while ``full(bytes
    freed so far)``. The events and counter increments a dropped frame carried stay, and so do
    events written without a frame (tracks ended at a stop): they keep their places, a camera's
    merged into its oldest such item (one entry of the bound), dropped only once nothing else is
    left. Writes sent in a batch whose answers were lost stay (Redis may have run them: paused, it
    ran them when it woke; evicted, they were counted as dropped though they had landed): the
    bound may be passed by them, one batch at most. Returns the bytes freed."""
    freed, at = 0, 0
    last_kept: dict[tuple[str, Any], int] = {}  # (camera, fence) → its kept item's place in the prefix
    while at < len(queue) and full(freed):
        old = queue[at]
        if old.sent:  # (its retry tells whether it landed)
            at += 1
            continue
        kept = old if old.events_kept else old.events_only()
        if kept is None:  # nothing of it stays
            del queue[at]
            freed += _count_evicted(old, stats)
            continue
        if kept is not old:
            stats.dropped[old.camera] += 1  # the frame goes
        key = (old.camera, old.fence)
        into = last_kept.get(key)
        if into is not None and not (queue[into].sent or kept.sent):
            merged = queue[into].merged(kept)
            freed += queue[into].nbytes + old.nbytes - merged.nbytes
            queue[into] = merged  # (a new item: the writer may be encoding the old one ahead)
            del queue[at]
            continue
        freed += old.nbytes - kept.nbytes
        queue[at] = kept
        last_kept[key] = at
        at += 1
    while full(freed) and (oldest := next((k for k, item in enumerate(queue) if not item.sent), None)) is not None:
        freed += _count_evicted(queue[oldest], stats)
        del queue[oldest]
    return freed


def _count_evicted(old: Item, stats: "PublisherStats") -> int:
    if old.is_frame:
        stats.dropped[old.camera] += 1
    else:  # a state write, or events without a frame: counted apart
        stats.dropped_other[old.camera] += 1
    count_events_lost(old, stats)
    return old.nbytes


def estimated_bytes(result: FrameResult) -> int:
    """What a result's entry will take, for the outage buffer's bound before it is encoded
    (~190 bytes an object with two attributes, ~110 without; measured on the clips)."""
    return 320 + 192 * len(result.objects)


def take_batch(queue: Iterable[Item], size: int, now: float) -> list[Item]:
    """The next batch to send, in queue order, at most ``size`` items, such that no camera's
    writes can land out of order or twice when Redis answers part of a pipeline one way and the
    rest another (it serves other clients between the reads of one pipeline: a lease taken back,
    writes accepted again):
    - a camera whose next item waits to be retried (kept back while nobody holds its lease) is
      left out, so its writes keep their order and the other cameras' go on;
    - a camera gets at most one run of results (one `FENCED_PUBLISH` call, `script_calls`) per
      batch: its items from one that would open a second run (after a state write of the
      camera, or under another fence) wait for the next batch.
    A retried run refused as below the stream's top would be lost (counted as a duplicate)."""
    taken: list[Item] = []
    blocked: set[str] = set()
    run_fence: dict[str, Any] = {}  # camera → the fence of its run of results in this batch
    closed: set[str] = set()  # cameras whose run was followed by a state write
    for item in queue:
        if len(taken) >= size:
            break
        camera = item.camera
        if camera in blocked:
            continue
        if (item.retry_at is not None and item.retry_at > now) or (item.entry is not None and (
                camera in closed or (camera in run_fence and run_fence[camera] != item.fence))):
            blocked.add(camera)
            continue
        if item.entry is not None:
            run_fence.setdefault(camera, item.fence)
        elif camera in run_fence:
            closed.add(camera)
        taken.append(item)
    return taken


def take_out(queue: deque[Item], size: int, now: float) -> tuple[list[Item], deque[Item]]:
    """`take_batch`, and the queue without it (the same deque, its head popped, in the usual case)."""
    taken = take_batch(queue, size, now)
    if all(a is b for a, b in zip(taken, queue)):
        for _ in taken:
            queue.popleft()
        return taken, queue
    chosen = {id(item) for item in taken}
    return taken, deque(item for item in queue if id(item) not in chosen)


def event_ids(last: tuple[int, int], ms: int, n: int) -> tuple[list[str], tuple[int, int]]:
    """``n`` explicit, increasing event entry ids (``<ms>-<k>``) after ``last`` (so a retried
    write is refused), and the new last."""
    last_ms, last_k = last
    k = last_k + 1 if ms <= last_ms else 0
    ms = max(ms, last_ms)
    return [f"{ms}-{k + i}" for i in range(n)], ((ms, k + n - 1) if n else last)


def publish_entry(entry_id: str, seq: int | str, body: Any, top_track: int | None,
                  events: Iterable[tuple[str, tuple[str, str]]], counts: Mapping[str, int] | None) -> list[Any]:
    """One frame's (or events-only) arguments of `FENCED_PUBLISH`: its entry, its events as
    ``(event id, (kind, json))`` and its counter increments (zeros left out)."""
    pairs = list(events)
    entry: list[Any] = [entry_id, seq, body, top_track, len(pairs)]
    for eid, (kind, text) in pairs:
        entry += [eid, kind, text]
    increments = [x for name, inc in counts.items() if inc for x in (name, int(inc))] if counts else []
    return [*entry, len(increments) // 2, *increments]


def hash_write(fence: Fence | None, keys: StreamKeys, camera: str, mapping: Mapping[str, str],
               entry: Mapping[str, str] | None, key: str | None, status_maxlen: int) -> tuple[list[str], list[Any]]:
    """The keys and arguments of one `FENCED_HSET`: the camera hash (or ``key``, another hash of
    the camera) and, if given, one entry on the status stream; checked against the lease strictly
    unless it was released here (then refused only while someone else holds it)."""
    hash_args = flat_args(mapping)
    script_keys = [fence.key if fence else keys.lease(camera), key or keys.camera(camera), keys.status]
    strict = 0 if fence is None or fence.released else 1
    return script_keys, [fence.token if fence else "", strict, len(hash_args), status_maxlen, *hash_args,
                         *flat_args(entry or {})]


def resume_point(client: redis.Redis, keys: StreamKeys, camera: str) -> tuple[tuple[int, int] | None, dict[str, int]]:
    """What a (re)started camera continues from besides its stream's top: its newest event's id
    (``(ms, k)``, None if none) and the counters of its hash. Its data is kept for good again
    (``PERSIST``: a camera removed and then added again under its id before ``redis.removed_keep_s``
    ran out had them set to expire: `track_orphans`)."""
    for refused in persist_camera_data(client, keys, camera):
        log.warning("camera %s: its data may expire while it runs (added again within redis.removed_keep_s of its "
                    "removal): redis refused to keep it (%s)", camera, redact(refused))
    last_event = client.xrevrange(keys.events(camera), count=1)
    raw = client.hgetall(keys.camera(camera))
    names = ("dropped", "processed", "publish_dropped", "classify_failed")
    counters = {k: int(float(raw.get(k.encode(), b"0") or 0)) for k in names}
    counters["track_id_max"] = int(raw.get(b"track_id_max", b"0") or 0)
    counters["seq_published"] = int(raw.get(b"seq_published", b"-1") or -1)
    return (parse_entry_id(last_event[0][0]) if last_event else None), counters


def script_calls(batch: list[Item]) -> list[list[Item]]:
    """The batch as script calls, in pipeline order: a camera's results queued one after the
    other (other cameras' items between them aside) under one fence go in one call; every
    other write is a call of its own. Each camera's writes keep their order."""
    calls: list[list[Item]] = []
    open_call: dict[str, list[Item]] = {}
    for item in batch:
        current = open_call.get(item.camera)
        if item.entry is not None and current is not None and current[0].fence == item.fence:
            current.append(item)
            continue
        calls.append([item])
        if item.entry is not None:
            open_call[item.camera] = calls[-1]
        else:
            open_call.pop(item.camera, None)
    return calls


def call_command(call: list[Item], keys: StreamKeys, maxlen: int, publish_script: Any) -> Command:
    """One script call of `script_calls` as the command sent: a state write's own, or one
    `FENCED_PUBLISH` with every result of the run (encoded: `Item.encode`)."""
    first = call[0]
    if first.entry is None:
        assert first.command is not None
        return first.command
    camera, fence = first.camera, first.fence
    script_keys = [fence.key if fence else keys.lease(camera), keys.detections(camera), keys.camera(camera),
                   keys.events(camera), keys.counts(camera)]
    args: list[Any] = [fence.token if fence else "", maxlen, camera, SCHEMA_VERSION]
    runs = [item.packed for item in call if item.packed is not None and item.entry is not None]
    assert len(runs) == len(call), "every result of a call is encoded first"
    head = evalsha(publish_script, script_keys, args)
    return packed_call(head, runs, sum(len(item.entry or ()) for item in call))


def flat_args(mapping: Mapping[str, Any]) -> list[str]:
    """A mapping as alternating ``key, value`` script arguments, as strings UTF-8 can write (`writable`)."""
    return [writable(str(x)) for kv in mapping.items() for x in kv]
