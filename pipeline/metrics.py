"""Prometheus metrics, Ray-free: what percept measures (names, kinds, labels, buckets), a
recorder interface whose default records nothing, and the two places that feed it.

- `CameraMetrics`, one per decoder replica: the conductor calls `frame_published` for every
  frame it publishes (the e2e latency histogram; the capture time of the newest frame, for
  lag), and `collect`, every couple of seconds, turns the counters the pipeline keeps anyway
  (the source's frames read and skipped, the keep-latest slot's drops, failed frames, the
  publisher's stats) into counter increments and sets the gauges. Nothing else on the frame
  path calls it.
- `ModelMetrics`, one per detector / classifier replica: around each batch, its size, the
  inference time, how long each request waited for its batch, and errors.

`deployments/metrics.py` implements `Recorder` with ``ray.util.metrics``. Ray exports every
series on each node's metrics endpoint (``http://<node>:<metrics_export_port>/metrics``) with
a ``ray_`` prefix: ``percept_frames_published_total`` is scraped as
``ray_percept_frames_published_total``. Decoder replicas advertise the endpoints in Redis
(`write_endpoints`), where `percept top` finds them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

from .source_types import SourceState
from .streams import number, redis_now

log = logging.getLogger("percept.metrics")

RAY_PREFIX = "ray_"  # what Ray puts before an application metric's name when it exports it


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    tags: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # histograms: upper bounds

    @property
    def scraped(self) -> str:
        """The name a Prometheus scrape of Ray's endpoint shows."""
        return RAY_PREFIX + self.name


CAM, DEP = ("camera",), ("deployment",)
DROP_REASONS = ("replaced", "skipped", "failed", "fenced")

FRAMES_DECODED = MetricDef("percept_frames_decoded_total", "counter",
                           "frames read from the camera (decoded), before fps sampling", CAM)
FRAMES_SAMPLED = MetricDef("percept_frames_sampled_total", "counter", "frames the fps sampler kept", CAM)
FRAMES_DROPPED = MetricDef(
    "percept_frames_dropped_total", "counter",
    "sampled frames not published, by reason: replaced (a newer frame took its place in the keep-latest "
    "slot), skipped (no free in-flight place, not converted), failed (detection failed), fenced (the "
    "camera's lease was not ours)", ("camera", "reason"))
FRAMES_PUBLISHED = MetricDef("percept_frames_published_total", "counter",
                             "frames written to the camera's detections stream", CAM)
CAMERA_STATE = MetricDef("percept_camera_state", "gauge",
                         "1 for the camera's current state on this replica, 0 for the others", ("camera", "state"))
E2E_LATENCY_MS = MetricDef("percept_e2e_latency_ms", "histogram",
                           "capture to publish of each published frame (latency_ms.total), ms", CAM,
                           (25, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2500, 5000, 10000, 15000, 30000,
                            60000))
CAMERA_LAG_S = MetricDef("percept_camera_lag_seconds", "gauge",
                         "seconds since the capture time of the camera's newest published frame", CAM)
PUBLISHER_BUFFER = MetricDef("percept_publisher_buffer_entries", "gauge",
                             "writes queued in the decoder replica's publisher (the outage buffer)")
PUBLISH_ERRORS = MetricDef("percept_publish_errors_total", "counter", "Redis writes that failed (not retried)")
PUBLISHER_DROPPED = MetricDef("percept_publisher_dropped_total", "counter",
                              "frames the publisher dropped: its outage buffer full, refused by Redis for good, or unwritten at close", CAM)
BATCH_SIZE = MetricDef("percept_batch_size", "histogram", "items per model batch (frames, or crops)", DEP,
                       (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024))
BATCH_MAX = MetricDef("percept_batch_max_size", "gauge", "the replica's max batch size (one series per replica)", DEP)
INFERENCE_MS = MetricDef("percept_inference_ms", "histogram", "model time per batch, ms", DEP,
                         (2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000))
QUEUE_WAIT_MS = MetricDef("percept_queue_wait_ms", "histogram",
                          "request arrival at the replica to its batch's start, ms", DEP,
                          (1, 2, 5, 10, 20, 35, 50, 100, 250, 500, 1000, 2500, 5000))
