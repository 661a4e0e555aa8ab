"""Opening a camera: the factory of `CameraConductor` (pipeline/conductor.py). It continues
``seq`` and the counters after the camera's last published frame, builds its `VideoSource` (the
detector's input made in the reader thread), wires status events to the camera hash and status
stream, and takes over the open tracks a previous owner of the camera left."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any, Callable, Mapping, Sequence

from .capture import open_capture, probe_fps
from .classify import ClassifierRoute
from .conductor import CameraConductor, CameraCounters, DetectFn
from .config import CameraConfig, PerceptConfig
from .metrics import CameraMetrics
from .models import prepare_frame
from .publish import Publisher
from .frame_slot import LatestFrameSlot
from .source_types import SourceState, StatusEvent, is_file_url, is_hls_url
from .sources import VideoSource
from .track_restore import open_tracking


async def open_camera(
    camera: CameraConfig,
    *,
    config: PerceptConfig,
    publisher: Publisher,
    detect: DetectFn,
    classifiers: Mapping[str, ClassifierRoute | Sequence[ClassifierRoute]],
    models: Mapping[str, Any] | Callable[[Sequence[str]], Mapping[str, Any]],
    metrics: CameraMetrics | None = None,
    view: Any = None,
    kept: Any = None,
) -> CameraConductor:
    """The factory: continues ``seq`` after the last published frame, opens nothing yet (the
    reader thread connects), and wires status events to the camera hash and status stream."""
    seq_start, counters = await asyncio.to_thread(publisher.resume_camera, camera.id)

    def on_status(event: StatusEvent) -> None:
        publisher.camera_state(event.camera, event.state.value, error=event.error, url=camera.shown_url)

    is_file = is_file_url(camera.url)
    slot = LatestFrameSlot()
    # a file's frame rate is probed by its reader thread: a path on a hung mount holds that
    # camera alone, not the supervisor that starts the others
    native_fps = functools.partial(probe_fps, camera.url) if is_file else None
    source = _video_source(camera, config, slot, seq_start=seq_start, on_status=on_status, native_fps=native_fps)
    on_status(StatusEvent(camera.id, SourceState.CONNECTING, None, None, time.time()))
    # the open tracks a previous owner of the camera left, if any, continue
    tracker, events, track_state = await asyncio.to_thread(
        open_tracking, publisher, camera, config.tracker, track_id_max=counters["track_id_max"], is_file=is_file,
        lease_ttl_s=config.decoder.lease_ttl_s)
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
        classify_timeout_s=config.decoder.classify_timeout_s,
        counters=CameraCounters(dropped_before=counters["dropped"], processed=counters["processed"],
                                classify_failed=counters.get("classify_failed", 0)),
        tracker=tracker,
        events=events,
        track_state=track_state,
        slot=slot,
        metrics=metrics,
        view=view,
        kept=kept,
    )


def _video_source(camera: CameraConfig, config: PerceptConfig, slot: LatestFrameSlot, *, seq_start: int,
                  on_status: Callable[[StatusEvent], None],
                  native_fps: Callable[[], float | None] | None) -> VideoSource:
    """The camera's reader: opens the capture in its thread, takes the frames the slot wants."""
    return VideoSource(
        camera.id,
        functools.partial(
            open_capture, camera.id, camera.url,
            open_timeout_s=camera.open_timeout_s, read_timeout_s=camera.read_timeout_s,
            decode=camera.decode, fps=camera.fps, frame_timeout_s=camera.watchdog_s, secrets=camera.secrets,
        ),
        fps=camera.fps,
        is_file=is_file_url(camera.url),
        # (a live HLS stream; a playlist on disk is a file: paced as `realtime` says)
        paced=is_hls_url(camera.url) and not is_file_url(camera.url),
        loop=camera.loop,
        realtime=camera.realtime,
        native_fps=native_fps,
        watchdog_s=camera.watchdog_s,
        sparse=camera.decode == "keyframes",  # (keyframes only: seconds apart by design)
        read_timeout_s=camera.read_timeout_s,
        seq_start=seq_start,
        on_status=on_status,
        secrets=camera.secrets,
        wants_frame=slot.wants_frame,
        wait_for_demand=slot.wait_for_demand if camera.backpressure == "wait" else None,
        # the detector's input is made in the reader thread, only for frames the conductor takes
        prepare=lambda image, meta: prepare_frame(image, config.detector.imgsz, meta.frame_ts, meta.camera),
    )
