"""The keep-latest hand-off between a camera's reader thread (`pipeline.sources.VideoSource`) and
its conductor: what frames are converted, taken or dropped; and the wait for that thread's end."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .source_types import Frame


REPLACE_AFTER_COSTS = 10  # a frame held for a late consumer is made again once it waited 10 × its cost,
HELD_AT_MOST_S = 0.2  # or this long (two frame intervals, if longer): the frame taken is never older


class LatestFrameSlot:
    """Keep-latest hand-off between a reader thread and its consumer: never blocks the reader,
    a newer frame replaces an older unsent one and the replaced one is counted as dropped.

    Demand: the consumer says with `want` whether it can take a frame now, or from when it
    expects to; the reader asks `wants_frame` for each sampled frame before colour-converting it
    (and making the detector's letterboxed input, `VideoSource`'s ``prepare``, in the reader thread).
    So frames nobody will take are not converted (the frame read just before the consumer expects
    to be free is, so it is ready then), and a frame the slot still holds once a newer one was
    read and skipped is dropped: what the consumer takes is always the newest frame read, never
    one that waited in the slot while the consumer was busy — unless the consumer is late: once
    the time it expected to be free has passed, a frame held is replaced by a newer one only when
    it has waited `REPLACE_AFTER_COSTS` times what making a frame costs (a moving average), or
    `HELD_AT_MOST_S` (two frame intervals if longer) when that comes first: a 4K camera's 57 ms
    conversion was redone 6–7 times a frame taken under load, each thrown away; a small frame,
    cheaper than the time between two, is still replaced by every newer one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self._wanted = False
        self._wanted_at: float | None = None  # time.monotonic() from when the consumer expects to take one
        self._last_ask: float | None = None
        self._interval = 0.0  # between the reader's last two sampled frames
        self._held_at = 0.0  # time.monotonic() the frame held was put
        self._cost_s = 0.0  # what making a frame costs the reader (its latest `decode_ms`)
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1
            self._frame, self._held_at = frame, time.monotonic()
            cost = getattr(frame, "decode_ms", 0.0) / 1000
            self._cost_s = cost if self._cost_s == 0.0 else 0.7 * self._cost_s + 0.3 * cost
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The newest frame, or None on timeout or once closed and empty."""
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame

    def want(self, wanted: bool, *, at: float | None = None) -> None:
        """Consumer: whether it can take a frame now; if not, ``at`` (time.monotonic()) is when it
        expects to (None: unknown, convert nothing until it says so)."""
        with self._cond:
            self._wanted = wanted
            self._wanted_at = None if wanted else at
            self._cond.notify_all()

    def wait_for_demand(self, timeout: float) -> bool:
        """Reader, ``backpressure: wait``: block until the consumer can take a frame and the slot
        is empty (so nothing is dropped), or it is closed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or (self._wanted and self._frame is None), timeout)

    def wants_frame(self) -> bool:
        """Reader, for each sampled frame: convert and put it? Yes while the consumer can take
        one, or when the next frame would come after the consumer expects to be free (then, while
        a frame is held, only once it waited `REPLACE_AFTER_COSTS` times its cost). Otherwise
        no, and the frame still held (if any) is older than this skipped one: dropped."""
        now = time.monotonic()
        with self._cond:
            if self._last_ask is not None:
                self._interval = min(now - self._last_ask, 1.0)
            self._last_ask = now
            wanted = self._wanted or (self._wanted_at is not None and now + self._interval >= self._wanted_at)
            held_for = min(REPLACE_AFTER_COSTS * self._cost_s, max(HELD_AT_MOST_S, 2 * self._interval))
            if wanted and not self._wanted and self._frame is not None and now - self._held_at < held_for:
                return False  # (the consumer late: the frame held stays, not yet worth making again)
            if not wanted and self._frame is not None:
                self._frame = None
                self.dropped += 1
            return wanted

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


async def thread_ended(thread: threading.Thread, timeout_s: float) -> None:
    """Wait for a camera's reader thread to end, polled: a reader stuck in a camera's open holds
    no worker of the shared thread pool meanwhile (lease renewals and registry reads use it)."""
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
