"""The classification stage of a camera: each category's objects → that category's classifier.

One request per category per frame carries that frame's crops (square, at the classifier's
size, cut from the full-resolution frame). With tracking, a track is classified once (again
every ``reclassify_every`` frames) and later frames reuse its answer (`TrackAttributeCache`).

Time is bounded: a request gets ``decoder.classify_timeout_s`` in all — the first attempt half
of it, one retry (after an error or no answer) what is left. When both fail, the frame is
published without that attribute and the conductor counts it in the camera's
``classify_failed``; a failed answer is never cached, so the track is classified again later.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import numpy as np

from .config import ClassifierConfig
from .models import prepare_crop
from .schema import Detections
from .tracking import TrackAttributeCache

log = logging.getLogger("percept.classify")

ClassifyFn = Callable[[list[np.ndarray]], Awaitable[list[Mapping[str, Any] | Exception]]]

RETRY_PAUSE_S = 0.2  # after an error answer (a replica restarting), not after a timeout


@dataclass(frozen=True)
class ClassifierRoute:
    """Where one category's crops go and how they are cut."""

    classify: ClassifyFn
    cfg: ClassifierConfig


class ClassifyTimeout(TimeoutError):
    pass


async def _nth(request: "asyncio.Future[list[Any]]", k: int) -> Mapping[str, Any]:
    """The k-th answer of a per-frame classifier request (an item may be an exception)."""
    answer = (await asyncio.shield(request))[k]
    if isinstance(answer, BaseException):
        raise answer
    return answer


class CropClassification:
    """One camera's classifiers: ``await stage(image, detections, frame_no)`` returns the
    detections with their ``type`` attribute and how many objects were left without it."""

    def __init__(
        self,
        camera: str,
        routes: Mapping[str, ClassifierRoute],
        *,
        timeout_s: float,
        track_buffer: int | None = None,
    ):
        if timeout_s <= 0:
            raise ValueError("classify timeout must be > 0")
        self.camera = camera
        self.routes = dict(routes)
        self.timeout_s = timeout_s
        # with tracking (track_buffer set): one cache per category, classify once per track
        self._track_cache = (
            {
                cat: TrackAttributeCache(reclassify_every=r.cfg.reclassify_every, forget_after=track_buffer)
                for cat, r in self.routes.items()
            }
            if track_buffer is not None
            else {}
        )

    async def __call__(self, image: np.ndarray, detections: Detections, frame_no: int) -> tuple[Detections, int]:
        """Each category's new (or due) objects go to its classifier in one request per frame;
        tracked objects already classified (or being classified) reuse their answer."""
        jobs: list[tuple[int, "asyncio.Future[Mapping[str, Any]]"]] = []
        for category, route in self.routes.items():
            idx = [
                i for i in detections.indices_of(category)
                if min(detections.xyxy[i][2] - detections.xyxy[i][0], detections.xyxy[i][3] - detections.xyxy[i][1])
                >= route.cfg.min_box
            ]
            idx = sorted(idx, key=lambda i: -detections.scores[i])[: route.cfg.max_per_frame]
            cache = self._track_cache.get(category)
            fresh: list[int] = []
            for i in idx:
                track = detections.track_ids[i]
                known = cache.get(track, frame_no) if cache is not None and track is not None else None
                if known is None:
                    fresh.append(i)
                else:
                    jobs.append((i, known))
            if fresh:
                crops = [prepare_crop(image, detections.xyxy[i], route.cfg.imgsz) for i in fresh]
                request = asyncio.ensure_future(self._request(category, route, crops))
                for k, i in enumerate(fresh):
                    answer = asyncio.ensure_future(_nth(request, k))
                    track = detections.track_ids[i]
                    if cache is not None and track is not None:
                        cache.put(track, frame_no, answer)
                    jobs.append((i, answer))
            if cache is not None:
                cache.prune(frame_no)
        if not jobs:
            return detections, 0
        # shield: a shared per-track answer must survive this frame being cancelled at stop.
        # No wait of its own is needed: every request ends (answer or failure) by its deadline.
        answers = await asyncio.gather(*(asyncio.shield(job) for _, job in jobs), return_exceptions=True)
        values: dict[int, Mapping[str, Any]] = {}
        errors: list[BaseException] = []
        for (i, _), answer in zip(jobs, answers):
            if isinstance(answer, BaseException):
                errors.append(answer)
            else:
                values[i] = answer
        if errors:
            log.warning("camera %s: %d object(s) published without classification: %s: %s",
                        self.camera, len(errors), type(errors[0]).__name__, errors[0])
        return detections.with_attribute("type", values), len(errors)

    async def _request(self, category: str, route: ClassifierRoute, crops: list[np.ndarray]) -> list[Any]:
        """One frame's crops of one category: the first attempt gets half of the timeout, one
        retry the rest, so the whole request ends within ``timeout_s`` either way."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        for attempt in (1, 2):
            budget = (deadline - loop.time()) / (2 if attempt == 1 else 1)
            call = asyncio.ensure_future(route.classify(crops))
            try:
                # not wait_for: a classifier that ignores cancellation must not hold us past the deadline
                done, _ = await asyncio.wait({call}, timeout=max(budget, 0.0))
            finally:
                if not call.done():
                    call.cancel()
                    call.add_done_callback(_consume)
            error: BaseException
            if not done:
                error = ClassifyTimeout(f"classifier-{category} gave no answer within {budget:.2f} s")
            elif call.cancelled():
                error = ClassifyTimeout(f"classifier-{category} request was cancelled")
            elif call.exception() is not None:
                error = call.exception()  # type: ignore[assignment]
            elif isinstance(call.result(), BaseException):
                error = call.result()
            else:
                return call.result()
            if attempt == 2:
                raise error
            log.info("camera %s: classifier-%s attempt failed (%s), retrying", self.camera, category, error)
            if not isinstance(error, ClassifyTimeout):
                await asyncio.sleep(min(RETRY_PAUSE_S, max(0.0, (deadline - loop.time()) / 2)))
        raise AssertionError("unreachable")


def _consume(task: "asyncio.Future[Any]") -> None:
    """Retrieve an abandoned call's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
