"""Frames to a detector on the same machine through shared memory instead of Ray's object store.

A letterboxed frame is ~1.2 MB; as a Serve argument Ray writes it into its object store and the
raylet creates, pins and frees an object per frame (measured here: ~3.2 ms of CPU per call over
all processes against ~0.8 ms for a small argument). The decoder instead copies the frame into
a slot of its own (a POSIX shared-memory segment) and sends a `SharedImage` naming it; the
detector maps the segment and reads the pixels in place.

- `FrameLender` (decoder side): a pool of slots, created as the frames in flight need them (up to
  ``max_slots``; beyond that, or for an image larger than a slot, the pixels go as before). A slot
  is lent for exactly one call: given back when the answer came, quarantined when the call was
  cancelled or failed (the detector may still be reading it) and reused only after
  ``quarantine_s``. Slots left by a lender that was killed (SIGKILL: nothing of it unlinks them)
  are removed by the next lender on the machine (`reap_orphans`).
- `FrameReader` (detector side): `resolve` turns a `SharedImage` back into an array over the
  segment. Each segment starts with a random token the handle repeats, so a segment of the same
  name on another machine (or a reused name) is never taken for it: `NotShared`, which the
  detector answers with and the decoder then sends the pixels (after a few such answers in a
  row the lender stops sharing: its detectors are elsewhere).
"""

from __future__ import annotations

import _posixshmem  # what multiprocessing.shared_memory opens segments with (POSIX)
import asyncio
import contextlib
import logging
import mmap
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from multiprocessing import shared_memory
from typing import Any

import numpy as np

log = logging.getLogger("percept.frames")

TOKEN_BYTES = 16  # at the start of every segment; the pixels follow


class NotShared(Exception):
    """This frame's shared memory is not visible here (another machine, or the segment is gone)."""


@dataclass(frozen=True, slots=True)
class SharedImage:
    """What is sent in place of a frame's pixels: where they are and how to read them."""

    name: str
    token: bytes
    shape: tuple[int, ...]
    dtype: str


@dataclass(slots=True)
class _Slot:
    memory: shared_memory.SharedMemory
    token: bytes
    free_at: float = 0.0  # quarantined until (monotonic)

    @property
    def capacity(self) -> int:
        return self.memory.size - TOKEN_BYTES


REAP_EVERY_S = 60.0  # a lender removes the slots of lenders that died this often
RETRY_LENDING_S, MAX_RETRY_LENDING_S = 60.0, 600.0  # lending tried again after refusals stopped it


