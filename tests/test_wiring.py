"""Production wiring the unit tests build around: a value that must reach the object that uses it
(a mutation audit found each of these unguarded: the tests built the inner object themselves)."""
from __future__ import annotations

import asyncio
import os
import threading
import time
import types

import numpy as np
import pytest

from tests.test_api_input import api  # noqa: F401  (fixture)
from tests.test_autoscale import _HeldModel, _half_built


# a camera's margins reach its engine at start (for_camera) and at runtime (conductor)
def test_margins_reach_the_engine_at_start_and_through_the_conductor():
    from pipeline.conductor import CameraConductor
    from pipeline.config import CameraConfig
    from pipeline.events import EventEngine

    lines = {"stop": [[0, 0.5], [1, 0.5]]}
    camera = CameraConfig(id="c", url="a.mp4", lines=lines, line_margin=0.5, zone_margin=0.3)
    engine = EventEngine.for_camera(camera, track_buffer=30)
    assert (engine.line_margin, engine.zone_margin) == (0.5, 0.3)
    conductor = object.__new__(CameraConductor)
    conductor.events, conductor.track_state = engine, None
    conductor.reconfigure(camera.model_copy(update={"line_margin": 0.0, "zone_margin": 0.7}))
    assert (engine.line_margin, engine.zone_margin) == (0.0, 0.7)


# the policy Serve runs gets target_ongoing_requests from graph.model_server_options
def test_the_served_policy_gets_its_requests_floor():
    from deployments.autoscaling import VideoLagPolicy
    from deployments.graph import model_server_options
    from pipeline.config_models import AutoscaleConfig, BatchConfig, ModelServerConfig

    served = ModelServerConfig(weights="x.pt", batch=BatchConfig(max_size=32), replicas=AutoscaleConfig(min=1, max=8))
    kwargs = model_server_options(served, gpus=0)["autoscaling_config"]["policy"]["policy_kwargs"]
    ctx = types.SimpleNamespace(current_num_replicas=1, policy_state={}, total_num_requests=200,
                                aggregated_metrics={"frame_lag_s": {"r1": 0.05}, "frames_waiting": {"r1": 0.3}})
    assert VideoLagPolicy(**kwargs)(ctx)[0] == 4, kwargs  # ceil(200 / max(8, 2 * 32))


# each replica reports its busy share to the policy
@pytest.mark.parametrize("kind", ["detector", "classifier"])
def test_a_replica_running_a_batch_reports_itself_busy(kind):
    from deployments.classifier import ClassifierDeployment
    from deployments.detector import DetectorDeployment
    from pipeline.models import DetectorInput

    cls = DetectorDeployment if kind == "detector" else ClassifierDeployment
    model = _HeldModel()
    replica = _half_built(cls.func_or_class, model)

    async def main():
        image = np.zeros((32, 32, 3), np.uint8)
        call = asyncio.ensure_future(replica.detect(DetectorInput(image, (32, 32), camera="c0")) if kind == "detector"
                                     else replica.classify([image]))
        assert await asyncio.to_thread(model.running.wait, 30)
        deadline = time.monotonic() + 10
        while (await replica.record_autoscaling_stats()).get("busy", 0) <= 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # polled under the deadline
        busy = (await replica.record_autoscaling_stats()).get("busy", 0)
        model.release.set()
        await asyncio.wait_for(call, 30)
        assert busy > 0

    asyncio.run(main())


# the decoder's route carries the card's fit and cuts crops with it
def test_the_decoders_route_cuts_a_cards_crops_with_its_fit(models_dir):
    from deployments.decoder import classifier_routes
    from pipeline.classify import cut_crops
    from pipeline.config import parse_config
    from pipeline.models import prepare_crop

    cfg = parse_config({"models_dir": models_dir, "classifiers": {"sign": {
        "weights": "traffic-light-state/tl_state_bgr32.onnx", "on": ["traffic light"]}}}, env={})
    (route,) = classifier_routes(cfg, {s.deployment: None for s in cfg.classifier_sections()})["sign"]
    assert route.crop_fit == "stretch"
    frame = np.random.default_rng(0).integers(0, 255, (100, 100, 3), np.uint8)
    box = np.array([[40, 20, 60, 80]], np.float32)
    (crop,) = asyncio.run(cut_crops(frame, box, route))
    assert np.array_equal(crop, prepare_crop(frame, box[0], route.size, context=route.crop_context, fit="stretch"))


# the API's swaps ask Ray whether the cluster has GPUs
def test_the_apis_swaps_ask_the_cluster_for_gpus(api):  # noqa: F811
    import deployments.api as module

    instance = module.serve.get_replica_context().servable_object
    assert instance.swaps.gpus_on_cluster is module.gpus_on_cluster


# GET /status merges what the other replicas share
def test_status_lists_the_cameras_other_replicas_share(api, redis_server):  # noqa: F811
    import deployments.api as module
    from pipeline.decoder_status import share_status
    from pipeline.streams import StreamKeys, redis_now

    client = redis_server.client()
    share_status(client, StreamKeys("apiin"), {"owner": "b", "pid": 12, "cameras": {"gate": {"state": "online"}}},
                 redis_now(client))
    own = {"owner": "a", "pid": 11, "cameras": {"door": {"state": "online"}}}

    async def status():
        return own

    instance = module.serve.get_replica_context().servable_object
    instance.decoder = types.SimpleNamespace(status=types.SimpleNamespace(remote=lambda: status()))
    r = api.get("/status")
    assert r.status_code == 200 and set(r.json()["cameras"]) == {"door", "gate"}, r.text


