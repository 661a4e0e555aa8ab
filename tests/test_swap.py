"""Hot swap of model weights on a running graph (`pipeline/lifecycle/swap.py`): a camera on the
RTSP server publishes through Ray Serve while the detector (two replicas) goes from the shipped
YOLO11n COCO weights to the shipped YOLOv8n ones, through `percept models swap`; bad files are
refused (HTTP 422 / exit 2) with the old model serving on; a classifier is swapped through the API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from types import SimpleNamespace

import pytest

from pipeline.config import DetectorConfig, parse_config
from pipeline.lifecycle.swap import Desired, ModelAnswers, PublishedModels, ReplicaReport, SwapKeys
from pipeline.lifecycle.swap_checks import compare_facts
from pipeline.lifecycle.swap_replica import ModelSwapper
from pipeline.lifecycle.swap_service import listed_state, live_reports, rollout_state
from pipeline.models import ModelError
from pipeline.schema import Detections
from pipeline.streams import StreamKeys, camera_states

from .conftest import CLASSIFIER, MODELS
from .http import call_json
from .inprocess import percept
from .waiting import hold, wait_for

PREFIX = "swaptest"
KEYS = StreamKeys(PREFIX)
FIRST, SECOND = "yolo11n-coco.pt", "yolov8n-coco.pt"
VEHICLE_LABELS = ["minivan", "sports_car", "cab", "pickup", "police_van", "jeep", "convertible", "beach_wagon"]


# --- pure logic ---------------------------------------------------------------------------------

def test_facts_a_swap_must_keep():
    running = {"labels": ["bus", "car", "person"]}
    assert compare_facts("detector", {"labels": ["bus", "car", "person", "truck"]}, running,
                         new_name="b.pt", running_name="a.pt", field="detector") == []
    (err,) = compare_facts("detector", {"labels": ["car"]}, running, new_name="b.pt", running_name="a.pt",
                           field="detector")
    assert err.startswith("detector.weights: b.pt has no class ['bus', 'person'] that a.pt gives in detector.categories")
    clf = {"attributes": ["type"], "crop_size": [224, 224], "crop_context": 1.15}
    errs = compare_facts("classifier", {"attributes": ["color", "type"], "crop_size": [72, 72], "crop_context": 1.15},
                         clf, new_name="v.xml", running_name="c.pt", field="classifiers.vehicle")
    assert [e.split(";")[0] for e in errs] == [
        "classifiers.vehicle.weights: v.xml writes attributes ['color', 'type'], c.pt writes ['type']",
        "classifiers.vehicle.weights: v.xml takes crop size (width, height) [72, 72], c.pt [224, 224]"]
    # the decoders skip boxes below the running card's smallest box: a card with another one is refused
    sized = {**clf, "min_size": [24, 24]}
    assert compare_facts("classifier", sized, sized, new_name="v.xml", running_name="c.pt", field="f") == []
    (err,) = compare_facts("classifier", {**clf, "min_size": None}, sized, new_name="v.xml", running_name="c.pt",
                           field="classifiers.vehicle")
    assert err.startswith("classifiers.vehicle.weights: v.xml takes smallest box (width, height) None, c.pt [24, 24]")
    assert compare_facts("classifier", sized, clf, new_name="v.xml", running_name="c.pt", field="f") == [], \
        "a replica that reports no smallest box (an older one) is not compared on it"


def test_a_detector_of_another_input_size_is_said_in_the_swaps_answer_and_by_the_cli(capsys):
    """A swap to a network of another input size runs (the decoders letterbox frames to imgsz, the
    detector resizes them to its size): said in the replicas' log alone, the swap answered as
    done. Now its answer's ``notes`` say it, and `models swap` prints them."""
    from cli.main import main
    from pipeline.lifecycle.swap_checks import size_notes

    from .conftest import DETECTOR
    from .http import answering
    from .test_detector_backends import PLATES, detector

    plates = detector(PLATES, categories={"plate": ["plate"]})
    [note] = size_notes(plates, DetectorConfig(weights=PLATES), "FP32/plates.xml", "detector")
    assert note.startswith("detector.weights: FP32/plates.xml takes 300x300 frames; the decoders letterbox frames to "
                           "detector.imgsz 640 and the detector resizes them to its size"), note
    assert size_notes(detector(DETECTOR, categories={"all": ["*"]}), DetectorConfig(weights=DETECTOR), "yolo", "detector") == []
    answer = {"deployment": "detector", "model": "FP32/plates.xml", "weights": PLATES, "card": None, "generation": 2,
              "previous": DETECTOR, "replicas": 1, "seconds": 3.0, "validate_s": 1.0, "rollout_s": 2.0, "notes": [note]}
    with answering(200, json.dumps(answer).encode()) as api:
        assert main(["models", "swap", "detector", "w.pt", "--api", api]) == 0
    assert f"percept: note: {note}" in capsys.readouterr().err


