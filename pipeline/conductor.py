"""The per-camera conductor: source → keep-latest slot → detect → classify crops → publish.

A reader thread pulls frames from the camera's `VideoSource` into a keep-latest slot; the
conductor, on an asyncio loop, takes the newest frame whenever fewer than ``max_inflight`` frames
of this camera are in flight, awaits the detector, sends each category's crops to that category's
classifier, and publishes results strictly in ``seq`` order. Detector and classifiers are injected
as async callables, so this runs the same against Ray Serve handles or local models in a test.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

import numpy as np

from .config import CameraConfig, ClassifierConfig, PerceptConfig
from .models import DetectorInput, prepare_crop, prepare_frame
from .publish import Publisher
from .redact import redact_url
from .schema import Detections, FrameResult
from .tracking import ObjectTracker, TrackAttributeCache
from .sources import (
    Frame,
    LatestFrameSlot,
    SourceState,
    StatusEvent,
    VideoSource,
    is_file_url,
    open_capture,
    probe_fps,
)

log = logging.getLogger("percept.conductor")

DetectFn = Callable[[DetectorInput], Awaitable[Detections]]
ClassifyFn = Callable[[list[np.ndarray]], Awaitable[list[Mapping[str, Any] | Exception]]]


async def _nth(request: "asyncio.Future[list[Any]]", k: int) -> Mapping[str, Any]:
    """The k-th answer of a per-frame classifier request (an item may be an exception)."""
    answer = (await asyncio.shield(request))[k]
    if isinstance(answer, BaseException):
        raise answer
    return answer


@dataclass(frozen=True)
class ClassifierRoute:
    """Where one category's crops go and how they are cut."""

    classify: ClassifyFn
    cfg: ClassifierConfig


@dataclass
class _Order:
    """Per-frame events the next frame waits on: tracker updated, result published."""

    tracked: asyncio.Event = field(default_factory=asyncio.Event)
    published: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class CameraCounters:
    processed: int = 0
    failed: int = 0  # frames whose detection failed after a retry, or cut off at stop
    dropped_before: int = 0  # drops counted by earlier runs of this camera (cumulative counts)


