"""What Redis answered for a batch of the publisher's script calls (pipeline/publish_writer.py),
counted per item: published, a duplicate (its first send landed), refused for good (a seq gap,
counted as dropped), or refused for now (kept queued and tried again, as during an outage)."""

from __future__ import annotations

import logging
from typing import Any, Callable

import redis

from .lease import REFUSED, UNHELD, WRITTEN
from .publish_items import Item
from .publish_stats import PublisherStats, events_in
from .publish_wire import is_noscript
from .redact import redact
from .streams import UNAVAILABLE_REPLIES, redis_unavailable, refusal_text

log = logging.getLogger("percept.publish")

_DUPLICATE_ID = "equal or smaller than the target stream top item"
_REFUSING = tuple(r.encode() for r in UNAVAILABLE_REPLIES)  # a script's per-result error texts


def count_outcome(stats: PublisherStats, item: Item, outcome: Any) -> None:
    """Counts (and logs, redacted) what Redis answered for one item of a script call."""
    error = None if outcome == WRITTEN else outcome
    if isinstance(error, bytes):
        error = error.decode(errors="replace")
    if error is not None and item.sent and _DUPLICATE_ID in str(error):
        error = None  # its first send landed (the answer was lost): published then, once
    if not item.is_frame:
        if error is not None:
            stats.errors += 1
            log.error("camera %s: state update failed: %s", item.camera, redact(str(error)))
    elif error is None:
        stats.published[item.camera] += 1
        if item.entry:
            stats.confirmed[item.camera] = item.entry[0]  # (a camera's writes land in order)
    elif _DUPLICATE_ID in str(error):
        stats.duplicates[item.camera] += 1  # already published: at most once
    else:  # refused for good (its stream's key of another type): a seq gap, counted as dropped
        stats.errors += 1
        stats.dropped[item.camera] += 1
        stats.dropped_events[item.camera] += events_in(item)
        said = (item.camera, str(error)[:80])
        if said not in stats.said:  # (once a camera and error: it was 3 lines a second)
            stats.said.add(said)
            log.error("camera %s: XADD failed: %s; its results are dropped (counted in publish_dropped, their "
                      "events in dropped_events) while it fails", item.camera, redact(str(error)))


def events_refused(stats: PublisherStats, item: Item, outcome: list[Any]) -> Any:
    """A frame written whose events the events stream refused for good (a key of another type):
    ``[1, the error, how many of its events were not written]``; those are counted one by one
    (``dropped_events``) and logged; the frame counts as written."""
    written, error, unwritten = outcome  # (FENCED_PUBLISH's {1, err, n})
    if isinstance(error, bytes):
        error = error.decode(errors="replace")
    stats.errors += 1
    stats.dropped_events[item.camera] += int(unwritten or 0)
    log.error("camera %s: %s events not written to its events stream: %s", item.camera, unwritten, redact(str(error)))
    return written


def refusal_of(outcome: Any) -> str | None:
    """The text of an answer by which Redis refuses a write for now (a replica after a failover,
    maxmemory, a failed save, loading: `streams.redis_unavailable`), else None. Such a write is
    kept queued and tried again, like during an outage."""
    if isinstance(outcome, bytes):
        return outcome.decode(errors="replace") if outcome.startswith(_REFUSING) else None
    if isinstance(outcome, redis.RedisError) and redis_unavailable(outcome):
        return refusal_text(outcome)
    return None


def _all_written(call: list[Item], outcomes: list[Any]) -> bool:
    """Every item of a run is a frame Redis wrote (`count_outcome` of each says just that)."""
    return (len(outcomes) == len(call) and outcomes.count(WRITTEN) == len(call)
            and all(item.is_frame and item.entry for item in call))


def account(calls: list[list[Item]], results: list[Any], stats: PublisherStats,
            keep_refused: Callable[[Item, int], bool]) -> tuple[list[Item], str | None]:
    """Counts what happened to each item of a batch's script calls; returns the items to keep
    queued (a call that found no scripts; refused by the lease check while ``keep_refused``
    says so; refused by Redis for now) and Redis's refusal (`refusal_of`), if any."""
    held: list[Item] = []
    refusal = None
    for call, result in zip(calls, results):
        if is_noscript(result):  # the call did not run (scripts flushed): again, scripts loaded first
            held += call
            continue
        if result in (REFUSED, UNHELD):  # the lease check: the whole call
            held += [item for item in call if keep_refused(item, result)]
            continue
        outcomes = result if isinstance(result, list) else [result] * len(call)
        if _all_written(call, outcomes):  # the common case, counted for the whole run at once
            stats.published[call[0].camera] += len(call)
            stats.confirmed[call[0].camera] = call[-1].entry[0]  # type: ignore[index]
            continue
        for item, outcome in zip(call, outcomes):
            if isinstance(outcome, list):  # written, not all of its events: counted and said
                outcome = events_refused(stats, item, outcome)
            refused = None if outcome == WRITTEN else refusal_of(outcome)
            if refused is None:
                count_outcome(stats, item, outcome)
            else:  # kept, in order, and tried again
                held.append(item)
                refusal = refusal or refused
    return held, refusal