MODEL_ERRORS = MetricDef("percept_model_errors_total", "counter", "items whose inference failed", DEP)

ALL_METRICS = (FRAMES_DECODED, FRAMES_SAMPLED, FRAMES_DROPPED, FRAMES_PUBLISHED, CAMERA_STATE, E2E_LATENCY_MS,
               CAMERA_LAG_S, PUBLISHER_BUFFER, PUBLISH_ERRORS, PUBLISHER_DROPPED, BATCH_SIZE, BATCH_MAX,
               INFERENCE_MS, QUEUE_WAIT_MS, MODEL_ERRORS)


class Recorder:
    """Where metrics go. This one records nothing: the default, so that pipeline code and unit
    tests run without Ray (deployments/metrics.py has the Ray one)."""

    enabled = False

    def inc(self, metric: MetricDef, value: float, tags: Mapping[str, str]) -> None:
        pass

    def set(self, metric: MetricDef, value: float, tags: Mapping[str, str]) -> None:
        pass

    def observe(self, metric: MetricDef, value: float, tags: Mapping[str, str]) -> None:
        pass


@dataclass
class _Tracked:
    conductor: Any
    seq0: int  # the source's next seq when the camera started here
    last: dict[tuple[str, str], int] = field(default_factory=dict)  # totals exported so far


