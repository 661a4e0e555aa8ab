"""``GET /cameras/{id}/explain?object=N[&seq=S][&method=…][&masks=M]`` on the HTTP ingress: the heat
map of what drove one detection of a published frame, as a PNG overlay (`pipeline/explain.py`).

The frame comes from the keep buffer of the decoder replica that runs the camera
(``DecoderDeployment.kept_frame``; with several decoder replicas the request is repeated until
the owner answers, as Serve routes each call to one replica). The explanation runs here, in the
API replica, on its own copy of the detector its replicas serve (the configured weights, or
those of a hot swap; loaded on the first request and again after a swap, keeping detections down
to ``conf`` 0.05), in one thread 10 nice values below the replica: one explanation at a time, and the
live detector replicas are never asked to score masked frames. With several detectors the one
that finds the object best on the unmasked frame explains it. Before the image leaves, faces and
plates are blurred as in the live view (``privacy``)."""

from __future__ import annotations

import asyncio
import logging
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from fastapi import HTTPException
from fastapi.responses import Response
from ray.serve.handle import DeploymentHandle

from pipeline.config import ConfigError, DetectorConfig, PerceptConfig
from pipeline.explain import (
    EXPLAIN_CONF,
    METHODS,
    ExplainError,
    Target,
    deletion_check,
    encode_png,
    explain,
    inside_outside_ratio,
    overlay,
    scores_of,
)
from pipeline.decoder_status import owner_tries
from pipeline.keep import KeptFrame, NotKept
from pipeline.lifecycle.swap import Desired, SwapKeys, swapped_cfg
from pipeline.models import ModelError, prepare_frame
from pipeline.priority import lower_thread_priority
from pipeline.privacy import PrivacyUnavailable
from pipeline.redact import redact
from pipeline.registry import CameraRegistry
from pipeline.streams import StreamKeys
from pipeline.config_errors import quoted_id

from .transport import DECODER_ANSWER_S, answer_within

log = logging.getLogger("percept.explain")
MAX_QUEUED = 4  # explanations waiting for the one worker; more get 429
EXPLAIN_NICE = 10  # the explanation yields the CPU to the cameras: this many nice values below its replica


def explainer_config(cfg: DetectorConfig) -> DetectorConfig:
    """The detector as the explanation runs it: faint detections kept (a weakened object still
    counts), on a GPU only when this process sees one."""
    device = "auto" if cfg.device.startswith("cuda") or cfg.device.isdigit() else cfg.device
    return cfg.model_copy(update={"conf": min(cfg.conf, EXPLAIN_CONF), "device": device})


def header_text(value: str) -> str:
    """A header value as ASCII: a label or model name beyond Latin-1 (a fine-tuned model's
    ``信号``) made the response fail with a 500 after the whole explanation; a control
    character could have ended the header. Escaped as Python writes them (``\\u4fe1``)."""
    return value.encode("unicode_escape").decode("ascii")


def _lower_priority() -> None:
    lower_thread_priority(EXPLAIN_NICE, what="the explanation thread")


