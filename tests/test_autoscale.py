"""The video-lag autoscaling arithmetic (pure logic), and what the replicas report to it."""

import asyncio
import threading

import numpy as np
import pytest

from pipeline.autoscale import FrameAgeMeter, desired_replicas
from pipeline.models import DetectorInput


def test_scales_up_in_proportion_to_lag():
    assert desired_replicas(1, [1.5], [4], target_lag_s=0.5, target_waiting=16) == 3
    assert desired_replicas(2, [0.6, 0.2], [8, 8], target_lag_s=0.5, target_waiting=16) == 3


def test_frames_waiting_also_scale_up():
    assert desired_replicas(1, [0.1], [40], target_lag_s=0.5, target_waiting=16) == 3


def test_light_load_steps_down_one_at_a_time_and_idle_steps_down():
    assert desired_replicas(4, [0.1], [2, 2, 2, 2], [0.1] * 4, target_lag_s=0.5, target_waiting=16) == 3
    assert desired_replicas(3, [], [], target_lag_s=0.5, target_waiting=16) == 2
    assert desired_replicas(0, [], [], target_lag_s=0.5, target_waiting=16) == 1
    # busy not reported: lag under target says nothing about whether fewer would do
    assert desired_replicas(4, [0.1], [2, 2, 2, 2], target_lag_s=0.5, target_waiting=16) == 4


def test_a_saturated_model_scales_up_though_keep_latest_hides_it_from_lag():
    """4 cameras at 30 fps on a detector that does 60: 8 frames in flight at most (cameras ×
    max_inflight), lag 8 / 60 s, under both targets; half the frames dropped, the model never idle."""
    assert desired_replicas(1, [8 / 60], [8], [1.0], target_lag_s=0.5, target_waiting=16) == 2


def test_a_deployment_that_keeps_up_holds_its_replicas():
    """10 cameras at 10 fps, 60 fps a replica: one is overloaded, two keep up (lag = the service
    time, 3 waiting each, 83 % busy); lag alone asked for one again, and so on every minute."""
    assert desired_replicas(1, [0.33], [20], [1.0], target_lag_s=0.5, target_waiting=16) == 2
    assert desired_replicas(2, [0.06], [3, 3], [0.83, 0.83], target_lag_s=0.5, target_waiting=16) == 2
    assert desired_replicas(2, [0.06], [1, 1], [0.25, 0.25], target_lag_s=0.5, target_waiting=16) == 1  # load fell


def test_one_replica_fewer_only_when_what_waits_would_stay_under_its_target_there():
    """A classifier with 50 crops in flight, 1.35 replicas' worth busy: 4 replicas from 3 (16.7
    crops each, over the target of 16), then down to 3 at 4 (34 % busy each, the others at 45 %),
    then up again: a replica started and stopped every delay."""
    assert desired_replicas(3, [0.05], [50 / 3] * 3, [0.45] * 3, target_lag_s=0.5, target_waiting=16) == 4
    assert desired_replicas(4, [0.05], [12.5] * 4, [0.34] * 4, target_lag_s=0.5, target_waiting=16) == 4
    assert desired_replicas(4, [0.05], [6] * 4, [0.34] * 4, target_lag_s=0.5, target_waiting=16) == 3  # fewer waiting


def test_meter_forgets_old_frames():
    m = FrameAgeMeter(window_s=5)
    m.observe([99.0, 98.0, None], now=100.0)
    assert m.lag_s(now=100.0) == 1.5
    assert m.lag_s(now=106.0) == 0.0


def test_a_wall_clock_stepped_back_neither_prolongs_the_warm_up_nor_keeps_old_lag():
    """The warm-up and the window ran on the wall clock: stepped back an hour (NTP), the replica
    reported "warming up" (busy 0, nothing waiting) for that hour, and its lag never aged out."""
    m = FrameAgeMeter(window_s=5, warmup_s=3)
    m.ready(now=50.0)
    m.observe([m.captured(3.0, now=56.0)], now=56.0)  # 3 s old
    m.waiting = 40
    assert not m.warming_up(now=76.0) and m.waiting_now(now=76.0) == 40.0
    assert m.lag_s(now=76.0) == 0.0  # out of the window


