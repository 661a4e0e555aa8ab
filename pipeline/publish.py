"""Publishing to Redis Streams: pipelined XADD, an outage buffer, camera state and status.

Keys (schema v1, a public contract):
- ``<prefix>:detections:<camera>`` — one entry per processed frame, fields ``v=1``, ``camera``,
  ``seq``, ``json``; ``XADD … MAXLEN ~ maxlen``.
- ``<prefix>:camera:<camera>`` — hash: state, fps, dropped, last_error, updated_at, url, seq,
  track_id_max (the highest track id published, so a restarted tracker continues above it),
  processed (frames written, counted by the publishing script itself), seq_published (the
  highest seq written: a restarted camera continues above it).
- ``<prefix>:status`` — one entry per camera state change.

Entry ids are explicit, ``<frame ms>-<seq>``: ordered by capture time like automatic ids, and
Redis itself rejects a second XADD of the same frame (a retry after a timeout whose first try
landed), so a frame is published at most once. A background thread drains a queue in pipelines
(`publish_wire`) and makes each result's JSON itself, for the next batch while Redis runs the
last (~13 µs a result off the caller's thread, a batch's numbers rounded together); while Redis
is unreachable results stay queued in order, bounded by count and bytes (the oldest dropped and
counted), flushed when it is back.

Fencing: once the supervisor tells it a camera's lease (`fence`), every write for that camera is a
Lua script that checks the lease token in the same round-trip (pipeline/lease.py); results of a
camera whose lease another replica holds are refused and counted in ``stats.fenced``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import redis

from .backoff import Backoff
from .lease import FENCED_HSET, FENCED_PUBLISH, Fence
from .publish_items import Item, estimated_bytes, event_ids, evict_oldest, hash_write, publish_entry, resume_point
from .publish_stats import PublisherStats, count_lost
from .publish_wire import Wire, evalsha
from .publish_writer import PublisherWriter
from .redact import redact
from .schema import FrameResult
from .streams import StreamKeys, parse_entry_id, stream_top

log = logging.getLogger("percept.publish")
STATE_AGAIN_S = 10.0  # a camera's last state written again with its numbers this often (`camera_stats`)


class Publisher(PublisherWriter):
    """Thread-backed, ordered, at-most-once publisher with a bounded outage buffer."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: StreamKeys,
        maxlen: int,
        max_buffer_entries: int = 10_000,
        max_buffer_bytes: int = 64 * 2**20,
        status_maxlen: int = 10_000,
        batch: int = 256,
        clock: Callable[[], float] = time.time,
    ):
        self.client = client
        self.keys = keys
        self.maxlen = maxlen
        self.max_entries = max_buffer_entries
        self.max_bytes = max_buffer_bytes
        self.status_maxlen = status_maxlen
        self.batch = batch
        self.clock = clock
        self.stats = PublisherStats()
        self._queue: deque[Item] = deque()  # not sent yet (or sent and kept back), oldest first
        self._in_flight: list[Item] = []  # the batch being written: never dropped by the bound
        self._bytes = 0
        self._index = itertools.count()
        self._instance, self._changes = uuid.uuid4().hex[:12], itertools.count()  # state changes' ids
        self._cond = threading.Condition()
        self._closing = False
        self._abandoned = False  # closed while a write was under way: the writer sends nothing more
        self._closed = False  # close() has returned: a later write is lost at once (counted, logged)
        self._last_ms: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="percept-publisher", daemon=True)
        self.writer_failure: BaseException | None = None  # what stopped the writer thread (`writing`)
        self._idle = False  # the writer waits for an item
        self._eviction_checked = False  # Redis's maxmemory-policy looked at (`streams.warn_if_evicting`)
        self._backoff = Backoff(0.2, 5.0)
        self._fences: dict[str, Fence] = {}
        self._fence_logged: set[str] = set()
        self._unheld_since: dict[Fence, float] = {}  # a fence's first write refused as nobody's (writer thread)
        self._xadd = client.register_script(FENCED_PUBLISH)
        self._last_event: dict[str, tuple[int, int]] = {}
        self._states: dict[str, tuple[dict[str, str], float]] = {}  # camera → its last state change, when sent
        self._outage_drops: Counter = Counter()  # results the buffer's bound dropped, not said yet (`_dropped_since`)
        self._drop_said = False  # the buffer's first drop of this outage logged
        self._hset = client.register_script(FENCED_HSET)
        self._wire = Wire(client, [self._xadd, self._hset])

    # --- producers ---------------------------------------------------------------------------

    def start(self) -> "Publisher":
        self._thread.start()
        return self

    def fence(self, camera: str, key: str, token: str, *, hold_s: float = 20.0) -> None:
        """From now on, write this camera's results only while Redis says ``key`` holds
        ``token`` (called when its lease is acquired)."""
        with self._cond:
            self._fences[camera] = fence = Fence(key, token, hold_s)
            self._fence_logged.discard(camera)
            # (acquired again by the same owner, the fence is the same: a later time nobody holds
            # it starts a new hold_s, though none of its results landed meanwhile)
            self._unheld_since.pop(fence, None)

    def unfence(self, camera: str) -> None:
        """The lease was released here. Later frames of this camera are refused (a conductor still
        finishing); state writes still land unless another replica holds the lease. Results
        already queued keep the fence they were made under."""
        with self._cond:
            fence = self._fences.get(camera)
            if fence is not None:
                self._fences[camera] = replace(fence, released=True)

    def fence_of(self, camera: str) -> Fence | None:
        """The fence this camera's writes are checked against now (None: unchecked)."""
        with self._cond:
            return self._fences.get(camera)

    def newest_ms(self, camera: str) -> int | None:
        """Capture time (ms) of the camera's newest entry known here: published here, or its
        stream's top read when the camera started (`last_published`)."""
        return self._last_ms.get(camera)

    def last_published(self, camera: str) -> tuple[int, int] | None:
        """(ms, seq) of the newest entry on the camera's stream (None if empty); also primes the
        id clock so new ids never go below it. Raises on a Redis error (call at camera start)."""
        newest = self.newest_entry(camera)
        return None if newest is None else newest[0]

    def newest_entry(self, camera: str) -> tuple[tuple[int, int], dict[bytes, bytes]] | None:
        """`last_published`, with the entry's fields."""
        entries = self.client.xrevrange(self.keys.detections(camera), count=1)
        if not entries:
            return None
        ms, seq = parse_entry_id(entries[0][0])
        self._last_ms[camera] = max(self._last_ms.get(camera, 0), ms)
        return (ms, seq), entries[0][1]

    def resume_camera(self, camera: str) -> tuple[int, dict[str, int]]:
        """Where a (re)started camera continues: the next ``seq`` and the counters it had, so
        that drop counts stay cumulative across conductor and replica restarts. Raises while this
        camera's earlier results are still queued here (Redis refusing writes): continuing from
        the stream's top would publish their seqs twice; the start is retried with backoff."""
        if not self.flush(5.0, camera=camera):  # our own last results and stats for this camera land first
            raise RuntimeError(f"camera {camera}: its earlier results are still queued here (redis not taking "
                               f"writes?); it starts once they land")
        last = self.last_published(camera)
        last_event, counters = resume_point(self.client, self.keys, camera)
        # ids above each stream's last generated one, also where consumers emptied it (XTRIM after
        # reading) and this host's clock is behind the last owner's: every frame was refused as
        # "already published" (duplicates), never written, without a word
        detections_top, events_top = (stream_top(self.client, key) for key in
                                      (self.keys.detections(camera), self.keys.events(camera)))
        if detections_top is not None:
            self._last_ms[camera] = max(self._last_ms.get(camera, 0), detections_top[0])
        last_event = max(filter(None, (last_event, events_top)), default=None)
        if last_event is not None:
            self._last_event[camera] = max(self._last_event.get(camera, (0, -1)), last_event)
        with self._cond:
            self.stats.dropped[camera] = max(self.stats.dropped[camera], counters["publish_dropped"])
            self.stats.resumed_dropped[camera] = max(self.stats.resumed_dropped[camera], counters["publish_dropped"])
        # the stream's top, or above the highest seq ever written where the stream was emptied or
        # its newest entries deleted (consumers trimming what they read): a seq is never used twice
        return max(last[1] + 1 if last else 0, counters["seq_published"] + 1), counters

    def publish(self, result: FrameResult, events: Sequence[tuple[str, str]] = (),
                counts: Mapping[str, int] | None = None) -> None:
        """One frame's entry, with the events it caused (``(kind, json)`` pairs) and their counter
        increments, written together in one fenced round-trip."""
        meta = result.meta
        camera = meta.camera
        fence = self._fences.get(camera)
        if fence is not None and fence.released:
            self._refused_here(camera)
            return
        ms = max(int(meta.frame_ts * 1000), self._last_ms.get(camera, 0))
        self._last_ms[camera] = ms
        # the JSON and the highest track id (None here) are made on the writer thread
        # (`Item.encode`), while Redis runs the batch before
        if events or counts:
            self._put_publish(camera, f"{ms}-{meta.seq}", ms, None, meta.seq, result, events, counts,
                              nbytes=estimated_bytes(result) + sum(len(j) + 32 for _, j in events), is_frame=True)
        else:  # the common case, kept short: the frame alone
            self._put(camera, estimated_bytes(result), None, is_frame=True, fence=fence,
                      entry=[f"{ms}-{meta.seq}", meta.seq, result, None, 0, 0])

    def publish_events(self, camera: str, ts: float, events: Sequence[tuple[str, str]],
                       counts: Mapping[str, int] | None = None) -> None:
        """Events without a frame (tracks ended when the camera stops)."""
        if not events or self._refused_here(camera, is_frame=False):
            return
        ms = max(int(ts * 1000), self._last_ms.get(camera, 0))
        self._put_publish(camera, "", ms, 0, "", "", events, counts,
                          nbytes=sum(len(j) + 32 for _, j in events), is_frame=False)

    def _refused_here(self, camera: str, *, is_frame: bool = True) -> bool:
        fence = self._fences.get(camera)
        if fence is not None and fence.released:
            with self._cond:  # a frame (a dropped frame in the metrics), or other writes
                (self.stats.fenced if is_frame else self.stats.fenced_other)[camera] += 1
            self._log_fenced(camera, "its lease was released here")
            return True
        return False

    def _put_publish(self, camera: str, entry_id: str, ms: int, top_track: int | None, seq: int | str,
                     body: FrameResult | str,
                     events: Sequence[tuple[str, str]], counts: Mapping[str, int] | None, *,
                     nbytes: int, is_frame: bool) -> None:
        ids: list[str] = []
        if events:
            ids, self._last_event[camera] = event_ids(self._last_event.get(camera, (0, -1)), ms, len(events))
        entry = publish_entry(entry_id, seq, body, top_track, zip(ids, events), counts)
        self._put(camera, nbytes, None, is_frame=is_frame, fence=self._fences.get(camera), entry=entry)

    def camera_state(self, camera: str, state: str, *, error: str | None = None, **fields: Any) -> None:
        """A state change: the camera hash and one entry on the status stream."""
        now, change = self.clock(), f"{self._instance}-{next(self._changes)}"
        mapping = {"state": state, "updated_at": f"{now:.3f}", "last_error": redact(error or ""), "state_change": change}
        mapping.update({k: str(v) for k, v in fields.items()})
        entry = {"change": change, "camera": camera, "state": state, "error": mapping["last_error"], "ts": f"{now:.3f}"}
        with self._cond:  # (the state kept and queued in one step: `camera_stats` sends it again)
            self._states[camera] = ({k: v for k, v in mapping.items() if k != "updated_at"}, time.monotonic())
            self._put_hash(camera, mapping, entry)

    def camera_stats(self, camera: str, **fields: Any) -> None:
        """Periodic numbers (fps, dropped, …) into the camera hash; no status entry. Every
        `STATE_AGAIN_S` with the camera's last state too (after its last writes, in order): a
        Redis back without its data (restarted empty, the hash deleted) listed every camera
        ``pending`` for good, its live view refused, as a state is written only as it changes."""
        mapping = {k: str(v) for k, v in fields.items()}
        with self._cond:  # (a state change queued between the look and the write would be undone)
            state = self._states.get(camera)
            if state is not None and time.monotonic() - state[1] >= STATE_AGAIN_S:
                mapping = {**state[0], **mapping}
                self._states[camera] = (state[0], time.monotonic())
            mapping["updated_at"] = f"{self.clock():.3f}"
            mapping["publish_dropped"] = str(self.stats.dropped[camera])
            self._put_hash(camera, mapping, None)

    def fenced_hset(self, camera: str, key: str, mapping: Mapping[str, str]) -> None:
        """HSET another key of the camera (its tracker snapshot) in the queue, after everything
        queued before it, checked against the camera's lease like the camera hash."""
        self._put_hash(camera, dict(mapping), None, key=key)

    def _put_hash(self, camera: str, mapping: dict[str, str], entry: dict[str, str] | None, *,
                  key: str | None = None) -> None:
        fence = self._fences.get(camera)
        keys, args = hash_write(fence, self.keys, camera, mapping, entry, key, self.status_maxlen)
        nbytes = 256 if key is None else sum(len(k) + len(str(v)) for k, v in mapping.items())  # a snapshot counts its size
        self._put(camera, nbytes, evalsha(self._hset, keys, args), is_frame=False, fence=fence)

    def _log_fenced(self, camera: str, why: str) -> None:
        if camera not in self._fence_logged:
            self._fence_logged.add(camera)
            log.warning("camera %s: results refused, %s (counted in fenced, other writes in fenced_other)", camera, why)

    def _put(self, camera: str, nbytes: int, command: tuple[Any, ...] | None, *, is_frame: bool,
             fence: Fence | None = None, entry: list[Any] | None = None) -> None:
        with self._cond:
            # (events without a frame stay through an outage like a dropped frame's: `evict_oldest`)
            item = Item(next(self._index), camera, nbytes, command, is_frame, fence, entry,
                        events_kept=entry is not None and not is_frame)
            if self._closed:  # nobody would ever write it
                count_lost([item], self.stats, "given after close()")
                return
            self._queue.append(item)
            self._bytes += nbytes
            self._bound()
            if self._idle:  # the writer sleeps on an empty queue: wake it (else it comes back by itself)
                self._cond.notify()

    def _bound(self) -> None:
        """The outage buffer's bound (`evict_oldest`), call holding the lock; its first drop while
        Redis is away is logged (the line saying it is back gives how many went, by camera)."""
        if len(self._queue) + len(self._in_flight) > self.max_entries or self._bytes > self.max_bytes:
            before = Counter(self.stats.dropped)
            self._bytes -= evict_oldest(self._queue, self.stats, full=lambda freed: (
                len(self._queue) + len(self._in_flight) > self.max_entries or self._bytes - freed > self.max_bytes))
            self._outage_drops.update(self.stats.dropped - before)
            if (not self.stats.connected or self.stats.refusing) and not self._drop_said:
                self._drop_said = True
                log.warning("publisher: the outage buffer is full (redis.buffer: %d results, %d MiB): the oldest "
                            "results are dropped, counted by camera in publish_dropped", self.max_entries,
                            self.max_bytes // 2**20)

    @property
    def writing(self) -> bool:
        """False once the writer thread stopped by a fault (``writer_failure``): what is queued is
        never written, so the decoder's health check fails (Serve restarts it, its cameras move)."""
        return self.writer_failure is None

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._in_flight)

    @property
    def held(self) -> int:
        """Results kept back because nobody holds their camera's lease (yet)."""
        with self._cond:
            return sum(1 for item in itertools.chain(self._in_flight, self._queue) if item.held_since is not None)

    def flush(self, timeout: float = 10.0, *, camera: str | None = None) -> bool:
        """Wait until everything queued so far (of ``camera`` only, if given) is written; False on
        timeout. A writer backing off after an outage retries at once."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = next(self._index) - 1  # consume an index as a marker
            self._cond.notify_all()
            while any(i.index <= target and (camera is None or i.camera == camera)
                      for i in itertools.chain(self._in_flight, self._queue)):
                left = deadline - time.monotonic()
                if left <= 0 or not self.writing:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (``timeout``), then stop the writer; what it could not write
        (Redis unreachable, or refusing) is lost: counted in ``dropped`` / ``dropped_other`` and
        logged as an error, by camera."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():  # a write under way ends by the client's timeouts at the latest
            self._thread.join(timeout=self._write_timeout_s())
        with self._cond:
            if self._thread.is_alive():  # Redis took the connection and never answered: not confirmed
                left, self._queue, self._in_flight, self._bytes = [*self._in_flight, *self._queue], deque(), [], 0
                self._abandoned = self._closed = True  # a late answer takes its writes off the lost (`_answered_late`)
                count_lost(left, self.stats)
                return
            left, self._queue, self._in_flight, self._bytes = [*self._in_flight, *self._queue], deque(), [], 0
            self._closed = True
            count_lost(left, self.stats)

    def _write_timeout_s(self) -> float:
        """How long one write can block: the client's connect and socket timeouts (2 s if unset)."""
        kwargs = self.client.connection_pool.connection_kwargs
        timeouts = [kwargs.get("socket_connect_timeout"), kwargs.get("socket_timeout")]
        return 1.0 + sum(t for t in timeouts if t) if all(timeouts) else 2.0
