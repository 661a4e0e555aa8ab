"""The detector's adaptive batcher (pipeline/batching.py), without Ray: the release rule with
explicit times (`BatchPolicy`), then the asyncio mechanism on real time with waits far longer
than the work, so a batch that leaves early can only have left by the rule."""

import asyncio
import time

import pytest

from pipeline.batching import AdaptiveBatcher, BatchPolicy


def rhythm(policy, cameras, *, period, rounds, offset=0.0):
    """Each camera sends every ``period`` s, camera i at ``offset + i * period / len``; the time
    of the last arrival."""
    t = offset
    for r in range(rounds):
        for i, cam in enumerate(cameras):
            t = offset + r * period + i * period / len(cameras)
            policy.arrived(cam, t)
    return t


# --- the rule ------------------------------------------------------------------------------------

def test_a_full_batch_leaves_at_once():
    p = BatchPolicy(max_batch_size=3, batch_wait_s=10)
    rhythm(p, ["a", "b", "c", "d"], period=0.1, rounds=3)  # d last at 0.275, due at 0.375
    assert p.release_in(0.3, 0.3, ["a", "b"]) == pytest.approx(10)  # c and d are due within the wait
    assert p.release_in(0.3, 0.3, ["a", "b", "c"]) == 0  # but the batch is full


def test_a_lone_frame_leaves_at_once_when_no_other_camera_is_due_within_the_wait():
    """Low load: three cameras at 5 fps each, 67 ms apart; camera a's frame arrives, the others'
    next frames are 67 and 133 ms away, beyond the 20 ms wait: it leaves at once."""
    p = BatchPolicy(max_batch_size=8, batch_wait_s=0.02)
    last = rhythm(p, ["a", "b", "c"], period=0.2, rounds=5)  # c at 0.933
    now = last + 0.2 / 3  # a's next frame (1.0)
    p.arrived("a", now)
    assert p.release_in(now, now, ["a"]) == 0


def test_a_frame_waits_for_a_camera_due_within_the_wait_and_leaves_when_it_lands():
    p = BatchPolicy(max_batch_size=8, batch_wait_s=0.05)
    rhythm(p, ["a", "b"], period=0.2, rounds=5, offset=0.0)  # a at 0.8, b at 0.9 → b next at 1.1
    now = 1.08  # a arrives 20 ms before b is due
    p.arrived("a", now)
    assert p.release_in(now, now, ["a"]) == pytest.approx(0.05)  # b is due within the wait: hold
    p.arrived("b", 1.1)
    assert p.release_in(1.1, now, ["a", "b"]) == 0  # every camera due has a frame in it


def test_a_late_camera_holds_the_batch_only_until_the_wait_expires():
    p = BatchPolicy(max_batch_size=8, batch_wait_s=0.05)
    rhythm(p, ["a", "b"], period=0.1, rounds=5)  # b last at 0.45, due 0.55
    p.arrived("a", 0.5)
    assert p.release_in(0.5, 0.5, ["a"]) == pytest.approx(0.05)
    assert p.release_in(0.56, 0.5, ["a"]) == 0  # overdue b still counts as in flight, but the wait is over


def test_a_camera_that_stopped_sending_is_forgotten():
    p = BatchPolicy(max_batch_size=8, batch_wait_s=0.02)
    rhythm(p, ["a", "b"], period=0.1, rounds=5)  # b last at 0.45
    # b silent for more than twice its interval (+ the wait): a no longer waits for it
    now = 0.45 + 2 * 0.1 + 0.05
    p.arrived("a", now)
    assert p.release_in(now, now, ["a"]) == 0
    assert "b" not in p.cameras and "a" in p.cameras


