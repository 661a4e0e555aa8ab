"""Hot swaps when something goes wrong around them (`pipeline/lifecycle/swap*.py`): a replica
whose load outlasts the API's liveness window, a config changed between restarts, Redis losing
its data. The API's side (`ModelSwaps`: validation with the real models, on the CPU) and the
replicas' (`ModelSwapper`) run on a real redis-server; the replicas' model load is a stand-in
(the weights' name, after an injected delay or failure), as in test_swap.py."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.config import parse_config
from pipeline.lifecycle import swap_service
from pipeline.lifecycle.swap import Desired, SwapRefused, SwapTimeout, config_identity
from pipeline.lifecycle.swap_replica import ModelSwapper
from pipeline.lifecycle.swap_service import ModelSwaps, live_reports
from pipeline.models import ModelError

from .conftest import MODELS
from .waiting import hold

pytestmark = pytest.mark.needs_models

FIRST, SECOND = "yolo11n-coco.pt", "yolov8n-coco.pt"


def api(redis_server, weights: str = FIRST) -> ModelSwaps:
    config = parse_config({"redis": {"url": redis_server.url, "stream_prefix": "recovery"}, "models_dir": str(MODELS),
                           "detector": {"weights": weights, "imgsz": 160}}, env={})
    return ModelSwaps(config, redis_server.client(), poll_s=0.05)


def replica(swaps: ModelSwaps, name: str, slow: dict[str, float] | None = None,
            broken: tuple[str, ...] = (), loads: list | None = None) -> ModelSwapper:
    """A replica of ``swaps``' detector whose load gives the weights' file name; loading a file
    named in ``slow`` takes that long, one named in ``broken`` then fails; ``loads`` gets
    (replica, file name) for each load."""
    def load(cfg):
        name_ = Path(cfg.weights).name
        if loads is not None:
            loads.append((name, name_))
        if name_ in (slow or {}):
            hold(slow[name_], "a model load that takes a while")
        if name_ in broken:
            raise ModelError(f"detector.weights: cannot load {name_!r}: CUDA out of memory")
        return SimpleNamespace(name=name_)

    return ModelSwapper(client=swaps.client, keys=swaps.keys("detector"), replica=name, kind="detector",
                        cfg=swaps.sections["detector"][1].cfg, load=load, poll_s=0.05)


def copies(tmp_path: Path, *names: str) -> list[str]:
    """The shipped YOLOv8n under other names: as many distinct (valid) weights files as asked."""
    out = []
    for name in names:
        shutil.copyfile(MODELS / SECOND, tmp_path / name)
        out.append(str(tmp_path / name))
    return out


async def until(pred, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for: {what}")
        await asyncio.sleep(0.02)  # polled until the deadline above


async def started(*replicas: ModelSwapper) -> list[asyncio.Task]:
    for r in replicas:
        await r.start()
    return [asyncio.ensure_future(r.follow()) for r in replicas]


async def stopped(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_a_replica_loading_past_the_liveness_window_stays_counted(redis_server, monkeypatch):
    """A replica whose load lasts longer than the API's liveness window (LIVE_S, 15 s; 2 s here,
    the load 4 s) keeps reporting while it loads: the API keeps waiting for it, lists it as
    loading, and when its load then fails, rolls back instead of answering that the others serve."""
    monkeypatch.setattr(swap_service, "LIVE_S", 2.0)
    swaps = api(redis_server)
    keys = swaps.keys("detector")
    fast, slow = replica(swaps, "r1"), replica(swaps, "r2", slow={SECOND: 4.0}, broken=(SECOND,))
    seen: list[dict[str, int | None]] = []  # each poll of the live reports during the rollout: replica → loading

    async def scenario():
        following = await started(fast, slow)
        request = asyncio.ensure_future(swaps.swap("detector", {"weights": str(MODELS / SECOND), "timeout_s": 60}))
        try:
            await until(lambda: request.done() or swaps.client.get(keys.desired) is not None, "the swap recorded")
            while not request.done():  # sampled from the record (the validation's model load is over) to the answer
                seen.append({r.replica: r.loading for r in live_reports(swaps.client, keys)})
                await asyncio.wait({request}, timeout=0.1)
            return await request
        finally:
            await stopped(following)

    with pytest.raises(SwapRefused) as refused:
        asyncio.run(scenario())
    assert "replica r2 could not load" in str(refused.value) and "CUDA out of memory" in str(refused.value)
    assert f"rolled back to {FIRST} (every replica serves it again)" in str(refused.value), refused.value
    assert [fast.current.name, slow.current.name] == [FIRST, FIRST]
    assert slow.report.error is None and slow.report.failed_generation is None, slow.report  # (over: rolled back)
    assert all("r2" in polled for polled in seen), seen  # never dropped as gone while it loaded
    assert any(polled["r2"] == 1 for polled in seen), seen  # listed as loading generation 1


def test_a_swap_is_void_once_the_config_changed(redis_server, tmp_path):
    """Config A, swap to B, restart on config C (C serves: the record is void), restart on
    config A again: A serves, not B (the voided record does not come back with the config)."""
    [b] = copies(tmp_path, "b.pt")
    swaps = api(redis_server, FIRST)
    keys = swaps.keys("detector")

    async def scenario():
        replicas = [replica(swaps, "r1"), replica(swaps, "r2")]
        following = await started(*replicas)
        try:
            answer = await swaps.swap("detector", {"weights": b})
        finally:
            await stopped(following)
        assert answer["generation"] == 1 and [r.current.name for r in replicas] == ["b.pt", "b.pt"]
        on_c = replica(api(redis_server, SECOND), "r3")  # the graph restarted on config C
        assert (await on_c.start()).name == SECOND and on_c.report.generation == 0
        back = api(redis_server, FIRST)  # and on config A again
        assert (await replica(back, "r4").start()).name == FIRST
        listed = next(d for d in await back.listing() if d["deployment"] == "detector")
        assert (listed["model"], listed["generation"]) == (FIRST, 0), listed

    asyncio.run(scenario())
    assert redis_server.client().get(keys.desired) is None  # voided: deleted, not only ignored


def test_a_swap_after_redis_lost_its_data_is_rolled_out(redis_server, tmp_path):
    """Two swaps, then Redis loses its data (FLUSHALL: a restart without persistence) while the
    replicas keep theirs. A swap once the replicas report again is numbered above their
    generation; a swap made before they report (its generation starts at 1 again) is still
    taken as new by the replicas, and the API waits for it: either way the API answers once
    every replica serves the new weights."""
    b, c, d, e = copies(tmp_path, "b.pt", "c.pt", "d.pt", "e.pt")
    swaps = api(redis_server)
    client = swaps.client
    keys = swaps.keys("detector")
    replicas = [replica(swaps, "r1"), replica(swaps, "r2")]

    def serving() -> list[str]:
        return [r.current.name for r in replicas]

    async def scenario():
        following = await started(*replicas)
        try:
            for weights in (b, c):
                await swaps.swap("detector", {"weights": weights})
            assert serving() == ["c.pt", "c.pt"] and replicas[0].report.generation == 2
            client.flushall()
            await until(lambda: len(client.hgetall(keys.replicas)) == 2, "both replicas reporting again")
            answer = await swaps.swap("detector", {"weights": d})
            assert answer["generation"] == 3 and serving() == ["d.pt", "d.pt"], (answer, serving())
        finally:
            await stopped(following)
        client.flushall()  # and now before any replica reports again
        request = asyncio.ensure_future(swaps.swap("detector", {"weights": e}))
        await until(lambda: request.done() or client.get(keys.desired) is not None, "the swap recorded")
        following = [asyncio.ensure_future(r.follow()) for r in replicas]
        try:
            answer = await asyncio.wait_for(request, 60)
            assert serving() == ["e.pt", "e.pt"], (answer, serving())
            assert [r.report.generation for r in replicas] == [answer["generation"]] * 2
        finally:
            await stopped(following)

    asyncio.run(scenario())


def test_a_swap_whose_client_went_away_still_rolls_back(redis_server):
    """The client goes away while a replica loads the new weights (Serve cancels the request's
    handler); that replica then fails them: the rollout, and its rollback, finish without the
    request: every replica serves the previous weights again, none is left on the new ones."""
    swaps = api(redis_server)
    keys = swaps.keys("detector")
    fast, slow = replica(swaps, "r1"), replica(swaps, "r2", slow={SECOND: 1.0}, broken=(SECOND,))

    def rolled_back() -> bool:
        record = Desired.from_json(swaps.client.get(keys.desired))
        return (record is not None and record.weights == FIRST and fast.current.name == slow.current.name == FIRST
                and fast.report.generation == slow.report.generation == record.generation)

    async def scenario():
        following = await started(fast, slow)
        try:
            request = asyncio.ensure_future(swaps.swap("detector", {"weights": str(MODELS / SECOND)}))
            await until(lambda: slow.report.loading == 1 or request.done(), "r2 loading the new weights")
            request.cancel()  # the client went away
            await until(rolled_back, "the rollback, both replicas on the previous weights")
            assert request.cancelled()
        finally:
            await stopped(following)

    asyncio.run(scenario())


def test_the_next_swap_after_an_unfinished_rollback_rolls_back_to_the_weights_before(redis_server, tmp_path):
    """What an API that went away between a replica failing the new weights and the rollback
    leaves: the record names the weights that failed (r2 serves the old ones, r1 the new). The
    next swap takes the weights before that one as what the deployment serves: when it fails
    too, its rollback goes there, not to the weights that failed."""
    b, c = copies(tmp_path, "b.pt", "c.pt")
    swaps = api(redis_server)
    client, keys = swaps.client, swaps.keys("detector")
    good, bad = replica(swaps, "r1"), replica(swaps, "r2", broken=("b.pt", "c.pt"))
    cfg = swaps.sections["detector"][1].cfg

    async def scenario():
        following = await started(good, bad)
        try:
            client.set(keys.generation, 1)
            client.set(keys.desired, Desired(b, None, 1, "b.pt", {"weights": FIRST, "card": None}, time.time(),
                                             config_identity(cfg)).to_json())
            await until(lambda: good.current.name == "b.pt" and bad.report.failed_generation == 1,
                        "r1 on b.pt, r2 failing it")
            with pytest.raises(SwapRefused) as refused:
                await swaps.swap("detector", {"weights": c})
            return str(refused.value)
        finally:
            await stopped(following)

    refused = asyncio.run(scenario())
    assert "replica r2 could not load" in refused, refused
    assert f"rolled back to {FIRST} (every replica serves it again)" in refused, refused
    assert [good.current.name, bad.current.name] == [FIRST, FIRST]


def test_a_swap_to_the_same_path_again_loads_the_file_again(redis_server, tmp_path):
    """`models finetune --out b.pt` writes b.pt again: a second swap to b.pt loads it again on
    every replica (before, a replica took any record naming what it serves as a rollback and kept
    the old weights in memory, while replicas started later loaded the new file)."""
    [b] = copies(tmp_path, "b.pt")
    swaps = api(redis_server)
    loads: list[tuple[str, str]] = []
    replicas = [replica(swaps, "r1", loads=loads), replica(swaps, "r2", loads=loads)]

    async def scenario():
        following = await started(*replicas)
        try:
            return [await swaps.swap("detector", {"weights": b}) for _ in range(2)]
        finally:
            await stopped(following)

    answers = asyncio.run(scenario())
    assert [a["generation"] for a in answers] == [1, 2]
    assert sorted(loads) == sorted([("r1", FIRST), ("r2", FIRST)] + [("r1", "b.pt"), ("r2", "b.pt")] * 2), loads


def test_a_replica_failing_the_weights_after_the_client_timed_out_is_rolled_back(redis_server):
    """The client is answered at its timeout (0.5 s: SwapTimeout, HTTP 504) while r2 still loads
    the new weights; r2 then fails them: the rollout was watched on, so the deployment is rolled
    back, not left with r1 on the new weights and r2 on the old."""
    swaps = api(redis_server)
    keys = swaps.keys("detector")
    fast, slow = replica(swaps, "r1"), replica(swaps, "r2", slow={SECOND: 2.0}, broken=(SECOND,))

    def rolled_back() -> bool:
        record = Desired.from_json(swaps.client.get(keys.desired))
        return (record is not None and record.generation == 2 and record.weights == FIRST
                and fast.current.name == slow.current.name == FIRST
                and fast.report.generation == slow.report.generation == 2)

    async def scenario():
        following = await started(fast, slow)
        try:
            with pytest.raises(SwapTimeout, match="rolled back if a replica cannot load it"):
                await swaps.swap("detector", {"weights": str(MODELS / SECOND), "timeout_s": 0.5})
            assert slow.report.failed_generation is None  # answered before r2 failed
            await until(rolled_back, "the rollback after the timeout, both replicas on the previous weights")
        finally:
            await stopped(following)

    asyncio.run(scenario())


def test_a_replica_that_cannot_load_the_recorded_weights_at_start_serves_the_ones_before_and_says_why(
        redis_server, tmp_path):
    """Swaps to b.pt, then c.pt; a replica started later cannot load c.pt: it serves b.pt (the
    weights c.pt replaced, where the API's rollback goes too), not the config's, and its report
    keeps the error (GET /models shows why), so a swap waiting on it names the cause."""
    b, c = copies(tmp_path, "b.pt", "c.pt")
    swaps = api(redis_server)

    async def scenario():
        first = replica(swaps, "r1")
        following = await started(first)
        try:
            for weights in (b, c):
                await swaps.swap("detector", {"weights": weights})
        finally:
            await stopped(following)
        late = replica(swaps, "r2", broken=("c.pt",))
        await late.start()
        return late, next(d for d in await swaps.listing() if d["deployment"] == "detector")

    late, listed = asyncio.run(scenario())
    assert late.current.name == "b.pt" and (late.report.weights, late.report.model) == (b, "b.pt"), late.report
    assert late.report.failed_generation == 2 and "CUDA out of memory" in (late.report.error or ""), late.report
    shown = {r["replica"]: r for r in listed["replicas"]}
    assert "CUDA out of memory" in (shown["r2"]["error"] or "") and not listed["rolled_out"], listed
    # a failure, not a rollout going on (`percept models served` said "rolling out")
    assert (listed["state"], listed["failed_replica"]) == ("failed", "r2"), listed


def test_after_redis_lost_its_data_replicas_on_different_weights_are_listed_as_mixed(redis_server, tmp_path):
    """A swap to c.pt, then Redis loses its data and a replica starts (a restart, autoscaling):
    it serves the config's weights, the first replica still c.pt. `GET /models` listed the
    deployment as rolled out (every replica at or above generation 0); it is "mixed" until a
    swap settles them."""
    (c, d) = copies(tmp_path, "c.pt", "d.pt")
    swaps = api(redis_server)
    keys = swaps.keys("detector")

    async def scenario():
        first = replica(swaps, "r1")
        following = await started(first)
        try:
            await swaps.swap("detector", {"weights": c})
            swaps.client.flushall()
            following += await started(replica(swaps, "r3"))
            await until(lambda: len(swaps.client.hgetall(keys.replicas)) == 2, "both replicas reporting")
            mixed = next(d_ for d_ in await swaps.listing() if d_["deployment"] == "detector")
            await swaps.swap("detector", {"weights": d})
            settled = next(d_ for d_ in await swaps.listing() if d_["deployment"] == "detector")
        finally:
            await stopped(following)
        return mixed, settled

    mixed, settled = asyncio.run(scenario())
    assert sorted(r["model"] for r in mixed["replicas"]) == ["c.pt", FIRST], mixed
    assert (mixed["state"], mixed["rolled_out"], mixed["model"]) == ("mixed", False, FIRST), mixed
    assert (settled["state"], settled["rolled_out"]) == ("done", True), settled
    assert [r["model"] for r in settled["replicas"]] == ["d.pt", "d.pt"], settled


def test_a_swap_made_right_after_redis_lost_its_data_that_a_replica_fails_is_rolled_back(redis_server, tmp_path):
    """Swaps to b.pt and c.pt (generation 2), then Redis loses its data and a swap to d.pt is
    made before the replicas report again: it is numbered 1, below what they serve, and they
    take it as new; r2 cannot load d.pt. Its failure (generation 1, while it serves 2) was not
    seen: the rollout stayed "rolling", the client got a 504 promising a rollback that never
    came, r1 stayed on d.pt, and every later swap was refused (409). Now the failure is that
    of this very record (its ``requested_at``): refused, rolled back, every replica alike."""
    b, c, d = copies(tmp_path, "b.pt", "c.pt", "d.pt")
    swaps = api(redis_server)
    client, keys = swaps.client, swaps.keys("detector")
    replicas = [replica(swaps, "r1"), replica(swaps, "r2", broken=("d.pt",))]

    async def scenario():
        following = await started(*replicas)
        try:
            for weights in (b, c):
                await swaps.swap("detector", {"weights": weights})
        finally:
            await stopped(following)
        client.flushall()  # the replicas are between two reports
        request = asyncio.ensure_future(swaps.swap("detector", {"weights": d, "timeout_s": 30}))
        await until(lambda: request.done() or client.get(keys.desired) is not None, "the swap recorded")
        following = [asyncio.ensure_future(r.follow()) for r in replicas]
        try:
            with pytest.raises(SwapRefused) as refused:
                await asyncio.wait_for(request, 60)
            listed = next(x for x in await swaps.listing() if x["deployment"] == "detector")
        finally:
            await stopped(following)
        return refused.value, listed

    refused, listed = asyncio.run(scenario())
    assert "replica r2 could not load" in str(refused) and "every replica serves it again" in str(refused), refused
    assert [r.current.name for r in replicas] == [FIRST, FIRST]  # the config's: no record said c.pt any more
    assert (listed["state"], listed["model"]) == ("done", FIRST), listed