def test_rollout_state_waits_for_every_live_replica():
    def rep(name, gen, failed=None):
        return ReplicaReport(name, "m.pt", "m.pt", None, gen, failed_generation=failed)

    assert rollout_state([rep("a", 2), rep("b", 1)], 2) == ("rolling", None)
    assert rollout_state([rep("a", 2), rep("b", 3)], 2) == ("done", None)
    assert rollout_state([], 2) == ("rolling", None)
    state, who = rollout_state([rep("a", 2), rep("b", 1, failed=2)], 2)
    assert state == "failed" and who.replica == "b"


def test_the_listed_state_says_what_the_replicas_serve_against_the_record():
    """`GET /models`' state: after Redis lost its data the generations say "done" (no record:
    generation 0) whatever the replicas serve; the weights they report say more."""
    def rep(name, weights, gen):
        return ReplicaReport(name, weights, weights, None, gen)

    assert listed_state([rep("a", "b.pt", 2), rep("b", "b.pt", 2)], "b.pt", None, 2) == ("done", None)
    assert listed_state([rep("a", "b.pt", 2), rep("b", "a.pt", 0)], "a.pt", None, 0) == ("mixed", None)
    assert listed_state([rep("a", "b.pt", 4), rep("b", "b.pt", 4)], "a.pt", None, 0) == ("unrecorded", None)
    assert listed_state([], "a.pt", None, 0) == ("no replicas", None)
    assert listed_state([rep("a", "b.pt", 2), rep("b", "a.pt", 0)], "b.pt", None, 2)[0] == "rolling"
    # a newer replica's report with a field this version does not know is read, not a 500
    raw = json.dumps({**asdict(rep("a", "b.pt", 2)), "added_later": 1})
    assert ReplicaReport.from_json(raw) == rep("a", "b.pt", 2)


def test_published_model_names_follow_the_replicas():
    cfg = parse_config({"detectors": [{"weights": "a.pt"}, {"weights": "faces.onnx", "name": "faces"}],
                        "classifiers": {"vehicle": {"weights": "c.pt"}}}, env={})
    names = PublishedModels(cfg)
    merged = Detections.concat([Detections().named("a2.pt"), Detections(xyxy=[[0, 0, 1, 1]], scores=[1], labels=["f"],
                                                                         categories=["face"]).named("faces.onnx")])
    assert merged.model_names == ("a2.pt", "faces.onnx") and len(merged) == 1
    assert names(merged.with_track_ids([7]).model_names) == {
        "detector": "a2.pt", "detectors": ["a2.pt", "faces.onnx"], "classifiers": {"vehicle": "c.pt"}}
    names.answered("classifier-vehicle", ModelAnswers([{"type": {"label": "cab", "score": 0.9}}], model="c2.pt"))
    assert names(())["classifiers"] == {"vehicle": "c2.pt"} and names(())["detector"] == "a.pt"


async def _until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for: {what}")
        await asyncio.sleep(0.05)  # polled until the deadline above


