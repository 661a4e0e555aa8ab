"""More decoder replicas than the config says (``num_replicas`` raised in the Serve config that
`percept build` wrote): each replica counts the replicas alive from their shared status
(`pipeline/decoder_status.py`), and a replica above its share hands cameras over, so every
replica ends up with its part. Real supervisors, leases and status sharing on a real
redis-server; the cameras are stand-ins (the assignment is what is tested)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading

from pipeline.assignment import CameraSupervisor
from pipeline.config import CameraConfig
from pipeline.decoder_status import live_decoders, share_status_every
from pipeline.streams import StreamKeys

from .waiting import wait_for

KEYS = StreamKeys("scale")
CAMERAS = [CameraConfig(id=c, url=f"rtsp://cam/{c}", fps=5) for c in "abcd"]


class StandIn:
    """A camera that runs until stopped."""

    def __init__(self, camera: CameraConfig):
        self.camera = camera
        self._stop = asyncio.Event()
        self.kept_tracks: bool | None = None  # how it was stopped (None: still running)
        self.read_to_end = False  # (a file read to its end: a live camera never is)

    async def run(self) -> None:
        await self._stop.wait()

    async def stop(self, *, keep_tracks: bool = False) -> None:
        self.kept_tracks = keep_tracks
        self._stop.set()

    def status(self) -> dict:
        return {"state": "online"}


def test_replicas_beyond_the_config_take_their_share_of_the_cameras(redis_server):
    client = redis_server.client()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    supervisors: list[CameraSupervisor] = []
    runs, shares, started = [], [], []

    async def start(camera):
        started.append(StandIn(camera))
        return started[-1]

    def add_replica(i: int) -> None:
        sup = CameraSupervisor(CAMERAS, client=client, keys=KEYS, start_camera=start, replicas=1,
                               lease_ttl_s=3, owner=f"replica{i}",
                               live_replicas=functools.partial(live_decoders, client, KEYS))

        async def status():
            return sup.status()

        supervisors.append(sup)
        runs.append(asyncio.run_coroutine_threadsafe(sup.run(), loop))
        shares.append(asyncio.run_coroutine_threadsafe(share_status_every(status, client, KEYS, interval_s=0.3), loop))

    def running() -> list[list[str]]:
        return [sorted(s.running) for s in supervisors]

    try:
        add_replica(0)
        wait_for(lambda: running() == [["a", "b", "c", "d"]], 20, "the config's one replica running every camera")
        for i in (1, 2, 3):  # Serve starts three more
            add_replica(i)
        wait_for(lambda: sorted(map(len, running())) == [1, 1, 1, 1], 60,
                 "each of the four replicas running one camera")
        held = sorted(c for cams in running() for c in cams)
        assert held == ["a", "b", "c", "d"]
        assert {client.get(KEYS.lease(c)).decode() for c in held} == {s.owner for s in supervisors}
        handed_over = [s.camera.id for s in started if s.kept_tracks]  # (a lease lost under load: a plain stop)
        assert len(handed_over) >= 3, "each camera handed over keeps its tracks for its next owner"
    finally:
        for sup in supervisors:
            asyncio.run_coroutine_threadsafe(sup.stop(), loop).result(5)
        for run in runs:
            run.result(30)
        for share in shares:
            share.cancel()
        concurrent.futures.wait(shares, timeout=10)
        loop.call_soon_threadsafe(loop.stop)


def test_the_replacement_of_a_dead_replica_gets_its_share_back(redis_server):
    """Two replicas configured; one dies and the other gathers every camera; Serve's replacement
    starts later (the number alive is the configured one again): it gets its share back, instead
    of staying empty while the survivor decodes twice its part."""
    client = redis_server.client()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    keys = StreamKeys("replaced")
    supervisors: dict[str, CameraSupervisor] = {}
    runs, shares = {}, {}

    async def start(camera):
        return StandIn(camera)

    def add_replica(name: str) -> None:
        sup = CameraSupervisor(CAMERAS, client=client, keys=keys, start_camera=start, replicas=2, lease_ttl_s=3,
                               owner=name, live_replicas=functools.partial(live_decoders, client, keys))

        async def status():
            return sup.status()

        supervisors[name] = sup
        runs[name] = asyncio.run_coroutine_threadsafe(sup.run(), loop)
        shares[name] = asyncio.run_coroutine_threadsafe(share_status_every(status, client, keys, interval_s=0.3), loop)

    def running() -> dict[str, int]:
        return {name: len(s.running) for name, s in supervisors.items()}

    try:
        add_replica("r0")
        add_replica("r1")
        wait_for(lambda: running() == {"r0": 2, "r1": 2}, 30, "two cameras on each replica")
        shares["r1"].cancel()  # r1 dies: its status goes stale, its cameras go to r0
        asyncio.run_coroutine_threadsafe(supervisors["r1"].stop(), loop).result(5)
        runs.pop("r1").result(30)
        del supervisors["r1"]
        wait_for(lambda: running() == {"r0": 4}, 60, "the survivor running every camera")
        add_replica("r2")  # Serve's replacement
        wait_for(lambda: running() == {"r0": 2, "r2": 2}, 60, "the replacement running its two cameras")
    finally:
        for sup in supervisors.values():
            asyncio.run_coroutine_threadsafe(sup.stop(), loop).result(5)
        for run in runs.values():
            run.result(30)
        for share in shares.values():
            share.cancel()
        concurrent.futures.wait(list(shares.values()), timeout=10)
        loop.call_soon_threadsafe(loop.stop)


def test_a_replica_stopped_while_the_service_stays_hands_its_cameras_over(redis_server):
    """A replica Serve stops while the application stays (a scale-down, a redeploy:
    ``stop(hand_over=True)``, `deployments.decoder.application_stays`) hands its cameras over,
    their tracks kept; the other replica claims them. A camera the registry no longer lists as it
    runs (a new version of the service removed it or changed its settings) ends its tracks."""
    client = redis_server.client()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    started: dict[str, list[StandIn]] = {"r0": [], "r1": []}
    cameras = list(CAMERAS)  # the registry, as each round reads it
    loads: list[str] = []  # each read of it, by replica

    def replica(name: str) -> tuple[CameraSupervisor, concurrent.futures.Future]:
        async def start(camera):
            started[name].append(StandIn(camera))
            return started[name][-1]

        sup = CameraSupervisor(lambda: (loads.append(name), list(cameras))[1], client=client, keys=StreamKeys("scale-down"), start_camera=start,
                               replicas=2, lease_ttl_s=3, owner=name)
        return sup, asyncio.run_coroutine_threadsafe(sup.run(), loop)

    (first, first_run), (second, second_run) = replica("r0"), replica("r1")
    try:
        wait_for(lambda: len(first.running) == len(second.running) == 2, 30, "two cameras on each replica")
        asyncio.run_coroutine_threadsafe(first.stop(hand_over=True), loop).result(5)
        first_run.result(30)
        assert [s.kept_tracks for s in started["r0"]] == [True, True], "scaled down: its cameras' tracks go on"
        wait_for(lambda: len(second.running) == 4, 30, "the remaining replica running every camera")
        # a new version of the service removed one camera and changed another's URL: those end
        # (changed just after a round read the registry, so that only the stop sees it)
        n = loads.count("r1")
        wait_for(lambda: loads.count("r1") > n, 10, "a round of the remaining replica", 0.01)
        cameras[:] = [CAMERAS[0].model_copy(update={"url": "rtsp://cam/new"}), *CAMERAS[2:]]
        asyncio.run_coroutine_threadsafe(second.stop(hand_over=True), loop).result(5)
        second_run.result(30)
        kept = {s.camera.id: s.kept_tracks for s in started["r1"] if s.camera in CAMERAS}  # (a round may restart a)
        assert kept == {"a": False, "b": False, "c": True, "d": True}, kept
    finally:
        for sup, run in ((first, first_run), (second, second_run)):
            asyncio.run_coroutine_threadsafe(sup.stop(), loop).result(5)
            run.result(30)
        loop.call_soon_threadsafe(loop.stop)


def test_a_replica_stopped_with_the_service_ends_its_tracks(redis_server):
    client = redis_server.client()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    started: list[StandIn] = []

    async def start(camera):
        started.append(StandIn(camera))
        return started[-1]

    sup = CameraSupervisor(CAMERAS, client=client, keys=KEYS, start_camera=start, replicas=1, lease_ttl_s=3)
    run = asyncio.run_coroutine_threadsafe(sup.run(), loop)
    try:
        wait_for(lambda: len(sup.running) == 4, 30, "the replica running every camera")
    finally:
        asyncio.run_coroutine_threadsafe(sup.stop(), loop).result(5)
        run.result(30)
        loop.call_soon_threadsafe(loop.stop)
    assert [s.kept_tracks for s in started] == [False] * 4, "the service stopped: the tracks end"


class SlowToStop(StandIn):
    """A camera whose stop takes ``seconds`` (a reader waiting out its read timeout, frames in
    flight given their grace)."""

    seconds = 0.0

    async def stop(self, *, keep_tracks: bool = False) -> None:
        await asyncio.sleep(self.seconds)  # the stop's own time, not a wait for a condition
        await super().stop(keep_tracks=keep_tracks)


@contextlib.contextmanager
def short_lease_replica(client, keys: StreamKeys, cameras, start):
    """One replica (owner ``me``, leases of 1.5 s) running ``cameras`` with ``start``, on an event
    loop of its own: yields (supervisor, its run's future, the loop); stopped at the end unless
    the test stopped it."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    sup = CameraSupervisor(cameras, client=client, keys=keys, start_camera=start, replicas=1, lease_ttl_s=1.5,
                           owner="me")
    run = asyncio.run_coroutine_threadsafe(sup.run(), loop)
    try:
        yield sup, run, loop
    finally:
        if not run.done():
            asyncio.run_coroutine_threadsafe(sup.stop(), loop).result(5)
            run.result(60)
        loop.call_soon_threadsafe(loop.stop)


