"""Frames lent through shared memory (pipeline/frame_share.py), on real POSIX segments: read in
another process, slots reused only when safe, refused where the segment is not the one named,
and the pixels sent instead whenever lending cannot be used."""

import asyncio
import contextlib
import os
import pickle
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from pipeline.frame_share import (
    FrameLender,
    FrameReader,
    NotShared,
    SharedImage,
    lending,
)
from pipeline.models import DetectorInput

from .waiting import wait_for

READ_IN_CHILD = """
import pickle, sys
from pipeline.frame_share import FrameReader
handle = pickle.loads(bytes.fromhex(sys.argv[1]))
print(int(FrameReader().resolve(handle).astype("int64").sum()))
"""


def frame(seed=0, shape=(64, 96, 3)):
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def ours():
    from pipeline.frame_share import _prefix

    return {f for f in os.listdir("/dev/shm") if f.startswith(_prefix())}


def test_a_lent_frame_is_read_by_another_process_and_its_segment_goes_on_close():
    lender, image = FrameLender(max_slots=2), frame()
    with lender.lend(image) as handle:
        assert isinstance(handle, SharedImage) and handle.shape == image.shape
        assert len(pickle.dumps(handle)) < 300
        out = subprocess.run([sys.executable, "-c", READ_IN_CHILD, pickle.dumps(handle).hex()],
                             capture_output=True, text=True, timeout=60, check=True)
        assert int(out.stdout) == int(image.astype(np.int64).sum())
    assert ours() == {handle.name}, "a reader in another process leaves the segment to its lender"
    lender.close()
    assert ours() == set()


def test_slots_are_reused_after_an_answer_and_held_back_after_a_cancelled_call():
    now = [0.0]
    lender = FrameLender(max_slots=2, quarantine_s=60, clock=lambda: now[0])
    reader, a, b = FrameReader(), frame(1), frame(2)
    with lender.lend(a) as first:
        with lender.lend(b) as second:
            assert second.name != first.name
            with lender.lend(a) as third:
                assert third is a, "no free slot: the pixels go"
            seen_a = reader.resolve(first)
            assert np.array_equal(seen_a, a) and np.array_equal(reader.resolve(second), b)
            assert not seen_a.flags.writeable, "the detector reads the decoder's slot, never writes it"
    with lender.lend(b) as again:
        assert again.name in (first.name, second.name)
    with pytest.raises(asyncio.CancelledError), lender.lend(a) as cancelled:
        raise asyncio.CancelledError  # the call was cancelled: the detector may still read it
    with lender.lend(b) as other:
        assert isinstance(other, SharedImage) and other.name != cancelled.name
        with lender.lend(b) as none_free:
            assert none_free is b, "the cancelled call's slot is held back"
    now[0] = 61.0
    with lender.lend(b) as later:
        assert isinstance(later, SharedImage)
    assert lender.slots == 2 and lender.lent == 6 and lender.sent_pixels == 2
    reader.close()
    lender.close()


def test_a_segment_that_is_not_the_one_named_is_refused():
    lender, reader = FrameLender(max_slots=1), FrameReader()
    with lender.lend(frame()) as handle:
        with pytest.raises(NotShared, match="another segment"):
            reader.resolve(replace(handle, token=b"\0" * 16))
        with pytest.raises(NotShared, match="smaller than its image"):
            reader.resolve(replace(handle, shape=(640, 640, 3)))
    lender.close()
    with pytest.raises(NotShared, match="not on this machine"):
        FrameReader().resolve(handle)  # a segment no longer there (or never here: another machine)
    assert reader.resolve("pixels") == "pixels"


def test_a_detector_that_cannot_see_the_frame_gets_its_pixels_and_lending_stops():
    """`lending`: an answer `NotShared` sends the same input with its pixels; three in a row and
    the lender sends pixels for a while (`test_lending_stopped_by_refusals_is_tried_again_later`)."""
    image = frame(3)
    inp = DetectorInput(image, (64, 96), 1.0, "cam")
    seen = []

    async def remote_detector(x):  # a detector on another machine: no segment of that name there
        seen.append(type(x.image).__name__)
        if isinstance(x.image, SharedImage):
            return NotShared("not here")
        return int(x.image.sum())

    lender = FrameLender(max_slots=2)
    detect = lending(remote_detector, lender)
    for _ in range(4):
        assert asyncio.run(detect(inp)) == int(image.sum())
    assert seen == ["SharedImage", "ndarray"] * 3 + ["ndarray"]
    # (all 4 went as pixels: the 3 refused are not counted as shared too, as they were in GET /status)
    assert not lender.enabled and lender.lent == 0 and lender.sent_pixels == 4
    lender.close()

    reader, lender = FrameReader(), FrameLender(max_slots=2)

    async def local_detector(x):
        return int(reader.resolve(x.image).astype(np.int64).sum())

    detect = lending(local_detector, lender)
    assert [asyncio.run(detect(inp)) for _ in range(3)] == [int(image.astype(np.int64).sum())] * 3
    assert lender.enabled and lender.lent == 3 and lender.sent_pixels == 0 and lender.slots == 1
    reader.close()
    lender.close()


