"""Model replicas Serve stops while their model loads (Serve sets up the replica's object before
its async ``__init__`` ends, and calls ``__del__`` on a scale-down or a redeploy meanwhile):
``__del__`` closes what was made so far. It raised AttributeError, so the replica never left the
model's count (a ghost "loading" replica for 15 s) and the detector's batcher and gauges were
never closed. Ray-free: the deployments' classes themselves, no Serve."""

from __future__ import annotations

import asyncio
import contextlib

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
        replica.batcher = AdaptiveBatcher(lambda batch: asyncio.sleep(0, [None] * len(batch)))  # (answers at once)
        waiting = asyncio.get_running_loop().create_task(replica.batcher.submit("cam", 1))
        replica._gauges = asyncio.get_running_loop().create_task(asyncio.sleep(3600))  # (a task for ever: cancelled)
        await asyncio.sleep(0)  # (one turn of the loop: the submit queued; no wait)
        await replica.__del__()
        await asyncio.sleep(0)  # (one turn of the loop: the cancellations delivered; no wait)
        return [waiting.done(), replica._gauges.cancelled(), replica.model.left == 1]

    assert asyncio.run(stop()) == [True, True, True]


@pytest.mark.parametrize("slow_reports", [False, True])
def test_a_load_still_running_after_its_replica_left_writes_no_report_again(redis_server, slow_reports):
    """`leave` deleted the replica's report, and the load still under way wrote it back at its
    next report: a ghost "loading" replica the API waited for. A report already on its way as
    the replica left (slow to land: a loaded machine; CI saw it once) landed after the delete."""
    import threading
    import time

    import redis

    from pipeline.config import DetectorConfig
    from pipeline.lifecycle.swap import SwapKeys
    from pipeline.lifecycle.swap_replica import ModelSwapper

    on_its_way = threading.Event()  # a report's write has started

    class SlowReports(redis.Redis):
        def hset(self, *args, **kwargs):
            on_its_way.set()
            time.sleep(0.3)  # pacing: a report slow to land
            return super().hset(*args, **kwargs)

    client = SlowReports.from_url(redis_server.url) if slow_reports else redis_server.client()
    keys = SwapKeys("stop", "detector")
    release = threading.Event()

    def slow_load(cfg):
        release.wait(30)
        return object()

    async def scenario() -> None:
        swapper = ModelSwapper(client=client, keys=keys, replica="r1", kind="detector",
                               cfg=DetectorConfig(weights="a.pt"), load=slow_load, poll_s=0.05)
        loading = asyncio.get_running_loop().create_task(swapper.start())
        deadline = asyncio.get_running_loop().time() + 30  # its load under way, said in its report
        while not await asyncio.to_thread(client.hexists, keys.replicas, "r1"):
            assert asyncio.get_running_loop().time() < deadline, "no report while loading"
            await asyncio.sleep(0.05)  # (polling a condition with a deadline)
        if slow_reports:  # its next report on its way as it leaves
            on_its_way.clear()
            assert await asyncio.to_thread(on_its_way.wait, 10), "no report on its way"
        await swapper.leave()  # Serve stops the replica meanwhile
        release.set()
        await asyncio.wait_for(loading, 30)
        await swapper._send()  # (what its report loop would write next)

    asyncio.run(scenario())
    assert not client.hexists(keys.replicas, "r1"), client.hgetall(keys.replicas)


def test_a_detector_whose_model_fails_every_frame_for_a_while_is_unhealthy():
    """A replica whose model failed everything (a GPU lost to a device reset) stayed in rotation:
    every frame sent to it retried once and then lost, its cameras `online`. A few bad frames,
    or a failing stretch that any answer breaks, are not that."""
    from pipeline.backends.base import FailingBatches

    now = [0.0]
    failing = FailingBatches(batches=3, seconds=10.0, clock=lambda: now[0])
    lost = RuntimeError("CUDA error: an illegal memory access was encountered")
    for t in (0.0, 4.0, 8.0, 12.0):  # four failed batches, the last past 10 s
        now[0] = t
        failing.saw([lost, lost])
        if t < 10:
            assert failing.problem() is None, t
    assert failing.problem() == ("every frame of the last 4 batches failed, for 12 s: RuntimeError: CUDA error: an "
                                 "illegal memory access was encountered")
    failing.saw([lost, "an answer"])  # one frame answered: the model runs
    assert failing.problem() is None
    for t in (13.0, 30.0):  # two failed batches, however long apart: not yet
        now[0] = t
        failing.saw([lost])
    assert failing.problem() is None

    replica = DetectorDeployment.func_or_class.__new__(DetectorDeployment.func_or_class)
    replica.check_health()  # (before its model loaded: nothing to say)
    replica.name, replica.failing = "detector", failing
    now[0] = 31.0
    failing.saw([lost])
    with pytest.raises(RuntimeError, match="^detector: every frame of the last 3 batches failed, for 18 s"):
        replica.check_health()


def test_the_detectors_batches_are_counted_for_its_health():
    from types import SimpleNamespace

    from pipeline.backends.base import FailingBatches

    lost = RuntimeError("device lost")
    replica = DetectorDeployment.func_or_class.__new__(DetectorDeployment.func_or_class)
    replica.model = SimpleNamespace(current=SimpleNamespace(name="m", detect_batch=lambda inputs: [lost] * len(inputs)))
    replica.batcher = SimpleNamespace(concurrency=1)
    replica._one_batch = asyncio.Lock()
    replica.meter = SimpleNamespace(observe=lambda ts: None, running=lambda n: contextlib.nullcontext())
    replica._captured = {}  # (its frames' captures: `detect`)
    replica.metrics = SimpleNamespace(batch=lambda inputs: contextlib.nullcontext(SimpleNamespace(results=None)))
    replica.name, replica.failing = "detector", FailingBatches(batches=2, seconds=0.0)
    frames = [SimpleNamespace(frame_ts=0.0)] * 2
    for _ in range(2):
        assert asyncio.run(replica._detect_batch(frames)) == [lost, lost]
    with pytest.raises(RuntimeError, match="every frame of the last 2 batches failed"):
        replica.check_health()


def test_a_classifier_whose_model_fails_every_crop_for_a_while_is_unhealthy():
    """Classifier replicas had no health check: one whose model failed every crop stayed in
    rotation, and every frame sent there lost its attributes for good."""
    from types import SimpleNamespace

    from pipeline.backends.base import FailingBatches

    cls = ClassifierDeployment.func_or_class
    replica = cls.__new__(cls)
    replica.check_health()  # (before anything was made: nothing to say)
    lost = RuntimeError("device lost")
    answers = [[lost, lost], [lost], [{"type": {"label": "car", "score": 0.9}}, lost]]
    replica.model = SimpleNamespace(current=SimpleNamespace(name="m", classify_batch=lambda flat: answers.pop(0)))
    replica.meter = SimpleNamespace(running=lambda n: contextlib.nullcontext())
    replica.metrics = SimpleNamespace(batch=lambda requests, size: contextlib.nullcontext(SimpleNamespace(results=None)))
    replica.name, replica.failing = "classifier-vehicle", FailingBatches(batches=2, seconds=0.0, item="crop")
    for crops in ([1, 2], [3]):
        asyncio.run(replica._classify_batch([crops]))
    with pytest.raises(RuntimeError, match="^classifier-vehicle: every crop of the last 2 batches failed"):
        replica.check_health()
    asyncio.run(replica._classify_batch([[4], [5]]))  # one crop answered: the model runs
    replica.check_health()