class CameraConductor:
    def __init__(
        self,
        camera: CameraConfig,
        source: VideoSource,
        *,
        detect: DetectFn,
        classifiers: Mapping[str, ClassifierRoute],
        publisher: Publisher,
        imgsz: int,
        models: Mapping[str, Any],
        max_inflight: int,
        detect_timeout_s: float = 30.0,
        stats_interval_s: float = 1.0,
        stop_grace_s: float = 2.0,
        counters: CameraCounters | None = None,
        tracker: ObjectTracker | None = None,
        slot: LatestFrameSlot | None = None,
    ):
        self.camera = camera
        self.source = source
        self.detect = detect
        self.classifiers = dict(classifiers)
        self.publisher = publisher
        self.imgsz = imgsz
        self.models = dict(models)
        self.max_inflight = max_inflight
        self.detect_timeout_s = detect_timeout_s
        self.stats_interval_s = stats_interval_s
        self.stop_grace_s = stop_grace_s
        self.slot = slot or LatestFrameSlot()
        self.counters = counters or CameraCounters()
        self.tracker = tracker
        self._tracked_frames = 0
        # one cache per classified category while tracking: classify once per track
        self._track_cache = (
            {
                cat: TrackAttributeCache(reclassify_every=r.cfg.reclassify_every, forget_after=tracker.track_buffer)
                for cat, r in self.classifiers.items()
            }
            if tracker is not None
            else {}
        )
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()
        self._frame_ready = asyncio.Event()
        self._reader: threading.Thread | None = None
        self._fps_window: list[float] = []

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._reader = threading.Thread(target=self._read_loop, args=(loop,), name=f"reader-{self.camera.id}", daemon=True)
        self._reader.start()
        stats = asyncio.create_task(self._stats_loop())
        previous: _Order | None = None
        sem = asyncio.Semaphore(self.max_inflight)
        try:
            while not self._stopped.is_set():
                await sem.acquire()
                frame = await self._next_frame()
                if frame is None:
                    sem.release()
                    break
                order = _Order()
                task = asyncio.create_task(self._process(frame, previous, order))
                previous = order
                self._inflight.add(task)
                task.add_done_callback(lambda t: (self._inflight.discard(t), sem.release()))
        finally:
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            stats.cancel()
            self.source.stop()
            self._publish_stats()

    async def stop(self) -> None:
        """Stop reading; frames in flight get a short grace (the detector may be gone already)."""
        self._stopped.set()
        self.source.stop()
        self._frame_ready.set()
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=self.stop_grace_s)
            for task in pending:
                task.cancel()
            self.counters.failed += len(pending)

    def _read_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            for frame in self.source.frames():
                self.slot.put(frame)
                loop.call_soon_threadsafe(self._frame_ready.set)
        except Exception as exc:  # never let a camera error escape its thread silently
            log.exception("camera %s: reader crashed", self.camera.id)
            self.publisher.camera_state(self.camera.id, "failed", error=f"reader crashed: {exc}")
        finally:
            self.slot.close()
            try:
                loop.call_soon_threadsafe(self._frame_ready.set)
            except RuntimeError:  # loop already closed
                pass

    async def _next_frame(self) -> Frame | None:
        while True:
            self._frame_ready.clear()  # clear before looking: a put after this sets it again
            frame = self.slot.get(timeout=0)
            if frame is not None:
                return frame
            if self.slot.closed or self._stopped.is_set():
                return None
            await self._frame_ready.wait()

    # --- one frame ---------------------------------------------------------------------------

    async def _process(self, frame: Frame, previous: "_Order | None", mine: "_Order") -> None:
        """Detection and classification overlap across frames; tracking and publishing happen
        strictly in seq order (each frame waits for the previous one at those two points)."""
        result: FrameResult | None = None
        try:
            result = await self._infer(frame, previous, mine)
        except Exception as exc:
            self.counters.failed += 1
            log.warning("camera %s: frame %d dropped: %s: %s", self.camera.id, frame.meta.seq, type(exc).__name__, exc)
        finally:
            mine.tracked.set()
            try:
                if previous is not None:
                    await previous.published.wait()
                if result is not None:
                    total = (time.time() - frame.meta.frame_ts) * 1000
                    result = FrameResult(result.meta, result.objects, result.models, {**result.latency_ms, "total": total})
                    self.publisher.publish(result)
                    self.counters.processed += 1
                    self._fps_window.append(time.monotonic())
            finally:
                mine.published.set()

    async def _infer(self, frame: Frame, previous: "_Order | None", mine: "_Order") -> FrameResult:
        meta = frame.meta
        t_start = time.time()
        queue_ms = (t_start - meta.frame_ts) * 1000
        inp = prepare_frame(frame.image, self.imgsz, meta.frame_ts)
        t0 = time.perf_counter()
        detections = await self._detect_with_retry(inp)
        detect_ms = (time.perf_counter() - t0) * 1000
        if self.tracker is not None:
            if previous is not None:
                await previous.tracked.wait()
            try:
                detections = self.tracker.update(detections, (meta.height, meta.width))
                self._tracked_frames += 1
            finally:
                mine.tracked.set()
        t1 = time.perf_counter()
        detections = await self._classify(frame.image, detections)
        classify_ms = (time.perf_counter() - t1) * 1000
        latency = {"decode": frame.decode_ms, "queue": queue_ms, "detect": detect_ms, "classify": classify_ms}
        return FrameResult(meta, detections, self.models, latency)

    async def _detect_with_retry(self, inp: DetectorInput) -> Detections:
        for attempt in (1, 2):  # one retry: a replica restart or a lost request
            try:
                result = await asyncio.wait_for(self.detect(inp), self.detect_timeout_s)
                if isinstance(result, Exception):
                    raise result
                return result
            except asyncio.CancelledError:
                raise
            except Exception:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2)
        raise AssertionError("unreachable")

    async def _classify(self, image: np.ndarray, detections: Detections) -> Detections:
        """Each category's new (or due) objects go to its classifier in one request per frame;
        tracked objects already classified reuse their answer."""
        jobs: list[tuple[int, "asyncio.Future[Mapping[str, Any]]"]] = []
        for category, route in self.classifiers.items():
            idx = [
                i for i in detections.indices_of(category)
                if min(detections.xyxy[i][2] - detections.xyxy[i][0], detections.xyxy[i][3] - detections.xyxy[i][1])
                >= route.cfg.min_box
            ]
            idx = sorted(idx, key=lambda i: -detections.scores[i])[: route.cfg.max_per_frame]
            cache = self._track_cache.get(category)
            fresh: list[int] = []
            for i in idx:
                track = detections.track_ids[i]
                known = cache.get(track, self._tracked_frames) if cache is not None and track is not None else None
                if known is None:
                    fresh.append(i)
                else:
                    jobs.append((i, known))
            if fresh:
                crops = [prepare_crop(image, detections.xyxy[i], route.cfg.imgsz) for i in fresh]
                request = asyncio.ensure_future(route.classify(crops))
                for k, i in enumerate(fresh):
                    answer = asyncio.ensure_future(_nth(request, k))
                    track = detections.track_ids[i]
                    if cache is not None and track is not None:
                        cache.put(track, self._tracked_frames, answer)
                    jobs.append((i, answer))
            if cache is not None:
                cache.prune(self._tracked_frames)
        if not jobs:
            return detections
        # shield: a shared per-track answer must survive this frame being cancelled at stop
        answers = await asyncio.gather(*(asyncio.shield(job) for _, job in jobs), return_exceptions=True)
        values: dict[int, Mapping[str, Any]] = {}
        for (i, _), answer in zip(jobs, answers):
            if isinstance(answer, BaseException):
                log.warning("camera %s: classifier failed on one crop: %s", self.camera.id, answer)
                continue
            values[i] = answer
        return detections.with_attribute("type", values)

    # --- stats ---------------------------------------------------------------------------------

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval_s)
            try:
                self.source.check_watchdog()
                self._publish_stats()
            except Exception:
                log.exception("camera %s: stats update failed", self.camera.id)

    @property
    def dropped(self) -> int:
        return self.counters.dropped_before + self.slot.dropped + self.source.skipped + self.counters.failed

    @property
    def fps(self) -> float:
        now = time.monotonic()
        self._fps_window = [t for t in self._fps_window if now - t <= 5.0]
        return len(self._fps_window) / 5.0

    def _publish_stats(self) -> None:
        self.publisher.camera_stats(
            self.camera.id,
            fps=f"{self.fps:.2f}",
            dropped=self.dropped,
            processed=self.counters.processed,
            seq=self.source.next_seq - 1,
            url=redact_url(self.camera.url),
        )

    def status(self) -> dict[str, Any]:
        return {
            "camera": self.camera.id,
            "state": self.source.state.value,
            "fps": round(self.fps, 2),
            "dropped": self.dropped,
            "processed": self.counters.processed,
            "inflight": len(self._inflight),
            "last_error": self.source.last_error,
        }


