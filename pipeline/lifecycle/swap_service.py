"""The API's side of a hot swap (`pipeline.lifecycle.swap` explains the protocol): validate the
new weights, record them as the deployment's desired weights, wait until every live replica
serves them, roll back when one cannot load them. Ray-free: `deployments/api.py` routes
``GET /models`` and ``PUT /models/{deployment}`` here."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..backends import runs_on_cpu_only
from ..config_errors import format_validation_error
from ..models import model_name, resolve_weights
from ..streams import redis_unavailable
from .swap import (
    Desired,
    ReplicaReport,
    SwapBusy,
    SwapKeys,
    SwapRefused,
    SwapTimeout,
    UnknownDeployment,
    config_identity,
    swapped_cfg,
)
from .swap_checks import check_weights_path, validate_swap

log = logging.getLogger("percept.swap")


def served_name(section: Any, weights: str, card: str | None) -> str:
    """The name messages give the weights ``section`` serves with ``card`` (`model_name`: an
    Open Model Zoo network with its precision folder, a fine-tune with its run)."""
    return model_name(swapped_cfg(section.cfg, weights, card))

LIVE_S = 15.0  # a replica whose last report is older has gone (restarted, scaled down)
FORGET_S = 300.0  # reports this old are deleted
# after a client is answered at its timeout (504), the rollout is watched this long more: a
# replica that then fails to load the weights is rolled back all the same
WATCHED_AFTER_TIMEOUT_S = 3600.0


# compare-and-set: a rollback's record replaces only the record it read ('' = none)
_SET_IF_UNCHANGED = ("if (redis.call('GET', KEYS[1]) or '') == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) "
                     "return 1 end return 0")
RECORD_RETRY_S = 30.0  # a swap's record asked again through an outage this long


class SwapRequest(BaseModel):
    """The body of ``PUT /models/{deployment}``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # (NaN was "must be <= 3600")
    weights: str = Field(min_length=1, description="path readable by the replicas, or a file in PERCEPT_MODELS_DIR")
    card: str | None = Field(None, min_length=1,  # ("" passed: Path("") is "." and exists; as a card, not None)
                             description="model card of a plain network (default: the shipped card, if any)")
    timeout_s: float = Field(300.0, gt=0, le=3600, description="how long to wait for every replica")

    @field_validator("weights", "card")
    @classmethod
    def _expandable(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                Path(v).expanduser()
            except RuntimeError:  # "~nobody/x.pt": no such user here
                raise ValueError(f"{v!r}: its ~ cannot be expanded on this machine") from None
        return v


def redis_now(client: Any) -> float:
    """Redis's clock (``TIME``), the one replica reports are stamped in (`ModelSwapper`)."""
    seconds, micros = client.time()
    return seconds + micros / 1e6


def live_reports(client: Any, keys: SwapKeys, now: float | None = None) -> list[ReplicaReport]:
    """The replicas that reported within `LIVE_S` of ``now`` (Redis's clock when not given);
    reports older than `FORGET_S` are deleted."""
    now = redis_now(client) if now is None else now
    reports = [ReplicaReport.from_json(raw) for raw in client.hgetall(keys.replicas).values()]
    stale = [r.replica for r in reports if now - r.ts > FORGET_S]
    if stale:
        client.hdel(keys.replicas, *stale)
    return sorted((r for r in reports if now - r.ts <= LIVE_S), key=lambda r: r.replica)


def rollout_state(reports: Sequence[ReplicaReport], generation: int, recorded: int | None = None,
                  requested_at: float | None = None) -> tuple[str, ReplicaReport | None]:
    """("done" | "failed" | "rolling", the failed replica). ``recorded``: the generation of the
    record in Redis now, when known; while that is still ``generation``, a replica reporting a
    higher one is not done: it serves a swap from before Redis lost its data (generations only
    grow otherwise), and takes this record as new (`ModelSwapper`). ``requested_at``: the
    record's, when known: a replica that failed that very record failed, whatever generation it
    serves (one numbered above it, in that case)."""
    failed = next((r for r in reports if r.failed_generation == generation and (
        r.generation < generation or (requested_at is not None and r.failed_requested_at == requested_at))), None)
    if failed is not None:
        return "failed", failed
    if reports and all(r.generation == generation or (r.generation > generation and recorded != generation)
                       for r in reports):
        return "done", None
    return "rolling", None


def listed_state(reports: Sequence[ReplicaReport], weights: str, card: str | None, generation: int,
                 requested_at: float | None = None) -> tuple[str, ReplicaReport | None]:
    """`rollout_state` of what `GET /models` lists; where the generations say done but replicas
    serve other weights (Redis lost its data: no record says which), "mixed" when they serve
    different weights (a replica started since serves the config's) and "unrecorded" when they
    all serve the same other weights; "no replicas" while none reports."""
    if not reports:
        return "no replicas", None
    state, failed = rollout_state(reports, generation, generation or None, requested_at)
    served = {(r.weights, r.card) for r in reports}
    if state == "done" and served != {(weights, card)}:
        return ("mixed" if len(served) > 1 else "unrecorded"), None
    return state, failed


class ModelSwaps:
    """The API's side of swaps: validate, record the desired weights, wait for the replicas."""

    def __init__(self, config: Any, client: Any, *, poll_s: float = 0.25,
                 gpus_on_cluster: Callable[[], bool] = lambda: False):
        self.config = config
        self.client = client
        self.poll_s = poll_s
        self.gpus_on_cluster = gpus_on_cluster  # (the API asks Ray; called only to refuse a swap)
        self.sections = {s.deployment: ("detector", s) for s in config.detector_sections()}
        self.sections.update({s.deployment: ("classifier", s) for s in config.classifier_sections()})
        self._busy: set[str] = set()

    def keys(self, deployment: str) -> SwapKeys:
        return SwapKeys(self.config.redis.stream_prefix, deployment)

    def _serving(self, deployment: str) -> tuple[str, str | None, int, float | None]:
        """(weights, card, generation, the record's requested_at) the deployment should serve now
        (generation 0: the config's, no swap recorded)."""
        desired = Desired.read(self.client.get(self.keys(deployment).desired), self.sections[deployment][1].cfg)
        if desired is not None:
            return desired.weights, desired.card, desired.generation, desired.requested_at
        cfg = self.sections[deployment][1].cfg
        return cfg.weights, getattr(cfg, "card", None), 0, None

    def _listing(self) -> list[dict[str, Any]]:
        out, now = [], redis_now(self.client)  # (the reports' clock)
        for deployment, (kind, section) in self.sections.items():
            weights, card, generation, requested_at = self._serving(deployment)
            reports = live_reports(self.client, self.keys(deployment), now)
            state, failed = listed_state(reports, weights, card, generation, requested_at)
            out.append({
                "deployment": deployment, "kind": kind, "category": section.category, "field": section.field,
                "model": served_name(section, weights, card), "weights": weights, "card": card, "generation": generation,
                "rolled_out": state == "done", "state": state, "failed_replica": failed.replica if failed else None,
                "replicas": [{"replica": r.replica, "model": r.model, "generation": r.generation, "loading": r.loading,
                              "error": r.error, "load_s": r.load_s, "swapped_at": r.swapped_at,
                              "age_s": round(now - r.ts, 1)} for r in reports],
            })
        return out

    async def listing(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._listing)

    async def swap(self, deployment: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, roll out, wait; raises a `SwapError` (its ``status`` is the HTTP status)."""
        if deployment not in self.sections:
            raise UnknownDeployment(f"no model deployment {deployment!r} (there are: {', '.join(self.sections)})")
        try:
            request = SwapRequest.model_validate(body)
        except ValidationError as exc:
            raise SwapRefused(format_validation_error(exc)) from None
        if deployment in self._busy:
            raise SwapBusy(f"{deployment}: a swap is in progress; GET /models shows it")
        self._busy.add(deployment)
        answer: asyncio.Future = asyncio.get_running_loop().create_future()
        answer.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: the client may be gone
        rollout = asyncio.ensure_future(self._swap(deployment, request, answer))
        rollout.add_done_callback(lambda task: self._ended(deployment, task, answer))
        # a client that goes away (Serve then cancels this handler), or is answered at its timeout,
        # leaves the rollout, and the rollback when a replica cannot load the weights, to finish
        # here all the same
        return await asyncio.shield(answer)

    def _ended(self, deployment: str, rollout: asyncio.Future, answer: asyncio.Future) -> None:
        error = None if rollout.cancelled() else rollout.exception()
        if not answer.done():  # (answered at its timeout, the deployment was freed then)
            self._busy.discard(deployment)
            if rollout.cancelled():
                answer.cancel()
            elif error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(rollout.result())
        elif error is not None:  # after the answer (a timeout): said here only
            log.warning("%s: swap ended: %s", deployment, error)

    def _settled(self, deployment: str) -> tuple[tuple[str, str | None], int, list[ReplicaReport], str]:
        """((weights, card) the deployment settled on, the record's generation, the live
        reports, its rollout's state). A recorded swap whose rollout failed without its rollback
        written (the API went away meanwhile) settled on the weights it replaced, not on the
        weights that failed: the next swap rolls back to those; one that every replica served
        first (`SwapKeys.rolled_out`) settled on its own weights, unless no live replica serves
        them any more and they all serve the same other ones."""
        keys = self.keys(deployment)
        cfg = self.sections[deployment][1].cfg
        desired = Desired.read(self.client.get(keys.desired), cfg)
        reports = live_reports(self.client, keys)
        if desired is None:  # no swap, or Redis lost its data: what every live replica serves, if they agree
            served = {(r.weights, r.card) for r in reports}
            weights = served.pop() if len(served) == 1 else (cfg.weights, getattr(cfg, "card", None))
            return weights, 0, reports, rollout_state(reports, 0)[0]
        state = rollout_state(reports, desired.generation, desired.generation, desired.requested_at)[0]
        # a replica that fails it after every replica served it (one started later, on a node
        # without the file) does not undo the swap: the deployment settled on it all the same
        noted = self.client.get(keys.rolled_out)
        rolled_out = noted is not None and int(noted) == desired.generation
        if state == "failed" and desired.previous and not rolled_out:
            return (desired.previous["weights"], desired.previous.get("card")), desired.generation, reports, state
        served = {(r.weights, r.card) for r in reports}
        if state == "failed" and len(served) == 1 and (desired.weights, desired.card) not in served:
            # served by every replica once, then no live one could load it (its file deleted,
            # the replicas restarted): the next swap named it as replaced and rolled back to it
            return served.pop(), desired.generation, reports, state
        return (desired.weights, desired.card), desired.generation, reports, state

    def _check_gpu(self, section: Any, request: SwapRequest) -> None:
        """Refuses a model that wants a GPU on a deployment given none: `num_gpus: auto` gives
        none to one whose configured model runs on the CPU anyway (`graph.gpu_shares`), and the
        new one would run on the CPU without a word while the cluster has GPUs."""
        cfg, models_dir = section.cfg, self.config.models_dir
        if cfg.num_gpus != "auto" or not runs_on_cpu_only(cfg, models_dir=models_dir):
            return
        check_weights_path(request.weights, models_dir)  # a path that is not there: said so, not this
        new = swapped_cfg(cfg, request.weights, request.card)
        if new.device == "cpu" or runs_on_cpu_only(new, models_dir=models_dir) or not self.gpus_on_cluster():
            return
        raise SwapRefused(f"{section.field}.weights: {served_name(section, request.weights, request.card)} would run on a GPU, but "
                          f"{section.deployment} has none: its configured model runs on the CPU, so num_gpus auto "
                          f"gave it none; set {section.field}.num_gpus (or device: cpu) in the config and redeploy")

    async def _swap(self, deployment: str, request: SwapRequest, answer: asyncio.Future) -> dict[str, Any]:
        kind, section = self.sections[deployment]
        keys = self.keys(deployment)
        (weights, card), generation, reports, state = await asyncio.to_thread(self._settled, deployment)
        if reports and state == "rolling":
            raise SwapBusy(f"{deployment}: generation {generation} is still rolling out; GET /models shows it")
        running = next((r for r in reports if (r.weights, r.card) == (weights, card) and r.facts), None)
        await asyncio.to_thread(self._check_gpu, section, request)
        started = time.monotonic()
        _, name, notes = await asyncio.to_thread(
            validate_swap, kind, swapped_cfg(section.cfg, weights, card), request.weights, request.card,
            models_dir=self.config.models_dir, field=section.field,
            running=running.facts if running else None, running_name=served_name(section, weights, card))
        validated = time.monotonic()
        desired = await asyncio.to_thread(self._record, keys, request.weights, request.card, name,
                                          {"weights": weights, "card": card})
        state, failed, live = await self._wait(keys, desired.generation, request.timeout_s, desired.requested_at)
        if state == "rolling":  # the client is answered; the rollout is watched on, and rolled back if it fails
            answer.set_exception(SwapTimeout(
                f"{deployment}: after {request.timeout_s:.0f} s {live} replica(s) report, not all serve generation "
                f"{desired.generation}; the rollout goes on, rolled back if a replica cannot load it (GET /models shows it)"))
            # another swap may start (refused while replicas still roll this one; a rollback
            # written here later never replaces a newer swap's record)
            self._busy.discard(deployment)
            state, failed, live = await self._wait(keys, desired.generation, WATCHED_AFTER_TIMEOUT_S,
                                                   desired.requested_at)
        if state == "failed":
            raise SwapRefused(f"{section.field}.weights: replica {failed.replica} could not load {request.weights!r}: "
                              f"{failed.error}; {await self._roll_back(keys, desired, weights, card, request.timeout_s)}")
        if state != "done":
            raise SwapTimeout(f"{deployment}: generation {desired.generation} still not served by every replica "
                              f"{WATCHED_AFTER_TIMEOUT_S:.0f} s after its timeout; no longer watched")
        try:
            await asyncio.to_thread(self.client.set, keys.rolled_out, desired.generation)
        except redis.RedisError as exc:  # (only what a later failure settles on depends on it)
            log.warning("%s: generation %d served everywhere, not noted (%s)", deployment, desired.generation, exc)
        return {"deployment": deployment, "model": name, "weights": request.weights, "card": request.card,
                "generation": desired.generation, "previous": served_name(section, weights, card),
                "replicas": live, "seconds": round(time.monotonic() - started, 2),
                "validate_s": round(validated - started, 2), "rollout_s": round(time.monotonic() - validated, 2),
                "notes": notes}

    async def _roll_back(self, keys: SwapKeys, failed: Desired, weights: str, card: str | None,
                         timeout_s: float) -> str:
        """The weights before ``failed`` recorded again as the next generation (a Redis outage
        waited out, up to ``timeout_s``), unless a newer swap replaced ``failed`` meanwhile; what
        came of it, in words."""
        name = served_name(self.sections[keys.deployment][1], weights, card)
        if card == failed.card and self._same_file(weights, failed.weights):
            # the swap named the file the replicas serve (by this path or another): a record of it
            # again brings nothing back — and when it was written again in place (`models
            # finetune --out`), what it held before is gone (it said "written again" of any)
            return (f"not rolled back: the swap named {name}, the file the replicas served before; if it was written "
                    "again in place, its earlier version is gone: replicas that loaded it serve it as it is now, "
                    "the others what they loaded before (GET /models lists each)")
        deadline = time.monotonic() + timeout_s
        made: list[Desired] = []  # the rollback's record, made once: a retry after a lost answer sends it again
        while True:
            try:
                back = await asyncio.to_thread(self._record, keys, weights, card, name, None, failed.generation, made)
                break
            except redis.RedisError as exc:
                if not redis_unavailable(exc) or time.monotonic() >= deadline:
                    return f"not rolled back ({type(exc).__name__}: {exc}): the next swap rolls back to {name}"
                await asyncio.sleep(self.poll_s)
        if back is None:
            return "not rolled back: a newer swap replaced it"
        state, failed_back, _ = await self._wait(keys, back.generation, timeout_s, back.requested_at)
        after = {"done": "every replica serves it again",
                 "failed": f"replica {failed_back.replica if failed_back else '?'} cannot load that either: "
                           f"{failed_back.error if failed_back else '?'}"}.get(state, "the rollback is still rolling out")
        return f"rolled back to {name} ({after})"

    def _same_file(self, a: str, b: str) -> bool:
        models_dir = self.config.models_dir
        return Path(resolve_weights(a, models_dir)).resolve() == Path(resolve_weights(b, models_dir)).resolve()

    def _record(self, keys: SwapKeys, weights: str, card: str | None, name: str,
                previous: dict[str, Any] | None, replacing: int | None = None,
                made: list[Desired] | None = None) -> Desired | None:
        """The new desired weights, written; ``replacing``: only while the record is still that
        generation (a rollback; None when a newer swap replaced it, also one written between
        this read and this write: the write compares and sets in one step). ``made``: the record
        made by an earlier try whose answer was lost (kept there): sent again, not made anew."""
        raw = self.client.get(keys.desired) if replacing is not None else None
        recorded = Desired.from_json(raw)
        if made and recorded == made[0]:
            return made[0]  # the earlier try landed
        if replacing is not None and recorded is not None and recorded.generation != replacing:
            return None
        if made:
            desired = made[0]
        else:
            config = config_identity(self.sections[keys.deployment][1].cfg)
            desired = Desired(weights, card, self._next_generation(keys), name, previous, time.time(), config)
            if made is not None:
                made.append(desired)
        if replacing is None:
            self._write_through_an_outage(keys, desired)
        elif not self.client.eval(_SET_IF_UNCHANGED, 1, keys.desired, raw or "", desired.to_json()):
            return None
        return desired

    def _write_through_an_outage(self, keys: SwapKeys, desired: Desired) -> None:
        """SET the record; an answer lost to an outage is asked again (the same record: written
        twice is written once) for up to `RECORD_RETRY_S`: an error here after the write landed
        left a swap rolling out that the API neither watched nor rolled back, its client told
        it was refused."""
        deadline = time.monotonic() + RECORD_RETRY_S
        while True:
            try:
                self.client.set(keys.desired, desired.to_json())
                return
            except redis.RedisError as exc:
                if not redis_unavailable(exc) or time.monotonic() >= deadline:
                    raise SwapTimeout(f"{keys.deployment}: generation {desired.generation} may or may not be recorded "
                                      f"(redis: {type(exc).__name__}); GET /models shows what the replicas serve") from None
                time.sleep(self.poll_s)  # the next try, until the deadline above

    def _next_generation(self, keys: SwapKeys) -> int:
        """The counter's next value, above every generation a live replica reports (serving,
        loading or failed): were Redis to lose its data, its counter would start at 1 again,
        below the generations the replicas hold."""
        floor = max((max(r.generation, r.loading or 0, r.failed_generation or 0)
                     for r in live_reports(self.client, keys)), default=0)
        generation = int(self.client.incr(keys.generation))
        if generation <= floor:
            generation = int(self.client.incrby(keys.generation, floor + 1 - generation))
        return generation

    def _poll(self, keys: SwapKeys) -> tuple[list[ReplicaReport], int | None]:
        """(the live replicas' reports, the generation of the record in Redis now)."""
        reports = live_reports(self.client, keys)
        recorded = Desired.from_json(self.client.get(keys.desired))
        return reports, None if recorded is None else recorded.generation

    async def _wait(self, keys: SwapKeys, generation: int, timeout_s: float,
                    requested_at: float | None = None) -> tuple[str, Any, int]:
        """(state, the replica that failed, live replicas) once the rollout of ``generation``
        (the record requested at ``requested_at``) is done or failed, or at the deadline. A Redis
        outage meanwhile is waited out, not an error: the rollout goes on without us, and a
        client that asked again would start another one."""
        deadline = time.monotonic() + timeout_s
        reports: list[ReplicaReport] = []
        while True:
            try:
                reports, recorded = await asyncio.to_thread(self._poll, keys)
            except redis.RedisError as exc:
                if not redis_unavailable(exc):
                    raise
                if time.monotonic() >= deadline:
                    return "rolling", None, len(reports)
                await asyncio.sleep(self.poll_s)
                continue
            state, failed = rollout_state(reports, generation, recorded, requested_at)
            if state != "rolling" or time.monotonic() >= deadline:
                return state, failed, len(reports)
            await asyncio.sleep(self.poll_s)
