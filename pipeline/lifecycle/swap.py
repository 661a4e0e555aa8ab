"""Hot swap of a model deployment's weights while cameras keep publishing
(``percept models swap``, ``PUT /models/{deployment}``, ``GET /models``).

Why not Serve's ``user_config``: a deployment's ``reconfigure`` would load the weights in place,
but the running graph cannot change one deployment's ``user_config`` alone. ``serve.run`` of the
same application with one option changed gives every deployment a new random code version
(Ray 2.60, ``serve/_private/client.py``), so Serve replaces the replicas of all of them, the
decoders included (their cameras reconnect); checked on this Ray by running an app twice with
only one deployment's ``user_config`` changed: the other deployment's replica was replaced too.
``serve deploy`` of a declarative config does update ``user_config`` in place, but the API
replica has no such path (it needs the dashboard's REST API), and a failed ``reconfigure`` marks
the replica unhealthy (Serve restarts it) instead of keeping the old model serving.

So the swap is a desired state in Redis that each replica follows on its own:

1. The API validates the new weights before anything changes (`swap_checks.validate_swap`): the path exists
   and is readable, the format is one percept loads, the model loads on the CPU and runs one
   warm-up frame at the configured size, its task is the deployment's (detect / classify), a
   detector gives every label the running model gives in the configured categories, a
   classifier writes the same attributes from the same crop size. A refusal (`SwapRefused`)
   is HTTP 422 (CLI exit 2), nothing is written and the old model keeps serving.
2. The API writes the desired weights with a new generation to ``<prefix>:models:<deployment>``.
3. Every replica (`pipeline.lifecycle.swap_replica.ModelSwapper`) reads that record every
   second. One replica at a time (a Redis lock) loads the new weights in a worker thread while
   its current model keeps serving, then switches with one assignment: a batch already running
   finishes on the model it started with, the next one runs on the new model. Replicas report
   what they serve in ``<prefix>:models:<deployment>:replicas`` (heartbeat each second, while
   loading too: however long a load takes, the replica stays live, listed as loading).
4. The API answers once every live replica serves the new generation. When a replica cannot
   load it (a path the API reads but that replica cannot), the API writes the previous weights
   back as the next generation (rollback) and answers 422 with that replica's error. The rollout
   and its rollback run on when the client goes away or is answered at its timeout (504: the API
   watches the rollout for `WATCHED_AFTER_TIMEOUT_S` more); were the API itself to go away before
   writing the rollback, the next swap takes the weights before the failed ones as the
   deployment's (what it validates against and rolls back to).
5. A replica that starts later (a restart, autoscaling) loads the desired weights at start (when
   they do not load: the weights they replaced, else the config's; its report keeps the error). A
   record naming the weights a replica serves is a rollback only when it names no ``previous``:
   a swap to the same path again loads the file again. A
   record made under another config (other weights or card) is void: the config changed since
   (and the graph restarted on the same Redis), so the config wins, and the replica deletes the
   record, so that changing the config back later does not bring the swap back.
6. Generations only grow, even when Redis loses its data (a restart without persistence): the
   API numbers a swap above every generation the live replicas report, and a replica takes a
   record numbered below its own generation, or at it naming other weights, as new (Redis
   started counting again); the API counts such a replica done only once it reports the record's.

Modules: this one holds the records, the validation and the names published; the API's side is
`pipeline.lifecycle.swap_service` (``GET /models``, ``PUT /models/{deployment}``), the replica's
`pipeline.lifecycle.swap_replica`; `deployments/` only binds them to Serve.

Every result names the model that produced it: detector results carry `Detections.model_names`
(set by the replica that ran the batch), classifier answers are `ModelAnswers` (a list with
``.model``); the decoder publishes those names in each message's ``model`` (`PublishedModels`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

from ..models import model_name

log = logging.getLogger("percept.swap")


class SwapError(ValueError):
    """A swap that did not happen; ``status`` is the HTTP status, ``errors`` the lines to show."""

    status = 422

    def __init__(self, errors: Sequence[str] | str):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("; ".join(self.errors))


class SwapRefused(SwapError):
    """Bad weights (missing, unreadable, unknown format, another task, other classes): 422."""


class UnknownDeployment(SwapError):
    status = 404


class SwapBusy(SwapError):
    status = 409


class SwapTimeout(SwapError):
    status = 504


class ModelAnswers(list):
    """A classifier replica's answers to one request, with the name of the model that gave them."""

    def __init__(self, answers: Sequence[Any] = (), model: str | None = None):
        super().__init__(answers)
        self.model = model


