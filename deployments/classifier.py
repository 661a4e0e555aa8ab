"""A classifier: one deployment per category, batching crops across frames and cameras."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from pipeline.config import PerceptConfig
from pipeline.models import Classifier


@serve.deployment(name="classifier")
class ClassifierDeployment:
    async def __init__(self, config: dict[str, Any], category: str):
        cfg = PerceptConfig.model_validate(config)
        ccfg = cfg.classifiers[category]
        self.category = category
        self.classifier = await asyncio.to_thread(
            Classifier.from_config, category, ccfg, models_dir=cfg.models_dir
        )
        self.reconfigure({"max_batch_size": ccfg.batch.max_size, "batch_wait_ms": ccfg.batch.wait_ms})

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.classify.set_max_batch_size(int(user_config.get("max_batch_size", 32)))
        self.classify.set_batch_wait_timeout_s(float(user_config.get("batch_wait_ms", 10)) / 1000)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def classify(self, crops: list[np.ndarray]) -> list[dict[str, Any] | Exception]:
        return await asyncio.to_thread(self.classifier.classify_batch, crops)
