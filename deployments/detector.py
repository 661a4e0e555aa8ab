"""A detector: a stateless batch server. Frames from every camera are batched together; each
detector of the config is its own deployment (``detector``, ``detector-<name>``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from dataclasses import replace
from typing import Any

from ray import serve

from pipeline.autoscale import WARMUP_S, FrameAgeMeter
from pipeline.backends import load_detector
from pipeline.backends.base import FailingBatches
from pipeline.batching import AdaptiveBatcher, reconfigured
from pipeline.config import PerceptConfig
from pipeline.frame_share import FrameReader, NotShared
from pipeline.lifecycle.swap import SwapKeys
from pipeline.lifecycle.swap_replica import ModelSwapper
from pipeline.metrics import ModelMetrics
from pipeline.models import DetectorInput
from pipeline.schema import Detections
from pipeline.streams import redis_from_config

from .logs import route_percept_logs
from .metrics import RayRecorder


@serve.deployment(name="detector")
class DetectorDeployment:
    async def __init__(self, config: dict[str, Any], deployment: str = "detector"):
        route_percept_logs()
        cfg = PerceptConfig.model_validate(config)
        section = next(s for s in cfg.detector_sections() if s.deployment == deployment)
        # the model; `percept models swap` replaces it at runtime (pipeline/lifecycle/swap.py)
        self.model = ModelSwapper(
            client=redis_from_config(cfg.redis), keys=SwapKeys(cfg.redis.stream_prefix, deployment),
            replica=serve.get_replica_context().replica_id.unique_id, kind="detector", cfg=section.cfg,
            load=functools.partial(load_detector, models_dir=cfg.models_dir, field=section.field))
        await self.model.start()
        self._swaps = asyncio.get_running_loop().create_task(self.model.follow())
        self.frames = FrameReader()  # frames a decoder on this machine lends (pipeline/frame_share.py)
        self._swept = asyncio.get_running_loop().create_task(self.frames.keep_swept())  # (idle mappings let go)
        self.meter = FrameAgeMeter(warmup_s=WARMUP_S)
        self._captured: dict[int, float | None] = {}  # id of a frame here → its capture (`detect`)
        self.metrics = ModelMetrics(deployment, RayRecorder())
        # a batch leaves once every camera sending here has a frame in it, or when full, or
        # after batch_wait_ms, and at once while the model is busy less than 3/4 of the time
        # (pipeline/batching.py)
        self.batcher = AdaptiveBatcher(self._detect_batch, wait_above_busy=0.75)
        self._one_batch = asyncio.Lock()  # for a model that runs one batch at a time
        self.failing = FailingBatches()
        self.name, self.batch = deployment, section.cfg.batch
        await self.reconfigure({})  # the config's batches (Serve's user_config, when it has one, next)
        self._gauges = asyncio.get_running_loop().create_task(self.metrics.keep_gauges())
        self.meter.ready()  # frames queued while the model loaded are not lag

    @property
    def detector(self) -> Any:
        """The model serving now (a hot swap replaces it between batches)."""
        return self.model.current

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch size and wait can change at runtime (Serve ``user_config``; `reconfigured`). On the
        event loop (async): Serve runs a sync method in a thread, and the batcher's wake-up is an
        asyncio event."""
        self.batch = reconfigured(self.name, user_config, self.batch, self.batcher, self.metrics.max_batch_size)

    async def detect(self, inp: DetectorInput) -> Detections | Exception:
        # its capture on this host's steady clock, from the age the decoder sent: the lag
        # autoscaling reads (`FrameAgeMeter`); frame_ts on this host's wall clock
        captured = self.meter.captured(inp.age())
        try:
            inp = replace(inp.arrived(), image=self.frames.resolve(inp.image))
        except NotShared as exc:  # the decoder sends the pixels instead
            return exc
        self.meter.waiting += 1
        self.metrics.arrived(inp)
        self._captured[id(inp)] = captured
        try:
            return await self.batcher.submit(getattr(inp, "camera", None), inp)
        finally:
            self.meter.waiting -= 1
            self._captured.pop(id(inp), None)
            self.metrics.left(inp)

    async def _detect_batch(self, inputs: list[DetectorInput]) -> list[Detections | Exception]:
        self.meter.observe([self._captured.get(id(inp)) for inp in inputs])
        model = self.detector  # this batch's model: a swap landing meanwhile applies from the next batch
        # a model that overlaps batches (OpenVINO's infer requests) gets the next one while this
        # one's last frames run; any other runs one at a time
        overlap = getattr(model, "concurrent_batches", 1)
        self.batcher.concurrency = overlap
        # Inference runs off the event loop so the next batch keeps forming meanwhile.
        async with contextlib.nullcontext() if overlap > 1 else self._one_batch:
            with self.metrics.batch(inputs) as batch, self.meter.running(len(inputs)):
                started = time.perf_counter()
                batch.results = await asyncio.to_thread(model.detect_batch, inputs)
                infer_ms = (time.perf_counter() - started) * 1000
        self.failing.saw(batch.results)  # (every frame failing for a while: `check_health` fails)
        # each frame names the model and carries the batch's time here (its `latency_ms.infer`)
        return [r.named(model.name, infer_ms=infer_ms) if isinstance(r, Detections) else r for r in batch.results]

    def check_health(self) -> None:
        """Serve restarts a replica whose model fails every frame (`FailingBatches`)."""
        if getattr(self, "failing", None) is not None and (problem := self.failing.problem()):
            raise RuntimeError(f"{self.name}: {problem}")

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom metrics for deployments.autoscaling.VideoLagPolicy."""
        busy = 0.0 if self.meter.warming_up() else self.batcher.busy_share()  # its backlog is not load
        return {"frame_lag_s": self.meter.lag_s(), "frames_waiting": self.meter.waiting_now(), "busy": busy}

    async def __del__(self) -> None:
        # (Serve may stop a replica while its model loads: only what __init__ made so far)
        for task in ("_swept", "_swaps", "_gauges"):
            if getattr(self, task, None) is not None:
                getattr(self, task).cancel()
        if getattr(self, "frames", None) is not None:
            self.frames.close()
        if getattr(self, "batcher", None) is not None:
            await self.batcher.close()
        if getattr(self, "model", None) is not None:
            await self.model.leave()  # the API stops counting this replica