def test_a_camera_that_takes_longer_to_stop_than_its_lease_has_left_keeps_its_lease_meanwhile(redis_server):
    """Renewals ended before the cameras stopped (and a camera being stopped was renewed by no
    one): a stop longer than what its lease had left let it lapse, another replica could take the
    camera while this one still read it, and what it published last (its tracks for the next
    owner) was refused. The lease stays ours until the stop releases it."""
    client = redis_server.client()
    keys = StreamKeys("slow-stop")
    cams: list[SlowToStop] = []

    async def start(camera):
        cams.append(SlowToStop(camera))
        return cams[-1]

    with short_lease_replica(client, keys, [CAMERAS[0]], start) as (sup, run, loop):
        wait_for(lambda: "a" in sup.running, 30, "the camera running")
        SlowToStop.seconds = 4.0  # more than twice the lease's TTL
        asyncio.run_coroutine_threadsafe(sup.stop(hand_over=True), loop).result(5)
        holders = set()  # who holds the lease, looked at every 50 ms while the camera stops

        def stopped() -> bool:
            if cams[0].kept_tracks is not None:  # (first: a look after its stop may see the release)
                return True
            holders.add(client.get(keys.lease("a")))
            return False

        wait_for(stopped, 30, "the camera stopped", 0.05)
        run.result(30)
        assert cams[0].kept_tracks is True
        assert holders == {b"me"}, holders
        assert client.get(keys.lease("a")) is None, "released once stopped"


