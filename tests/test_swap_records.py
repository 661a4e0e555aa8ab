"""Swap records when their writes go wrong (`pipeline/lifecycle/swap_service.py`): an answer
lost after the write landed, a rollback racing a newer swap, a swap to the file already served,
a replica starting while a swap is recorded. The API's side runs on a real redis-server with the
real models; the replicas' load is a stand-in, as in test_swap_recovery.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.lifecycle import swap_service
from pipeline.lifecycle.swap import Desired, SwapRefused, config_identity

from .conftest import MODELS
from .test_swap_recovery import FIRST, SECOND, api, copies, replica, started, stopped, until

pytestmark = pytest.mark.needs_models


def run_swap(swaps, replicas, weights: str, before=None):
    """The detector swapped to ``weights`` while ``replicas`` follow (``before()`` once they do):
    the API's answer, or the text of its refusal (`SwapRefused`)."""
    async def scenario():
        following = await started(*replicas)
        try:
            if before is not None:
                before()
            return await swaps.swap("detector", {"weights": weights})
        except SwapRefused as exc:
            return str(exc)
        finally:
            await stopped(following)

    return asyncio.run(scenario())


def test_a_swap_to_the_same_path_that_a_replica_fails_is_not_said_to_be_rolled_back(redis_server, tmp_path):
    """b.pt written again in place, then swapped to: r1 loads the new file, r2 fails it. A
    rollback to b.pt cannot bring back what r1 held before (the file is the new one now); the
    answer must say so, not "every replica serves it again"."""
    [b] = copies(tmp_path, "b.pt")
    swaps = api(redis_server, weights=b)
    failing: list[str] = []
    good, bad = replica(swaps, "r1"), replica(swaps, "r2", broken=failing)

    refused = run_swap(swaps, [good, bad], b, before=lambda: failing.append("b.pt"))  # r2 cannot load it as it is now
    assert "replica r2 could not load" in refused, refused
    assert "not rolled back: the swap named b.pt, the file the replicas served before; if it was written again in " \
           "place, its earlier version is gone" in refused, refused
    assert "every replica serves it again" not in refused


def test_a_record_whose_answer_was_lost_is_written_again_and_rolled_out(redis_server, monkeypatch):
    """The connection broke after Redis wrote the swap's record: the error reached the client as
    a refusal (its retry then got 409), while the replicas rolled the swap out unwatched, with no
    rollback were one to fail it. The same record is written again and the swap goes on."""
    import redis

    swaps = api(redis_server)
    desired_key = swaps.keys("detector").desired
    real_set, lost = swaps.client.set, []

    def set_answer_lost(key, value, *args, **kwargs):
        out = real_set(key, value, *args, **kwargs)
        if key == desired_key and not lost:
            lost.append(value)
            raise redis.ConnectionError("Connection closed by server.")
        return out

    monkeypatch.setattr(swaps.client, "set", set_answer_lost)
    replicas = [replica(swaps, "r1"), replica(swaps, "r2")]

    answer = run_swap(swaps, replicas, str(MODELS / SECOND))
    assert lost and answer["generation"] == 1 and answer["replicas"] == 2, answer
    assert [r.current.name for r in replicas] == [SECOND, SECOND]


def test_a_rollback_never_replaces_a_swap_recorded_as_it_is_written(redis_server, monkeypatch):
    """A rollback read generation 1, and a new swap's record (generation 2) landed before the
    rollback's write: the rollback wrote over it, and that swap was then counted as done."""
    swaps = api(redis_server)
    keys = swaps.keys("detector")
    cfg = swaps.sections["detector"][1].cfg
    swaps.client.set(keys.desired, Desired(SECOND, None, 1, SECOND, {"weights": FIRST, "card": None}, time.time(),
                                           config_identity(cfg)).to_json())
    swaps.client.set(keys.generation, 1)
    newer = Desired("c.pt", None, 2, "c.pt", {"weights": SECOND, "card": None}, time.time(), config_identity(cfg))
    real_next = swaps._next_generation

    def a_swap_lands_meanwhile(keys_):
        swaps.client.set(keys.desired, newer.to_json())  # the other swap's write, between our read and write
        return real_next(keys_)

    monkeypatch.setattr(swaps, "_next_generation", a_swap_lands_meanwhile)
    assert swaps._record(keys, FIRST, None, FIRST, None, replacing=1) is None
    assert Desired.from_json(swaps.client.get(keys.desired)) == newer


