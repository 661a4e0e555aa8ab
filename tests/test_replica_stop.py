"""Model replicas Serve stops while their model loads (Serve sets up the replica's object before
its async ``__init__`` ends, and calls ``__del__`` on a scale-down or a redeploy meanwhile):
``__del__`` closes what was made so far. It raised AttributeError, so the replica never left the
model's count (a ghost "loading" replica for 15 s) and the detector's batcher and gauges were
never closed. Ray-free: the deployments' classes themselves, no Serve."""

from __future__ import annotations

import asyncio

import pytest

from deployments.classifier import ClassifierDeployment
from deployments.detector import DetectorDeployment

# (Python's own garbage collection calls the async ``__del__`` of the objects made here too, and
# drops the coroutine: Serve awaits it itself)
pytestmark = pytest.mark.filterwarnings("ignore:coroutine '.*__del__' was never awaited:RuntimeWarning")


class Counted:
    def __init__(self):
        self.left = 0

    async def leave(self):
        self.left += 1


@pytest.mark.parametrize("deployment", [DetectorDeployment, ClassifierDeployment], ids=["detector", "classifier"])
def test_a_replica_stopped_while_its_model_loads_leaves_the_models_count(deployment):
    cls = deployment.func_or_class
    bare = cls.__new__(cls)  # stopped before anything was made
    asyncio.run(bare.__del__())
    loading = cls.__new__(cls)  # stopped while `model.start()` loads the model
    loading.model = Counted()
    asyncio.run(loading.__del__())
    assert loading.model.left == 1


def test_a_stopped_detector_closes_its_batcher_and_cancels_its_tasks():
    from pipeline.batching import AdaptiveBatcher

    cls = DetectorDeployment.func_or_class

    async def stop() -> list[bool]:
        replica = cls.__new__(cls)
        replica.model = Counted()
        replica.batcher = AdaptiveBatcher(lambda batch: asyncio.sleep(0, [None] * len(batch)))
        waiting = asyncio.get_running_loop().create_task(replica.batcher.submit("cam", 1))
        replica._gauges = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)
        await replica.__del__()
        await asyncio.sleep(0)
        return [waiting.done(), replica._gauges.cancelled(), replica.model.left == 1]

    assert asyncio.run(stop()) == [True, True, True]