def test_the_api_waits_out_a_redis_outage_during_a_rollout(redis_server, monkeypatch):
    """`ModelSwaps._wait` on a real redis-server killed while it polls the replicas' reports:
    the outage is waited out (no error that would make the client send its swap again), and
    the rollout is seen done once Redis is back."""
    from pipeline.lifecycle import swap_service
    from pipeline.lifecycle.swap_service import ModelSwaps

    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from pipeline.streams import connect_redis

    # no retries inside redis-py (they ride out a few seconds by themselves): the outage reaches _wait
    client = connect_redis(redis_server.url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=0.5)
    swaps = ModelSwaps(parse_config({"redis": {"url": redis_server.url, "stream_prefix": "outage"}}, env={}), client,
                       poll_s=0.05)
    keys = swaps.keys("detector")

    def report(generation):
        report_json = ReplicaReport("r1", "m.pt", "m.pt", None, generation, ts=time.time()).to_json()
        client.hset(keys.replicas, "r1", report_json)

    report(1)
    polls: list[str] = []  # what each of its polls of the reports got: "ok" or the error's name
    real_live_reports = swap_service.live_reports

    def counted(*args, **kwargs):
        try:
            out = real_live_reports(*args, **kwargs)
        except Exception as exc:
            polls.append(type(exc).__name__)
            raise
        polls.append("ok")
        return out

    monkeypatch.setattr(swap_service, "live_reports", counted)

    async def until(pred, what, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for: {what}"
            await asyncio.sleep(0.02)  # polled until the deadline above

    async def scenario():
        waiting = asyncio.create_task(swaps._wait(keys, 2, timeout_s=30))
        await until(lambda: polls.count("ok") >= 2, "two polls seeing generation 1 only")
        assert not waiting.done()
        await asyncio.to_thread(redis_server.kill)
        await until(lambda: waiting.done() or polls.count("ConnectionError") >= 3, "polls failing while redis is down")
        assert not waiting.done(), waiting.exception()  # the outage is waited out, not an error
        await asyncio.to_thread(redis_server.start)
        await asyncio.to_thread(report, 2)
        return await asyncio.wait_for(waiting, 20)

    state, failed, live = asyncio.run(scenario())
    assert (state, failed, live) == ("done", None, 1)


def test_replicas_swap_one_at_a_time_and_a_failed_load_keeps_the_old_model(redis_server):
    """Three `ModelSwapper`s on a real redis-server, with a loader that takes 0.4 s (a stand-in
    for the model load, recording when each ran): the loads never overlap (the lock), a file
    that does not load leaves every replica on its model and is reported, and a replica that
    starts later begins on the desired weights (unless the config changed since the swap)."""
    client = redis_server.client()
    keys = SwapKeys("unit", "detector")
    loads: list[tuple[str, str, float, float]] = []

    def loader(replica):
        def load(cfg):
            t0 = time.monotonic()
            if "broken" in cfg.weights:
                raise ModelError(f"detector.weights: cannot load {cfg.weights!r}")
            hold(0.4, "a model load that takes a while")
            loads.append((replica, cfg.weights, t0, time.monotonic()))
            return SimpleNamespace(name=cfg.weights)
        return load

    def swapper(replica):
        return ModelSwapper(client=client, keys=keys, replica=replica, kind="detector",
                            cfg=DetectorConfig(weights="a.pt"), load=loader(replica), poll_s=0.05)

    async def scenario():
        replicas = [swapper(f"r{i}") for i in range(3)]
        for r in replicas:
            await r.start()
        following = [asyncio.ensure_future(r.follow()) for r in replicas]
        try:
            client.set(keys.desired, Desired("b.pt", None, 1, "b.pt").to_json())
            await _until(lambda: all(r.current.name == "b.pt" for r in replicas), 30, "every replica on b.pt")
            spans = sorted((t0, t1) for _, w, t0, t1 in loads if w == "b.pt")
            assert len(spans) == 3 and all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), spans
            client.set(keys.desired, Desired("broken.pt", None, 2, "broken.pt", {"weights": "b.pt"}).to_json())
            await _until(lambda: all(r.report.failed_generation == 2 for r in replicas), 30, "the failure reported")
            await _until(lambda: all(r.failed_generation == 2 and r.error for r in live_reports(client, keys)), 30,
                         "the failure, with its error, in every replica's report in Redis")
            assert [r.current.name for r in replicas] == ["b.pt"] * 3
            reports = live_reports(client, keys)
            assert [(r.model, r.generation) for r in reports] == [("b.pt", 1)] * 3
            assert rollout_state(reports, 2)[0] == "failed" and "cannot load 'broken.pt'" in reports[0].error
        finally:
            for task in following:
                task.cancel()
        client.set(keys.desired, Desired("c.pt", None, 3, "c.pt").to_json())
        late = swapper("r3")
        assert (await late.start()).name == "c.pt" and late.report.generation == 3
        # a record made over other config weights: the config changed since, the config wins
        client.set(keys.desired, Desired("d.pt", None, 4, "d.pt", config="old-config.pt").to_json())
        assert (await swapper("r4").start()).name == "a.pt"

    asyncio.run(scenario())