# --- what Redis holds ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SwapKeys:
    prefix: str
    deployment: str

    @property
    def desired(self) -> str:
        """String: the desired weights (`Desired`, JSON)."""
        return f"{self.prefix}:models:{self.deployment}"

    @property
    def generation(self) -> str:
        return f"{self.prefix}:models:{self.deployment}:generation"

    @property
    def replicas(self) -> str:
        """Hash: replica id → `ReplicaReport` (JSON)."""
        return f"{self.prefix}:models:{self.deployment}:replicas"

    @property
    def rolled_out(self) -> str:
        """String: the last generation every replica was seen serving (a swap answered done)."""
        return f"{self.prefix}:models:{self.deployment}:rolled_out"

    @property
    def lock(self) -> str:
        """Held by the one replica loading new weights (redis-py lock, renewed while loading)."""
        return f"{self.prefix}:models:{self.deployment}:lock"


@dataclass(frozen=True)
class Desired:
    weights: str
    card: str | None
    generation: int
    model: str
    previous: dict[str, Any] | None = None  # {"weights", "card"} it replaced: the rollback
    requested_at: float = 0.0
    # the config it was made under (`config_identity`; a plain string in records of older versions:
    # the config's weights; None in older still: any config)
    config: dict[str, Any] | str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> "Desired | None":
        """The record; fields this version does not know are left out (a newer version's, during a
        rolling upgrade), and a record it cannot read at all counts as none (logged): the config's
        weights are served, where a raise stopped every decoder, model replica and `GET /models`."""
        if raw is None:
            return None
        try:
            record = json.loads(raw)
            known = {f.name for f in fields(cls)}
            desired = cls(**{k: v for k, v in record.items() if k in known})
            if not isinstance(desired.weights, str) or not isinstance(desired.generation, int):
                raise TypeError("weights must be a string and generation an integer")
            return desired
        except (ValueError, TypeError, AttributeError) as exc:
            logging.getLogger("percept.swap").warning("a model swap record that cannot be read is ignored (%s: %s)",
                                                      type(exc).__name__, str(exc)[:200])
            return None

    @classmethod
    def read(cls, raw: bytes | str | None, cfg: Any) -> "Desired | None":
        """The record, unless it was made under another config than ``cfg`` (other weights or
        card): the config changed since (and the graph restarted on the same Redis), so the
        config wins."""
        desired = cls.from_json(raw)
        return desired if desired is not None and desired.made_under(cfg) else None

    def made_under(self, cfg: Any) -> bool:
        if self.config is None:
            return True
        if isinstance(self.config, str):
            return self.config == cfg.weights
        return self.config == config_identity(cfg)


def config_identity(cfg: Any) -> dict[str, Any]:
    """What names a deployment's config section for a swap record: its weights and card (a swap
    replaces exactly these; the section's other settings apply to the swapped-in weights too)."""
    return {"weights": cfg.weights, "card": getattr(cfg, "card", None)}


# compare-and-delete: only the record that was read (a swap written meanwhile stays)
_DROP_IF_UNCHANGED = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def read_desired(client: Any, keys: SwapKeys, cfg: Any, *, void_stale: bool = False) -> Desired | None:
    """The deployment's record as `Desired.read` takes it. ``void_stale`` (a replica starting):
    a record made under another config is deleted, not only ignored: the graph restarted on a
    changed config, which voids the swap; were the config changed back later, the swap must not
    come back with it."""
    raw = client.get(keys.desired)
    desired = Desired.read(raw, cfg)
    if desired is None and raw is not None and void_stale and client.eval(_DROP_IF_UNCHANGED, 1, keys.desired, raw):
        logging.getLogger("percept.swap").info("%s: the swap recorded under another config is void (deleted): "
                                               "the config changed since", keys.deployment)
    return desired


