"""The detector: a stateless batch server. Frames from every camera are batched together."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from pipeline.autoscale import WARMUP_S, FrameAgeMeter
from pipeline.config import PerceptConfig
from pipeline.models import Detector, DetectorInput
from pipeline.schema import Detections

from .logs import route_percept_logs


@serve.deployment(name="detector")
class DetectorDeployment:
    async def __init__(self, config: dict[str, Any]):
        route_percept_logs()
        cfg = PerceptConfig.model_validate(config)
        self.detector = await asyncio.to_thread(Detector.from_config, cfg.detector, models_dir=cfg.models_dir)
        self.meter = FrameAgeMeter(warmup_s=WARMUP_S)
        self.reconfigure({"max_batch_size": cfg.detector.batch.max_size, "batch_wait_ms": cfg.detector.batch.wait_ms})
        self.meter.ready()  # frames queued while the model loaded are not lag

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch size and wait can change at runtime (Serve ``user_config``)."""
        self._detect_batch.set_max_batch_size(int(user_config.get("max_batch_size", 8)))
        self._detect_batch.set_batch_wait_timeout_s(float(user_config.get("batch_wait_ms", 20)) / 1000)

    async def detect(self, inp: DetectorInput) -> Detections | Exception:
        self.meter.waiting += 1
        try:
            return await self._detect_batch(inp)
        finally:
            self.meter.waiting -= 1

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _detect_batch(self, inputs: list[DetectorInput]) -> list[Detections | Exception]:
        self.meter.observe([inp.frame_ts for inp in inputs])
        # Inference runs off the event loop so the next batch keeps forming meanwhile.
        return await asyncio.to_thread(self.detector.detect_batch, inputs)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom metrics for deployments.autoscaling.VideoLagPolicy."""
        return {"frame_lag_s": self.meter.lag_s(), "frames_waiting": self.meter.waiting_now()}
