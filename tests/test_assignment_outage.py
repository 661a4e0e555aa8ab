"""Two decoder replicas through a Redis outage longer than the lease: when Redis is back, each
takes back the cameras whose leases ran out there, so what each publisher held through the
outage lands (before, the first replica to come round took any free camera, and the other's
held results were refused by the fence and lost)."""

import threading

import pipeline.camera_open as camera_open_module
from pipeline.assignment import CameraSupervisor
from pipeline.config import CameraConfig, PerceptConfig
from pipeline.publish import Publisher
from pipeline.streams import connect_redis

from .test_assignment import KEYS, Background, LiveCapture, factory, seqs_of, warm_imports
from .waiting import hold, wait_for


def replica(redis_server, owner, config):
    pub = Publisher(connect_redis(redis_server.url, socket_timeout=1, socket_connect_timeout=0.5), keys=KEYS,
                    maxlen=10_000).start()
    sup = CameraSupervisor([CameraConfig(id=c, url="device:0", fps=10) for c in ("c1", "c2")],
                           client=connect_redis(redis_server.url, socket_timeout=1, socket_connect_timeout=0.5),
                           keys=KEYS, start_camera=factory(pub, config), replicas=2, lease_ttl_s=3, owner=owner,
                           publisher=pub)
    return sup, pub


def test_after_an_outage_past_the_ttl_each_replica_takes_back_its_own_cameras(redis_server, monkeypatch):
    warm_imports()
    client = redis_server.client()
    monkeypatch.setattr(camera_open_module, "open_capture", lambda camera, url, **kw: LiveCapture())
    config = PerceptConfig(tracker={"enabled": False})
    sup_a, pub_a = replica(redis_server, "a", config)
    sup_b, pub_b = replica(redis_server, "b", config)
    bgs = [Background(sup_a)]
    try:
        wait_for(lambda: "c1" in sup_a.running, 10, "replica a running c1 (its share: one camera)")
        bgs.append(Background(sup_b))
        wait_for(lambda: "c2" in sup_b.running and client.xlen(KEYS.detections("c2")) >= 5
                 and client.xlen(KEYS.detections("c1")) >= 5, 15, "replica b running c2, both publishing")
        before = {c: seqs_of(client, c)[-1] for c in ("c1", "c2")}
        redis_server.kill()
        wait_for(lambda: not sup_a.running and not sup_b.running, 10, "both cameras stopped as their leases ran out")
        hold(1.0, "Redis down past the leases' expiry")
        # replica a is held up while Redis comes back, so replica b comes round first and sees
        # both cameras free; it must leave c1 to a, whose publisher holds c1's results
        resume, frozen = threading.Event(), threading.Event()
        bgs[0].loop.call_soon_threadsafe(lambda: (frozen.set(), resume.wait(30)))
        assert frozen.wait(5)
        redis_server.start()
        client = redis_server.client()
        try:
            wait_for(lambda: sup_b.running, 10, "replica b claiming again after the outage")
            for _ in range(2):  # a whole round of replica b's after that one, while replica a is still held up
                began = sup_b._next_round  # (set as a round starts)
                wait_for(lambda: sup_b._next_round > began, 10, "replica b's next round")
            assert "c1" not in sup_b.running, "replica b took the camera whose results replica a holds"
        finally:
            resume.set()
        wait_for(lambda: "c1" in sup_a.running and "c2" in sup_b.running
                 and all(seqs_of(client, c)[-1] > before[c] + 20 for c in ("c1", "c2")), 20,
                 "each replica publishing its own camera again")
        for cam, pub in (("c1", pub_a), ("c2", pub_b)):
            seqs = seqs_of(client, cam)
            assert seqs == sorted(set(seqs)), cam
            assert [s for s in seqs if s > before[cam]][0] == before[cam] + 1, f"{cam}: what was held was lost"
            assert pub.stats.fenced[cam] == 0, (cam, dict(pub.stats.fenced))
    finally:
        for bg in bgs:
            bg.stop()
        pub_a.close()
        pub_b.close()


def test_only_an_outage_as_long_as_a_lease_holds_other_replicas_cameras_back_and_only_for_a_ttl():
    from pipeline.lease import OutageClaims

    claims = OutageClaims(ttl=3)
    claims.unreachable(100.0)
    claims.unreachable(101.0)  # the outage started at the first failure (nothing answered before)
    assert claims.answered(102.0) is None  # 2 s < 90 % of the TTL: the leases did not run out
    assert not claims.others_wait("theirs", 102.0)
    claims.reached(108.0)  # a renewal answered: the leases run out counted from here
    claims.unreachable(109.0)  # the next call, a round later, is the first to fail
    assert claims.answered(111.0) == 3.0  # 2 s after the first failure, 3 s after the last answer
    assert claims.others_wait("theirs", 111.1)
    claims.own_only_until = 0.0
    claims.reached(120.0)
    claims.unreachable(120.5)
    claims.expired_here.add("mine")  # a lease ran out here (a slow renewal): the window opens too
    assert claims.answered(121.0) == 1.0
    claims.reached(125.0)
    claims.unreachable(130.0)
    assert claims.answered(133.0) == 8.0
    assert claims.unreachable_since is None
    assert claims.others_wait("theirs", 133.1) and not claims.others_wait("mine", 133.1)
    assert claims.others_wait("theirs", 135.9)
    assert not claims.others_wait("theirs", 136.0) and not claims.expired_here  # a TTL later: anyone's