def test_a_broken_labels_file_is_refused_over_the_api_naming_the_card(redis_server, tmp_path, models_dir):
    """``PUT /models/classifier-sign`` with a card whose labels file is broken: 422 naming the
    card, its field, the labels file and the line (not a Python error's text); nothing recorded."""
    from pipeline.lifecycle.swap import SwapRefused
    from pipeline.lifecycle.swap_service import ModelSwaps
    from pipeline.samples import SIGN_CLASSIFIER

    from .test_model_checks import bad_labels_cards

    config = parse_config({"redis": {"url": redis_server.url, "stream_prefix": "cards"}, "models_dir": models_dir,
                           "classifiers": {"sign": {"weights": SIGN_CLASSIFIER}}}, env={})
    swaps = ModelSwaps(config, redis_server.client())
    for card, (labels, words) in bad_labels_cards(tmp_path).items():
        if not words:
            continue  # a good file
        with pytest.raises(SwapRefused) as refused:
            asyncio.run(swaps.swap("classifier-sign", {"weights": SIGN_CLASSIFIER, "card": card}))
        assert refused.value.status == 422
        assert f"{card}: outputs[0].labels_file: {tmp_path / labels}: {words}" in str(refused.value), refused.value
        assert "SECRET_TOKEN" not in str(refused.value)
    assert redis_server.client().get(swaps.keys("classifier-sign").desired) is None


# --- on a running graph -------------------------------------------------------------------------

def _http(method, url, body=None):
    return call_json(method, url, body, timeout=600)  # a swap answers once every replica serves


def _deployment(api, name):
    return next(d for d in _http("GET", api + "/models")[1] if d["deployment"] == name)


@pytest.fixture(scope="module")
def graph(ray_session, session_redis, rtsp_cameras, models_dir):
    from ray import serve

    from deployments.graph import build_app

    config = parse_config({
        "redis": {"url": session_redis.url, "stream_prefix": PREFIX},
        "cameras": [{"id": "traffic", "url": rtsp_cameras.url("traffic"), "fps": 3}],
        "detector": {"weights": FIRST, "imgsz": 320, "replicas": 2, "num_cpus": 0.5, "threads": 1,
                     "batch": {"max_size": 2, "wait_ms": 20}},
        "classifiers": {"vehicle": {"weights": CLASSIFIER, "labels": VEHICLE_LABELS, "max_per_frame": 2,
                                    "num_cpus": 0.25, "threads": 1}},
        "models_dir": models_dir,
    }, env={})
    serve.run(build_app(config), name="percept-swaptest", route_prefix="/swaptest",
              logging_config={"enable_access_log": False})
    client = session_redis.client()
    api = ray_session.serve_http_url + "/swaptest"
    wait_for(lambda: client.xlen(KEYS.detections("traffic")) >= 8, 180, "the camera publishing")
    wait_for(lambda: len(_deployment(api, "detector")["replicas"]) == 2, 60, "both detector replicas reporting")
    yield client, api
    serve.delete("percept-swaptest")


def _messages(client, after: str = "-"):
    """(entry id, payload) of the camera's messages after entry ``after``."""
    start = after if after == "-" else "(" + after
    return [(eid.decode(), json.loads(f[b"json"])) for eid, f in client.xrange(KEYS.detections("traffic"), start, "+")]


def _frames(client, n: int, timeout: float = 60) -> None:
    start = client.xlen(KEYS.detections("traffic"))
    wait_for(lambda: client.xlen(KEYS.detections("traffic")) >= start + n, timeout, f"{n} more frames")


def _counters(api) -> dict:
    return _http("GET", api + "/status")[1]["cameras"]["traffic"]


def test_bad_weights_are_refused_and_the_old_model_keeps_serving(graph, tmp_path):
    client, api = graph
    served = _deployment(api, "detector")  # (whatever the module's graph serves now: the tests share it)
    desired = client.get(f"{PREFIX}:models:detector")
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    refused = {
        str(MODELS / CLASSIFIER): "detector.weights: " + repr(str(MODELS / CLASSIFIER)) +
        " is a classify model; this stage needs a detect model",
        str(tmp_path / "missing.pt"): f"weights: {str(tmp_path / 'missing.pt')!r} does not exist",
        str(text): f"weights: {str(text)!r}: unknown model format '.txt'",
    }
    for weights, why in refused.items():
        code, body = _http("PUT", api + "/models/detector", {"weights": weights})
        assert code == 422 and body["detail"][0].startswith(why), (weights, code, body)
    code, body = _http("PUT", api + "/models/detector-nope", {"weights": str(MODELS / SECOND)})
    assert code == 404 and "there are: detector, classifier-vehicle" in body["detail"][0], body
    code, out, err = percept("models", "swap", "detector", str(tmp_path / "missing.pt"), "--api", api)
    assert code == 2 and "HTTP 422: weights: " in err and "does not exist" in err, (code, out, err)
    code, out, err = percept("models", "swap", "classifier", "vehicle", str(MODELS / SECOND), "--api", api)
    assert code == 2 and "is a detect model; this stage needs a classify model" in err, err

    # nothing changed: no desired weights written, both replicas and every new message on the model served before
    assert client.get(f"{PREFIX}:models:detector") == desired
    last = _messages(client)[-1][0]
    _frames(client, 6)
    assert {m["model"]["detector"] for _, m in _messages(client, last)} == {served["model"]}
    listed = _deployment(api, "detector")
    assert listed["generation"] == served["generation"] and {r["model"] for r in listed["replicas"]} == {served["model"]}


