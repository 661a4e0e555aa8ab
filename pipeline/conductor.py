"""The per-camera conductor: source → keep-latest slot → detect → classify crops → publish.

A reader thread pulls frames from the camera's `VideoSource` into a keep-latest slot; the
conductor, on an asyncio loop, takes the newest frame whenever fewer than ``max_inflight`` frames
of this camera are in flight, awaits the detector, sends each category's crops to that category's
classifier (`pipeline/classify.py`, bounded by a timeout), and publishes results strictly in
``seq`` order. Detector and classifiers are injected as async callables, so this runs the same
against Ray Serve handles or local models in a test. `pipeline/camera_open.py` opens a camera.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence

from .classify import ClassifierRoute as ClassifierRoute  # re-exported: decoders build routes
from .classify import CropClassification
from .conductor_detect import detect_with_retry
from .conductor_stats import CameraCounters, ConductorStats
from .config import CameraConfig
from .events import Event, EventEngine, events_json, margins_of
from .geometry import GeometryError
from .metrics import NO_METRICS, CameraMetrics
from .models import DetectorInput, prepare_frame
from .publish import Publisher
from .redact import redact
from .schema import Detections, FrameMeta, FrameResult
from .frame_slot import LatestFrameSlot, thread_ended
from .source_types import Frame
from .sources import VideoSource
from .track_quiet import ConductorTracks
from .track_state import TrackSnapshots
from .tracking import ObjectTracker

log = logging.getLogger("percept.conductor")

DetectFn = Callable[[DetectorInput], Awaitable[Detections]]


@dataclass
class _Order:  # per-frame events the next frame waits on: tracker updated, result published
    tracked: asyncio.Event = field(default_factory=asyncio.Event)
    published: asyncio.Event = field(default_factory=asyncio.Event)
    counted: bool = False  # counted as processed or failed (a frame cut off at stop is counted once)


class CameraConductor(ConductorStats, ConductorTracks):
    def __init__(
        self,
        camera: CameraConfig,
        source: VideoSource,
        *,
        detect: DetectFn,
        classifiers: Mapping[str, ClassifierRoute | Sequence[ClassifierRoute]],
        publisher: Publisher,
        imgsz: int,
        models: Mapping[str, Any] | Callable[[Sequence[str]], Mapping[str, Any]],
        max_inflight: int,
        detect_timeout_s: float = 30.0,
        classify_timeout_s: float = 10.0,
        stats_interval_s: float = 1.0,
        stop_grace_s: float = 2.0,
        counters: CameraCounters | None = None,
        tracker: ObjectTracker | None = None,
        slot: LatestFrameSlot | None = None,
        events: EventEngine | None = None,
        track_state: TrackSnapshots | None = None,
        metrics: CameraMetrics | None = None,
        view: Any = None,
        kept: Any = None,
    ):
        self.camera = camera
        self.source = source
        self.detect = detect
        self.publisher = publisher
        self.imgsz = imgsz
        # the message's ``model``: fixed, or built per frame from the detector models that
        # produced it (`pipeline.lifecycle.swap.PublishedModels`: models change at runtime)
        self.models = models if callable(models) else dict(models)
        self.max_inflight = max_inflight
        self.detect_timeout_s = detect_timeout_s
        self.stats_interval_s = stats_interval_s
        self.stop_grace_s = stop_grace_s
        self.slot = slot or LatestFrameSlot()
        self.counters = counters or CameraCounters()
        self.tracker = tracker
        self.events = events  # track, zone and line events (needs the tracker)
        self.track_state = track_state  # snapshots of both, so the camera's next owner continues its tracks
        self.metrics = metrics or NO_METRICS  # e2e latency and lag per published frame
        self.view = view  # pipeline.view.CameraView: offered each published frame (draws only when watched)
        self.kept = kept  # pipeline.keep.KeptFrames: the last published frames, for `percept explain`
        self._last: FrameMeta | None = None  # the newest published frame
        self._tracked_seq: int | None = None  # the newest tracked frame's seq
        self._keep_tracks = False  # handed over (`stop`): its tracks go on at its next owner
        self._alive: dict[int, tuple[set[int], dict]] = {}  # seq → the tracker's ids and origins after that frame
        self._tracked_frames = 0
        self._quiet_since = time.monotonic()  # (monotonic) the last frame tracked, or the run's start
        self.classification = CropClassification(
            camera.id, classifiers, timeout_s=classify_timeout_s,
            track_buffer=tracker.track_buffer if tracker is not None else None,
        )
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()
        self._frame_ready = asyncio.Event()
        self._reader: threading.Thread | None = None
        self._failure: GeometryError | None = None  # why the camera cannot run (run() raises it)
        self._reader_error: Exception | None = None  # the reader thread's crash (run() raises it)
        self.read_to_end = False  # a file read to its end, marked so in its hash (`_read_to_its_end`)
        self._fps_window: list[float] = []
        self._fps_since: float | None = None  # (monotonic) when this run began: its fps over no more than it
        self._taken_at: dict[int, float] = {}  # seq → time.monotonic() of its take, while in flight
        self._hold_s: float | None = None  # how long a frame holds its in-flight place (moving average)

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Conducts the camera until stopped or its source ends (a file, a permanent failure).
        If the reader thread crashed, raises its exception once cleaned up, so the supervisor
        sees a dead task and restarts the camera."""
        loop = asyncio.get_running_loop()
        if self.events is not None and self._tracked_frames == 0:  # continued tracks keep their answers
            self.classification.seed(self.events.track_attributes(), self._tracked_frames)
        self._reader_error = None
        self._fps_since = self._quiet_since = time.monotonic()
        self._reader = threading.Thread(target=self._read_loop, args=(loop,), name=f"reader-{self.camera.id}", daemon=True)
        self._reader.start()
        stats = asyncio.create_task(self._stats_loop())
        previous: _Order | None = None
        ended = False
        sem = asyncio.Semaphore(self.max_inflight)
        try:
            while not self._stopped.is_set():
                await sem.acquire()
                frame = await self._next_frame()
                if frame is None or not self._fits(frame.meta):
                    self.counters.failed += frame is not None  # (read, and counted: neither detected nor published)
                    sem.release()
                    ended = frame is None and not self._stopped.is_set()  # its source ended, nobody stopped it
                    break
                order = _Order()
                task = asyncio.create_task(self._process(frame, previous, order))
                previous = order
                self._inflight.add(task)
                task.add_done_callback(lambda t: (self._inflight.discard(t), sem.release()))
        finally:
            stats.cancel()
            try:
                await self._wind_down(ended)
            except asyncio.CancelledError:  # given up on (the supervisor's stop timed out): its reader
                self.source.stop()  # says nothing more: the camera may run again, here or elsewhere
                self.source.detach()
                if self.kept is not None:
                    self.kept.forget(self.camera.id)
                raise
        if self._reader_error is not None:
            raise self._reader_error
        if self._failure is not None:
            raise self._failure  # the supervisor tries again (with backoff): the zones may be fixed by then

    async def _wind_down(self, ended: bool) -> None:
        """After the last frame taken: frames in flight end, the reader stops, its tracks are left
        for the next owner (or ended), the last state and counters are written."""
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        self.source.stop()
        self._leave_tracks()
        # the reader's last state change lands while this replica still holds the lease
        await thread_ended(self._reader, self.camera.read_timeout_s + 1)
        self._last_state()
        self.read_to_end = ended and self._read_to_its_end()
        self._publish_stats(read_to_its_end=self.read_to_end, stopped=True)
        if self.kept is not None:
            self.kept.forget(self.camera.id)  # its frames go with it (`percept explain` keeps)

    def _last_state(self) -> None:
        """``stopped`` for a reader still opening or reading once stopped: it reports nothing
        more (it cannot write over the camera's next owner). A failure here was said when it
        happened, and its reader detached then."""
        if self._failure is None and self._reader.is_alive():
            self.source.detach()
            self.publisher.camera_state(self.camera.id, "stopped", url=self.camera.shown_url)

    async def stop(self, *, keep_tracks: bool = False) -> None:
        """Stop reading; frames in flight get a short grace (the detector may be gone already).
        ``keep_tracks``: the camera is handed over to another replica, which continues its tracks."""
        self._keep_tracks = keep_tracks
        self._stopped.set()
        self.source.stop()
        self._frame_ready.set()
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=self.stop_grace_s)
            for task in pending:
                task.cancel()  # (each counts itself as failed unless it was counted: `_process`)

    def _read_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            for frame in self.source.frames():
                self.slot.put(frame)
                loop.call_soon_threadsafe(self._frame_ready.set)
        except Exception as exc:  # never let a camera error escape its thread silently
            secrets = self.camera.secrets  # an error may quote the password in its own words
            log.error("camera %s: reader crashed: %s", self.camera.id,
                      redact("".join(traceback.format_exception(exc)).rstrip(), secrets))
            self._reader_error = exc  # run() raises it: the camera's task ends with this error
            if not self.source.detached:  # (a reader left behind at stop: the camera has moved on)
                self.publisher.camera_state(self.camera.id, "failed", error=self._last_error())
        finally:
            self.slot.close()
            try:
                loop.call_soon_threadsafe(self._frame_ready.set)
            except RuntimeError:  # loop already closed
                pass

    async def _next_frame(self) -> Frame | None:
        """The newest frame read. The slot asks the reader for frames while this camera has a
        free in-flight place. Once a take fills the last one it asks again only from when the
        oldest frame in flight should be done (its take + the usual hold time): frames read
        before are skipped unconverted, and the next take gets the newest one read."""
        self.slot.want(True)
        while True:
            self._frame_ready.clear()  # clear before looking: a put after this sets it again
            if self._stopped.is_set():  # stopping: start no new frame
                return None
            closed = self.slot.closed  # before the look: a last frame put before the close is taken
            frame = self.slot.get(timeout=0)
            if frame is not None:
                self._taken_at[frame.meta.seq] = time.monotonic()
                if len(self._inflight) + 1 >= self.max_inflight:  # run() holds this place now
                    oldest = min(self._taken_at.values())
                    self.slot.want(False, at=None if self._hold_s is None else oldest + self._hold_s)
                return frame
            if closed:
                return None
            if self.slot.closed:
                continue  # closed since the look: after a last frame, maybe
            await self._frame_ready.wait()

    # --- one frame ---------------------------------------------------------------------------

    async def _process(self, frame: Frame, previous: "_Order | None", mine: "_Order") -> None:
        """`_steps`; a frame cut off at stop() counts as failed once (one failed already counted twice)."""
        try:
            await self._steps(frame, previous, mine)
        except asyncio.CancelledError:
            self.counters.failed += 0 if mine.counted else 1
            mine.counted = True
            raise

    async def _steps(self, frame: Frame, previous: "_Order | None", mine: "_Order") -> None:
        """Detection and classification overlap across frames; tracking and publishing happen
        strictly in seq order (each frame waits for the previous one at those two points)."""
        result: FrameResult | None = None
        try:
            result = await self._infer(frame, previous, mine)
        except Exception as exc:
            mine.counted = True
            self.counters.failed += 1
            log.warning("camera %s: frame %d dropped: %s: %s", self.camera.id, frame.meta.seq, type(exc).__name__, exc)
            if previous is not None and not mine.tracked.is_set():  # failed before tracking: the next frame
                await previous.tracked.wait()  # is tracked after the one before this, not ahead of it
        finally:
            mine.tracked.set()
            try:
                if previous is not None:
                    await previous.published.wait()
                if result is not None:
                    mine.counted = True  # (processed, or failed publishing: `_finish`)
                    self._finish(frame, result)
            finally:
                mine.published.set()
                self._alive.pop(frame.meta.seq, None)
                self._place_freed(frame.meta.seq)

    def _finish(self, frame: Frame, result: FrameResult) -> None:
        """The frame published (in seq order), shown and kept. A fault publishing it (events,
        tracker state) costs this frame only, counted as failed; one of the view, logged only."""
        total = (time.time() - frame.meta.frame_ts) * 1000
        result = FrameResult(result.meta, result.objects, result.models, {**result.latency_ms, "total": total})
        try:
            self._publish(result)
        except Exception:
            self.counters.failed += 1
            log.exception("camera %s: frame %d not published", self.camera.id, frame.meta.seq)
            return
        self.counters.processed += 1
        self._fps_window.append(time.monotonic())
        try:
            if self.view is not None:
                self.view.offer(frame.image, result, self.camera, self._events_geometry(result.meta))
            if self.kept is not None:
                self.kept.keep(frame.image, result)
        except Exception:  # the live view or the explain keep: never the frame's fault
            log.exception("camera %s: frame %d: live view / keep failed", self.camera.id, frame.meta.seq)

    def _events_geometry(self, meta: FrameMeta) -> Any:
        """The zones and lines this frame's events were judged by (pixel ones scaled after a
        change of resolution), for the live view to draw; None without events."""
        try:
            return self.events.geometry(meta.width, meta.height) if self.events is not None else None
        except GeometryError:  # (the camera fails on it: said there)
            return None

    def reconfigure(self, camera: CameraConfig) -> None:
        """The camera's zones, lines, anchor or margins changed at runtime: applied from the
        next frame on, without restarting the camera (its source and tracks go on)."""
        self.camera = camera
        if self.events is not None:
            self.events.reconfigure(camera.zones, camera.lines, anchor=camera.anchor, **margins_of(camera))
            if self.track_state is not None:
                self.track_state.geometry_changed()

    def _publish(self, result: FrameResult) -> None:
        """The frame, with the events it causes and their counters, in one write (in seq order)."""
        events: list[Event] = []
        if self.events is not None:
            try:
                events = self.events.update(result, *self._alive.pop(result.meta.seq, (None, None)))
            except GeometryError as exc:  # (`_fits` checked the frame's size before it was detected)
                self._fail(exc)
                raise
        counts = self.events.take_counts() if self.events is not None else None
        self.publisher.publish(result, events_json(events), counts)
        if self.track_state is not None and self.events is not None:
            self.track_state.published(result.meta, self.events)  # queued after the frame it describes
        self.metrics.frame_published(self.camera.id, result.latency_ms.get("total", 0.0))
        self._last = result.meta

    def _fits(self, meta: FrameMeta) -> bool:
        """The zones and lines fit the frame (else the camera fails before it is detected)."""
        try:
            if self.events is not None:
                self.events.geometry(meta.width, meta.height)
            return True
        except GeometryError as exc:
            self._fail(exc)
            return False

    def _fail(self, exc: GeometryError) -> None:
        """It cannot run as configured: it stops, run() raises why (tried again with backoff)."""
        if self._failure is not None:
            return
        self._failure = exc
        self.source.detach()  # its reader's "stopped" must not hide why
        self.publisher.camera_state(self.camera.id, "failed", error=str(exc), url=self.camera.shown_url)
        self._stopped.set()
        self._frame_ready.set()

    def _place_freed(self, seq: int) -> None:
        taken = self._taken_at.pop(seq, None)
        if taken is not None:
            held = time.monotonic() - taken
            self._hold_s = held if self._hold_s is None else 0.7 * self._hold_s + 0.3 * held

    async def _infer(self, frame: Frame, previous: "_Order | None", mine: "_Order") -> FrameResult:
        meta = frame.meta
        t_start = time.time()
        queue_ms = (t_start - meta.frame_ts) * 1000
        inp = frame.prepared  # letterboxed in the reader thread (open_camera); else here
        if not isinstance(inp, DetectorInput):
            inp = prepare_frame(frame.image, self.imgsz, meta.frame_ts, meta.camera)
        t0 = time.perf_counter()
        detections = await detect_with_retry(self.detect, inp, self.detect_timeout_s)
        detect_ms = (time.perf_counter() - t0) * 1000
        infer_ms = detections.infer_ms  # of it, the detector replica's own time (the rest: Serve, the batch wait)
        t_track = time.perf_counter()
        if self.tracker is not None:
            if previous is not None:
                await previous.tracked.wait()
            try:
                detections = self.tracker.update(detections, (meta.height, meta.width), ts=self.tracker.time_of(meta),
                                                 steady_ts=meta.steady_ts)
                self._tracked_frames += 1
                self._tracked_seq = meta.seq
                self._quiet_since = time.monotonic()
                if self.events is not None:
                    self._alive[meta.seq] = (self.tracker.alive_ids(), self.tracker.origins)
                if self.track_state is not None:
                    self.track_state.tracked(meta.seq, self.tracker)
            finally:
                mine.tracked.set()
        t1 = time.perf_counter()
        detections, unclassified = await self.classification(frame.image, detections, self._tracked_frames)
        if unclassified:
            self.counters.classify_failed += 1
        classify_ms = (time.perf_counter() - t1) * 1000
        latency = {"decode": frame.decode_ms, "queue": queue_ms, "detect": detect_ms,
                   **({"infer": infer_ms} if infer_ms is not None else {}),
                   "track": (t1 - t_track) * 1000, "classify": classify_ms}
        # after classification: each classifier is named by its latest answer (this frame's among them)
        models = self.models(detections.model_names) if callable(self.models) else self.models
        return FrameResult(meta, detections, models, latency)