def test_a_supervisor_asked_to_stop_while_starting_a_camera_starts_no_other(redis_server):
    """`stop()` during a round that claims four free cameras: the start under way finishes, and
    no other camera is claimed and started just to be stopped again (each start restores tracks
    and opens the camera; meanwhile other replicas cannot take it)."""
    import asyncio

    started: list[str] = []

    class Idle:
        def __init__(self, cam):
            self.camera, self.read_to_end, self._done = cam, False, asyncio.Event()

        async def run(self):
            await self._done.wait()

        async def stop(self, keep_tracks=False):
            self._done.set()

        def status(self):
            return {}

    async def main():
        sup = None

        async def start_camera(cam):
            started.append(cam.id)
            if len(started) == 1:
                await sup.stop(hand_over=True)  # asked to stop while this camera starts
            return Idle(cam)

        sup = CameraSupervisor([CameraConfig(id=f"c{i}", url="device:0") for i in range(4)],
                               client=redis_server.client(), keys=KEYS, start_camera=start_camera, replicas=1,
                               lease_ttl_s=10, owner="a")
        await asyncio.wait_for(sup.run(), 30)

    asyncio.run(main())
    assert started == ["c0"]
    assert not any(redis_server.client().exists(KEYS.lease(f"c{i}")) for i in range(4)), "a lease was left held"


def test_cameras_removed_together_stop_together(redis_server, monkeypatch):
    """A round stopped its removed or changed cameras one after another: one whose reader was stuck
    (up to ~20 s of grace, wait and flush) held the others' stops, and the restarts and claims
    after them. Here the first camera's stop lasts until the second's has begun."""
    from pipeline.conductor import CameraConductor as Conductor

    warm_imports()
    client = redis_server.client()
    monkeypatch.setattr(camera_open_module, "open_capture", lambda camera, url, **kw: LiveCapture())
    began = {cid: threading.Event() for cid in ("s1", "s2")}
    waited = {}
    stop = Conductor.stop

    async def stuck_first(self, **kw):
        began[self.camera.id].set()
        if self.camera.id == "s1":  # (until the other camera's stop begins: together, at once; in turn, never)
            import asyncio

            waited["s1"] = await asyncio.to_thread(began["s2"].wait, 10)
        return await stop(self, **kw)

    monkeypatch.setattr(Conductor, "stop", stuck_first)
    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    listed = {"cameras": [CameraConfig(id=cid, url="device:0", fps=10) for cid in began]}
    sup = CameraSupervisor(lambda: listed["cameras"], client=client, keys=KEYS,
                           start_camera=factory(pub, PerceptConfig(tracker={"enabled": False})), replicas=1,
                           lease_ttl_s=3, owner="me", publisher=pub)
    bg = Background(sup)
    try:
        wait_for(lambda: set(sup.running) == set(began), 10, "both cameras running")
        listed["cameras"] = []  # both removed at once (seen by one round)
        wait_for(lambda: not sup.running and not sup._stopping, 30, "both cameras stopped")
        assert waited == {"s1": True}, "the second camera's stop began only after the first's ended"
    finally:
        bg.stop()
        pub.close()


def test_a_slow_stop_holds_up_neither_the_claims_of_its_round_nor_its_own_restart(redis_server, monkeypatch):
    """A round awaited its stops before it claimed: a camera removed whose reader was stuck (up
    to ~20 s) held a camera added in the same round unclaimed as long. And a camera whose
    settings changed starts again as its stop ends, not a round later."""
    import asyncio

    from pipeline.conductor import CameraConductor as Conductor

    warm_imports()
    client = redis_server.client()
    monkeypatch.setattr(camera_open_module, "open_capture", lambda camera, url, **kw: LiveCapture())
    release = threading.Event()
    stop = Conductor.stop

    async def stuck(self, **kw):
        if self.camera.id == "old":
            await asyncio.to_thread(release.wait, 30)  # (until the test has seen the new camera run)
        return await stop(self, **kw)

    monkeypatch.setattr(Conductor, "stop", stuck)
    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    listed = {"cameras": [CameraConfig(id="old", url="device:0", fps=10), CameraConfig(id="kept", url="device:0", fps=10)]}
    sup = CameraSupervisor(lambda: listed["cameras"], client=client, keys=KEYS,
                           start_camera=factory(pub, PerceptConfig(tracker={"enabled": False})), replicas=1,
                           lease_ttl_s=30, owner="me", publisher=pub)  # (a round every 10 s)
    bg = Background(sup)
    try:
        wait_for(lambda: set(sup.running) == {"old", "kept"}, 10, "both cameras running")
        listed["cameras"] = [CameraConfig(id="kept", url="device:0", fps=5), CameraConfig(id="new", url="device:0", fps=10)]
        def round_now():  # (the next round now: "old" removed, "kept" changed, "new" added)
            sup._next_round = 0.0
            sup._wake.set()

        bg.loop.call_soon_threadsafe(round_now)
        wait_for(lambda: "new" in sup.running, 8, "the camera added claimed while the removed one still stops")
        assert "old" in sup._stopping
        wait_for(lambda: sup.running.get("kept") is not None and sup.running["kept"].conductor.camera.fps == 5, 8,
                 "the changed camera running again with its new settings (before the next regular round)")
    finally:
        release.set()
        bg.stop()
        pub.close()
