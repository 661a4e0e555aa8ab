"""A classifier: one deployment per classifier of the config (``classifier-<category>[-<name>]``),
batching crops across frames and cameras: requests that arrive while a batch runs form the next
one (`AdaptiveBatcher` with no camera to wait for: a lone request never waits). Each answer
names the model that gave it (`ModelAnswers`); `percept models swap classifier` replaces the
model at runtime (pipeline/lifecycle/swap.py)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import numpy as np
from ray import serve

from pipeline.autoscale import WARMUP_S, FrameAgeMeter
from pipeline.backends import load_classifier
from pipeline.backends.base import FailingBatches
from pipeline.batching import AdaptiveBatcher, reconfigured
from pipeline.config import PerceptConfig
from pipeline.lifecycle.swap import ModelAnswers, SwapKeys
from pipeline.lifecycle.swap_replica import ModelSwapper
from pipeline.metrics import ModelMetrics
from pipeline.streams import redis_from_config

from .logs import route_percept_logs
from .metrics import RayRecorder


@serve.deployment(name="classifier")
class ClassifierDeployment:
    async def __init__(self, config: dict[str, Any], deployment: str):
        route_percept_logs()
        cfg = PerceptConfig.model_validate(config)
        section = next(s for s in cfg.classifier_sections() if s.deployment == deployment)
        ccfg = section.cfg
        self.category = section.category
        self.meter = FrameAgeMeter(warmup_s=WARMUP_S)
        self.metrics = ModelMetrics(deployment, RayRecorder())
        self.failing = FailingBatches(item="crop")  # (every crop failing for a while: `check_health` fails)
        self.model = ModelSwapper(
            client=redis_from_config(cfg.redis), keys=SwapKeys(cfg.redis.stream_prefix, deployment),
            replica=serve.get_replica_context().replica_id.unique_id, kind="classifier", cfg=ccfg,
            load=functools.partial(load_classifier, models_dir=cfg.models_dir, field=section.field))
        await self.model.start()
        self._swaps = asyncio.get_running_loop().create_task(self.model.follow())
        self.batcher: AdaptiveBatcher[list[np.ndarray], ModelAnswers] = AdaptiveBatcher(self._classify_batch)
        self.name, self.batch = deployment, ccfg.batch
        await self.reconfigure({})  # the config's batches (Serve's user_config, when it has one, next)
        self._gauges = asyncio.get_running_loop().create_task(self.metrics.keep_gauges())
        self.meter.ready()  # crops queued while the model loaded are not load

    @property
    def classifier(self) -> Any:
        """The model serving now (a hot swap replaces it between batches)."""
        return self.model.current

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch size and wait can change at runtime (Serve ``user_config``; `reconfigured`). On the
        event loop (async): Serve runs a sync method in a thread, and the batcher's wake-up is an
        asyncio event."""
        self.batch = reconfigured(self.name, user_config, self.batch, self.batcher, self.metrics.max_batch_size)

    async def classify(self, crops: list[np.ndarray]) -> ModelAnswers:
        """All crops of one frame in one request (one Serve hop per frame, not per object); the
        answers (a mapping or an exception per crop) name the model that gave them."""
        self.meter.waiting += len(crops)
        self.metrics.arrived(crops)
        try:
            return await self.batcher.submit(None, crops)
        finally:
            self.meter.waiting -= len(crops)
            self.metrics.left(crops)

    def check_health(self) -> None:
        """Serve restarts a replica whose model fails every crop (`FailingBatches`): it stayed in
        rotation, and every frame it got lost its attributes."""
        if getattr(self, "failing", None) is not None and (problem := self.failing.problem()):
            raise RuntimeError(f"{self.name}: {problem}")

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Crops waiting, for deployments.autoscaling.VideoLagPolicy (crops carry no capture time)."""
        busy = 0.0 if self.meter.warming_up() else self.batcher.busy_share()
        return {"frames_waiting": self.meter.waiting_now(), "busy": busy}

    async def _classify_batch(self, requests: list[list[np.ndarray]]) -> list[ModelAnswers]:
        # a batch of frames' crop lists, across frames and cameras: one model call for all
        flat = [crop for crops in requests for crop in crops]
        model = self.classifier  # this batch's model: a swap landing meanwhile applies from the next batch
        with self.metrics.batch(requests, size=len(flat)) as batch, self.meter.running(len(flat)):
            batch.results = answers = await asyncio.to_thread(model.classify_batch, flat)
        self.failing.saw(answers)
        out, k = [], 0
        for crops in requests:
            out.append(ModelAnswers(answers[k : k + len(crops)], model=model.name))
            k += len(crops)
        return out

    async def __del__(self) -> None:
        # (Serve may stop a replica while its model loads: only what __init__ made so far)
        for task in ("_swaps", "_gauges"):
            if getattr(self, task, None) is not None:
                getattr(self, task).cancel()
        if getattr(self, "batcher", None) is not None:
            await self.batcher.close()
        if getattr(self, "model", None) is not None:
            await self.model.leave()  # the API stops counting this replica
