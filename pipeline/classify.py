"""The classification stage of a camera: each category's objects → that category's classifiers.

A category can have several classifiers (vehicle type and colour from one, a second opinion
from another); each writes the attributes its model names (``type``, ``color``,
``has_backpack``, ``sign``…). One request per classifier per frame carries that frame's crops,
cut from the full-resolution frame at the classifier's own size and aspect (80×160 for a
pedestrian model), only for objects with the labels it is ``on`` and boxes at least its
minimum size; an object too small for a classifier gets none of its attributes and says so in
``attributes.unclassified`` (classifier → reason). With tracking, a track is classified once
(again every ``reclassify_every`` frames) and later frames reuse its answer (`TrackAttributeCache`).

Time is bounded: a request gets ``decoder.classify_timeout_s`` in all — the first attempt half
of it, one retry (after an error or no answer) what is left. When both fail, the frame is
published without that attribute and the conductor counts it in the camera's
``classify_failed``; a failed answer is never cached, so the track is classified again later.
A classifier that gave no answer in that time is not waited for again (every frame would wait
``classify_timeout_s``: a camera at 0.2 fps): the camera's frames go on without its attributes
(a track keeps its last answer; counted as failed) while one request at a time, every
`PROBE_EVERY_S`, asks it again off the frames' path; its first answer ends that.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Sequence

import numpy as np

from .config import ClassifierConfig
from .models import prepare_crop
from .schema import Detections
from .track_answers import TrackAttributeCache

log = logging.getLogger("percept.classify")

ClassifyFn = Callable[[list[np.ndarray]], Awaitable[list[Mapping[str, Any] | Exception]]]

RETRY_PAUSE_S = 0.2  # after an error answer (a replica restarting), not after a timeout
PROBE_EVERY_S = 5.0  # a classifier that gave no answer in time is asked again after this (off the frames' path)
# a classifier whose requests failed this many frames in a row (each after its retry and pause:
# an unavailable deployment, a crash-looping replica) is not waited for either, like one that
# does not answer in time: each frame with a new object waited its retry pause, 5 fps at most
FAILED_IN_A_ROW = 3


@dataclass(frozen=True)
class ClassifierRoute:
    """Where one classifier's crops go and how they are cut (size (width, height) and context
    from its model card; an ultralytics classifier takes square crops at ``cfg.imgsz``)."""

    classify: ClassifyFn
    cfg: ClassifierConfig
    name: str = ""  # the deployment, e.g. classifier-vehicle; what `unclassified` names
    crop_size: tuple[int, int] | None = None  # default: (cfg.imgsz, cfg.imgsz)
    crop_context: float = 1.15
    crop_fit: str = "context"  # the card's input.resize (`prepare_crop`)
    min_size: tuple[int, int] | None = None  # (width, height); default: cfg.min_size, else min_box square
    attributes: frozenset[str] | None = None  # what its answers can hold (None: unknown, none carried over)

    @property
    def size(self) -> tuple[int, int]:
        return self.crop_size or (self.cfg.imgsz, self.cfg.imgsz)

    @property
    def minimum(self) -> tuple[int, int]:
        return self.cfg.min_size or self.min_size or (self.cfg.min_box, self.cfg.min_box)

    def too_small(self, box: np.ndarray) -> str | None:
        """Why a box is too small for this classifier, or None. The test is on the object's own
        box, as the detector gave it: its width and height must each reach the minimum (a 4x40
        sliver is below a 16 px ``min_box``, a 30x146 pedestrian below 80x160). The crop the
        model then gets is cut larger (the context, widened to the model's aspect: `prepare_crop`),
        so it is never an upscaled object either."""
        w, h = float(box[2] - box[0]), float(box[3] - box[1])
        mw, mh = self.minimum
        if w >= mw - 0.5 and h >= mh - 0.5:
            return None
        return f"box {w:.0f}x{h:.0f} px is below {mw}x{mh}"


class ClassifyTimeout(TimeoutError):
    pass


@dataclass
class Unanswering:
    """A classifier of this camera that gave no answer within the timeout: not waited for again
    until a probe (`CropClassification._probe`) gets an answer."""

    why: str
    answered_not_at: float  # (loop time) when its last request ended without an answer
    probe: "asyncio.Future[Any] | None" = None


OFF_LOOP_PIXELS = 1_000_000  # crops cut from more of the frame than this go to a thread (~8 ms of resizing)


async def cut_crops(image: np.ndarray, boxes: np.ndarray, route: Any) -> list[np.ndarray]:
    """The route's crops of these boxes (`prepare_crop`); cut in a thread when they cover much of
    a large frame (a 4K truck took ~0.2 s: every camera of the replica waited on the event loop)."""
    def cut() -> list[np.ndarray]:
        return [prepare_crop(image, box, route.size, context=route.crop_context, fit=route.crop_fit) for box in boxes]

    area = cut_pixels(boxes, route.size, context=route.crop_context, fit=route.crop_fit, frame=image.shape[:2])
    return await asyncio.to_thread(cut) if area > OFF_LOOP_PIXELS else cut()


def cut_pixels(boxes: np.ndarray, size: Any, *, context: float, fit: str, frame: tuple[int, ...]) -> float:
    """The frame pixels `prepare_crop` reads for these boxes: each grown by ``context`` and, for
    ``fit: context``, widened to the classifier's aspect, as far as the frame goes (the boxes'
    own area said 0.16 MP for a full-width box 16 px tall whose cut to a square was the whole
    8K frame: six of them held the event loop 0.44 s)."""
    out_w, out_h = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    bw = np.maximum(boxes[:, 2] - boxes[:, 0], 1.0) * context
    bh = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0) * context
    if fit == "context":
        aspect = out_w / out_h
        bw, bh = np.maximum(bw, bh * aspect), np.maximum(bh, bw / aspect)
    return float(np.sum(np.minimum(bw, frame[1]) * np.minimum(bh, frame[0])))


async def _nth(request: "asyncio.Future[list[Any]]", k: int) -> Mapping[str, Any]:
    """The k-th answer of a per-frame classifier request (an item may be an exception)."""
    answer = (await asyncio.shield(request))[k]
    if isinstance(answer, BaseException):
        raise answer
    return answer


class CropClassification:
    """One camera's classifiers: ``await stage(image, detections, frame_no)`` returns the
    detections with their attributes and how many objects were left without an answer."""

    def __init__(
        self,
        camera: str,
        routes: Mapping[str, ClassifierRoute | Sequence[ClassifierRoute]],
        *,
        timeout_s: float,
        track_buffer: int | None = None,
    ):
        if timeout_s <= 0:
            raise ValueError("classify timeout must be > 0")
        self.camera = camera
        # (category, route) in order; routes given one per category or as a list per category
        self.routes = [
            (category, r)
            for category, entry in routes.items()
            for r in ([entry] if isinstance(entry, ClassifierRoute) else list(entry))
        ]
        self.timeout_s = timeout_s
        # with tracking (track_buffer set): one cache per classifier, classify once per track
        self._track_cache = (
            [TrackAttributeCache(reclassify_every=r.cfg.reclassify_every, forget_after=track_buffer,
                                 per_label=category == "sign" if r.cfg.answer_per_label is None else r.cfg.answer_per_label)
             for category, r in self.routes]
            if track_buffer is not None
            else None
        )
        self._unanswering: dict[int, Unanswering] = {}  # route index → its outage
        self._failed_in_a_row: dict[int, int] = {}  # route index → frames whose request failed, in a row

    def seed(self, answers: Mapping[int, Mapping[str, Any]], frame_no: int) -> int:
        """Answers a camera's previous decoder gave its open tracks (track id → attributes, as its
        events kept them: `EventEngine.track_attributes`), each classifier's cache given the
        attributes it writes: a track keeps its answer while its box is too small, it is over the
        frame's limit or its fresh look fails, instead of going on unclassified; it is looked at
        afresh on its first frame where it can be (the answer may be another model's). Call it on
        the event loop. Returns how many answers were seeded."""
        if self._track_cache is None:
            return 0
        seeded = 0
        for (_, route), cache in zip(self.routes, self._track_cache):
            if not route.attributes:
                continue
            for track, attrs in answers.items():
                mine = {k: v for k, v in attrs.items() if k in route.attributes}
                if mine:
                    cache.seed(track, frame_no, mine)
                    seeded += 1
        return seeded

    def _chosen(self, detections: Detections, category: str, route: ClassifierRoute, cache: Any, frame_no: int,
                unclassified: dict[int, dict[str, str]]) -> tuple[list[tuple[int, Any]], list[int], list[tuple[int, int]]]:
        """This classifier's objects this frame: ``(object, answer)`` for tracks whose answer
        stands, the objects to classify now, at most ``max_per_frame`` (best scores first), and
        ``(object, the one of them it shares its track with)``: boxes the tracker merged (a car
        also seen as a truck) are one object, asked for once. A track due for a fresh look that
        is too small now, or beyond that limit, keeps its last answer; an object too small with
        no answer is noted as such."""
        known: list[tuple[int, Any]] = []
        fresh: list[int] = []

        def keep_last(i: int) -> bool:
            """Its track's last answer, when it has one (not classified afresh this frame)."""
            track = detections.track_ids[i] if cache is not None else None
            stale = cache.last(track, detections.labels[i]) if track is not None else None
            if stale is not None:
                known.append((i, stale))
            return stale is not None

        for i in detections.indices_of(category):
            label = detections.labels[i]
            if (route.cfg.on is not None and label not in route.cfg.on) or label in (route.cfg.not_on or ()):
                continue
            track = detections.track_ids[i] if cache is not None else None
            answer = cache.get(track, frame_no, label) if track is not None else None
            if answer is not None:
                known.append((i, answer))
            elif (reason := route.too_small(detections.xyxy[i])) is None:
                fresh.append(i)
            elif not keep_last(i):
                unclassified.setdefault(i, {})[route.name or category] = reason
        # objects with no answer yet first, then the tracks due for a fresh look: the first by
        # score, so that answered tracks take no place from an object never classified
        has_last = ((lambda i: cache.last(detections.track_ids[i], detections.labels[i]) is not None)
                    if cache is not None else (lambda i: False))
        fresh.sort(key=lambda i: (detections.track_ids[i] is not None and has_last(i), -detections.scores[i]))
        heads, twins, first = [], [], {}
        for i in fresh:
            track = detections.track_ids[i] if cache is not None else None
            if track is not None and track in first:
                twins.append((i, first[track]))
            else:
                first[track] = i
                heads.append(i)
        limit = route.cfg.max_per_frame
        over = set(heads[limit:])
        for i in [*over, *(i for i, head in twins if head in over)]:  # over the limit this frame
            keep_last(i)
        return known, heads[:limit], [(i, head) for i, head in twins if head not in over]

    async def __call__(self, image: np.ndarray, detections: Detections, frame_no: int) -> tuple[Detections, int]:
        """Each classifier's new (or due) objects go to it in one request per frame; tracked
        objects already classified (or being classified) reuse their answer."""
        # (object, answer, cache, route, this frame's request when asked now)
        jobs: list[tuple[int, "asyncio.Future[Mapping[str, Any]]", Any, int, "asyncio.Future[list[Any]] | None"]] = []
        unclassified: dict[int, dict[str, str]] = {}
        skipped = 0
        for n, (category, route) in enumerate(self.routes):
            cache = self._track_cache[n] if self._track_cache is not None else None
            known, fresh, twins = self._chosen(detections, category, route, cache, frame_no, unclassified)
            if fresh and n in self._unanswering:  # not waited for: its last answers, or none (failed)
                self._probe(n, category, route, image, detections.xyxy[fresh[:1]])
                for i in [*fresh, *(i for i, _ in twins)]:
                    track = detections.track_ids[i] if cache is not None else None
                    last = cache.last(track, detections.labels[i]) if track is not None else None
                    if last is not None:
                        known.append((i, last))
                    else:
                        skipped += 1
                fresh = twins = []
            jobs += [(i, answer, cache, n, None) for i, answer in known]
            if fresh:  # (the crops cut in the request: no await before the answers are in the cache, or
                # the frames in flight beside this one asked for the same new track each)
                request = asyncio.ensure_future(self._cut_and_ask(route.name or category, route, image,
                                                                  detections.xyxy[fresh]))
                asked_now: dict[int, Any] = {}  # object → its answer
                for k, i in enumerate(fresh):
                    answer = asked_now[i] = asyncio.ensure_future(_nth(request, k))
                    track = detections.track_ids[i]
                    if cache is not None and track is not None:
                        cache.put(track, frame_no, answer, detections.labels[i])
                    jobs.append((i, answer, cache, n, request))
                for i, head in twins:  # (its answer is also its own label's, where answers are a label's)
                    if cache is not None and cache.per_label and detections.track_ids[i] is not None:
                        cache.put(detections.track_ids[i], frame_no, asked_now[head], detections.labels[i])
                    jobs.append((i, asked_now[head], cache, n, request))
            if cache is not None:
                cache.prune(frame_no)
        if unclassified:
            detections = detections.with_attributes({i: {"unclassified": why} for i, why in unclassified.items()})
        if not jobs:
            return detections, skipped
        # shield: a shared per-track answer must survive this frame being cancelled at stop.
        # No wait of its own is needed: every request ends (answer or failure) by its deadline.
        answers = await asyncio.gather(*(asyncio.shield(job) for _, job, _, _, _ in jobs), return_exceptions=True)
        self._note_failures([(n, answer, request) for (_, _, _, n, request), answer in zip(jobs, answers)
                             if request is not None])
        values: dict[int, dict[str, Any]] = {}
        errors: list[BaseException] = []
        for (i, _, cache, n, _), answer in zip(jobs, answers):
            if isinstance(answer, BaseException):
                track = detections.track_ids[i] if cache is not None else None
                last = cache.last(track, detections.labels[i]) if track is not None else None  # a fresh look failed: the one before
                if last is None:  # (a last answer is one that came)
                    errors.append(answer)
                    continue
                answer = last.result()
            values.setdefault(i, {}).update(answer)
        if errors:
            log.warning("camera %s: %d object(s) published without classification: %s: %s",
                        self.camera, len(errors), type(errors[0]).__name__, errors[0])
        return detections.with_attributes(values), len(errors) + skipped

    def _note_failures(self, asked: list[tuple[int, Any, "asyncio.Future[list[Any]]"]]) -> None:
        """This frame's requests' outcomes (route, answer, request): a route that gave no answer in
        time, or whose request failed `FAILED_IN_A_ROW` frames in a row, is not waited for any
        more. A request answered with one item's failure (a crop it could not classify) answered."""
        failed: dict[int, BaseException | None] = {}
        for n, answer, request in asked:
            if not isinstance(answer, BaseException) or (
                    request.done() and not request.cancelled() and request.exception() is None):
                failed[n] = None  # (one answer is enough: the route answers)
            elif failed.get(n, answer) is not None:
                failed[n] = answer
        for n, error in failed.items():
            if error is None:
                self._failed_in_a_row.pop(n, None)
                continue
            self._failed_in_a_row[n] = self._failed_in_a_row.get(n, 0) + 1
            if isinstance(error, ClassifyTimeout) or self._failed_in_a_row[n] >= FAILED_IN_A_ROW:
                self._unanswered(n, error)

    def _unanswered(self, n: int, error: BaseException) -> None:
        """Route ``n`` gave no answer in time, or failed frame after frame: frames stop waiting for
        it (said once)."""
        if n in self._unanswering:
            return
        category, route = self.routes[n]
        self._unanswering[n] = Unanswering(str(error), asyncio.get_running_loop().time())
        log.warning("camera %s: %s is not answering (%s): frames go on without its attributes; asked again every "
                    "%g s", self.camera, route.name or category, error, PROBE_EVERY_S)

    def _probe(self, n: int, category: str, route: ClassifierRoute, image: np.ndarray, boxes: np.ndarray) -> None:
        """One request to an unanswering classifier (its crops cut in it), when none is in flight
        and `PROBE_EVERY_S` passed since the last; not awaited by the frame. Its answer ends the
        outage."""
        out, loop = self._unanswering[n], asyncio.get_running_loop()
        if out.probe is not None or loop.time() - out.answered_not_at < PROBE_EVERY_S:
            return
        name = route.name or category

        async def ask() -> list[Any]:
            return await self._request(name, route, await cut_crops(image, boxes, route))

        out.probe = probe = asyncio.ensure_future(ask())

        def answered(done: "asyncio.Future[Any]") -> None:
            if done.cancelled() or done.exception() is not None:  # (an answer that is an error is an answer)
                out.probe, out.answered_not_at = None, loop.time()
            elif self._unanswering.get(n) is out:
                del self._unanswering[n]
                self._failed_in_a_row.pop(n, None)
                log.info("camera %s: %s answers again", self.camera, name)

        probe.add_done_callback(answered)

    async def _cut_and_ask(self, name: str, route: ClassifierRoute, image: np.ndarray, boxes: np.ndarray) -> list[Any]:
        return await self._request(name, route, await cut_crops(image, boxes, route))

    async def _request(self, name: str, route: ClassifierRoute, crops: list[np.ndarray]) -> list[Any]:
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
                error = ClassifyTimeout(f"{name} gave no answer within {budget:.2f} s")
            elif call.cancelled():
                error = ClassifyTimeout(f"{name} request was cancelled")
            elif call.exception() is not None:
                error = call.exception()  # type: ignore[assignment]
            elif isinstance(call.result(), BaseException):
                error = call.result()
            else:
                return call.result()
            if attempt == 2:
                raise error
            log.info("camera %s: %s attempt failed (%s), retrying", self.camera, name, error)
            if not isinstance(error, ClassifyTimeout):
                await asyncio.sleep(min(RETRY_PAUSE_S, max(0.0, (deadline - loop.time()) / 2)))
        raise AssertionError("unreachable")


def _consume(task: "asyncio.Future[Any]") -> None:
    """Retrieve an abandoned call's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