def test_a_camera_that_takes_longer_to_start_than_its_lease_lasts_still_starts(redis_server):
    """Nothing renewed a camera's lease while it started: a start longer than the TTL (opening
    its tracks from a slow Redis, a model's first load) found the lease overdue, let it go and
    tried again next round — the same every round, so the camera never ran."""
    client = redis_server.client()
    keys = StreamKeys("slow-start")

    async def start(camera):
        await asyncio.sleep(3.0)  # the start's own time (twice the lease's TTL), not a wait for a condition
        return StandIn(camera)

    with short_lease_replica(client, keys, [CAMERAS[0]], start) as (sup, _, _):
        wait_for(lambda: "a" in sup.running, 30, "the camera running")
        assert client.get(keys.lease("a")) == b"me"


def test_one_slow_lease_renewal_delays_no_other_cameras(redis_server, monkeypatch):
    """Renewals ran one camera after the other, each allowed up to its own deadline: one that
    hung (a dead pooled connection waits out its socket timeout) made the cameras after it miss
    theirs, and they were stopped although Redis answered them."""
    import time

    import pipeline.lease_keeping as lease_keeping  # (where the supervisor renews its leases)

    from .waiting import hold

    real = lease_keeping.renew

    def renew(lease, token):
        if lease.lock.name.endswith(":a"):
            hold(3.0, "camera a's renewal on a dead connection")
        return real(lease, token)

    monkeypatch.setattr(lease_keeping, "renew", renew)
    client = redis_server.client()
    keys = StreamKeys("slow-renewal")
    started: list[StandIn] = []

    async def start(camera):
        started.append(StandIn(camera))
        return started[-1]

    with short_lease_replica(client, keys, CAMERAS[:2], start) as (sup, _, _):
        wait_for(lambda: {"a", "b"} <= set(sup.running), 30, "both cameras running")
        b = sup.running["b"].conductor
        end = time.monotonic() + 5  # over three TTLs: b keeps running, the same run, its lease ours
        wait_for(lambda: sup.running.get("b") is None or sup.running["b"].conductor is not b
                 or time.monotonic() > end, 30, "camera b stopped, or three TTLs", 0.05)
        assert sup.running.get("b") is not None and sup.running["b"].conductor is b, "camera b was stopped"
        assert client.get(keys.lease("b")) == b"me"


