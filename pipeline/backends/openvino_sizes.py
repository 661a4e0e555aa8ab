"""The input sizes an OpenVINO detector has compiled (``detector.rect``: a network per
rectangle around the cameras' frames, `openvino_export`), and which size keeps a place.

At most ``max_sizes()`` places, the network's own size among them; a size compiled on its first
frame holds one. When every place is taken a new size runs in the padded square, until a size
has run no frame for `SIZE_IDLE_S` (a camera's old resolution, a camera removed): it gives its
place, and the refused size is compiled on its next frame after that much time. Before, the
first sizes seen kept their places for the replica's life, and every camera of a size seen later
ran in the square. A size that cannot be re-shaped keeps its place as the square's (never tried
again). No frame waits for a compile (15 s on a loaded machine, every frame of the batch and
every later frame of its cameras held behind it): a size is compiled in a background thread, one
at a time, its place held, while its frames run in the padded square (`wait_compiling`: until
none is being compiled, for `percept eval` and tests)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from collections.abc import Callable
from typing import Any

log = logging.getLogger("percept.backends")

SIZE_IDLE_S = 60.0  # a compiled size unused this long gives its place to a new one
Size = tuple[int, int]


class SizePlaces:
    def __init__(self, name: str, own: Size, own_runner: Any, max_sizes: Callable[[], int]):
        self.name, self.own, self.max_sizes = name, own, max_sizes
        self.runners: dict[Size, Any] = {own: own_runner}  # size → its network (None: the square's)
        self.used: dict[Size, float] = {}  # compiled size → when a frame last ran at it
        self.full_at: dict[Size, float] = {}  # size → when it found every place taken
        self._lock = threading.Lock()
        self._compiling: dict[Size, Future] = {}  # size → its compile, till it ends
        # one thread, kept, compiles one size at a time (its signal stack made ours once: `signal_stack`)
        self._compiler = ThreadPoolExecutor(1, thread_name_prefix=f"compile-{name}")

    def runner_at(self, size: Size, compile_at: Callable[[Size], Any]) -> Any:
        """The network at ``size``; None (the square) while it is compiled by ``compile_at`` in
        the background (from its first frame; None from it: the size cannot be re-shaped, the
        square's for good), or when no place is free."""
        runner = self.runners.get(size)
        if runner is not None:
            self.used[size] = time.monotonic()
            return runner
        if size in self.runners:  # None: it cannot be re-shaped, or was refused a place a while ago
            full_at = self.full_at.get(size)
            if full_at is None or time.monotonic() - full_at < SIZE_IDLE_S:
                return None
        with self._lock:
            if size in self.runners and (self.runners[size] is not None or size not in self.full_at):
                return self.runners[size]  # (compiled, compiling, or not re-shapeable)
            self.runners.pop(size, None)  # (refused a place before: asks again)
            self.full_at.pop(size, None)
            self._free_a_place()
            free = self._places_taken() <= self.max_sizes()
            self.runners[size] = None  # its place held (the square) while it compiles, or for good
            if free:
                self._compiling[size] = self._compiler.submit(self._compile, size, compile_at)
            else:
                self.full_at[size] = time.monotonic()
                log.info("detector %s: %d input sizes compiled; %dx%d frames run in the square",
                         self.name, self.max_sizes(), size[1], size[0])
            return None

    def _compile(self, size: Size, compile_at: Callable[[Size], Any]) -> None:
        """The background compile of one size (None from ``compile_at``: the square's for good)."""
        runner = None
        try:
            runner = compile_at(size)
        except Exception:  # (compile_at says its own failures; anything else: this size stays the square's)
            log.exception("detector %s: compiling for %dx%d frames failed", self.name, size[1], size[0])
        finally:
            with self._lock:
                self.runners[size] = runner
                if runner is not None:
                    self.used[size] = time.monotonic()
                self._compiling.pop(size, None)

    def wait_compiling(self, timeout_s: float | None = None) -> bool:
        """Until no size is being compiled (False: ``timeout_s`` passed first)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._lock:
                pending = next(iter(self._compiling.values()), None)
            if pending is None:
                return True
            try:
                pending.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
            except FuturesTimeout:
                return False

    def _places_taken(self) -> int:
        """Sizes holding a place: compiled, or found not to re-shape (not those refused one)."""
        return sum(1 for size in self.runners if size not in self.full_at)

    def _free_a_place(self) -> None:
        """With every place taken, the compiled size idle longest gives its place if idle
        `SIZE_IDLE_S` (never the network's own size)."""
        if self._places_taken() <= self.max_sizes():
            return
        now = time.monotonic()
        idle = [(self.used.get(s, 0.0), s) for s, r in self.runners.items() if r is not None and s != self.own]
        if not idle:
            return
        last, size = min(idle)
        if now - last >= SIZE_IDLE_S:
            del self.runners[size]
            self.used.pop(size, None)
            log.info("detector %s: %dx%d frames gave their place (none for %.0f s)", self.name, size[1], size[0],
                     now - last)