def test_a_swap_recorded_while_a_replica_starts_waits_for_it(redis_server):
    """r2 is starting (its model load takes seconds) when a swap is recorded: the swap counted
    the replicas up only and answered done on 1 of 2; were r2 then to fail the new weights,
    nothing rolled it back. A starting replica reports itself loading."""
    swaps = api(redis_server)
    loads: list[tuple[str, str]] = []
    r1, r2 = replica(swaps, "r1"), replica(swaps, "r2", slow={FIRST: 15.0}, loads=loads)

    async def start_then_follow(r):  # as a replica runs: its start, then its rounds
        await r.start()
        await r.follow()

    async def scenario():
        following = await started(r1)
        following.append(asyncio.ensure_future(start_then_follow(r2)))
        try:
            await until(lambda: ("r2", FIRST) in loads, "r2 loading its model as it starts")
            return await swaps.swap("detector", {"weights": str(MODELS / SECOND)})
        finally:
            await stopped(following)

    answer = asyncio.run(scenario())
    assert answer["replicas"] == 2, answer
    assert [r1.current.name, r2.current.name] == [SECOND, SECOND]


def test_a_rollback_whose_answer_was_lost_is_not_said_to_be_replaced(redis_server, monkeypatch):
    """The rollback's write landed and its answer was lost: the retry read its own record back
    as "a newer swap replaced it", and the rollback rolled out unwatched."""
    import redis

    swaps = api(redis_server)
    real_eval, lost = swaps.client.eval, []

    def eval_answer_lost(script, numkeys, *args):
        out = real_eval(script, numkeys, *args)
        if script == swap_service._SET_IF_UNCHANGED and not lost:
            lost.append(1)
            raise redis.ConnectionError("Connection closed by server.")
        return out

    monkeypatch.setattr(swaps.client, "eval", eval_answer_lost)
    good, bad = replica(swaps, "r1"), replica(swaps, "r2", broken=(SECOND,))

    refused = run_swap(swaps, [good, bad], str(MODELS / SECOND))
    assert lost, "the rollback's answer was never lost: the test tests nothing"
    assert f"rolled back to {FIRST} (every replica serves it again)" in refused, refused
    assert [good.current.name, bad.current.name] == [FIRST, FIRST]


def test_a_replica_failing_a_swap_that_every_replica_served_does_not_undo_it(redis_server, tmp_path):
    """W2 swapped in and served by every replica (200); then a replica starts where W2 cannot be
    read and falls back to the config's W1, reporting the failure. The next swap took W1 for the
    deployment's model: it compared with it, named it as replaced, and rolled back to it."""
    swaps = api(redis_server)
    second, third = copies(tmp_path, "second.pt", "third.pt")
    r1 = replica(swaps, "r1", broken=("third.pt",))
    late = replica(swaps, "late", broken=("second.pt", "third.pt"))

    async def scenario():
        following = await started(r1)
        try:
            first = await swaps.swap("detector", {"weights": second})
            following += await started(late)  # W2 unreadable there: W1, its failure reported
            await until(lambda: late.current.name == FIRST, "the late replica on the config's weights")
            assert swaps._settled("detector")[0] == (second, None)
            try:
                await swaps.swap("detector", {"weights": third})
            except SwapRefused as exc:
                return first, str(exc)
            return first, "not refused"
        finally:
            await stopped(following)

    first, refused = asyncio.run(scenario())
    assert first["previous"] == FIRST and first["replicas"] == 1, first
    assert "could not load" in refused and "rolled back to second.pt" in refused, refused
    assert r1.current.name == "second.pt", r1.current.name


def test_a_record_of_a_newer_version_is_read_and_one_that_cannot_be_read_is_none(redis_server):
    """A swap record with a field this version does not know (a newer version's, during a rolling
    upgrade) raised TypeError in every decoder, model replica and `GET /models`; one that is not
    a record at all (hand-edited, truncated) the same. The first is read without that field, the
    second counts as no record: the config's weights are served."""
    from pipeline.lifecycle.swap import read_desired

    swaps = api(redis_server)
    keys, cfg = swaps.keys("detector"), swaps.sections["detector"][1].cfg
    client = swaps.client
    newer = Desired(SECOND, None, 7, SECOND, None, time.time(), config_identity(cfg))
    client.set(keys.desired, newer.to_json()[:-1] + ', "rollout_policy": "canary"}')
    try:
        assert read_desired(client, keys, cfg) == newer
        listed = asyncio.run(swaps.listing())
        assert [d["weights"] for d in listed if d["deployment"] == "detector"] == [SECOND], listed
        for raw in ('{"weights": "a.pt"', '["a.pt"]', '{"weights": 3, "card": null, "generation": 1, "model": "m"}',
                    '{"card": null}', "null"):
            client.set(keys.desired, raw)
            assert read_desired(client, keys, cfg) is None, raw
            listed = asyncio.run(swaps.listing())
            assert [d["weights"] for d in listed if d["deployment"] == "detector"] == [FIRST], (raw, listed)
    finally:
        client.delete(keys.desired)