class ExplainApi:
    def __init__(self, cfg: PerceptConfig, client: Any, keys: StreamKeys, registry: CameraRegistry,
                 decoder: DeploymentHandle):
        self.cfg = cfg
        self.client = client
        self.keys = keys
        self.registry = registry
        self.decoder = decoder
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="explain", initializer=_lower_priority)
        self._detectors: dict[str, tuple[Any, DetectorConfig]] = {}  # deployment → its model as loaded here
        self._loaded_for: dict[str, tuple[str, str | None, int]] = {}  # deployment → (weights, card, swap generation)
        self._blurrer: Any = None
        self._queued = 0  # explanations asked for and not answered yet

    def _refuse_if_full(self) -> None:
        if self._queued >= MAX_QUEUED:  # one explanation at a time: seconds of CPU each
            raise HTTPException(429, detail=f"{self._queued} explanations already queued; ask again later",
                                headers={"Retry-After": "30"})

    async def explain(self, camera_id: str, index: int, *, seq: int | None, method: str, masks: int) -> Response:
        if method not in ("auto", *METHODS):
            raise HTTPException(422, detail=f"method {method!r}: choose one of auto, {', '.join(METHODS)}")
        await self._known(camera_id)
        if self.cfg.view.keep_frames == 0:  # (no frame is ever kept: a 503 "no frame yet" was asked again for good)
            raise HTTPException(409, detail="explain explains a frame the decoders keep, and view.keep_frames is 0: "
                                            "set it above 0 to explain")
        self._refuse_if_full()  # before a full-resolution frame comes from the decoder for nothing
        self._queued += 1  # its place taken now: a burst asked together fetches MAX_QUEUED frames, not one each
        try:
            frame = await self._frame(camera_id, seq)
            try:
                target = Target.of(frame.result.objects, index)
            except ExplainError as exc:
                raise HTTPException(404, detail={
                    "message": f"{exc} (camera {camera_id!r}, seq {frame.result.meta.seq})", "camera": camera_id,
                    "seq": frame.result.meta.seq, "objects": frame.result.objects.to_objects()}) from None
            loop = asyncio.get_running_loop()
            abandoned = threading.Event()  # the request gone (the client left, Serve's timeout)
            try:
                png, headers = await loop.run_in_executor(self._pool, self._run, frame, index, target, method, masks,
                                                          abandoned)
            except asyncio.CancelledError:  # (one not started yet is cancelled in the pool; one running stops
                abandoned.set()  # at its next batch: it ran on for minutes while the queue said its place was free)
                raise
        except HTTPException:  # (the frame's own answers: 404, 503 …)
            raise
        except ExplainError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        except (ModelError, ConfigError) as exc:
            raise HTTPException(503, detail=f"cannot load the detector to explain with: {redact(str(exc))}") from None
        except redis.RedisError:  # (reading which weights the replicas serve): the API's 503, Retry-After
            raise
        except PrivacyUnavailable as exc:  # fails closed: no image rather than an unblurred one
            raise HTTPException(503, detail=str(exc)) from None
        except Exception as exc:  # a fault of this explanation: said as such, the API goes on
            log.error("explain %s seq %s failed: %s", camera_id, seq,  # (an error may quote a URL)
                      redact("".join(traceback.format_exception(exc)).rstrip()))
            raise HTTPException(500, detail=f"explain failed: {type(exc).__name__}: {redact(str(exc))}") from None
        finally:
            self._queued -= 1
        return Response(png, media_type="image/png", headers={k: header_text(v) for k, v in headers.items()})

    # --- the frame --------------------------------------------------------------------------------

    async def _known(self, camera_id: str) -> None:
        cameras, invalid = await asyncio.to_thread(self.registry.read)
        ids = sorted([c.id for c in cameras] + [b.id for b in invalid])
        if camera_id not in ids:
            raise HTTPException(404, detail={"message": f"no camera {quoted_id(camera_id)}", "cameras": ids})

    async def _frame(self, camera_id: str, seq: int | None) -> KeptFrame:
        """The kept frame from the decoder replica running the camera; 404 when that replica no
        longer keeps ``seq`` (naming the seqs it keeps), 503 + Retry-After when none runs it."""
        # calls until the owner answers, each to a replica Serve picks (`owner_tries`, counted once
        # the first call missed: one replica, or the right one at once, asks Redis nothing); a call
        # to another replica costs it no frame
        tried, tries = 0, 1
        while tried < tries:
            try:
                answer = await answer_within(self.decoder.kept_frame.remote(camera_id, seq), DECODER_ANSWER_S)
            except Exception as exc:  # noqa: BLE001 - a decoder replica restarting (or none running): the client retries
                why = f"none within {DECODER_ANSWER_S:g} s" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
                raise HTTPException(503, detail={"message": f"no decoder answered: {why}",
                                                 "camera": camera_id}, headers={"Retry-After": "2"}) from None
            if isinstance(answer, KeptFrame):
                return answer
            if isinstance(answer, NotKept) and answer.running:
                if not answer.kept:
                    raise HTTPException(503, detail={"message": answer.message, "camera": camera_id},
                                        headers={"Retry-After": "1"})
                raise HTTPException(404, detail={"message": answer.message, "camera": camera_id, "kept": list(answer.kept)})
            tried += 1
            if tried == 1:
                tries = await asyncio.to_thread(owner_tries, self.client, self.keys, self.cfg.decoder_replicas)
        state = await asyncio.to_thread(self.client.hget, self.keys.camera(camera_id), "state")
        state = state.decode() if state else "pending"
        raise HTTPException(503, detail={"message": f"camera {camera_id!r} is not running on any decoder (state {state})",
                                         "camera": camera_id, "state": state}, headers={"Retry-After": "2"})

    # --- the explanation (on the explain thread) -----------------------------------------------------

    def _serving(self, section: Any) -> tuple[DetectorConfig, int]:
        """A detector section with the weights its replicas serve now: a hot swap's record
        (`pipeline/lifecycle/swap.py`) when there is one, else the config's; and the record's
        generation (a swap to the same path, a file rewritten by `models finetune --out`, is
        another model: loaded again)."""
        raw = self.client.get(SwapKeys(self.cfg.redis.stream_prefix, section.deployment).desired)
        desired = Desired.read(raw, section.cfg)
        if desired is None:
            return section.cfg, 0
        return swapped_cfg(section.cfg, desired.weights, desired.card), desired.generation

    def _detector_for(self, frame: KeptFrame, target: Target) -> tuple[Any, DetectorConfig]:
        """The detector the replicas serve (loaded on first use, again after a hot swap); of
        several, the one that scores the object highest on the frame as it is."""
        from pipeline.backends import load_detector

        for section in self.cfg.detector_sections():
            cfg, generation = self._serving(section)
            serving = (cfg.weights, cfg.card, generation)
            if self._loaded_for.get(section.deployment) != serving:
                model = load_detector(explainer_config(cfg), models_dir=self.cfg.models_dir, field=section.field)
                self._detectors[section.deployment] = (model, cfg)
                self._loaded_for[section.deployment] = serving
        detectors = list(self._detectors.values())
        if len(detectors) == 1:
            return detectors[0]
        return max(detectors, key=lambda d: scores_of(d[0], [prepare_frame(frame.image, d[1].imgsz)], target)[0])

    def _run(self, frame: KeptFrame, index: int, target: Target, method: str, masks: int,
             abandoned: threading.Event | None = None) -> tuple[bytes, dict[str, str]]:
        from pipeline.privacy import Blurrer

        if self._blurrer is None:
            self._blurrer = Blurrer.from_config(self.cfg.privacy, self.cfg.models_dir)
        self._blurrer.refuse_if_unavailable()  # before minutes of work whose image could not be shown
        detector, cfg = self._detector_for(frame, target)
        detector = StopsWhenAbandoned(detector, abandoned or threading.Event())
        method = "rise" if method == "auto" else method
        result = explain(detector, frame.image, target, imgsz=cfg.imgsz, method=method, masks=masks)
        check = deletion_check(detector, frame.image, target, result.heat, imgsz=cfg.imgsz)
        png = encode_png(overlay(self._blurrer.blur(frame.image, frame.result.objects), result.heat, target, method=method))
        m = frame.result.meta
        headers = {
            "Cache-Control": "no-store",
            "X-Percept-Frame": f"camera={m.camera} seq={m.seq} ts={m.frame_ts:.3f}",
            "X-Percept-Object": f"index={index} label={target.label} score={target.score:.4f} "
                                f"box={','.join(f'{v:.1f}' for v in target.box)}",
            "X-Percept-Method": f"{method} calls={result.calls} ms={result.elapsed_ms:.0f} model={detector.name}",
            "X-Percept-Heat-Ratio": f"{inside_outside_ratio(result.heat, target.box):.2f}",
            "X-Percept-Deletion": " ".join(f"{k}={v}" for k, v in check.as_dict().items()),
        }
        return png, headers


class Abandoned(Exception):
    """The explanation's request went away: its work stops (nobody reads the answer)."""


class StopsWhenAbandoned:
    """A detector as an explanation calls it, batch after batch: once ``abandoned`` is set, its
    next batch raises `Abandoned` instead of running (an explanation is minutes of batches)."""

    def __init__(self, detector: Any, abandoned: threading.Event):
        self._detector, self._abandoned = detector, abandoned

    def __getattr__(self, name: str) -> Any:
        return getattr(self._detector, name)

    def detect_batch(self, inputs: Any) -> Any:
        if self._abandoned.is_set():
            raise Abandoned("the explanation's request went away")
        return self._detector.detect_batch(inputs)