# the explanation's own pool runs below the process
def test_the_explain_apis_pool_runs_below_its_process():
    from deployments.explain import EXPLAIN_NICE, ExplainApi

    def nice():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    expected = min(19, nice() + EXPLAIN_NICE)
    assert ExplainApi(None, None, None, None, None)._pool.submit(nice).result(30) == expected


# the replicas' reconfigure validates the whole user_config and keeps unnamed keys
@pytest.mark.parametrize("kind", ["detector", "classifier"])
def test_a_replicas_reconfigure_applies_nothing_of_a_bad_user_config(kind, caplog):
    from deployments.classifier import ClassifierDeployment
    from deployments.detector import DetectorDeployment
    from pipeline.config_models import BatchConfig

    cls = DetectorDeployment if kind == "detector" else ClassifierDeployment
    replica = _half_built(cls.func_or_class, _HeldModel())
    replica.name, replica.batch = kind, BatchConfig(max_size=4, wait_ms=30)
    asyncio.run(replica.reconfigure({}))
    with caplog.at_level("ERROR"):  # refused whole, said, never raised (a raise crash-looped the deployment)
        asyncio.run(replica.reconfigure({"max_batch_size": 16, "batch_wait_ms": -1}))
    assert "user_config not applied" in caplog.text and "batch_wait_ms" in caplog.text, caplog.text
    assert replica.batcher.policy.max_batch_size == 4
    asyncio.run(replica.reconfigure({"batch_wait_ms": 5}))
    assert (replica.batcher.policy.max_batch_size, replica.batcher.policy.batch_wait_s) == (4, 0.005)


# the live view blurs the faces the service's own detectors reported
def test_the_view_blurs_faces_the_service_detected():
    from pipeline.config import CameraConfig
    from pipeline.config_view import ViewConfig
    from pipeline.privacy import Blurrer, PrivacyConfig
    from pipeline.schema import Detections, FrameMeta, FrameResult
    from pipeline.view import render_jpeg
    from tests.test_view import MODELS, decode
    from tests.view_frames import clip_frame

    frame = clip_frame("vtest.avi", 0)
    blurrer = Blurrer.from_config(PrivacyConfig(blur=["faces"]), str(MODELS))
    box = [652, 43, 722, 101]
    own = Detections(xyxy=[box], scores=[0.9], labels=("face",), categories=("face",))
    result = FrameResult(FrameMeta("c", 0, 0.0, None, frame.shape[1], frame.shape[0]), own, {}, {})
    cfg, camera = ViewConfig(width=frame.shape[1]), CameraConfig(id="c", url="x")
    plain, blurred = decode(render_jpeg(frame, result, camera, cfg)), decode(render_jpeg(frame, result, camera, cfg, blurrer))
    x1, y1, x2, y2 = box
    inner = (slice(y1 + 6, y2 - 6), slice(x1 + 6, x2 - 6))  # (inside the drawn box)
    assert np.abs(blurred[inner].astype(int) - plain[inner]).mean() > 5


# a Redis URL whose password is a ${VAR} is not said to hold it as written
def test_build_says_nothing_of_a_redis_url_password_given_as_a_variable(tmp_path, monkeypatch, capsys):
    from cli.main import main

    monkeypatch.delenv("REDIS_PW", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("redis: {url: 'redis://:${REDIS_PW}@redis.example:6379/0'}\n"
                      "cameras: [{id: a, url: 'rtsp://cam/a', fps: 5}]\n")
    assert main(["build", "-c", str(config), "-o", str(tmp_path / "serve.yaml")]) == 0
    assert "warning" not in capsys.readouterr().err


# the bench's classifier phase builds its route with the loaded classifier's fit
def test_the_bench_classifier_phase_routes_with_the_cards_fit(models_dir, monkeypatch):
    import benchmarks.phases as phases
    from pipeline.config import parse_config

    cfg = parse_config({"models_dir": models_dir, "classifiers": {"sign": {
        "weights": "traffic-light-state/tl_state_bgr32.onnx", "on": ["traffic light"]}}}, env={})
    (section,) = cfg.classifier_sections()
    seen = []

    def stop(route, *args):
        seen.append(route.crop_fit)
        raise LookupError("enough")

    monkeypatch.setattr(phases, "_crops", stop)
    with pytest.raises(LookupError):
        phases.classifier_cost(section, [np.zeros((64, 64, 3), np.uint8)], [], models_dir=models_dir, seconds=0.1)
    assert seen == ["stretch"]


# a swap to a card of another fit is refused (the decoders cut crops for the running one)
def test_a_swap_to_another_crop_fit_is_refused():
    from pipeline.lifecycle.swap_checks import compare_facts

    running = {"attributes": ["state"], "crop_size": [32, 32], "crop_context": 1.0, "min_size": None, "crop_fit": "stretch"}
    errors = compare_facts("classifier", {**running, "crop_fit": "context"}, running, new_name="new", running_name="old",
                           field="classifiers.sign")
    assert errors and "crop fit context" in errors[0], errors