def test_a_replica_on_a_host_whose_clock_is_behind_is_listed_live(redis_server, monkeypatch):
    """Reports were stamped with the replica host's clock and judged by the API host's: a replica
    on a host 60 s behind was never live (a swap was done without it, never rolled back when it
    failed, and its report deleted as stale). Both now take Redis's time."""
    from pipeline.lifecycle import swap_replica

    real = time.time
    monkeypatch.setattr(swap_replica, "time", type("BehindClock", (), {"time": staticmethod(lambda: real() - 60)}))
    swaps = api(redis_server)
    lagging = replica(swaps, "r1")

    async def scenario():
        following = await started(lagging)
        try:
            await until(lambda: [r.replica for r in swap_service.live_reports(swaps.client, swaps.keys("detector"))]
                        == ["r1"], "the replica 60 s behind listed as live")
            (listed,) = [d for d in swaps._listing() if d["deployment"] == "detector"]
            assert [r["age_s"] < 5 for r in listed["replicas"]] == [True], listed
        finally:
            await stopped(following)

    asyncio.run(scenario())


def test_a_failed_swap_after_redis_lost_its_data_rolls_back_to_what_every_replica_served(redis_server, tmp_path):
    """Swaps to b.pt and c.pt, then Redis loses its data; the replicas report again (both on c.pt),
    and a swap to d.pt fails on r2. It was rolled back to the config's weights, which neither
    served, and d.pt was checked against those: now against c.pt, and back to c.pt."""
    from pipeline.lifecycle.swap import SwapRefused

    b, c, d = copies(tmp_path, "b.pt", "c.pt", "d.pt")
    swaps = api(redis_server)
    client, keys = swaps.client, swaps.keys("detector")
    replicas = [replica(swaps, "r1"), replica(swaps, "r2", broken=("d.pt",))]

    async def scenario():
        following = await started(*replicas)
        try:
            for weights in (b, c):
                await swaps.swap("detector", {"weights": weights})
            client.flushall()
            await until(lambda: len(swap_service.live_reports(client, keys)) == 2, "both replicas reporting again")
            with pytest.raises(SwapRefused) as refused:
                await swaps.swap("detector", {"weights": d, "timeout_s": 30})
            return str(refused.value)
        finally:
            await stopped(following)

    refused = asyncio.run(scenario())
    assert "replica r2 could not load" in refused and "rolled back to c.pt" in refused, refused
    assert [r.current.name for r in replicas] == ["c.pt", "c.pt"]


def test_a_classifier_swap_whose_running_card_is_gone_is_compared_with_nothing_not_a_500(tmp_path):
    """No replica answering, the running classifier's card deleted (what the swap may be meant to
    fix): reading its crops raised a `ModelError`, which is no `SwapError`, and the API answered
    500 (the CLI exit 1). The new model is loaded and checked; nothing is there to compare with."""
    from pipeline.config_models import ClassifierConfig
    from pipeline.lifecycle.swap_checks import validate_swap

    weights = str(MODELS / "vehicle-attributes-recognition-barrier-0039/FP32/vehicle-attributes-recognition-barrier-0039.xml")
    running = ClassifierConfig(weights=weights, card=str(tmp_path / "gone.yaml"))
    new_cfg, name, _ = validate_swap("classifier", running, weights, None, models_dir=str(MODELS),
                                  field="classifiers.vehicle", running=None, running_name="gone")
    assert new_cfg.card is None and name == "FP32/vehicle-attributes-recognition-barrier-0039.xml"


