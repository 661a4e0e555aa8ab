"""Decoder replicas: each conducts the cameras it holds a lease on (ingest → detect → classify →
publish). Detector and classifier handles are injected; all the logic lives in `pipeline/`."""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import os
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from pipeline.assignment import CameraSupervisor
from pipeline.conductor import ClassifierRoute, open_camera
from pipeline.config import CameraConfig, PerceptConfig
from pipeline.models import DetectorInput, model_name
from pipeline.publish import Publisher
from pipeline.registry import CameraRegistry
from pipeline.streams import StreamKeys, redis_from_config

from .logs import route_percept_logs

log = logging.getLogger("percept.decoder")


@serve.deployment(name="decoder")
class DecoderDeployment:
    async def __init__(
        self,
        config: dict[str, Any],
        detector: DeploymentHandle,
        classifiers: dict[str, DeploymentHandle],
    ):
        route_percept_logs()
        # ultralytics' LetterBox is imported by the first frame; import it now, off the event
        # loop, so a camera's first frame does not stall lease timers for ~2 s
        await asyncio.to_thread(importlib.import_module, "ultralytics.data.augment")
        cfg = PerceptConfig.model_validate(config)
        self.config = cfg
        if not cfg.redis.url:
            raise ValueError("redis.url must be resolved before deployment (percept run does this)")
        self.keys = StreamKeys(cfg.redis.stream_prefix)
        client = redis_from_config(cfg.redis)
        self.publisher = Publisher(
            client,
            keys=self.keys,
            maxlen=cfg.redis.maxlen,
            max_buffer_entries=cfg.redis.buffer.max_entries,
            max_buffer_bytes=cfg.redis.buffer.max_bytes,
        ).start()

        async def detect(inp: DetectorInput):
            return await detector.detect.remote(inp)

        self._detect = detect
        self._routes = {
            cat: ClassifierRoute(classify=self._classify_fn(handle), cfg=cfg.classifiers[cat])
            for cat, handle in classifiers.items()
        }
        self._models = {
            "detector": model_name(cfg.detector),
            "classifiers": {cat: model_name(c) for cat, c in cfg.classifiers.items()},
        }
        registry = CameraRegistry(client, self.keys)
        await asyncio.to_thread(registry.seed, cfg.cameras)
        # Every round reads the registry: URLs get their ${VAR} from this replica's environment;
        # an entry that does not validate (or names a variable this replica lacks) is reported
        # failed on its camera hash and skipped, so one bad entry never stops the others.
        self.supervisor = CameraSupervisor(
            functools.partial(registry.runnable, os.environ, self.publisher),
            client=client,
            keys=self.keys,
            start_camera=self._start_camera,
            replicas=cfg.decoder_replicas,
            lease_ttl_s=cfg.decoder.lease_ttl_s,
            publisher=self.publisher,  # fenced: a camera's writes land only while its lease is ours
        )
        self._task = asyncio.get_running_loop().create_task(self.supervisor.run())

    @staticmethod
    def _classify_fn(handle: DeploymentHandle):
        async def classify(crop):
            return await handle.classify.remote(crop)

        return classify

    async def _start_camera(self, camera: CameraConfig):
        return await open_camera(
            camera,
            config=self.config,
            publisher=self.publisher,
            detect=self._detect,
            classifiers=self._routes,
            models=self._models,
        )

    async def status(self) -> dict[str, Any]:
        out = self.supervisor.status()
        out["publisher"] = {
            "pending": self.publisher.pending,
            "connected": self.publisher.stats.connected,
            "dropped": dict(self.publisher.stats.dropped),
        }
        return out

    def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError(f"camera supervisor stopped: {self._task.exception() if not self._task.cancelled() else 'cancelled'}")

    async def __del__(self) -> None:
        await self.supervisor.stop()
        try:
            await asyncio.wait_for(self._task, timeout=20)
        except Exception:
            pass
        self.publisher.close(timeout=5)
