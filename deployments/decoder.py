"""Decoder replicas: each conducts the cameras it holds a lease on (ingest → detect → classify →
publish). Detector and classifier handles are injected; all the logic lives in `pipeline/`."""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import os
from typing import Any, Callable

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ApplicationStatus

from pipeline.assignment import CameraSupervisor
from pipeline.camera_open import open_camera
from pipeline.conductor import ClassifierRoute
from pipeline.decoder_status import forget_status, live_decoders, share_status_every
from pipeline.config import CameraConfig, PerceptConfig
from pipeline.frame_share import FrameLender, lending
from pipeline.backends.crops import crop_spec, written_attributes
from pipeline.lifecycle.swap import PublishedModels
from pipeline.metrics import CameraMetrics
from pipeline.models import DetectorInput, ModelError
from pipeline.schema import Detections
from pipeline.publish import Publisher
from pipeline.redact import redact
from pipeline.registry import CameraRegistry
from pipeline.streams import StreamKeys, once_redis_answers, redis_from_config
from pipeline.track_orphans import RemovedCameraSweeper
from pipeline.view import ViewHub
from pipeline.keep import KeptFrame, KeptFrames, NotKept

from .logs import route_percept_logs
from .metrics import RayRecorder, decoder_metrics
from .transport import transport_of, with_transport

log = logging.getLogger("percept.decoder")

STOP_CAMERAS_S = 40.0  # a stopping replica's wait for its cameras to stop and hand over


def merged_detect(handles: list[DeploymentHandle]):
    """Every frame to every detector at once; their objects merged in config order. A frame goes
    on only when all have answered (a failed detector fails the frame, which is retried once).
    With several detectors called by actor calls, a frame sent as pixels is put in the object
    store once and every detector gets the reference (Ray resolves a top-level ObjectRef argument
    before the call runs); a shared-memory handle, or any frame on the gRPC transport (by value),
    goes as it is."""
    by_reference = all(transport_of(h) == "actor" for h in handles)

    async def detect(inp: DetectorInput):
        inp = inp.sent()  # its age on this host's clock: the detector's host may keep another time
        if len(handles) == 1:
            return await handles[0].detect.remote(inp)
        import ray

        # pixels go in the object store once; a shared-memory handle is small enough to inline
        shared = await asyncio.to_thread(ray.put, inp) if by_reference and isinstance(inp.image, np.ndarray) else inp
        answers = await all_or_first_failure([h.detect.remote(shared) for h in handles])
        failed = next((a for a in answers if isinstance(a, Exception)), None)
        return failed if failed is not None else Detections.concat(answers)

    return detect


