"""The publisher's queue items and how a pipeline batch of them becomes script calls
(pipeline/publish.py; the scripts are in pipeline/lease.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from .lease import Fence


@dataclass(slots=True)
class Item:
    index: int
    camera: str
    nbytes: int
    apply: Callable[[Any], None] | None  # adds its one command to a pipeline (None: a result, `entry`)
    is_frame: bool
    fence: Fence | None = None
    entry: list[Any] | None = None  # a result's part of a `FENCED_PUBLISH` call (see lease.py)
    held_since: float | None = None  # monotonic time it was first kept back (lease unheld)


@dataclass
class PublisherStats:
    published: Counter = field(default_factory=Counter)
    duplicates: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)  # by the outage buffer
    fenced: Counter = field(default_factory=Counter)  # frames refused: the lease is not ours
    errors: int = 0
    connected: bool = True


def script_calls(batch: list[Item]) -> list[list[Item]]:
    """The batch as script calls, in pipeline order: a camera's results queued one after the
    other (other cameras' items between them aside) under one fence go in one call; every
    other write is a call of its own. Each camera's writes keep their order."""
    calls: list[list[Item]] = []
    open_call: dict[str, list[Item]] = {}
    for item in batch:
        current = open_call.get(item.camera)
        if item.entry is not None and current is not None and current[0].fence == item.fence:
            current.append(item)
            continue
        calls.append([item])
        if item.entry is not None:
            open_call[item.camera] = calls[-1]
        else:
            open_call.pop(item.camera, None)
    return calls