def test_a_camera_whose_lease_was_not_renewed_in_time_leaves_its_tracks(redis_server, monkeypatch):
    """A renewal that hangs past the lease's deadline (here 3 s on a 1.5 s TTL) stops the camera
    as lost while Redis may still name this replica its holder: it ended its tracks (track_end,
    a "closed" snapshot), and those writes landed, so when the camera came back (here, or anywhere)
    every car in view got a new track id. Now it leaves them, as a handover does."""
    import pipeline.lease_keeping as lease_keeping  # (where the supervisor renews its leases)

    from .waiting import hold

    real, hung = lease_keeping.renew, []

    def renew(lease, token):
        if not hung:
            hung.append(1)
            hold(3.0, "a renewal on a dead connection")
        return real(lease, token)

    monkeypatch.setattr(lease_keeping, "renew", renew)
    client = redis_server.client()
    started: list[StandIn] = []

    async def start(camera):
        started.append(StandIn(camera))
        return started[-1]

    with short_lease_replica(client, StreamKeys("lost-lease"), CAMERAS[:1], start) as (sup, _, _):
        wait_for(lambda: started and started[0].kept_tracks is not None, 30, "the camera stopped as its lease ran out")
        assert started[0].kept_tracks is True


def two_camera_supervisor(client, keys: StreamKeys, replicas: int) -> tuple[CameraSupervisor, list[str]]:
    """A supervisor of cameras a and b whose rounds a test runs itself (`_claim`), and the ids it starts."""
    started: list[str] = []

    async def start(camera):
        started.append(camera.id)
        return StandIn(camera)

    sup = CameraSupervisor(CAMERAS[:2], client=client, keys=keys, start_camera=start, replicas=replicas,
                           lease_ttl_s=1.5, owner="me")
    sup.cameras = {c.id: c for c in CAMERAS[:2]}  # (what a round reads first)
    return sup, started


def stop_running(sup: CameraSupervisor) -> None:
    for entry in sup.running.values():
        entry.task.cancel()
        if entry.timer is not None:
            entry.timer.cancel()