def test_cameras_that_stopped_are_forgotten_at_low_load_too():
    """Below `wait_above_busy` a batch leaves at once, before `expected` forgets silent cameras:
    a detector at low load kept every camera it had ever seen (5000 with churning cameras). A
    new camera forgets the silent ones."""
    p = BatchPolicy(max_batch_size=8, batch_wait_s=0.02, wait_above_busy=0.75)
    for i in range(5000):
        now = i * 1.0  # a new camera each second, each sending twice
        p.arrived(f"cam{i}", now)
        p.arrived(f"cam{i}", now + 0.1)
        assert p.release_in(now + 0.1, now + 0.1, [f"cam{i}"]) == 0  # (idle model: at once)
    assert len(p.cameras) <= 3, len(p.cameras)


def test_a_frame_waits_for_another_camera_only_while_the_model_is_busy():
    """At low load (the model idle most of the last second) a lone frame leaves at once even with
    another camera due within the wait; once batches kept the model busy it waits again."""
    p = BatchPolicy(max_batch_size=8, batch_wait_s=0.05, wait_above_busy=0.75)
    rhythm(p, ["a", "b"], period=0.2, rounds=5)  # b next at 1.1
    p.arrived("a", 1.08)
    p.ran(0.5, 0.7)  # 20 % busy over the last second
    assert p.busy(1.08) == pytest.approx(0.2)
    assert p.release_in(1.08, 1.08, ["a"]) == 0
    p.ran(0.7, 1.05)  # + 0.35 s of the second [0.08, 1.08]
    assert p.busy(1.08) == pytest.approx(0.55)
    assert p.release_in(1.08, 1.08, ["a"]) == 0
    p.ran(0.1, 0.5)  # + 0.4 s
    assert p.busy(1.08) == pytest.approx(0.95)
    assert p.release_in(1.08, 1.08, ["a"]) == pytest.approx(0.05)  # b is due: hold


def test_a_batch_running_now_counts_as_busy_time():
    """A batch counted only once it ended: a model busy without a pause on batches of 0.5–2 s
    reported 0.75–0.27 busy, below the autoscaler's target, and never scaled up."""
    p = BatchPolicy(busy_window_s=1.0)
    for k in range(5):  # back to back, 0.5 s each, the sixth running since 2.5
        p.began(k * 0.5)
        p.ran(k * 0.5, (k + 1) * 0.5)
    p.began(2.5)
    assert p.busy(2.9) == pytest.approx(1.0)  # (it said 0.6)
    p.ran(2.5, 3.0)
    assert p.busy(3.5) == pytest.approx(0.5) and p.running == []
    slow = BatchPolicy(busy_window_s=1.0)
    slow.began(10.0)  # one 2 s batch
    assert slow.busy(11.5) == pytest.approx(1.0)  # (it said 0)


def test_items_without_a_camera_never_hold_a_batch():
    p = BatchPolicy(max_batch_size=8, batch_wait_s=10)
    p.arrived(None, 0.0)
    p.arrived(None, 0.01)
    assert p.release_in(0.01, 0.0, [None, None]) == 0 and p.cameras == {}


# --- the mechanism -------------------------------------------------------------------------------

class Recorder:
    """A batch handler that records the batches it got."""

    def __init__(self, work_s=0.0, fail=False):
        self.batches: list[list[str]] = []
        self.work_s, self.fail = work_s, fail

    async def __call__(self, items):
        self.batches.append(list(items))
        if self.work_s:
            await asyncio.sleep(self.work_s)  # the model's work, not a wait
        if self.fail:
            raise RuntimeError("model crashed")
        return [f"done {i}" for i in items]


def test_the_batcher_counts_the_batch_it_is_running_as_busy():
    """The replica's busy share (the autoscaler's load) while one long batch runs."""
    async def scenario():
        batcher = AdaptiveBatcher(Recorder(work_s=0.6), max_batch_size=1, batch_wait_s=0.0)
        running = asyncio.ensure_future(batcher.submit("a", "x"))
        deadline = time.monotonic() + 10
        while not batcher.policy.running:  # the batch started
            assert time.monotonic() < deadline, "the batch never started"
            await asyncio.sleep(0.01)  # polled until the deadline above
        while batcher.busy_share() < 0.25 and not running.done():  # (it said 0 until the batch ended)
            await asyncio.sleep(0.01)  # polled until the batch ends, within its 0.6 s
        busy_while_running = not running.done()
        await running
        await batcher.close()
        return busy_while_running

    assert asyncio.run(scenario()), "busy stayed under 0.25 while the batch ran"