def test_a_wall_clock_stepped_after_the_replica_was_ready_neither_hides_nor_invents_lag():
    """Frames were counted by their capture time on the wall clock: stepped back an hour after
    the replica was ready, every frame looked captured before its warm-up ended, lag 0 for the
    hour; stepped forward while frames queued, they looked an hour old (lag 3600 s: the deployment
    scaled to its maximum). A frame's capture is now its arrival on the steady clock less the age
    the decoder sent."""
    image = np.zeros((8, 8, 3), np.uint8)
    m = FrameAgeMeter(window_s=5, warmup_s=3)
    m.ready(now=50.0)  # wall 1000.0
    # the decoder sent a 2 s old frame; it arrives at steady 60 as the wall clock reads 1010 − 3600
    frame = DetectorInput(image, (8, 8), frame_ts=1008.0 - 3600).sent(now=1010.0 - 3600)
    captured = m.captured(frame.age(), now=60.0)
    m.observe([captured], now=60.1)
    assert m.lag_s(now=60.1) == pytest.approx(2.1)
    # a frame of this host (no age sent), 70 ms old, starting its batch after a step an hour on
    local = DetectorInput(image, (8, 8), frame_ts=2000.0)
    arrived = m.captured(local.age(now=2000.07), now=70.0)
    m.observe([arrived], now=70.05)
    assert m.lag_s(now=70.05) == pytest.approx(0.12)
    assert desired_replicas(2, [m.lag_s(now=70.05)], [], target_lag_s=0.5, target_waiting=16) <= 2


def test_warm_up_is_not_lag_so_a_light_load_stays_at_one_replica():
    """Startup: frames queued while the model loaded (captured long before the replica was
    ready) and the backlog drained in its first seconds are neither lag nor waiting frames."""
    m = FrameAgeMeter(window_s=5, warmup_s=3)
    m.ready(now=100.0)  # model loaded at 100 s; warm-up until 103 s
    m.waiting = 4  # the startup backlog
    m.observe([90.0, 90.5], now=100.2)  # captured during the load: 10 s old
    m.observe([102.5], now=102.8)  # captured during the warm-up, behind the backlog
    assert m.lag_s(now=102.9) == 0.0 and m.waiting_now(now=102.9) == 0.0
    assert desired_replicas(1, [m.lag_s(now=102.9)], [m.waiting_now(now=102.9)],
                            target_lag_s=0.4, target_waiting=16) == 1
    # the same frames counted (no warm-up) would have asked for a second replica and more
    plain = FrameAgeMeter(window_s=5)
    plain.observe([90.0, 90.5], now=100.2)
    plain.observe([102.5], now=102.8)
    assert desired_replicas(1, [plain.lag_s(now=102.9)], [], target_lag_s=0.4, target_waiting=16) > 1


def test_after_warm_up_lag_and_waiting_count_again():
    m = FrameAgeMeter(window_s=5, warmup_s=3)
    m.ready(now=100.0)
    m.observe([95.0], now=103.1)  # backlog from the load, processed after the warm-up: still not lag
    m.observe([103.0, 103.2], now=104.2)  # captured after the warm-up, 1.2 s and 1.0 s old
    assert m.lag_s(now=104.2) == pytest.approx(1.1)
    m.waiting = 40
    assert m.waiting_now(now=104.2) == 40.0
    assert desired_replicas(1, [m.lag_s(now=104.2)], [m.waiting_now(now=104.2)],
                            target_lag_s=0.4, target_waiting=16) == 3


