"""A detector: a stateless batch server. Frames from every camera are batched together; each
detector of the config is its own deployment (``detector``, ``detector-<name>``)."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from pipeline.autoscale import WARMUP_S, FrameAgeMeter
from pipeline.backends import load_detector
from pipeline.config import PerceptConfig
from pipeline.metrics import ModelMetrics
from pipeline.models import DetectorInput
from pipeline.schema import Detections

from .logs import route_percept_logs
from .metrics import RayRecorder


@serve.deployment(name="detector")
class DetectorDeployment:
    async def __init__(self, config: dict[str, Any], deployment: str = "detector"):
        route_percept_logs()
        cfg = PerceptConfig.model_validate(config)
        section = next(s for s in cfg.detector_sections() if s.deployment == deployment)
        self.detector = await asyncio.to_thread(
            load_detector, section.cfg, models_dir=cfg.models_dir, field=section.field)
        self.meter = FrameAgeMeter(warmup_s=WARMUP_S)
        self.metrics = ModelMetrics(deployment, RayRecorder())
        self.reconfigure({"max_batch_size": section.cfg.batch.max_size, "batch_wait_ms": section.cfg.batch.wait_ms})
        self._gauges = asyncio.get_running_loop().create_task(self.metrics.keep_gauges())
        self.meter.ready()  # frames queued while the model loaded are not lag

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch size and wait can change at runtime (Serve ``user_config``)."""
        self._detect_batch.set_max_batch_size(int(user_config.get("max_batch_size", 8)))
        self.metrics.max_batch_size(int(user_config.get("max_batch_size", 8)))
        self._detect_batch.set_batch_wait_timeout_s(float(user_config.get("batch_wait_ms", 20)) / 1000)

    async def detect(self, inp: DetectorInput) -> Detections | Exception:
        self.meter.waiting += 1
        self.metrics.arrived(inp)
        try:
            return await self._detect_batch(inp)
        finally:
            self.meter.waiting -= 1
            self.metrics.left(inp)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _detect_batch(self, inputs: list[DetectorInput]) -> list[Detections | Exception]:
        self.meter.observe([inp.frame_ts for inp in inputs])
        # Inference runs off the event loop so the next batch keeps forming meanwhile.
        with self.metrics.batch(inputs) as batch:
            batch.results = await asyncio.to_thread(self.detector.detect_batch, inputs)
        return batch.results

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom metrics for deployments.autoscaling.VideoLagPolicy."""
        return {"frame_lag_s": self.meter.lag_s(), "frames_waiting": self.meter.waiting_now()}