def test_batches_leave_when_every_sending_camera_contributed_not_after_the_wait():
    """Three cameras, each on its own clock: a frame every 1.2 s, camera i 20·i ms after camera a.
    The wait is 1 s. Once the batcher knows their rhythm, every batch holds one frame of each
    and leaves when the third lands (~40 ms), not when the wait expires."""
    handler = Recorder()
    batcher = AdaptiveBatcher(handler, max_batch_size=8, batch_wait_s=1.0)
    latencies = []
    period, rounds = 1.2, 5

    async def camera(i, cam, t0):
        for r in range(rounds):
            await asyncio.sleep(max(0.0, t0 + r * period + 0.02 * i - time.monotonic()))  # the camera's rhythm
            sent = time.monotonic()
            assert await batcher.submit(cam, f"{cam}{r}") == f"done {cam}{r}"
            latencies.append((r, cam, time.monotonic() - sent))

    async def scenario():
        t0 = time.monotonic()
        await asyncio.gather(*(camera(i, cam, t0) for i, cam in enumerate("abc")))
        await batcher.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    later = handler.batches[-3:]  # rounds 2..4: by then each camera's interval is known
    assert [sorted(b) for b in later] == [[f"a{r}", f"b{r}", f"c{r}"] for r in range(2, 5)], handler.batches
    assert max(t for r, _, t in latencies if r >= 2) < 0.7, latencies  # well under the 1 s wait


def test_a_lone_camera_is_never_held():
    handler = Recorder()
    batcher = AdaptiveBatcher(handler, max_batch_size=8, batch_wait_s=5.0)

    async def scenario():
        for r in range(5):
            t0 = time.monotonic()
            await batcher.submit("solo", r)
            assert time.monotonic() - t0 < 2.5  # the wait is 5 s; the only camera sending is in the batch
            await asyncio.sleep(0.02)  # the camera's next frame, not a wait
        await batcher.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert handler.batches == [[r] for r in range(5)]


def test_a_silent_camera_holds_a_batch_for_the_wait_then_is_forgotten():
    handler = Recorder()
    batcher = AdaptiveBatcher(handler, max_batch_size=8, batch_wait_s=1.0)

    async def scenario():
        for r in range(4):  # a and b in rhythm, 50 ms apart
            await asyncio.gather(batcher.submit("a", f"a{r}"), batcher.submit("b", f"b{r}"))
            await asyncio.sleep(0.05)  # the cameras' rhythm, not a wait
        t0 = time.monotonic()
        await batcher.submit("a", "a-alone")  # b has stopped: a waits for it, but only the wait
        held = time.monotonic() - t0
        await asyncio.sleep(0.5)  # b silent for longer than twice its interval + the wait
        t1 = time.monotonic()
        await batcher.submit("a", "a-after")
        await batcher.close()
        return held, time.monotonic() - t1

    held, after = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert held >= 1.0 - 0.01, held
    assert after < 0.7, after  # b forgotten: a's frame leaves well before the wait
    assert handler.batches[-2:] == [["a-alone"], ["a-after"]]