@dataclass
class ReplicaReport:
    replica: str
    model: str  # the file name, as published in messages
    weights: str
    card: str | None
    generation: int  # of the weights it serves (0: the config's)
    ts: float = 0.0  # last heartbeat, wall time
    loading: int | None = None  # the generation it is loading now
    failed_generation: int | None = None
    # the failed record's ``requested_at``: which record it was (after Redis lost its data,
    # generations are numbered from 1 again, below the one a replica serves)
    failed_requested_at: float | None = None
    error: str | None = None
    load_s: float | None = None  # how long its last swap's load took
    swapped_at: float | None = None  # wall time of its last switch
    facts: dict[str, Any] = field(default_factory=dict)  # what a new model must keep (`model_facts`)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> "ReplicaReport":
        """Fields this version does not know are left out: a replica of a newer version reporting
        during a rolling upgrade would otherwise make `GET /models` a 500."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(raw).items() if k in known})


def model_facts(kind: str, backend: Any) -> dict[str, Any]:
    """What the rest of the graph relies on: a detector's mapped labels; a classifier's attributes
    and the crop the decoder cuts for it (size, context and the smallest box are read once, at
    decoder start)."""
    if kind == "detector":
        cats = getattr(backend, "categories", None)
        return {"labels": sorted({label for label, _ in cats.by_class.values()})} if cats is not None else {}
    min_size = getattr(backend, "min_size", None)
    return {"attributes": sorted(backend.attributes), "crop_size": list(backend.crop_size),
            "crop_context": round(float(backend.crop_context), 4), "min_size": list(min_size) if min_size else None,
            "crop_fit": getattr(backend, "crop_fit", "context")}


def swapped_cfg(cfg: Any, weights: str, card: str | None) -> Any:
    """The deployment's config section with other weights (and card); everything else kept."""
    return cfg.model_copy(update={"weights": weights, "card": card})


# --- the decoder side --------------------------------------------------------------------------

class PublishedModels:
    """The ``model`` of each message: the detector model(s) named by the replicas that ran the
    frame (all of them under ``detectors`` when there are several) and, per category, the
    classifier model of that classifier's latest answer (a list when the category has several).
    Until a replica has answered, the names are the desired weights' (a swap made before this
    decoder started), else the config's."""

    def __init__(self, config: Any, client: Any | None = None):
        self.detectors = [model_name(d) for d in config.all_detectors]
        self.classifiers: dict[str, tuple[str, str]] = {
            s.deployment: (s.category, model_name(s.cfg)) for s in config.classifier_sections()}
        if client is not None:
            self._adopt(client, config)

    def _adopt(self, client: Any, config: Any) -> None:
        prefix = config.redis.stream_prefix
        for i, s in enumerate(config.detector_sections()):
            desired = Desired.read(client.get(SwapKeys(prefix, s.deployment).desired), s.cfg)
            if desired is not None:
                self.detectors[i] = desired.model
        for s in config.classifier_sections():
            desired = Desired.read(client.get(SwapKeys(prefix, s.deployment).desired), s.cfg)
            if desired is not None:
                self.classifiers[s.deployment] = (s.category, desired.model)

    def answered(self, deployment: str, answers: Any) -> None:
        name = getattr(answers, "model", None)
        if name and deployment in self.classifiers:
            self.classifiers[deployment] = (self.classifiers[deployment][0], name)

    def __call__(self, produced: Sequence[str] = ()) -> dict[str, Any]:
        detectors = list(produced) if len(produced) == len(self.detectors) else self.detectors
        models: dict[str, Any] = {"detector": detectors[0]}
        if len(detectors) > 1:
            models["detectors"] = detectors
        by_category: dict[str, list[str]] = {}
        for category, name in self.classifiers.values():
            by_category.setdefault(category, []).append(name)
        models["classifiers"] = {c: names[0] if len(names) == 1 else names for c, names in by_category.items()}
        return models