def test_policy_keeps_one_replica_under_light_load():
    """VideoLagPolicy on a Serve-like context (what the detector reports at 2 fps): stays at 1."""
    from types import SimpleNamespace

    from deployments.autoscaling import VideoLagPolicy

    ctx = SimpleNamespace(current_num_replicas=1, policy_state={},
                          aggregated_metrics={"frame_lag_s": {"r1": 0.05}, "frames_waiting": {"r1": 0.3}})
    want, state = VideoLagPolicy(target_lag_s=0.4)(ctx)
    assert want == 1 and state["last"]["want"] == 1


def test_target_ongoing_requests_is_a_floor_and_min_zero_is_refused():
    """``replicas.target_ongoing_requests`` (Serve's own signal) was accepted and never read:
    200 requests in flight at 8 each want 25 replicas whatever lag says. ``min: 0`` was accepted
    but a deployment never went below one: refused now, naming the field."""
    from types import SimpleNamespace

    from pydantic import ValidationError

    from deployments.autoscaling import VideoLagPolicy
    from pipeline.config_models import AutoscaleConfig

    ctx = SimpleNamespace(current_num_replicas=1, policy_state={}, total_num_requests=200,
                          aggregated_metrics={"frame_lag_s": {"r1": 0.05}, "frames_waiting": {"r1": 0.3}})
    assert VideoLagPolicy(target_lag_s=0.4, target_ongoing_requests=8)(ctx)[0] == 25
    assert VideoLagPolicy(target_lag_s=0.4)(ctx)[0] == 1  # no floor given: lag and waiting alone
    # a batched deployment keeps up with two batches in flight a replica (one running, one filling):
    # a classifier's batch of 32 with 10 requests in flight, 15 % busy, stayed at two replicas
    assert VideoLagPolicy(target_lag_s=0.4, target_ongoing_requests=8, batch_size=32)(ctx)[0] == 4
    calm = SimpleNamespace(current_num_replicas=2, policy_state={}, total_num_requests=10,
                           aggregated_metrics={"frame_lag_s": {"r1": 0.05, "r2": 0.05},
                                               "frames_waiting": {"r1": 0.3, "r2": 0.2}, "busy": {"r1": 0.15, "r2": 0.15}})
    assert VideoLagPolicy(target_lag_s=0.4, target_ongoing_requests=8, batch_size=32)(calm)[0] == 1
    assert VideoLagPolicy(target_lag_s=0.4, target_ongoing_requests=8, batch_size=1)(calm)[0] == 2
    # the policy Serve runs gets the deployment's batch size (`graph.model_server_options`)
    from deployments.graph import model_server_options
    from pipeline.config_models import BatchConfig, ModelServerConfig

    served = ModelServerConfig(weights="x.pt", batch=BatchConfig(max_size=32), replicas=AutoscaleConfig(min=1, max=4))
    kwargs = model_server_options(served, gpus=0)["autoscaling_config"]["policy"]["policy_kwargs"]
    assert VideoLagPolicy(**kwargs)(calm)[0] == 1, kwargs
    with pytest.raises(ValidationError, match="min"):
        AutoscaleConfig(min=0, max=4)
    # targets so small that lag / target is infinite: the policy raised (OverflowError) in Serve's
    # controller at every call, and the deployment never scaled
    for field in ("target_lag_s", "target_waiting", "target_ongoing_requests"):
        with pytest.raises(ValidationError, match=field):
            AutoscaleConfig(**{field: 1e-320})


