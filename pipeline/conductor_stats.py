"""What a camera's conductor (pipeline/conductor.py) counts and says: its counters, its fps over
the last 5 s, its drops (the slot's, the source's skips, failed detections, earlier runs'), the
periodic numbers it writes into the camera hash, and its status (a mixin of `CameraConductor`)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from .redact import redact
from .source_types import SourceState
from .streams import ENDED_FIELD, ended_mark

log = logging.getLogger("percept.conductor")
FPS_WINDOW_S = 5.0  # a camera's fps: the frames published over the last this many seconds


@dataclass
class CameraCounters:
    processed: int = 0
    failed: int = 0  # frames whose detection failed after a retry, or cut off at stop
    dropped_before: int = 0  # drops counted by earlier runs of this camera (cumulative counts)
    classify_failed: int = 0  # frames published with a classification missing (failed or timed out)


class ConductorStats:
    """`CameraConductor`'s numbers (its attributes: ``camera``, ``source``, ``slot``, ``counters``,
    ``publisher``, ``_fps_window``, ``_inflight``, ``_failure``, ``_reader_error``; each stats round
    also calls its ``_end_quiet_tracks``)."""

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval_s)
            try:
                self.source.check_watchdog()
                self._publish_stats()
                self._end_quiet_tracks()
            except Exception:
                log.exception("camera %s: stats update failed", self.camera.id)

    @property
    def dropped(self) -> int:
        return self.counters.dropped_before + self.slot.dropped + self.source.skipped + self.counters.failed

    @property
    def fps(self) -> float:
        """Frames published a second over the last 5 s, or over the run's time when shorter (a
        2 fps camera said 0.4 a second after each start or move)."""
        now = time.monotonic()
        self._fps_window = [t for t in self._fps_window if now - t <= FPS_WINDOW_S]
        since = self._fps_since if self._fps_since is not None else now - FPS_WINDOW_S
        return len(self._fps_window) / max(min(FPS_WINDOW_S, now - since), 1.0)

    @property
    def state_now(self) -> str:
        """The camera's state as the hash and ``/status`` say it: a reader that crashed left its
        source's last state (``online``): the camera has failed."""
        return "failed" if (self._failure or self._reader_error) is not None else self.source.state.value

    def _read_to_its_end(self) -> bool:
        """A file (not looping) read to its end, every frame taken published: it is not read again."""
        return (ended_mark(self.camera) is not None and self.source.state == SourceState.STOPPED
                and self._reader_error is None and self._failure is None)

    def _publish_stats(self, *, read_to_its_end: bool = False, stopped: bool = False) -> None:
        """The camera hash's numbers; ``stopped``: the run's last (no fps any more: a file read to
        its end kept its last rate for good)."""
        # after the camera's last frames: a file read to its end is marked so (`ended_mark`)
        ended = {ENDED_FIELD: ended_mark(self.camera)} if read_to_its_end else {}
        self.publisher.camera_stats(
            self.camera.id,
            fps=f"{0.0 if stopped else self.fps:.2f}",
            dropped=self.dropped,  # (``processed`` is counted by Redis as each frame lands: lease.py)
            classify_failed=self.counters.classify_failed,
            converted=self.source.converted,  # (this run's; those beyond `processed`: made, not taken)
            seq=self.source.next_seq - 1,
            url=self.camera.shown_url,
            **ended,
        )

    def _last_error(self) -> str | None:
        if self._failure is not None:
            return str(self._failure)
        if self._reader_error is not None:
            exc = self._reader_error
            return redact(f"reader crashed: {type(exc).__name__}: {exc}", self.camera.secrets)
        return self.source.last_error

    def status(self) -> dict[str, Any]:
        return {
            "camera": self.camera.id,
            "state": self.state_now,
            "fps": round(self.fps, 2),
            "dropped": self.dropped,
            "processed": self.counters.processed,
            "classify_failed": self.counters.classify_failed,
            "failed": self.counters.failed,  # frames whose detection failed (part of dropped)
            "inflight": len(self._inflight),
            "last_error": self._last_error(),
        }