def test_max_batch_size_splits_batches_and_can_change_at_runtime():
    handler = Recorder(work_s=0.05)
    batcher = AdaptiveBatcher(handler, max_batch_size=2, batch_wait_s=5.0)

    async def scenario():
        first = await asyncio.gather(*(batcher.submit(None, i) for i in range(5)))
        batcher.set_max_batch_size(4)
        second = await asyncio.gather(*(batcher.submit(None, i) for i in range(5, 10)))
        await batcher.close()
        return first + second

    results = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert results == [f"done {i}" for i in range(10)]
    sizes = [len(b) for b in handler.batches]
    assert max(sizes[:3]) == 2 and sum(sizes[:3]) == 5 and max(sizes[3:]) <= 4 and sum(sizes) == 10, sizes
    with pytest.raises(ValueError):
        batcher.set_max_batch_size(0)


def test_a_failing_batch_fails_its_items_only_and_a_caller_that_gave_up_is_skipped():
    failing = Recorder(fail=True)
    batcher = AdaptiveBatcher(failing, max_batch_size=8, batch_wait_s=0.01)

    async def scenario():
        with pytest.raises(RuntimeError, match="model crashed"):
            await batcher.submit("a", 1)
        failing.fail = False
        gave_up = asyncio.create_task(batcher.submit("b", "gone"))
        await asyncio.sleep(0)  # one turn of the loop: the request is queued
        gave_up.cancel()
        assert await batcher.submit("c", 3) == "done 3"  # the batcher goes on
        await batcher.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert all("gone" not in b for b in failing.batches[1:])


class Overlap:
    """A batch handler that holds each batch until released, and records how many ran at once."""

    def __init__(self):
        self.started: list[list[str]] = []
        self.running = self.most = 0
        self.release = asyncio.Event()

    async def __call__(self, items):
        self.started.append(list(items))
        self.running += 1
        self.most = max(self.most, self.running)
        await self.release.wait()
        self.running -= 1
        return [f"done {i}" for i in items]


async def two_batches(batcher, handler, *, within):
    """Item a, and once its batch runs, item b: whether b's batch started within ``within`` s
    while a's was still held, and both results once released."""
    first = asyncio.ensure_future(batcher.submit(None, "a"))
    assert await wait_until(lambda: len(handler.started) == 1), "the first batch never started"
    second = asyncio.ensure_future(batcher.submit(None, "b"))
    overlapped = await wait_until(lambda: len(handler.started) == 2, timeout=within)
    handler.release.set()
    results = await asyncio.gather(first, second)
    await batcher.close()
    return overlapped, results


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_model_that_overlaps_batches_gets_the_next_one_while_one_runs(concurrency):
    """concurrency 2 (the OpenVINO detector): the second batch starts while the first runs;
    1 (any other model): it starts only once the first is done."""
    handler = Overlap()
    batcher = AdaptiveBatcher(handler, max_batch_size=8, batch_wait_s=0.0, concurrency=concurrency)

    overlapped, results = asyncio.run(asyncio.wait_for(two_batches(batcher, handler, within=1.0), 60))
    assert results == ["done a", "done b"]
    assert overlapped == (concurrency == 2) and handler.most == concurrency
    assert handler.started == [["a"], ["b"]]


@pytest.mark.parametrize("busy", [False, True])
def test_batches_overlap_only_while_the_model_is_busy(busy):
    """With ``wait_above_busy`` the overlap is for load: after a second of back-to-back batches
    the next one starts while one runs; with the model idle before, it waits its turn."""
    handler = Overlap()
    # the batcher's clock stands still: its busy share is what was seeded, however long the
    # machine takes to get to the batches
    batcher = AdaptiveBatcher(handler, max_batch_size=8, batch_wait_s=0.0, wait_above_busy=0.75, concurrency=2,
                              clock=lambda: 1000.0)
    if busy:
        batcher.policy.ran(999.0, 1000.0)  # the last second: one batch after the other

    overlapped, results = asyncio.run(asyncio.wait_for(two_batches(batcher, handler, within=0.5), 60))
    assert overlapped == busy and results == ["done a", "done b"]