def test_a_frames_age_does_not_hang_on_the_decoder_and_detector_clocks_agreeing():
    """The detector measured a frame's age as its own time minus the decoder's capture time: with
    the detector's host 30 s ahead, every frame looked 30 s late (the detector scaled to its
    maximum and never down); 30 s behind, none ever did. The decoder now sends the frame's age,
    measured on its own clock, and the detector adds the time since it arrived."""
    import asyncio
    import time

    from deployments.decoder import merged_detect

    image = np.zeros((8, 8, 3), np.uint8)
    # captured at 1000.0 and sent at 1000.2 by the decoder's clock; arrived at 1030.25 by the
    # detector's, 30 s ahead (0.05 s on the way)
    sent_at = DetectorInput(image, (8, 8), frame_ts=1000.0).sent(now=1000.2)
    meter = FrameAgeMeter()
    meter.observe([meter.captured(sent_at.age(), now=70.0)], now=70.0)  # (its steady clock at 70 s)
    assert meter.lag_s(now=70.0) == pytest.approx(0.2)  # 30.25 before, on the two clocks' difference
    assert sent_at.arrived(now=1030.25).frame_ts == pytest.approx(1030.05)  # its capture on this host's clock
    assert DetectorInput(image, (8, 8)).sent().arrived().frame_ts is None  # a frame without a capture time

    sent = []

    class Handle:  # a detector deployment's handle: what goes over the wire
        class detect:
            @staticmethod
            async def remote(x):
                sent.append(x)

    asyncio.run(merged_detect([Handle()])(DetectorInput(image, (8, 8), frame_ts=time.time() - 0.2)))
    assert 0.15 < sent[0].age_s < 10, sent[0].age_s  # every frame the decoder sends is stamped


def _half_built(cls, model):
    """A detector or classifier replica as Serve would run it, minus Serve, Redis and the model
    loading of its __init__: its batcher, meter and metrics, and ``model`` serving."""
    from pipeline.backends.base import FailingBatches
    from pipeline.batching import AdaptiveBatcher
    from pipeline.metrics import ModelMetrics

    half = type("Half", (cls,), {"__del__": lambda self: None})  # (its destructor needs what __init__ makes)
    replica = half.__new__(half)
    replica.meter, replica.metrics = FrameAgeMeter(), ModelMetrics("test")
    replica._captured = {}  # (a detector's frames' captures: `detect`)
    replica.model = type("Swapper", (), {"current": model})()
    replica._one_batch = asyncio.Lock()
    replica.failing = FailingBatches()  # (the replica's health: `check_health`)
    run = replica._detect_batch if hasattr(cls, "_detect_batch") else replica._classify_batch
    replica.batcher = AdaptiveBatcher(run, max_batch_size=16, batch_wait_s=0.0)
    replica.frames = type("Frames", (), {"resolve": staticmethod(lambda image: image)})()
    return replica


class _HeldModel:
    """A model whose batches run until ``release`` is set (set from the test's thread)."""

    name = "held"

    def __init__(self):
        self.release, self.running = threading.Event(), threading.Event()

    def _hold(self, items):
        self.running.set()
        assert self.release.wait(30), "the test never released the batch"
        return items

    def detect_batch(self, inputs):
        from pipeline.schema import Detections

        return [Detections() for _ in self._hold(inputs)]

    def classify_batch(self, crops):
        return [{"type": {"label": "car", "score": 1.0}} for _ in self._hold(crops)]