async def open_camera(
    camera: CameraConfig,
    *,
    config: PerceptConfig,
    publisher: Publisher,
    detect: DetectFn,
    classifiers: Mapping[str, ClassifierRoute],
    models: Mapping[str, Any],
) -> CameraConductor:
    """The factory: continues ``seq`` after the last published frame, opens nothing yet (the
    reader thread connects), and wires status events to the camera hash and status stream."""
    seq_start, counters = await asyncio.to_thread(publisher.resume_camera, camera.id)

    def on_status(event: StatusEvent) -> None:
        publisher.camera_state(event.camera, event.state.value, error=event.error, url=redact_url(camera.url))

    is_file = is_file_url(camera.url)
    slot = LatestFrameSlot()
    source = VideoSource(
        camera.id,
        functools.partial(
            open_capture, camera.id, camera.url,
            open_timeout_s=camera.open_timeout_s, read_timeout_s=camera.read_timeout_s,
        ),
        fps=camera.fps,
        is_file=is_file,
        loop=camera.loop,
        realtime=camera.realtime,
        native_fps=await asyncio.to_thread(probe_fps, camera.url) if is_file else None,
        watchdog_s=camera.watchdog_s,
        seq_start=seq_start,
        on_status=on_status,
        wants_frame=slot.is_empty,
    )
    on_status(StatusEvent(camera.id, SourceState.CONNECTING, None, None, time.time()))
    return CameraConductor(
        camera,
        source,
        detect=detect,
        classifiers=classifiers,
        publisher=publisher,
        imgsz=config.detector.imgsz,
        models=models,
        max_inflight=camera.max_inflight or config.decoder.max_inflight,
        detect_timeout_s=config.decoder.detect_timeout_s,
        counters=CameraCounters(dropped_before=counters["dropped"], processed=counters["processed"]),
        tracker=ObjectTracker(config.tracker) if config.tracker.enabled else None,
        slot=slot,
    )