async def all_or_first_failure(responses: list[Any]) -> list[Any]:
    """Every call's answer; the first that raises is raised at once and the others are cancelled
    (the frame has failed and is sent to every detector again: a healthy detector must not run it
    twice meanwhile, `test_decoder_status::test_a_detector_that_fails_cancels_the_others_calls`)."""
    calls = [asyncio.ensure_future(r) for r in responses]
    try:
        await asyncio.wait(calls, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for response, call in zip(responses, calls):
            if not call.done():
                call.cancel()
                if callable(getattr(response, "cancel", None)):  # a Serve call: cancelled at the replica too
                    response.cancel()
    for call in calls:
        if call.done() and not call.cancelled() and call.exception() is not None:
            raise call.exception()  # type: ignore[misc]
    return [call.result() for call in calls]


def classifier_routes(cfg: PerceptConfig, handles: dict[str, DeploymentHandle],
                      answered: Callable[[str, Any], None] | None = None) -> dict[str, list[ClassifierRoute]]:
    """Per category, its classifiers' routes: the handle, and the crop size, context and minimum
    box, and how a box is fitted, from each model's card (read here, the network itself is loaded by the classifier).
    ``answered(deployment, answers)`` sees every answer (it names the model that gave it)."""
    routes: dict[str, list[ClassifierRoute]] = {}
    for section in cfg.classifier_sections():
        handle = handles[section.deployment]
        spec = crop_spec(section.cfg, models_dir=cfg.models_dir, field=section.field)
        attributes = carried_attributes(section, cfg.models_dir)

        async def classify(crops, handle=handle, deployment=section.deployment):
            answers = await handle.classify.remote(crops)
            if answered is not None:
                answered(deployment, answers)
            return answers

        routes.setdefault(section.category, []).append(ClassifierRoute(
            classify, section.cfg, name=section.deployment, crop_size=spec.size, crop_context=spec.context,
            min_size=spec.minimum, crop_fit=spec.fit, attributes=attributes))
    return routes


def carried_attributes(section: Any, models_dir: str | None) -> frozenset[str] | None:
    """The attributes a classifier writes, which a continued track's answers are sorted by; None
    (nothing carried over) when its card's labels cannot be read: the classifier says why."""
    try:
        return written_attributes(section.cfg, models_dir=models_dir, field=section.field)
    except ModelError as exc:
        log.warning("%s: answers of continued tracks not carried over: %s", section.field, exc)
        return None


async def application_stays(timeout_s: float = 3.0) -> bool:
    """Whether this replica's application stays deployed as the replica stops (Serve scales its
    deployment down, or replaces it with a new version) rather than being deleted (``percept
    run``'s end, ``serve delete``, ``serve shutdown``). An answer that does not come in time
    counts as deleted: the tracks end, as they always did."""
    ctx = serve.get_replica_context()

    def ask() -> bool:
        app = serve.status().applications.get(ctx.app_name)
        return app is not None and app.status != ApplicationStatus.DELETING and ctx.deployment in app.deployments

    try:
        stays = await asyncio.wait_for(asyncio.to_thread(ask), timeout_s)
    except Exception as exc:  # the controller gone or busy: a shutdown
        log.warning("replica stopping; Serve's status unknown (%s): ending its cameras' tracks", type(exc).__name__)
        return False
    log.info("replica stopping; %s: %s its cameras' tracks", "the service stays" if stays else
             "the application or its decoders are deleted", "handing over" if stays else "ending")
    return stays


@serve.deployment(name="decoder")
class DecoderDeployment:
    async def __init__(
        self,
        config: dict[str, Any],
        detectors: dict[str, DeploymentHandle],
        classifiers: dict[str, DeploymentHandle],
    ):
        route_percept_logs()
        # ultralytics (its trackers) is imported when the first camera starts; import
        # it now, off the event loop, so a camera's start does not stall lease timers for ~2 s
        await asyncio.to_thread(importlib.import_module, "ultralytics.data.augment")
        cfg = PerceptConfig.model_validate(config)
        self.config = cfg
        if not cfg.redis.url:
            raise ValueError("redis.url must be resolved before deployment (percept run does this)")
        self.keys = StreamKeys(cfg.redis.stream_prefix)
        client = redis_from_config(cfg.redis)
        self.publisher = Publisher(client, keys=self.keys, maxlen=cfg.redis.maxlen,
                                   max_buffer_entries=cfg.redis.buffer.max_entries,
                                   max_buffer_bytes=cfg.redis.buffer.max_bytes).start()
        self.metrics = CameraMetrics(RayRecorder())  # Prometheus, on Ray's metrics endpoint
        # the live view (pipeline/view.py): JPEGs only while someone watches; blur models load here
        self.views = await asyncio.to_thread(ViewHub.from_config, cfg, client, self.keys,
                                             fence_of=self.publisher.fence_of)
        # Redis restarting as the replica starts (a deploy or rollout bringing both up): waited out
        stopping = functools.partial(getattr, self, "_stopping", False)
        self.kept = KeptFrames(cfg.view.keep_frames, max_bytes=int(cfg.view.keep_mb * 2**20))  # the last published frames per camera (explain)

        # frames to same-machine detectors through shared memory (pipeline/frame_share.py)
        slots = min(64, max(4, cfg.decoder.cameras_per_replica * cfg.decoder.max_inflight))
        self.lender = FrameLender(max_slots=slots) if cfg.decoder.shared_memory else None
        # decoder → detectors and classifiers: Serve's gRPC channel or actor calls (deployments/transport.py)
        detectors = {name: with_transport(h, cfg.decoder.transport) for name, h in detectors.items()}
        classifiers = {name: with_transport(h, cfg.decoder.transport) for name, h in classifiers.items()}
        self.transport = {"detectors": sorted({transport_of(h) for h in detectors.values()}),
                          "classifiers": sorted({transport_of(h) for h in classifiers.values()})}
        self._detect = lending(merged_detect(list(detectors.values())), self.lender)
        # the message's ``model``: the models that produced each frame (they change on a hot swap)
        self._models = await once_redis_answers(functools.partial(PublishedModels, cfg, client),
                                                "reading the published models", stopping=stopping)
        self._routes = await asyncio.to_thread(classifier_routes, cfg, classifiers, self._models.answered)
        registry = CameraRegistry(client, self.keys)
        await once_redis_answers(functools.partial(registry.seed, cfg.cameras), "seeding the camera registry",
                                 stopping=stopping)
        if getattr(self, "_stopping", False):  # Serve stopped it meanwhile (`__del__`): no camera starts here
            self._close_started()
            return
        self.sweeper = RemovedCameraSweeper(
            registry, lambda: Publisher(client, keys=self.keys, maxlen=cfg.redis.maxlen).start(), cfg.tracker,
            lease_ttl_s=cfg.decoder.lease_ttl_s, keep_s=cfg.redis.removed_keep_s)
        # Every round reads the registry: URLs get their ${VAR} from this replica's environment;
        # an entry that does not validate (or names a variable this replica lacks) is reported
        # failed on its camera hash and skipped, so one bad entry never stops the others.
        self.supervisor = CameraSupervisor(
            functools.partial(registry.runnable, os.environ, self.publisher, cfg.cameras,
                              api_local_sources=cfg.security.api_local_sources),
            client=client,
            keys=self.keys,
            start_camera=self._start_camera,
            replicas=cfg.decoder_replicas,
            lease_ttl_s=cfg.decoder.lease_ttl_s,
            publisher=self.publisher,  # fenced: a camera's writes land only while its lease is ours
            # more replicas than the config says (num_replicas raised in the Serve config) share too
            live_replicas=functools.partial(live_decoders, client, self.keys),
            # removed cameras' open tracks (handed over, then nobody took them) end
            end_removed=self.sweeper.sweep,
        )
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self.supervisor.run())
        self.registry = registry
        self._metrics_task = loop.create_task(decoder_metrics(self.metrics, self.supervisor, self.publisher, client,
                                                              cfg.redis.stream_prefix, failed=self.cannot_run))
        # GET /status shows every replica: each shares its status in Redis (pipeline/decoder_status.py)
        self._status_task = loop.create_task(share_status_every(self.status, client, self.keys))

    async def _start_camera(self, camera: CameraConfig):
        conductor = await open_camera(
            camera,
            config=self.config,
            publisher=self.publisher,
            detect=self._detect,
            classifiers=self._routes,
            models=self._models,
            metrics=self.metrics,
            view=self.views.camera(camera.id) if self.views is not None else None,
            kept=self.kept,
        )
        self.metrics.track(conductor)  # its counters count from here (deployments/metrics.py exports them)
        return conductor

    def cannot_run(self) -> dict[str, str]:
        """The cameras that cannot run, and why: entries that do not validate (or name a variable
        this replica lacks), and those whose start failed here while no other replica runs them."""
        return {**self.registry.invalid_now, **self.supervisor.start_errors}

    async def status(self) -> dict[str, Any]:
        out = self.supervisor.status()
        out["cannot_run"] = self.cannot_run()  # (GET /status lists them `failed`: decoder_status.merged_status)
        out["publisher"] = {
            "pending": self.publisher.pending,
            "connected": self.publisher.stats.connected,
            "writing": self.publisher.writing,  # False: its writer thread stopped (the health check fails)
            "refusing": self.publisher.stats.refusing,  # Redis answers but refuses writes for now
            "dropped": dict(self.publisher.stats.dropped),
            "dropped_other": dict(self.publisher.stats.dropped_other),  # state writes, frameless events
            "dropped_events": dict(self.publisher.stats.dropped_events),  # the events those carried, one by one
        }
        lender = self.lender
        out["frames_to_detectors"] = {  # how frames went: a shared-memory slot, or the pixels
            "shared": lender.lent if lender else 0, "pixels": lender.sent_pixels if lender else None,
            "slots": lender.slots if lender else 0, "sharing": bool(lender and lender.enabled)}
        out["transport"] = self.transport  # what the handles were set to (decoder.transport)
        return out

    async def kept_frame(self, camera_id: str, seq: int | None = None) -> KeptFrame | NotKept:
        """Frame ``seq`` (the newest when None) of a camera this replica runs, from its keep
        buffer (`pipeline/keep.py`); `NotKept` says why not (``running`` False: not here)."""
        for gone in set(self.kept.cameras()) - set(self.supervisor.running):
            self.kept.forget(gone)  # stopped or moved: their frames go
        if camera_id not in self.supervisor.running:
            return NotKept(camera_id, seq, False)
        return self.kept.get(camera_id, seq)

    def check_health(self) -> None:
        for task, what in ((self._task, "camera supervisor"), (self._status_task, "status sharing"),
                           (self._metrics_task, "metrics")):
            if task.done():  # (each runs for the replica's life: ended is a fault; Serve restarts the replica)
                raise RuntimeError(f"{what} stopped: {task.exception() if not task.cancelled() else 'cancelled'}")
        publisher = getattr(self, "publisher", None)  # (None once closed)
        if publisher is not None and not publisher.writing:  # (its results and states would queue unwritten)
            failure = publisher.writer_failure
            raise RuntimeError(f"publisher stopped: {type(failure).__name__}: {redact(str(failure))[:300]}")

    async def __del__(self) -> None:
        if not hasattr(self, "_status_task"):  # stopped while it starts: no camera ran here
            self._stopping = True  # (its __init__ may go on from an await: it stops there)
            await asyncio.to_thread(self._close_started)
            return
        self._metrics_task.cancel()
        self._status_task.cancel()
        # a scale-down or a redeploy stops this replica while the service stays: the cameras'
        # open tracks go on at their next owners; when the application is deleted they end
        hand_over = await application_stays()
        await asyncio.to_thread(forget_status, self.publisher.client, self.keys, self.supervisor.owner)
        await self.supervisor.stop(hand_over=hand_over)
        # its cameras' stops (each up to its reader's and flush's timeouts, ~25 s at worst) within
        # Serve's 60 s (graph.py), not cut off midway (a cancelled stop left leases held)
        done, _ = await asyncio.wait({self._task}, timeout=STOP_CAMERAS_S)
        if not done:
            log.warning("cameras not stopped within %.0f s; closing under them", STOP_CAMERAS_S)
            self._task.cancel()
        # (blocking: a flush of what the publishers hold, off the event loop)
        await asyncio.to_thread(self._close_started)

    def _close_started(self) -> None:
        """Close what `__init__` made (all of it, or as far as it got)."""
        for name in ("publisher", "sweeper", "lender", "views"):
            part = getattr(self, name, None)
            if part is None:
                continue
            setattr(self, name, None)  # (closed once: __del__ and a stopped __init__ may both get here)
            if name == "publisher":
                part.close(timeout=5)  # (what it still holds is flushed, or counted as lost)
            else:
                part.close()