def test_slots_of_a_killed_decoder_are_removed_by_the_next_lender():
    """A replica killed with SIGKILL leaves its slots in /dev/shm (nothing of it runs to unlink
    them): the next lender to create a slot removes those whose creator is gone, not others'."""
    import _posixshmem

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True, timeout=60)
    orphan = f"percept-{int(gone.stdout)}-0123456789ab"
    fd = _posixshmem.shm_open("/" + orphan, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
    os.ftruncate(fd, 64)
    os.close(fd)
    mine = FrameLender(max_slots=1)
    try:
        with mine.lend(frame()) as handle:
            live = handle.name
        assert orphan not in os.listdir("/dev/shm"), "the orphan is removed"
        other = FrameLender(max_slots=1)
        with other.lend(frame()):
            pass
        assert live in os.listdir("/dev/shm"), "a live lender's slot stays"
        other.close()
    finally:
        mine.close()
        with contextlib.suppress(FileNotFoundError):
            _posixshmem.shm_unlink("/" + orphan)


def test_slots_of_another_pid_namespace_sharing_dev_shm_are_left_to_it():
    """Containers sharing /dev/shm but not their pids (``ipc: host``): each decoder took the
    others' slots for orphans (their pids not alive here) and removed them every minute; their
    detectors found no slot and fell back to pixels for good."""
    import _posixshmem

    from pipeline.frame_share import _pid_namespace, reap_orphans

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True, timeout=60)
    theirs = f"percept-{_pid_namespace() + 1}-{int(gone.stdout)}-0123456789ad"
    orphan = f"percept-{_pid_namespace()}-{int(gone.stdout)}-0123456789ae"
    try:
        for name in (theirs, orphan):
            fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
            os.ftruncate(fd, 64)
            os.close(fd)
        assert orphan in reap_orphans() and orphan not in os.listdir("/dev/shm")
        assert theirs in os.listdir("/dev/shm"), "another namespace's slot was taken for an orphan"
    finally:
        for name in (theirs, orphan):
            with contextlib.suppress(FileNotFoundError):
                _posixshmem.shm_unlink("/" + name)