@pytest.mark.parametrize("kind", ["detector", "classifier"])
def test_the_frames_of_a_running_batch_are_not_counted_as_waiting(kind):
    """A replica keeping up with full batches of 16 reported the 16 running as waiting, at the
    policy's target of 16 a replica: read as overloaded, one more replica for nothing. What
    waits is what no batch runs yet."""
    if kind == "detector":
        from deployments.detector import DetectorDeployment as cls
    else:
        from deployments.classifier import ClassifierDeployment as cls
    model = _HeldModel()
    replica = _half_built(cls.func_or_class, model)

    async def main():
        image = np.zeros((32, 32, 3), np.uint8)
        if kind == "detector":
            calls = [replica.detect(DetectorInput(image, (32, 32), camera=f"c{i}")) for i in range(16)]
        else:
            calls = [replica.classify([image, image]) for _ in range(8)]  # 16 crops
        first = [asyncio.ensure_future(c) for c in calls]
        assert await asyncio.to_thread(model.running.wait, 30)  # the batch of 16 runs
        stats = await replica.record_autoscaling_stats()
        assert stats["frames_waiting"] == 0, stats
        later = asyncio.ensure_future(replica.detect(DetectorInput(image, (32, 32), camera="c0")) if kind == "detector"
                                      else replica.classify([image, image, image]))
        await asyncio.sleep(0)  # (lets it arrive: one turn of the loop, no timing)
        waiting = 1 if kind == "detector" else 3
        assert (await replica.record_autoscaling_stats())["frames_waiting"] == waiting
        model.release.set()
        await asyncio.wait_for(asyncio.gather(*first, later), 30)
        assert (await replica.record_autoscaling_stats())["frames_waiting"] == 0

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["detector", "classifier"])
def test_the_stats_and_batch_changes_run_on_the_replicas_event_loop(kind):
    """Serve runs a replica's sync methods in a thread pool (RAY_SERVE_RUN_SYNC_IN_THREADPOOL, on
    by default): `record_autoscaling_stats`, five times a second, summed the meter's frame ages
    while the event loop appended to them ("deque mutated during iteration": a sample lost), and
    `reconfigure` set the batcher's asyncio event from that thread. Both are coroutines now."""
    import inspect

    if kind == "detector":
        from deployments.detector import DetectorDeployment as cls
    else:
        from deployments.classifier import ClassifierDeployment as cls
    for name in ("record_autoscaling_stats", "reconfigure"):
        assert inspect.iscoroutinefunction(getattr(cls.func_or_class, name)), name


def test_replicas_still_starting_are_not_cancelled_by_a_hold():
    """Serve's delays compare the decision with its target, and its context counts the running
    replicas only: with 2 running of 4 (2 loading their model), an overloaded deployment was
    answered 3, a scale-down from 4 that cancelled a starting replica after the delay; a hold
    with one replica restarting asked for one fewer, and a calm one two fewer in one step."""
    from types import SimpleNamespace

    from deployments.autoscaling import VideoLagPolicy

    def ctx(running, target, lag, busy, waiting=2.0):
        ids = [f"r{i}" for i in range(running)]
        return SimpleNamespace(current_num_replicas=running, target_num_replicas=target, policy_state={},
                               total_num_requests=0,
                               aggregated_metrics={"frame_lag_s": dict.fromkeys(ids, lag), "busy": dict.fromkeys(ids, busy),
                                                   "frames_waiting": dict.fromkeys(ids, waiting)})

    policy = VideoLagPolicy(target_lag_s=0.5)
    assert policy(ctx(2, 4, 0.6, 0.95))[0] == 4  # overloaded, two starting: up to the target at least
    assert policy(ctx(2, 4, 2.0, 0.95))[0] == 8  # (load 4 on 2 running: more than the target)
    assert policy(ctx(4, 4, 0.1, 0.5))[0] == 4  # a hold
    assert policy(ctx(3, 4, 0.1, 0.67))[0] == 4  # the same with one restarting
    assert policy(ctx(3, 4, 0.1, 0.2))[0] == 4  # calm, one restarting: down only once it is back
    assert policy(ctx(4, 4, 0.1, 0.2))[0] == 3  # then one step down
    assert policy(ctx(4, 3, 0.1, 0.2))[0] == 3  # a step down under way: no second one yet
    assert policy(SimpleNamespace(current_num_replicas=1, policy_state={}, aggregated_metrics={}))[0] == 1  # (no target)
    # a replica that cannot start (no node has room) holds the target 5 minutes at most
    waiting_room = ctx(3, 4, 0.1, 0.2)
    waiting_room.current_time = 1000.0
    want, state = policy(waiting_room)
    assert want == 4 and state["short_since"] == 1000.0
    waiting_room.policy_state, waiting_room.current_time = state, 1301.0
    assert policy(waiting_room)[0] == 2  # judged on the 3 running: calm, one fewer