class CameraMetrics:
    """A decoder replica's camera and publisher metrics (see the module doc)."""

    def __init__(self, recorder: Recorder | None = None, *, clock: Callable[[], float] = time.time):
        self.recorder = recorder or Recorder()
        self._clock = clock
        self._last_frame_ts: dict[str, float] = {}
        self._tracked: dict[str, _Tracked] = {}
        self._publisher_last: dict[tuple[str, str], int] = {}
        self._shown: set[str] = set()  # cameras whose gauges this replica set

    def frame_published(self, camera: str, latency_ms: float) -> None:
        """The conductor's hook, once per frame handed to the publisher."""
        if not self.recorder.enabled:
            return
        self.recorder.observe(E2E_LATENCY_MS, float(latency_ms), {"camera": camera})

    def track(self, conductor: Any) -> None:
        """A camera (re)started here: its conductor's counters count from now. Call before it
        runs (the decoder does, as it starts a camera)."""
        cid = conductor.camera.id
        old = self._tracked.get(cid)
        if old is not None and old.conductor is not conductor:
            self._camera_counters(cid, old)  # what the previous run did since the last collect
        self._tracked[cid] = _Tracked(conductor, conductor.source.next_seq)
        # its lag runs from its newest frame on the stream (a previous owner's, before a move),
        # not from its first frame here: a camera that moved and is still connecting lags
        newest = conductor.publisher.newest_ms(cid)
        self._last_frame_ts[cid] = newest / 1000 if newest else self._last_frame_ts.get(cid, self._clock())
        # resuming a camera restores its cumulative publisher drops from Redis: not new drops
        self._publisher_last[("dropped", cid)] = conductor.publisher.stats.dropped[cid]

    def collect(self, conductors: Mapping[str, Any], publisher: Any = None, failed: Iterable[str] = ()) -> None:
        """Counters' increments since the last call, and the gauges, of the cameras running here
        (``camera id → conductor``), of those that cannot run (``failed``: an entry that does not
        validate, a start that failed here; shown ``failed``) and of the publisher."""
        if not self.recorder.enabled:
            return
        for cid, conductor in conductors.items():
            tracked = self._tracked.get(cid)
            if tracked is None or tracked.conductor is not conductor:  # not tracked: counts from now
                tracked = self._tracked[cid] = _Tracked(conductor, conductor.source.next_seq)
            self._camera_counters(cid, tracked)
            # lag from the newest frame Redis confirmed (handed to the publisher is not published:
            # through an outage, or while Redis refuses writes, the lag grows)
            confirmed = conductor.publisher.stats.confirmed.get(cid)
            if confirmed:
                self._last_frame_ts[cid] = max(self._last_frame_ts.get(cid, 0.0), int(confirmed.split("-")[0]) / 1000)
            self._camera_gauges(cid, SourceState(conductor.state_now))  # (a reader that crashed: failed)
        # moved or removed: this replica shows it no more (its last counts flushed, also of a run
        # that came and went between two collections, never shown)
        failed = set(failed) - set(conductors)
        for cid in (self._shown | set(self._tracked)) - set(conductors):
            tracked = self._tracked.pop(cid, None)
            if tracked is not None:
                self._camera_counters(cid, tracked)
            if cid not in failed:
                self._camera_gauges(cid, None)
        for cid in failed:  # (until 2026-12-07 no series said it: an alert on state="failed" never fired)
            self._camera_gauges(cid, SourceState.FAILED)
        if publisher is not None:
            self._publisher(publisher)

    def _camera_counters(self, cid: str, t: _Tracked) -> None:
        source, tags = t.conductor.source, {"camera": cid}
        totals = [
            (FRAMES_DECODED, tags, source.frames_read),
            (FRAMES_SAMPLED, tags, source.next_seq - t.seq0 + source.skipped),
            (FRAMES_DROPPED, {**tags, "reason": "replaced"}, t.conductor.slot.dropped),
            (FRAMES_DROPPED, {**tags, "reason": "skipped"}, source.skipped),
            (FRAMES_DROPPED, {**tags, "reason": "failed"}, t.conductor.counters.failed),
        ]
        for metric, metric_tags, total in totals:
            key = (metric.name, metric_tags.get("reason", ""))
            self._inc_to(t.last, key, metric, metric_tags, total)

    def _camera_gauges(self, cid: str, state: SourceState | None) -> None:
        for s in SourceState:
            self.recorder.set(CAMERA_STATE, 1.0 if s == state else 0.0, {"camera": cid, "state": s.value})
        if state is None:
            self._shown.discard(cid)
            self.recorder.set(CAMERA_LAG_S, 0.0, {"camera": cid})
            return
        self._shown.add(cid)
        last = self._last_frame_ts.get(cid)
        if last is not None:
            self.recorder.set(CAMERA_LAG_S, max(0.0, self._clock() - last), {"camera": cid})

    def _publisher(self, publisher: Any) -> None:
        stats = publisher.stats
        self.recorder.set(PUBLISHER_BUFFER, float(publisher.pending), {})
        self._inc_to(self._publisher_last, ("errors", ""), PUBLISH_ERRORS, {}, stats.errors)
        for kind, metric, counts in (("published", FRAMES_PUBLISHED, dict(stats.published)),
                                     ("dropped", PUBLISHER_DROPPED, dict(stats.dropped)),
                                     ("fenced", FRAMES_DROPPED, dict(stats.fenced))):
            for cid, total in counts.items():
                tags = {"camera": cid, "reason": "fenced"} if kind == "fenced" else {"camera": cid}
                if kind == "dropped":  # what earlier runs dropped came with the camera (resume_camera): not new,
                    # also when it comes back here after a run elsewhere, before `track` says so
                    key = (kind, cid)
                    self._publisher_last[key] = max(self._publisher_last.get(key, 0), stats.resumed_dropped.get(cid, 0))
                self._inc_to(self._publisher_last, (kind, cid), metric, tags, total)

    def _inc_to(self, last: dict[tuple[str, str], int], key: tuple[str, str], metric: MetricDef,
                tags: Mapping[str, str], total: int) -> None:
        delta = total - last.get(key, 0)
        if delta > 0:
            self.recorder.inc(metric, float(delta), tags)
        last[key] = total


NO_METRICS = CameraMetrics()  # records nothing (a conductor without metrics)