class FrameLender:
    """Decoder side (see the module docstring)."""

    def __init__(self, *, max_slots: int = 16, quarantine_s: float = 60.0, refusals_to_stop: int = 3,
                 clock: Callable[[], float] = time.monotonic):
        self.max_slots = max_slots
        self.quarantine_s = quarantine_s
        self.refusals_to_stop = refusals_to_stop
        self.clock = clock
        self.enabled = True
        self.lent = 0  # frames sent as a SharedImage
        self.sent_pixels = 0  # frames sent as pixels (no slot, too large, or sharing stopped)
        self._idle: list[_Slot] = []  # not lent now; usable once their free_at has passed
        self._slots: list[_Slot] = []
        self._refusals = 0
        self._retry_after = 0.0  # how long lending stopped after refusals, the last time
        self._retry_at: float | None = None  # when lending is tried again (None: not stopped by refusals)
        self._reaped_at: float | None = None  # when `reap_orphans` last ran (every `REAP_EVERY_S`)
        self._grow_at: float | None = None  # no new slot before this (one could not be made: `_stop`)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lend(self, image: np.ndarray) -> Iterator[SharedImage | np.ndarray]:
        """``image`` copied into a free slot, as its `SharedImage` (the array itself when no slot
        is free or it does not fit). The slot is free again after the block, or quarantined if the
        block raised (a cancelled or failed call)."""
        if not self.enabled and self._retry_at is not None and self.clock() >= self._retry_at:
            self.enabled, self._refusals, self._retry_at = True, 0, None  # lend again: detectors may have moved here
        slot = self._take(image.nbytes) if self.enabled else None
        if slot is None:
            self.sent_pixels += 1
            yield image
            return
        view = np.ndarray(image.shape, image.dtype, buffer=slot.memory.buf, offset=TOKEN_BYTES)
        view[...] = image
        del view  # no array keeps the segment's buffer exported (close() would refuse)
        handle = SharedImage(slot.memory.name, slot.token, tuple(image.shape), image.dtype.str)
        self.lent += 1
        clean = False
        try:
            yield handle
            clean = True
        finally:
            self._give_back(slot, clean)

    def refused(self) -> None:
        """The detector could not see a lent frame (its pixels go instead); after
        ``refusals_to_stop`` in a row, stop lending for a while (`RETRY_LENDING_S`, doubling
        each time to 10 minutes: detectors on another node now may run on this one later)."""
        self._refusals += 1
        self.sent_pixels += 1
        self.lent -= 1  # (counted as lent as it left: it went as pixels, not both)
        if self.enabled and self._refusals >= self.refusals_to_stop:
            self.enabled = False
            self._retry_after = min(self._retry_after * 2, MAX_RETRY_LENDING_S) if self._retry_after else RETRY_LENDING_S
            self._retry_at = self.clock() + self._retry_after
            log.info("frames go to the detectors as pixels for %.0f s: %d in a row could not read shared memory",
                     self._retry_after, self._refusals)

    def accepted(self) -> None:
        self._refusals = 0

    def _take(self, nbytes: int) -> _Slot | None:
        with self._lock:
            now = self.clock()
            if self._reaped_at is None or now - self._reaped_at >= REAP_EVERY_S:
                # (not only at the first lend: a decoder killed later, beside one that runs on)
                reap_orphans()
                self._reaped_at = now
            fit = next((s for s in self._idle if s.free_at <= now and s.capacity >= nbytes), None)
            if fit is not None:
                self._idle.remove(fit)
                return fit
            if len(self._slots) >= self.max_slots:
                return None
            if self._grow_at is not None and now < self._grow_at:
                return None
            slot = self._create(nbytes)
            if slot is not None:
                self._slots.append(slot)
            return slot

    def _create(self, nbytes: int) -> _Slot | None:
        """A new segment, its pages reserved now (a full /dev/shm fails here, not as a SIGBUS on
        the first write); None, and no new one for a while (`_stop`), when that fails."""
        try:
            memory = shared_memory.SharedMemory(create=True, size=TOKEN_BYTES + nbytes,
                                                name=f"{_prefix()}{secrets.token_hex(6)}")
        except OSError as exc:
            self._stop(f"cannot create shared memory ({exc})")
            return None
        try:
            os.posix_fallocate(memory._fd, 0, memory.size)  # type: ignore[attr-defined]
        except (OSError, AttributeError) as exc:
            memory.close()
            memory.unlink()
            self._stop(f"cannot reserve {memory.size} bytes of shared memory ({exc})")
            return None
        self._grow_at = None
        token = secrets.token_bytes(TOKEN_BYTES)
        memory.buf[:TOKEN_BYTES] = token
        return _Slot(memory, token)

    def _stop(self, why: str) -> None:
        """No new slot could be made (a full /dev/shm: maybe for a moment): the slots there go on,
        and a new one is tried again after `RETRY_LENDING_S`; with none, frames go as pixels
        until then."""
        if self._grow_at is None:  # (said again only after a slot could be made meanwhile)
            log.warning("frames beyond %d shared-memory slot(s) go to the detectors as pixels for %.0f s: %s",
                        len(self._slots), RETRY_LENDING_S, why)
        self._grow_at = self.clock() + RETRY_LENDING_S

    def _give_back(self, slot: _Slot, clean: bool) -> None:
        with self._lock:
            if slot not in self._slots:
                return  # closed meanwhile
            slot.free_at = 0.0 if clean else self.clock() + self.quarantine_s
            self._idle.append(slot)

    @property
    def slots(self) -> int:
        return len(self._slots)

    def close(self) -> None:
        """Unlink every segment (readers that still map one keep it until they let go)."""
        with self._lock:
            slots, self._slots, self._idle = self._slots, [], []
        for slot in slots:
            with contextlib.suppress(Exception):
                slot.memory.close()
            with contextlib.suppress(FileNotFoundError):
                slot.memory.unlink()


