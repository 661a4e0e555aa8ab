"""What the publisher counts (`PublisherStats`: published, dropped, fenced, …), and the counting
of writes it lost: frames, state writes, and the events they carried, one by one."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

log = logging.getLogger("percept.publish")


@dataclass
class PublisherStats:
    published: Counter = field(default_factory=Counter)
    duplicates: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)  # frames, by the outage buffer (or refused by Redis for good)
    resumed_dropped: Counter = field(default_factory=Counter)  # of `dropped`: the camera's earlier runs (Redis)
    dropped_other: Counter = field(default_factory=Counter)  # state writes and frameless events, by it
    dropped_events: Counter = field(default_factory=Counter)  # events of the writes dropped or lost, one by one
    fenced: Counter = field(default_factory=Counter)  # frames refused: the lease is not ours
    fenced_other: Counter = field(default_factory=Counter)  # state writes and frameless events refused so
    confirmed: dict[str, str] = field(default_factory=dict)  # camera → entry id of its newest frame Redis holds
    errors: int = 0
    connected: bool = True
    refusing: str | None = None  # Redis answers but refuses writes for now (READONLY, OOM, …)
    said: set = field(default_factory=set)  # (camera, error) of writes refused for good, logged once


def events_in(item: Any) -> int:
    """How many events a queued write (`publish_items.Item`) carries."""
    entry = item.entry
    return entry[4] if entry is not None and isinstance(entry[4], int) else 0


def count_events_lost(item: Any, stats: PublisherStats) -> None:
    """The events a lost write carried, counted one by one and logged (merged, many are one write)."""
    if not (events := events_in(item)):
        return
    increments = item.entry[5 + 3 * events]  # type: ignore[index]
    stats.dropped_events[item.camera] += events
    log.error("camera %s: %d events lost (and %d counter increments: its zone and line counts are short of them)",
              item.camera, events, increments)


def count_lost(items: Sequence[Any], stats: PublisherStats, why: str | None = None) -> None:
    """Writes a closing publisher could not make, counted (frames in ``dropped``, the rest in
    ``dropped_other``) and logged as an error, by camera."""
    for item in items:
        (stats.dropped if item.is_frame else stats.dropped_other)[item.camera] += 1
        count_events_lost(item, stats)
    if items:
        why = why or ("redis unreachable" if not stats.connected else stats.refusing or "not written in time")
        lost = Counter(item.camera for item in items)
        sent = sum(1 for item in items if getattr(item, "sent", False))
        maybe = f" ({sent} of them sent before Redis stopped answering: they may have landed)" if sent else ""
        log.error("publisher closed with %d writes not confirmed (%s): counted as lost%s; by camera: %s", len(items),
                  why, maybe, ", ".join(f"{camera} {n}" for camera, n in sorted(lost.items())))