def test_rounds_a_camera_was_seen_free_count_only_in_a_row(redis_server):
    """A replica at its fair share takes a camera only after seeing it free two rounds in a row
    (else it is a handover under way). Free rounds hours apart, the lease held between them,
    added up: the next brief handover was taken at once, and handed back a round later."""
    client = redis_server.client()
    keys = StreamKeys("free-rounds")
    sup, started = two_camera_supervisor(client, keys, replicas=2)
    client.set(keys.lease("b"), "other")

    async def rounds() -> list[list[str]]:
        seen = []
        for b_held in (True, False, True, False, False, False):  # a handover; hours later another; then b gone
            if b_held:
                client.set(keys.lease("b"), "other")
            else:
                client.delete(keys.lease("b"))
            await sup._claim()
            seen.append(list(started))
        stop_running(sup)
        return seen

    seen = asyncio.run(rounds())
    # a alone (its share: one camera) until b was seen free two rounds in a row, then taken
    assert seen == [["a"], ["a"], ["a"], ["a"], ["a"], ["a", "b"]], seen


def test_a_camera_handed_over_is_not_taken_back_by_its_old_owner_a_round_later(redis_server):
    """A replica above its share hands a camera over: its own round in progress saw the lease
    free (1), the stop's end brought the next round forward (2), and a round later it took the
    camera back — before a replica busy starting another handed-over camera had claimed it; then,
    above its share again, handed it over again (a second stop-flush-start, its tracks twice)."""
    sup, started = two_camera_supervisor(redis_server.client(), StreamKeys("handed-over"), replicas=1)

    async def rounds() -> tuple[list[str], float, list[str]]:
        await sup._claim()  # its share: both
        sup.replicas = 2  # a second replica: one camera each
        before = sup._next_round
        await sup._stop_camera("b", hand_over=True)
        brought = sup._next_round
        for _ in range(4):  # nobody has claimed it yet (busy starting another camera)
            await sup._claim()
        early = list(started)
        for _ in range(2):
            await sup._claim()
        stop_running(sup)
        return early, brought - before, list(started)

    early, brought, late = asyncio.run(rounds())
    assert early == ["a", "b"] and brought == 0, (early, brought)  # not taken back, no round brought forward
    assert late == ["a", "b", "b"], late  # nobody took it: its old owner does, after five free rounds


def test_notes_about_a_camera_removed_go_with_it(redis_server):
    """Free rounds and the start error last said stayed for a camera removed: a leak as cameras
    come and go, and the same camera added again inherited them (taken a round early; its
    unchanged start error never said again)."""
    client = redis_server.client()
    keys = StreamKeys("notes-gone")

    async def start(camera):
        raise RuntimeError("not started here")

    cameras = list(CAMERAS[:1])
    sup = CameraSupervisor([], client=client, keys=keys, start_camera=start, replicas=1, lease_ttl_s=1.5, owner="me")
    sup._load = lambda: list(cameras)  # (what the registry gives each round)
    sup._free_rounds["gone"], sup._start_errors["gone"] = 1, "could not start: x"
    asyncio.run(sup._round())
    assert "gone" not in sup._free_rounds and "gone" not in sup._start_errors
    assert list(sup._start_errors) == [CAMERAS[0].id]  # a camera still there keeps its own


def test_a_start_error_is_not_kept_once_another_replica_holds_the_camera(redis_server):
    """A camera that failed to start here and then ran on another replica stayed among this
    replica's start errors: its metrics and GET /status would call it failed while it ran."""
    from pipeline.lease import acquire

    client = redis_server.client()
    keys = StreamKeys("start-error-elsewhere")

    async def start(camera):
        raise RuntimeError("not started here")

    sup = CameraSupervisor(list(CAMERAS[:1]), client=client, keys=keys, start_camera=start, replicas=1,
                           lease_ttl_s=30, owner="me")
    asyncio.run(sup._round())
    assert sup.start_errors == {CAMERAS[0].id: "could not start: RuntimeError: not started here"}
    assert acquire(client, keys.lease(CAMERAS[0].id), CAMERAS[0].id, ttl=30, token="other") is not None
    asyncio.run(sup._round())
    assert sup.start_errors == {}