class FrameReader:
    """Detector side (see the module docstring); keeps up to ``max_open`` segments mapped.

    A segment is mapped read-only and never unmapped by hand: an array over it holds the mapping,
    which goes with the last array (an explicit unmap under a live array would crash the replica)."""

    def __init__(self, max_open: int = 64, *, idle_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.max_open = max_open
        self.idle_s = idle_s  # a mapping unused this long is let go (its decoder restarted: its slots are new)
        self.clock = clock
        self._open: OrderedDict[str, mmap.mmap] = OrderedDict()
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

    def resolve(self, image: Any) -> Any:
        """The pixels of ``image``: a read-only array over its segment for a `SharedImage` (valid
        until the call that brought it is answered), anything else as it is. Raises `NotShared`."""
        if not isinstance(image, SharedImage):
            return image
        mapping = self._attach(image.name)
        if mapping[:TOKEN_BYTES] != image.token:
            self._forget(image.name)
            raise NotShared(f"shared frame {image.name} is another segment here")
        dtype = np.dtype(image.dtype)
        count = int(np.prod(image.shape))
        if TOKEN_BYTES + dtype.itemsize * count > len(mapping):
            raise NotShared(f"shared frame {image.name} is smaller than its image")
        return np.frombuffer(mapping, dtype, count, TOKEN_BYTES).reshape(image.shape)

    def _attach(self, name: str) -> mmap.mmap:
        with self._lock:
            now = self.clock()
            mapping = self._open.get(name)
            if mapping is not None:
                self._open.move_to_end(name)
            else:
                try:
                    mapping = _map_read_only(name)
                except OSError as exc:
                    raise NotShared(f"shared frame {name} is not on this machine ({exc.__class__.__name__})") from None
                self._open[name] = mapping
            self._used[name] = now
            # looked at on every frame: a restarted decoder's new slots are all made in its first
            # seconds, and its old ones must go too
            self._let_go(now)
            return mapping

    def _let_go(self, now: float) -> None:
        """The least recently used mappings first: beyond max_open, or unused for idle_s (a removed
        segment stays in memory while it is mapped). Call holding the lock."""
        while self._open and (len(self._open) > self.max_open
                              or now - self._used[next(iter(self._open))] >= self.idle_s):
            old, _ = self._open.popitem(last=False)
            self._used.pop(old, None)

    def sweep(self) -> None:
        """Let go of the mappings unused for ``idle_s`` though no frame comes (its decoders closed
        their lenders: scaled down, their cameras moved or removed): a frame's arrival was the only
        time they were looked at, and their removed segments stayed in /dev/shm meanwhile."""
        with self._lock:
            self._let_go(self.clock())

    async def keep_swept(self, every_s: float = 10.0) -> None:
        """`sweep` every ``every_s`` until cancelled (the detector replica's task)."""
        while True:
            await asyncio.sleep(every_s)
            self.sweep()

    def _forget(self, name: str) -> None:
        with self._lock:
            self._open.pop(name, None)
            self._used.pop(name, None)

    def close(self) -> None:
        with self._lock:
            self._open = OrderedDict()
            self._used = {}


def _map_read_only(name: str) -> mmap.mmap:
    """The named POSIX shared-memory segment, mapped read-only, without the resource tracker
    (`SharedMemory` would register it, and its tracker unlink the decoder's segment)."""
    fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, mode=0o600)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


SHM_DIR = "/dev/shm"  # where Linux shows POSIX shared memory
# percept-<pid namespace>-<pid>-<random>: the pid is only looked at in its own namespace (a
# container sharing /dev/shm, not its pids: `ipc: host`, took every other's slots for orphans);
# percept-<pid>-<random>: an older lender's, looked at as before
_NAME = re.compile(r"^percept-(?:(\d+)-)?(\d+)-[0-9a-f]{12}$")


def reap_orphans(folder: str = SHM_DIR) -> list[str]:
    """Unlink the slots of lenders that died without closing them (a replica killed with
    SIGKILL: Ray takes the resource tracker down with it), so they do not pile up in /dev/shm.
    A slot is an orphan when no process of its creator's pid is alive here. Returns their names."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []  # no /dev/shm (not Linux): nothing to reap
    reaped = []
    for name in names:
        match = _NAME.match(name)
        namespace = match and match.group(1)
        if match is None or (namespace is not None and int(namespace) != _pid_namespace()) or _alive(int(match.group(2))):
            continue
        with contextlib.suppress(FileNotFoundError):
            _posixshmem.shm_unlink("/" + name)
            reaped.append(name)
    if reaped:
        log.info("removed %d shared-memory frame slot(s) of replicas that are gone", len(reaped))
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


def _pid_namespace() -> int:
    """This process's pid namespace (its inode), 0 where there is none to read."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _prefix() -> str:
    return f"percept-{_pid_namespace()}-{os.getpid()}-"


def lending(detect: Callable[[Any], Awaitable[Any]], lender: FrameLender | None) -> Callable[[Any], Awaitable[Any]]:
    """``detect`` (a `DetectorInput` → its answer) with the input's pixels lent through
    ``lender``; an answer `NotShared` (the detector cannot see them) sends the pixels again."""
    if lender is None:
        return detect

    async def detect_lent(inp: Any) -> Any:
        with lender.lend(inp.image) as image:
            if image is inp.image:
                return await detect(inp)
            answer = await detect(replace(inp, image=image))
        if not isinstance(answer, NotShared):
            lender.accepted()
            return answer
        lender.refused()
        return await detect(inp)

    return detect_lent