def test_explain_loads_the_detector_again_after_a_swap_to_the_same_path(redis_server, monkeypatch):
    """`models finetune --out` rewrites a file and a swap to that same path reloads the replicas;
    the explainer kept the model it had loaded (keyed on the path), explaining with the old one."""
    import pipeline.backends
    from deployments.explain import ExplainApi
    from pipeline.config import parse_config
    from pipeline.lifecycle.swap import SwapKeys, config_identity
    from pipeline.streams import StreamKeys

    cfg = parse_config({"cameras": [{"id": "a", "url": "a.mp4"}], "redis": {"url": redis_server.url},
                        "detector": {"weights": "yolo11n.pt"}}, env={})
    loads = []
    monkeypatch.setattr(pipeline.backends, "load_detector", lambda c, **kw: loads.append(c.weights) or object())
    api = ExplainApi(cfg, redis_server.client(), StreamKeys(cfg.redis.stream_prefix), None, None)
    (section,) = cfg.detector_sections()
    desired_key = SwapKeys(cfg.redis.stream_prefix, section.deployment).desired
    for generation in (None, 1, 1, 2):
        if generation is not None:  # a swap to the configured path itself
            redis_server.client().set(desired_key, Desired("yolo11n.pt", None, generation, "yolo11n.pt",
                                                           config=config_identity(section.cfg)).to_json())
        api._detector_for(None, None)
    assert loads == ["yolo11n.pt", "yolo11n.pt", "yolo11n.pt"]  # at first, at generation 1, at 2: not again at 1


def test_a_classifier_swap_with_no_replica_to_compare_with_is_checked_against_the_configs_card(tmp_path):
    """No classifier replica answering, only the crop size, context and fit were compared with the
    config's card: a card whose heads write other attributes (`type` renamed `kind`), or that
    takes a smaller box, was recorded, and replicas started later served it while the decoders
    cut crops and kept attributes by the config's card. Refused now, as with a live replica."""
    from pathlib import Path

    from pipeline.config_models import ClassifierConfig
    from pipeline.lifecycle.swap_checks import validate_swap

    shipped = Path(__file__).resolve().parent.parent / "configs/models/vehicle-attributes.yaml"
    weights = str(MODELS / "vehicle-attributes-recognition-barrier-0039/FP32/vehicle-attributes-recognition-barrier-0039.xml")
    running = ClassifierConfig(weights=weights, card=str(shipped))
    text = shipped.read_text()
    other = tmp_path / "vehicle-v2.yaml"
    other.write_text(text.replace("attribute: type", "attribute: kind").replace("min_size: [72, 40]", "min_size: [10, 10]"))
    with pytest.raises(SwapRefused) as refused:
        validate_swap("classifier", running, weights, str(other), models_dir=str(MODELS), field="classifiers.vehicle",
                      running=None, running_name="the running model")
    said = str(refused.value)
    assert "writes attributes ['color', 'kind']" in said and "['color', 'type']" in said, said
    assert "smallest box (width, height) [10, 10]" in said and "[72, 40]" in said, said
    same = tmp_path / "vehicle-same.yaml"  # the same card under another name: no fault
    same.write_text(text)
    assert validate_swap("classifier", running, weights, str(same), models_dir=str(MODELS), field="classifiers.vehicle",
                         running=None, running_name="the running model")[0].card == str(same)


def test_a_swap_no_live_replica_can_load_any_more_is_not_taken_for_the_deployments_model(redis_server, tmp_path):
    """second.pt swapped in and served; its file deleted and the replica restarted: it serves the
    weights before (yolo11n). The next swap named second.pt as replaced and, when its own
    weights failed, rolled back to second.pt, which nobody could load (then, at the next restart,
    the config's weights without a word). What every live replica serves is the model then."""
    swaps = api(redis_server, weights=SECOND)
    second, third = copies(tmp_path, "second.pt", "third.pt")
    first = replica(swaps, "r1")
    again = replica(swaps, "r1-again", broken=("second.pt", "third.pt"))  # (the file gone; third.pt: out of memory)

    async def scenario():
        following = await started(first)
        try:
            await swaps.swap("detector", {"weights": second})
        finally:
            await stopped(following)
        swaps.client.hdel(swaps.keys("detector").replicas, "r1")  # (gone: its report aged out)
        following = await started(again)
        try:
            await until(lambda: again.report.failed_generation == 1, "the restarted replica failing second.pt")
            assert again.current.name == SECOND
            try:
                await swaps.swap("detector", {"weights": third})
            except SwapRefused as exc:
                return str(exc)
            return "not refused"
        finally:
            await stopped(following)

    refused = asyncio.run(scenario())
    assert "rolled back to yolov8n-coco.pt" in refused, refused
    assert again.current.name == SECOND