def test_slots_of_a_decoder_killed_later_are_removed_by_one_that_runs_on():
    """A lender that already made its slots removed orphans only at its first lend: those of a
    decoder killed beside it later stayed in /dev/shm until the next one started."""
    import _posixshmem

    from pipeline import frame_share

    now = [0.0]
    mine = FrameLender(max_slots=1, clock=lambda: now[0])
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True, timeout=60)
    orphan = f"percept-{int(gone.stdout)}-0123456789ac"
    try:
        with mine.lend(frame()):
            pass  # its slot made, the orphans of then removed
        fd = _posixshmem.shm_open("/" + orphan, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        os.ftruncate(fd, 64)
        os.close(fd)
        with mine.lend(frame()):
            pass
        assert orphan in os.listdir("/dev/shm"), "removed before its minute: each lend listed /dev/shm"
        now[0] += frame_share.REAP_EVERY_S
        with mine.lend(frame()):
            pass
        assert orphan not in os.listdir("/dev/shm"), "the orphan is removed by a lender that runs on"
    finally:
        mine.close()
        with contextlib.suppress(FileNotFoundError):
            _posixshmem.shm_unlink("/" + orphan)


def test_a_mapping_unused_for_a_while_is_let_go():
    """A decoder restarted lends from new segments; the detector kept its old ones mapped (and
    so in memory, removed or not) until 64 newer names pushed them out."""
    now = [0.0]
    lender, reader = FrameLender(max_slots=2), FrameReader(idle_s=30, clock=lambda: now[0])
    try:
        with lender.lend(frame()) as first:
            reader.resolve(first)
            now[0] += 31
            with lender.lend(frame()) as second:
                assert second.name != first.name
                reader.resolve(second)
        assert list(reader._open) == [second.name], "the mapping unused for 31 s is let go"
    finally:
        reader.close()
        lender.close()


def test_a_restarted_decoders_old_slots_are_let_go_once_its_new_ones_are_all_known():
    """The decoder's replacement makes its slots in its first seconds, then reuses them: its old
    slots are let go after `idle_s` all the same, though no new name comes any more (they stayed
    mapped for good, in memory though removed: ~1.2 MB each at 640)."""
    now = [0.0]
    old, reader = FrameLender(max_slots=2), FrameReader(idle_s=30, clock=lambda: now[0])
    new = FrameLender(max_slots=1)
    try:
        with old.lend(frame()) as a, old.lend(frame()) as b:
            reader.resolve(a), reader.resolve(b)
        old.close()  # the decoder restarted
        now[0] += 5
        with new.lend(frame()) as c:
            reader.resolve(c)
        for _ in range(40):  # its one slot, a frame a second
            now[0] += 1
            with new.lend(frame()) as c:
                reader.resolve(c)
        assert list(reader._open) == [c.name], "the old decoder's slots are still mapped"
    finally:
        reader.close()
        new.close()
        old.close()


def test_mappings_of_a_decoder_that_stopped_lending_are_let_go_though_no_frame_comes():
    """The idle mappings were looked at only when a frame came: after the decoder closed its
    lender (scaled down, its cameras moved), the detector kept its removed segments mapped, in
    /dev/shm (8 slots: 12.4 MB) until the replica ended. The detector's task sweeps them."""
    now = [0.0]
    lender, reader = FrameLender(max_slots=2), FrameReader(idle_s=30, clock=lambda: now[0])
    try:
        with lender.lend(frame()) as a, lender.lend(frame()) as b:
            reader.resolve(a), reader.resolve(b)
        lender.close()
        assert len(reader._open) == 2

        async def swept():
            task = asyncio.ensure_future(reader.keep_swept(every_s=0.01))
            try:
                now[0] += 31
                await asyncio.to_thread(wait_for, lambda: not reader._open, 10, "the idle mappings let go", interval=0.01)
            finally:
                task.cancel()

        asyncio.run(swept())
    finally:
        reader.close()
        lender.close()


def test_lending_stopped_by_refusals_is_tried_again_later():
    """Three refusals (the detectors on another node) stopped lending for good: detectors that
    later run on this node got pixels through the object store for the decoder's whole life."""
    from pipeline import frame_share

    now = [0.0]
    lender = FrameLender(max_slots=1, clock=lambda: now[0])
    try:
        for _ in range(3):
            with lender.lend(frame()):
                lender.refused()
        with lender.lend(frame()) as sent:
            assert isinstance(sent, np.ndarray), "lending stopped after three refusals"
        now[0] += frame_share.RETRY_LENDING_S
        with lender.lend(frame()) as sent:
            assert isinstance(sent, SharedImage), "lending tried again a minute later"
        for _ in range(3):
            with lender.lend(frame()):
                lender.refused()
        now[0] += frame_share.RETRY_LENDING_S
        with lender.lend(frame()) as sent:
            assert isinstance(sent, np.ndarray), "refused again: the next try waits twice as long"
    finally:
        lender.close()


def test_a_full_dev_shm_for_a_moment_neither_stops_the_slots_there_nor_lending_for_good(monkeypatch):
    """One segment could not be reserved (/dev/shm full for a moment, ENOSPC): lending stopped
    for the decoder's whole life, every frame sent as pixels though its slot still worked. Now
    the slots there go on, and a new one is tried again after `RETRY_LENDING_S`."""
    import errno

    from pipeline import frame_share

    now, reserve = [0.0], os.posix_fallocate
    full = [True]

    def fallocate(fd, offset, size):
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return reserve(fd, offset, size)

    lender = FrameLender(max_slots=2, clock=lambda: now[0])
    try:
        with lender.lend(frame()) as first:
            assert isinstance(first, SharedImage)
            monkeypatch.setattr(frame_share.os, "posix_fallocate", fallocate)
            with lender.lend(frame()) as second:
                assert isinstance(second, np.ndarray), "no room for a second slot: pixels"
        full[0] = False
        with lender.lend(frame()) as sent:
            assert isinstance(sent, SharedImage), "the slot there is lent on"
            with lender.lend(frame()) as beside:
                assert isinstance(beside, np.ndarray), "no new slot tried before RETRY_LENDING_S"
        now[0] += frame_share.RETRY_LENDING_S
        with lender.lend(frame()) as sent, lender.lend(frame()) as beside:
            assert isinstance(sent, SharedImage) and isinstance(beside, SharedImage), "a second slot made later"
    finally:
        lender.close()