@pytest.mark.parametrize("concurrency", [1, 2])
def test_closing_the_batcher_leaves_no_caller_waiting(concurrency):
    handler = Overlap()  # never released: the batch is still running when the batcher closes
    batcher = AdaptiveBatcher(handler, max_batch_size=8, batch_wait_s=0.0, concurrency=concurrency)

    async def scenario():
        running = asyncio.ensure_future(batcher.submit(None, "a"))
        assert await wait_until(lambda: len(handler.started) == 1), "the batch never started"
        await batcher.close()
        done, _ = await asyncio.wait({running}, timeout=5)
        return bool(done) and running.cancelled()  # inside the loop: asyncio.run cancels leftovers

    assert asyncio.run(asyncio.wait_for(scenario(), 60))


def test_closing_with_a_batch_not_started_yet_leaves_no_caller_waiting():
    """A model that overlaps batches runs each as its own task: closed before that task began,
    its coroutine (whose cancel cancels its callers) never ran, and the caller waited for good."""
    async def run(items):
        return items

    async def scenario():
        batcher = AdaptiveBatcher(run, max_batch_size=8, batch_wait_s=0.0, concurrency=2)
        caller = asyncio.ensure_future(batcher.submit("cam", 1))
        for _ in range(20):  # until its batch's task is made, not begun
            if batcher._running:
                break
            await asyncio.sleep(0)  # one turn of the loop (no time passes), at most 20
        assert batcher._running
        await batcher.close()
        done, _ = await asyncio.wait({caller}, timeout=5)
        return bool(done) and caller.cancelled()

    assert asyncio.run(asyncio.wait_for(scenario(), 60))


async def wait_until(condition, timeout=10.0):
    """True once ``condition()`` holds, False if it did not within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)  # polling interval of the deadline loop
    return True


def test_overlapping_batches_count_their_time_once():
    """Two batches overlapping (an OpenVINO detector running two at once) were summed: 0.4 s and
    0.4 s overlapping by 0.2 s said 0.8 busy for 0.6 s of work, which kept the overlap on and
    scaled up early."""
    policy = BatchPolicy(max_batch_size=4, batch_wait_s=0.02)
    policy.ran(0.0, 0.4)
    policy.ran(0.2, 0.6)
    policy.ran(0.3, 0.5)  # inside both
    assert policy.busy(1.0) == pytest.approx(0.6)
    policy.ran(0.8, 0.9)
    assert policy.busy(1.0) == pytest.approx(0.7)
    assert policy.busy(1.5) == pytest.approx(0.2)  # the window's start cuts the first ones


def test_a_user_config_is_validated_whole_before_any_of_it_applies(caplog):
    """Serve's user_config edited by hand: `{max_batch_size: 16, batch_wait_ms: -1}` set the size,
    then raised (half applied; raised at a replica's start, the deployment crash-looped); a key
    left out went back to a hard-coded default, not the config's; `nan` was taken."""
    from pipeline.batching import reconfigured
    from pipeline.config_models import BatchConfig

    batcher = AdaptiveBatcher(Recorder())
    told = []
    current = reconfigured("detector", {}, BatchConfig(max_size=4, wait_ms=30), batcher, told.append)
    assert (batcher.policy.max_batch_size, batcher.policy.batch_wait_s, told) == (4, 0.03, [4])
    with caplog.at_level("ERROR", logger="percept.batching"):
        for bad in ({"max_batch_size": 16, "batch_wait_ms": -1}, {"batch_wait_ms": float("nan")}, {"size": 3}):
            assert reconfigured("detector", bad, current, batcher, told.append) is current
    assert (batcher.policy.max_batch_size, batcher.policy.batch_wait_s, told) == (4, 0.03, [4])  # nothing applied
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and lines[0] == ("detector: user_config not applied (batches stay 4, 30 ms): "
                                            "user_config.batch_wait_ms: must be >= 0, got -1"), lines
    assert reconfigured("detector", {"batch_wait_ms": 5}, current, batcher).max_size == 4  # the config's size kept
    assert batcher.policy.batch_wait_s == 0.005