def test_detector_swap_rolls_replica_by_replica_without_a_gap(graph):
    client, api = graph
    before_id, before = _messages(client)[-1]
    counters = _counters(api)
    t0 = time.monotonic()
    code, out, err = percept("models", "swap", "detector", str(MODELS / SECOND), "--api", api)
    took = time.monotonic() - t0
    assert code == 0, err
    assert out.startswith(f"detector serves {SECOND} on 2 replica(s) (was {FIRST}; generation 1; checked in "), out
    answered_id = _messages(client)[-1][0]
    _frames(client, 9)

    msgs = [(eid, m) for eid, m in _messages(client, before_id)]
    names = [m["model"]["detector"] for _, m in msgs]
    assert set(names) == {FIRST, SECOND}, names
    # the old model's last frames were taken before every replica served the new one: at most the
    # camera's frames in flight (decoder.max_inflight, 2) are published after the API answered
    after_answer = [m for eid, m in msgs if eid > answered_id]
    assert sum(m["model"]["detector"] == FIRST for m in after_answer) <= 2, names
    assert all(n == SECOND for n in names[-6:]), names
    assert any(o["label"] == "car" for m in after_answer for o in m["objects"]), "the new model detects nothing"

    # no gap in seq other than counted drops, and no frame failed during the swap
    seqs = [before["seq"]] + [m["seq"] for _, m in msgs]
    assert seqs == sorted(set(seqs)), seqs
    gaps = sum(b - a - 1 for a, b in zip(seqs, seqs[1:]))
    wait_for(lambda: _counters(api)["dropped"] - counters["dropped"] >= gaps, 30,
             f"the camera's drop counter counting the {gaps} frame(s) missing from seq")
    assert _counters(api)["failed"] == counters["failed"], "frames failed during the swap"

    # both replicas serve it, swapped one after the other (their loads never overlapped)
    listed = _deployment(api, "detector")
    assert listed["rolled_out"] and listed["generation"] == 1 and listed["model"] == SECOND
    reps = listed["replicas"]
    assert len(reps) == 2 and all(r["model"] == SECOND and r["generation"] == 1 and not r["error"] for r in reps)
    first, second = sorted(reps, key=lambda r: r["swapped_at"])
    assert second["swapped_at"] - second["load_s"] >= first["swapped_at"] - 0.02, reps
    # percept explain scores with the weights the replicas serve now, not the configured ones
    def explained():  # None while the newest kept frame has no object
        url = api + "/cameras/traffic/explain?object=0&masks=16"
        with contextlib.suppress(urllib.error.HTTPError), urllib.request.urlopen(url, timeout=120) as resp:
            return resp.headers["X-Percept-Method"]
        return None

    method = wait_for(explained, 180, "an explanation of a published object")
    assert f"model={SECOND}" in method, method
    print(f"\nswap: {took:.1f} s from request to both replicas serving ({out.strip()}); loads "
          f"{[r['load_s'] for r in reps]} s; frames published during/after: {len(msgs)}, seq gaps {gaps}")