async def collect_every(metrics: CameraMetrics, conductors: Callable[[], Mapping[str, Any]], publisher: Any,
                        interval_s: float = 2.0, failed: Callable[[], Iterable[str]] = tuple) -> None:
    """`CameraMetrics.collect` every ``interval_s`` until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            metrics.collect(conductors(), publisher, failed())
        except Exception:  # metrics never stop a camera
            log.exception("metrics collection failed")


@dataclass
class BatchOutcome:
    results: list[Any] | None = None  # set by the caller: one result (or Exception) per request


class ModelMetrics:
    """A detector's or classifier's replica: batch size, inference ms, queue wait, errors."""

    def __init__(self, deployment: str, recorder: Recorder | None = None):
        self.recorder = recorder or Recorder()
        self.tags = {"deployment": deployment}
        self._arrived: dict[int, float] = {}
        self._max_batch: float | None = None

    def max_batch_size(self, n: int) -> None:
        self._max_batch = float(n)
        self.recorder.set(BATCH_MAX, self._max_batch, self.tags)

    async def keep_gauges(self, every_s: float = 5.0) -> None:
        """Sets the gauges again every ``every_s`` until cancelled: Ray's agent forgets a gauge
        series not set within two export intervals (~20 s), and this one counts the replicas."""
        while True:
            await asyncio.sleep(every_s)
            if self._max_batch is not None:
                self.recorder.set(BATCH_MAX, self._max_batch, self.tags)

    def arrived(self, request: Any) -> None:
        """A request reached the replica (before it waits for a batch)."""
        self._arrived[id(request)] = time.monotonic()

    def left(self, request: Any) -> None:
        self._arrived.pop(id(request), None)

    @contextmanager
    def batch(self, requests: list[Any], *, size: int | None = None) -> Iterator[BatchOutcome]:
        """Around one batch's inference; the caller sets ``outcome.results``. Items that come
        back as exceptions, or all of them if the batch raises, count as errors."""
        now = time.monotonic()
        for request in requests:
            self.recorder.observe(QUEUE_WAIT_MS, (now - self._arrived.get(id(request), now)) * 1000, self.tags)
        self.recorder.observe(BATCH_SIZE, float(len(requests) if size is None else size), self.tags)
        outcome = BatchOutcome()
        t0 = time.perf_counter()
        try:
            yield outcome
        except Exception:  # every item failed: counted in the unit the batch's size is (a classifier's: crops)
            self._errors(len(requests) if size is None else size)
            raise
        finally:
            self.recorder.observe(INFERENCE_MS, (time.perf_counter() - t0) * 1000, self.tags)
        self._errors(_count_errors(outcome.results or []))

    def _errors(self, n: int) -> None:
        if n > 0:
            self.recorder.inc(MODEL_ERRORS, float(n), self.tags)


def _count_errors(results: list[Any]) -> int:
    """Exceptions among the results (a classifier's are lists per request)."""
    return sum(_count_errors(r) if isinstance(r, list) else isinstance(r, Exception) for r in results)


# --- where the metrics endpoints are: advertised in Redis by the decoder replicas --------------

def endpoints_key(prefix: str) -> str:
    return f"{prefix}:metrics:endpoints"


def write_endpoints(client: Any, prefix: str, urls: list[str], ttl_s: float) -> None:
    """The Ray nodes' metrics URLs (a hash url → time seen; it expires unless refreshed)."""
    if not urls:
        return
    key = endpoints_key(prefix)
    clock = redis_now(client)  # Redis's clock: read on another host
    now = f"{clock:.3f}"
    # nodes gone for good (a cluster's nodes come and go) are dropped: the hash never grows
    stale = [k for k, v in client.hgetall(key).items() if clock - number(v) > ENDPOINT_FORGOTTEN_S]
    pipe = client.pipeline(transaction=False)
    if stale:
        pipe.hdel(key, *stale)
    pipe.hset(key, mapping={u: now for u in urls})
    pipe.expire(key, max(1, int(ttl_s)))
    pipe.execute()


ENDPOINT_FORGOTTEN_S = 600.0  # an endpoint not advertised for this long is deleted (`write_endpoints`)


def read_endpoints(client: Any, prefix: str, max_age_s: float = 120.0) -> list[str]:
    """The Ray metrics endpoints advertised in the last ``max_age_s``; only http(s) URLs (anyone
    who can write the hash could have `top` fetch ``file:///etc/…`` and print it in its error)."""
    raw = client.hgetall(endpoints_key(prefix))
    now = redis_now(client)
    urls = (k.decode(errors="replace") for k, v in raw.items() if now - number(v) <= max_age_s)
    return sorted(u for u in urls if u.lower().startswith(("http://", "https://")))