def test_classifier_swap_through_the_api(graph, tmp_path):
    client, api = graph
    code, body = _http("PUT", api + "/models/classifier-vehicle", {"weights": str(MODELS / FIRST)})
    assert code == 422 and body["detail"][0].endswith("is a detect model; this stage needs a classify model"), body
    # the same network under another name: what changes in the messages is the model's name
    renamed = tmp_path / "vehicle-cls-v2.pt"
    shutil.copyfile(MODELS / CLASSIFIER, renamed)
    last = _messages(client)[-1][0]
    code, body = _http("PUT", api + "/models/classifier-vehicle", {"weights": str(renamed)})
    assert code == 200 and body["model"] == renamed.name and body["replicas"] == 1, body
    assert body["previous"] == CLASSIFIER

    def classified_by_new():
        return [m for _, m in _messages(client, last) if m["model"]["classifiers"]["vehicle"] == renamed.name
                and any("type" in o["attributes"] for o in m["objects"])]

    wait_for(classified_by_new, 90, "a vehicle classified by the swapped-in classifier")
    names = [m["model"]["classifiers"]["vehicle"] for _, m in _messages(client, last)]
    first_new = names.index(renamed.name)
    assert set(names[first_new:]) == {renamed.name}, names  # one replica: never the old one again
    assert camera_states(client, KEYS, ["traffic"])["traffic"]["state"] == "online"


def test_a_model_wanting_a_gpu_is_refused_on_a_deployment_given_none(redis_server, models_dir):
    """`num_gpus: auto` gives no GPU to a deployment whose configured model runs on the CPU anyway
    (a card's network); a `.pt` swapped onto it on a cluster with GPUs ran on the CPU without a
    word (200). Refused (422, naming the field and what to change) before anything is recorded;
    allowed where the cluster has no GPU, or onto a deployment with a GPU share."""
    from pipeline.lifecycle.swap import SwapRefused
    from pipeline.lifecycle.swap_service import ModelSwaps
    from pipeline.samples import SIGN_CLASSIFIER

    def swaps(gpus: bool, **sign) -> ModelSwaps:
        config = parse_config({"redis": {"url": redis_server.url, "stream_prefix": "gpu"}, "models_dir": models_dir,
                               "classifiers": {"sign": {"weights": SIGN_CLASSIFIER, **sign}}}, env={})
        return ModelSwaps(config, redis_server.client(), gpus_on_cluster=lambda: gpus)

    wanted = {"weights": "yolov8n-cls-imagenet.pt"}
    with pytest.raises(SwapRefused) as refused:
        asyncio.run(swaps(True).swap("classifier-sign", wanted))
    assert refused.value.status == 422
    assert str(refused.value) == (
        "classifiers.sign.weights: yolov8n-cls-imagenet.pt would run on a GPU, but classifier-sign has none: its "
        "configured model runs on the CPU, so num_gpus auto gave it none; set classifiers.sign.num_gpus (or device: "
        "cpu) in the config and redeploy"), refused.value
    assert redis_server.client().get(swaps(True).keys("classifier-sign").desired) is None
    with pytest.raises(SwapRefused, match="'typo.pt' does not exist") as typo:  # not "would run on a GPU"
        asyncio.run(swaps(True).swap("classifier-sign", {"weights": "typo.pt"}))
    assert typo.value.status == 422
    for allowed in (swaps(False), swaps(True, num_gpus=0.5), swaps(True, device="cpu")):
        with pytest.raises(SwapRefused) as other:  # past the GPU check: validated, refused for its crops
            asyncio.run(allowed.swap("classifier-sign", wanted))
        assert "would run on a GPU" not in str(other.value) and "takes crop size" in str(other.value), other.value


def test_a_detector_without_the_configured_classes_is_refused_with_no_replica_to_compare(redis_server, models_dir):
    """No live replica reports the model to compare with (none up, or Redis lost the records):
    the label check compared with nothing and let a detector with none of the configured classes
    through — pedestrians and cars would have vanished. The settled model is loaded to compare."""
    from pipeline.lifecycle.swap import SwapRefused
    from pipeline.lifecycle.swap_service import ModelSwaps
    from pipeline.samples import SIGN_DETECTOR

    from .conftest import DETECTOR

    config = parse_config({"redis": {"url": redis_server.url, "stream_prefix": "classes"}, "models_dir": models_dir,
                           "detector": {"weights": DETECTOR, "categories": {"vehicle": ["car"],
                                                                           "sign": ["speed limit 50"]}}}, env={})
    swaps = ModelSwaps(config, redis_server.client())
    with pytest.raises(SwapRefused) as refused:  # the sign detector: speed limits, no car
        asyncio.run(swaps.swap("detector", {"weights": SIGN_DETECTOR, "timeout_s": 5}))
    assert refused.value.status == 422 and "has no class ['car']" in str(refused.value), refused.value
    assert DETECTOR in str(refused.value), refused.value
    assert redis_server.client().get(swaps.keys("detector").desired) is None
