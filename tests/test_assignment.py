"""Camera leases on a real redis-server; the supervisor restarting crashed cameras, stopping
cameras whose lease it cannot renew, and track ids continuing across restarts."""

import asyncio
import json
import threading
import time

import numpy as np
import pytest

import pipeline.camera_open as camera_open_module
from pipeline.assignment import CameraSupervisor
from pipeline.config import CameraConfig, PerceptConfig
from pipeline.publish import Publisher
from pipeline.schema import Detections
from pipeline.streams import StreamKeys, camera_states, connect_redis

from .waiting import hold, wait_for

KEYS = StreamKeys("lease")


def supervisor(client, owner, cameras=("a", "b")):
    async def never(cam):
        raise AssertionError("not started in this test")

    return CameraSupervisor([CameraConfig(id=c, url="x.mp4") for c in cameras], client=client, keys=KEYS,
                            start_camera=never, replicas=2, lease_ttl_s=5, owner=owner)


def test_expired_lease_is_taken_back_when_free_but_not_from_another_owner(redis_server):
    client = redis_server.client()
    sup = supervisor(client, "me")
    lock = client.lock(KEYS.lease("a"), timeout=5, blocking=False, thread_local=False)
    assert lock.acquire(token="me")
    client.delete(KEYS.lease("a"))  # expired while Redis was down
    assert sup._renew(lock) and client.get(KEYS.lease("a")) == b"me"
    client.set(KEYS.lease("a"), "other")  # someone else took it meanwhile
    assert not sup._renew(lock)
    assert client.get(KEYS.lease("a")) == b"other"


def test_a_renewal_after_the_release_does_not_take_the_lease_back(redis_server):
    """The renewal loop's list still held a camera whose stop had just released its lease: the
    renewal took it back, and nobody ran the camera for up to a TTL (a handover delayed)."""
    from pipeline.lease import acquire, release, renew

    client = redis_server.client()
    lease = acquire(client, KEYS.lease("h"), "h", ttl=10, token="me")
    assert lease is not None and client.get(KEYS.lease("h")) == b"me"
    release(lease)
    assert not renew(lease, "me")
    assert client.get(KEYS.lease("h")) is None


def test_fair_share_with_two_replicas(redis_server):
    client = redis_server.client()
    sup = supervisor(client, "me", cameras=("a", "b", "c"))
    asyncio.run(asyncio.wait_for(_load(sup), 5))
    assert sup.fair_share == 2


async def _load(sup):
    sup.cameras = {c.id: c for c in await asyncio.to_thread(sup._load)}


# --- cameras through the real factory (open_camera), with a scripted capture --------------------


class LiveCapture:
    """A live camera: a frame every 40 ms of real time, for ``n`` frames (None: forever)."""

    def __init__(self, n=None):
        self.n, self.i = n, 0

    def grab(self):
        if self.n is not None and self.i >= self.n:
            return False
        time.sleep(0.04)  # the camera's frame rate, not a wait
        self.i += 1
        return True

    def retrieve(self):
        return True, np.zeros((36, 64, 3), np.uint8)

    def get(self, prop):
        return self.i * 40.0

    def release(self):
        pass


async def moving_car(inp):
    x = 5 + (inp.frame_ts * 10) % 10  # the car drifts a little: one track
    return Detections(xyxy=[[x, 5, x + 20, 25]], scores=[0.9], labels=("car",), categories=("vehicle",))


def factory(pub, config):
    async def start_camera(cam):
        return await camera_open_module.open_camera(cam, config=config, publisher=pub, detect=moving_car,
                                                  classifiers={}, models={"detector": "fake"})

    return start_camera


def warm_imports():
    """Imported now, not by the first open or first frame: that takes seconds on a small machine,
    with the supervisor's event loop blocked meanwhile."""
    import cv2  # noqa: F401
    import ultralytics.data.augment  # noqa: F401


class Background:
    """A supervisor on its own event loop thread, so the test can wait on Redis meanwhile."""

    def __init__(self, sup):
        self.sup, self.loop = sup, asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(sup.run(),), daemon=True)
        self.thread.start()

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.sup.stop(), self.loop).result(5)
        self.thread.join(30)
        if self.thread.is_alive():  # where it hangs, for the failure's report
            import faulthandler
            import sys

            faulthandler.dump_traceback(sys.stderr)
            for task in list(asyncio.all_tasks(self.loop)):
                task.print_stack(file=sys.stderr)
        assert not self.thread.is_alive()


def test_a_crashed_reader_is_restarted_with_backoff_and_the_other_camera_keeps_running(redis_server, monkeypatch,
                                                                                        caplog):
    client = redis_server.client()
    opens = {"a": 0, "b": 0}
    starts = []

    def scripted_open(camera, url, **kw):
        opens[camera] += 1
        if camera == "a" and opens["a"] <= 4:
            starts.append(time.monotonic())
            # an error quoting the (resolved) password in its own words, outside the URL
            raise ValueError("Port could not be cast to integer value as 'abc/Sup3rPw'")
        return LiveCapture()

    warm_imports()
    monkeypatch.setattr(camera_open_module, "open_capture", scripted_open)
    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    cams = [CameraConfig(id="a", url="rtsp://viewer:abc%2FSup3rPw@127.0.0.1:9/a", fps=0),
            CameraConfig(id="b", url="device:0", fps=0)]
    config = PerceptConfig(tracker={"enabled": False})
    sup = CameraSupervisor(cams, client=client, keys=KEYS, start_camera=factory(pub, config), replicas=1,
                           lease_ttl_s=3, owner="me", publisher=pub)
    bg = Background(sup)
    try:
        state = wait_for(lambda: (s := camera_states(client, KEYS, ["a"])["a"]).get("state") == "reconnecting"
                         and s, 10, "camera a reconnecting after its reader crashed")
        assert "ValueError: Port could not be cast to integer value as '***'" in state["last_error"], state

        async def replica_status():
            return sup.status()

        def crashed():  # GET /status while the restart waits: the camera is not "online"
            a = asyncio.run_coroutine_threadsafe(replica_status(), bg.loop).result(5)["cameras"].get("a", {})
            return "restart_in_s" in a and a

        answer = wait_for(crashed, 10, "camera a waiting to restart in the replica's status")
        assert answer["state"] == "failed" and answer["last_error"].startswith("reader crashed: ValueError"), answer
        assert "Sup3rPw" not in answer["last_error"], answer
        b_before = client.xlen(KEYS.detections("b"))
        wait_for(lambda: client.xlen(KEYS.detections("a")) >= 5, 30, "camera a publishing once the fault is gone")
        assert camera_states(client, KEYS, ["a"])["a"]["state"] == "online"
        assert client.xlen(KEYS.detections("b")) > b_before + 20, "camera b stalled meanwhile"
        assert client.get(KEYS.lease("a")) == b"me"  # the lease was kept while backing off
    finally:
        bg.stop()
        pub.close()
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(gaps) == 3 and gaps[0] >= 0.45, gaps  # 0.5 s, 1 s, 2 s (the delays themselves: below)
    assert opens["b"] == 1, "camera b was restarted"
    errors = [f[b"error"].decode() for _, f in client.xrange(KEYS.status) if f[b"camera"] == b"a"]
    assert sum(e.startswith("reader crashed: ValueError") for e in errors) == 4, errors  # the conductor's
    assert "Sup3rPw" not in "".join(errors) + caplog.text and any("'***'" in e for e in errors), errors
    assert [e.rsplit("(", 1)[-1] for e in errors if "(restart in" in e] == [  # the supervisor's
        "restart in 0.5 s)", "restart in 1.0 s)", "restart in 2.0 s)", "restart in 4.0 s)"], errors
    seqs = [int(f[b"seq"]) for _, f in client.xrange(KEYS.detections("a"))]
    assert seqs == sorted(set(seqs))


def test_a_camera_that_cannot_start_is_reported_once_and_the_other_runs(redis_server, monkeypatch, caplog):
    client = redis_server.client()
    attempts = []
    monkeypatch.setattr(camera_open_module, "open_capture", lambda camera, url, **kw: LiveCapture())
    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    start_ok = factory(pub, PerceptConfig(tracker={"enabled": False}))

    async def start_camera(cam):
        if cam.id == "c":
            attempts.append(cam.id)
            raise RuntimeError(f"snapshot unreadable for {cam.url} (password Sup3rPw)")
        return await start_ok(cam)

    cams = [CameraConfig(id="c", url="rtsp://u:Sup3rPw@127.0.0.1:9/c", fps=0), CameraConfig(id="b", url="device:0", fps=0)]
    sup = CameraSupervisor(cams, client=client, keys=KEYS, start_camera=start_camera, replicas=1, lease_ttl_s=3,
                           owner="me", publisher=pub)
    bg = Background(sup)
    try:
        state = wait_for(lambda: (s := camera_states(client, KEYS, ["c"])["c"]).get("state") == "failed" and s, 10,
                         "camera c reported failed")
        assert state["last_error"] == "could not start: RuntimeError: snapshot unreadable for rtsp://***@127.0.0.1:9/c " \
                                      "(password ***)", state
        assert sup.start_errors == {"c": state["last_error"]}  # (its metrics and GET /status: failed)
        wait_for(lambda: len(attempts) >= 3, 20, "camera c tried again, round after round")
        wait_for(lambda: client.xlen(KEYS.detections("b")) >= 5, 20, "camera b publishing meanwhile")
    finally:
        bg.stop()
        pub.close()
    failed = [f for _, f in client.xrange(KEYS.status) if f[b"camera"] == b"c" and f[b"state"] == b"failed"]
    assert len(failed) == 1, failed  # said once, not every round
    assert "Sup3rPw" not in caplog.text and caplog.text.count("could not start") == 1, caplog.text


def test_a_camera_whose_settings_changed_between_rounds_restarts_with_them(redis_server, monkeypatch):
    """Removed and added again with another URL before the next round (the registry's DELETE then
    POST): restarted with the new settings; only zones/lines go live. Added again as it was but
    for its zones: another camera, restarted too (the POST was taken for a PUT: the old run went on)."""
    from pipeline.registry import CameraRegistry

    client = redis_server.client()
    opened: list[str] = []
    monkeypatch.setattr(camera_open_module, "open_capture", lambda camera, url, **kw: opened.append(url) or LiveCapture())
    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    reg = CameraRegistry(client, KEYS)
    reg.add(CameraConfig(id="s", url="device:0", fps=0))
    sup = CameraSupervisor(lambda: reg.read()[0], client=client, keys=KEYS,
                           start_camera=factory(pub, PerceptConfig(tracker={"enabled": False})), replicas=1,
                           lease_ttl_s=3, owner="me", publisher=pub)
    bg = Background(sup)
    try:
        wait_for(lambda: client.xlen(KEYS.detections("s")) >= 3, 10, "camera s publishing")
        assert reg.remove("s") and reg.add(CameraConfig(id="s", url="device:1", fps=0))
        wait_for(lambda: opened[-1] == "device:1", 10, "camera s opened again on its new URL")
        assert opened == ["device:0", "device:1"], opened
        before = client.xlen(KEYS.detections("s"))
        wait_for(lambda: client.xlen(KEYS.detections("s")) >= before + 3, 10, "camera s publishing again")
        reg.set_geometry("s", {"zones": {"all": [[0, 0], [1, 0], [1, 1]]}})
        wait_for(lambda: sup.running["s"].conductor.camera.zones, 10, "the zone applied")
        assert opened == ["device:0", "device:1"], opened  # a zone goes live without a restart
        assert reg.remove("s") and reg.add(CameraConfig(id="s", url="device:1", fps=0))  # DELETE, POST: no zone
        wait_for(lambda: len(opened) == 3, 10, "camera s added again, opened again")
    finally:
        bg.stop()
        pub.close()


def test_a_round_that_fails_on_something_unforeseen_keeps_the_cameras_running(redis_server, monkeypatch, caplog):
    """A lease round that raised anything but a Redis error (a registry entry nobody foresaw)
    ended the supervisor, and with it every camera of the replica."""
    client = redis_server.client()
    monkeypatch.setattr(camera_open_module, "open_capture", lambda camera, url, **kw: LiveCapture())
    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    faults = [ValueError("Invalid IPv6 URL")]

    def cameras():
        if faults and client.xlen(KEYS.detections("u")) >= 3:
            raise faults.pop()
        return [CameraConfig(id="u", url="device:0", fps=0)]

    sup = CameraSupervisor(cameras, client=client, keys=KEYS,
                           start_camera=factory(pub, PerceptConfig(tracker={"enabled": False})), replicas=1,
                           lease_ttl_s=3, owner="me", publisher=pub)
    bg = Background(sup)
    try:
        wait_for(lambda: not faults, 20, "a round that raised")
        before = client.xlen(KEYS.detections("u"))
        wait_for(lambda: client.xlen(KEYS.detections("u")) >= before + 3, 10, "camera u publishing on")
        assert "u" in sup.running and "lease round failed; keeping current cameras" in caplog.text
    finally:
        bg.stop()
        pub.close()


def test_a_camera_that_ended_normally_is_not_restarted(redis_server, monkeypatch):
    warm_imports()
    client = redis_server.client()
    opens = []
    monkeypatch.setattr(camera_open_module, "open_capture", lambda camera, url, **kw: opens.append(1) or LiveCapture(5))
    monkeypatch.setattr(camera_open_module, "probe_fps", lambda url: 25.0)
    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    config = PerceptConfig(tracker={"enabled": False})
    sup = CameraSupervisor([CameraConfig(id="f", url="clip.mp4", fps=0, realtime=False)], client=client, keys=KEYS,
                           start_camera=factory(pub, config), replicas=1, lease_ttl_s=3, owner="me", publisher=pub)
    bg = Background(sup)
    try:
        wait_for(lambda: camera_states(client, KEYS, ["f"])["f"].get("state") == "stopped", 10, "the file ended")
        wait_for(lambda: sup.running["f"].task.done(), 10, "the camera's task ended")
        ttl_left = client.pttl(KEYS.lease("f"))
        wait_for(lambda: client.pttl(KEYS.lease("f")) > ttl_left, 5, "a lease round after the task ended")
        assert "restart_in_s" not in sup.status()["cameras"]["f"]  # no restart scheduled
        assert len(opens) == 1 and client.get(KEYS.lease("f")) == b"me"  # and the lease is kept
    finally:
        bg.stop()
        pub.close()


def test_a_file_read_to_its_end_is_not_read_again_by_the_next_owner(redis_server, monkeypatch):
    """Its lease freed (the replica stopped, an outage past the TTL, a handover), a file that was
    read to its end is not read again by the next owner: that published every frame once more
    under new seqs, and doubled the line and zone counts. One whose mark was cleared (added
    again, a new `percept run`) is read again."""
    from pipeline.streams import clear_ended

    warm_imports()
    client = redis_server.client()
    opens = []
    monkeypatch.setattr(camera_open_module, "open_capture",
                        lambda camera, url, **kw: opens.append(camera) or LiveCapture(5))
    monkeypatch.setattr(camera_open_module, "probe_fps", lambda url: 25.0)
    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    config = PerceptConfig(tracker={"enabled": False})
    cams = [CameraConfig(id=c, url=f"{c}.mp4", fps=0, realtime=False) for c in ("f", "g")]

    def replica(owner):
        return Background(CameraSupervisor(cams, client=client, keys=KEYS, start_camera=factory(pub, config),
                                           replicas=1, lease_ttl_s=3, owner=owner, publisher=pub))

    first = replica("first")
    try:
        wait_for(lambda: all(client.hget(KEYS.camera(c), "ended") for c in "fg"), 10, "both files read to their end")
        clear_ended(client, KEYS, ["g"])  # g deleted and added again as it was, within one lease round
        wait_for(lambda: opens.count("g") == 2 and client.hget(KEYS.camera("g"), "ended"), 10, "g read again here")
    finally:
        first.stop()
    assert client.get(KEYS.lease("f")) is None and client.xlen(KEYS.detections("f")) == 5
    clear_ended(client, KEYS, ["g"])  # g added again
    second = replica("second")
    try:
        # one claim round goes over f, then g: once g is read again, f had its turn
        wait_for(lambda: opens.count("g") == 3 and client.xlen(KEYS.detections("g")) == 15, 10, "g read again")
    finally:
        second.stop()
        pub.close()
    assert opens.count("f") == 1 and client.xlen(KEYS.detections("f")) == 5, opens
    seqs = seqs_of(client, "g")
    assert seqs == list(range(15)), seqs  # read again, its seq continued


def test_track_ids_continue_above_the_previous_run_of_the_camera(redis_server, monkeypatch):
    """A camera restarted (or moved to another replica) gets track ids above every id its stream
    already has: the highest one is kept in the camera hash by the publish itself."""
    client = redis_server.client()
    monkeypatch.setattr(camera_open_module, "open_capture", lambda camera, url, **kw: LiveCapture(12))
    monkeypatch.setattr(camera_open_module, "probe_fps", lambda url: 25.0)
    config = PerceptConfig()
    cam = CameraConfig(id="t", url="clip.mp4", fps=0, realtime=False)

    async def one_run():
        pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
        conductor = await factory(pub, config)(cam)
        await asyncio.wait_for(conductor.run(), 20)
        assert pub.flush(5)
        pub.close()

    ids = []
    for _ in range(3):  # a fresh publisher and tracker each time: another replica, or a restart
        before = client.xlen(KEYS.detections("t"))
        asyncio.run(one_run())
        entries = client.xrange(KEYS.detections("t"))[before:]
        ids.append({o["track_id"] for _, f in entries for o in json.loads(f[b"json"])["objects"]} - {None})
    assert all(ids), ids
    assert max(ids[0]) < min(ids[1]) and max(ids[1]) < min(ids[2]), ids
    assert camera_states(client, KEYS, ["t"])["t"]["track_id_max"] == str(max(ids[2]))
    seqs = [int(f[b"seq"]) for _, f in client.xrange(KEYS.detections("t"))]
    assert seqs == list(range(len(seqs)))


def seqs_of(client, cam):
    return [int(f[b"seq"]) for _, f in client.xrange(KEYS.detections(cam))]


@pytest.mark.parametrize("frozen_in", ["detect", "publish"])
def test_a_paused_replica_stops_its_camera_and_its_late_results_are_refused(redis_server, monkeypatch, frozen_in):
    """The supervisor's loop frozen past the TTL (a paused process) while another owner takes the
    lease: awake, it stops the camera and nothing it had lands. Frozen in a frame's detect, that
    frame is cancelled by the stop or refused (whichever runs first); frozen as it hands a frame
    to the publisher, the frame is queued first and the lease check must refuse it."""
    warm_imports()
    client = redis_server.client()
    monkeypatch.setattr(camera_open_module, "open_capture", lambda camera, url, **kw: LiveCapture())
    pub = Publisher(connect_redis(redis_server.url), keys=KEYS, maxlen=1000).start()
    config = PerceptConfig(tracker={"enabled": False})
    frozen, woke, pause_next = threading.Event(), [], threading.Event()

    def pause_here():
        if pause_next.is_set():  # the loop freezes with this frame in flight: it must not land
            pause_next.clear()
            frozen.set()
            hold(4.5, "the supervisor's event loop paused past the lease TTL")
            woke.append(time.monotonic())

    async def detect_then_pause(inp):
        if frozen_in == "detect":
            pause_here()
        return await moving_car(inp)

    publish = pub.publish

    def pause_then_publish(result, *args):
        if frozen_in == "publish":
            pause_here()
        publish(result, *args)

    monkeypatch.setattr(pub, "publish", pause_then_publish)

    async def start_camera(cam):
        return await camera_open_module.open_camera(cam, config=config, publisher=pub, detect=detect_then_pause,
                                                    classifiers={}, models={"detector": "fake"})

    sup = CameraSupervisor([CameraConfig(id="p", url="device:0", fps=0)], client=client, keys=KEYS,
                           start_camera=start_camera, replicas=1, lease_ttl_s=3, owner="me", publisher=pub)
    bg = Background(sup)
    try:
        wait_for(lambda: client.xlen(KEYS.detections("p")) >= 5, 10, "camera p publishing")
        pause_next.set()
        assert frozen.wait(5)
        wait_for(lambda: not client.exists(KEYS.lease("p")), 5, "the lease expiring")
        client.set(KEYS.lease("p"), "other", px=60_000)  # another replica takes the camera
        taken = client.xlen(KEYS.detections("p"))
        wait_for(lambda: "p" not in sup.running, 10, "the paused replica stopping camera p", interval=0.01)
        stop_delay = time.monotonic() - woke[0]  # (how soon: printed; what must hold is that nothing lands after)
        print(f"paused replica stopped its camera {stop_delay * 1000:.0f} ms after waking up")
        assert sup.status()["fencing"]["duplicates"] == {}
        wait_for(lambda: pub.flush(0.1), 10, "the publisher done with what it had")
        assert client.xlen(KEYS.detections("p")) == taken, "a result landed after the lease was taken"
        assert pub.stats.published["p"] == taken
        if frozen_in == "publish":  # the frame handed over after the pause was refused, not published
            assert pub.stats.fenced["p"] > 0, pub.stats
        assert client.get(KEYS.lease("p")) == b"other"
    finally:
        bg.stop()
        pub.close()


def test_redis_down_past_the_ttl_stops_the_camera_then_it_resumes_without_losing_results(redis_server, monkeypatch):
    """Renewals fail while Redis is down: the camera is stopped when the lease runs out. When
    Redis is back the same owner takes the lease again, what was buffered is published, and the
    camera continues after it."""
    warm_imports()
    client = redis_server.client()
    monkeypatch.setattr(camera_open_module, "open_capture", lambda camera, url, **kw: LiveCapture())
    pub = Publisher(connect_redis(redis_server.url, socket_timeout=1, socket_connect_timeout=0.5), keys=KEYS,
                    maxlen=10_000).start()
    config = PerceptConfig(tracker={"enabled": False})
    sup = CameraSupervisor([CameraConfig(id="r", url="device:0", fps=10)],
                           client=connect_redis(redis_server.url, socket_timeout=1, socket_connect_timeout=0.5),
                           keys=KEYS, start_camera=factory(pub, config), replicas=1, lease_ttl_s=3, owner="me",
                           publisher=pub)
    bg = Background(sup)
    try:
        wait_for(lambda: client.xlen(KEYS.detections("r")) >= 5, 10, "camera r publishing")
        before = seqs_of(client, "r")[-1]
        redis_server.kill()
        renewed = sup.running["r"].lease.renewed_at  # its last renewal (none lands after the kill)
        wait_for(lambda: "r" not in sup.running, 10, "camera r stopped when its lease ran out", interval=0.01)
        stopped_after = time.monotonic() - renewed
        # before Redis lets the lease go (TTL 3 s after its last renewal; the stop is due at 2.7 s)
        assert stopped_after <= 3.0, f"stopped {stopped_after:.2f} s after the lease's last renewal (TTL 3 s)"
        print(f"camera stopped {stopped_after:.2f} s after the lease's last renewal (TTL 3 s, margin 0.3 s)")
        hold(1.0, "Redis down past the lease's expiry (the camera stopped a margin before it)")
        # The supervisor is held up while Redis comes back, so the publisher retries first, while
        # nobody holds the lease: it must keep the results until the lease is ours again.
        resume, frozen = threading.Event(), threading.Event()
        bg.loop.call_soon_threadsafe(lambda: (frozen.set(), resume.wait(30)))
        frozen.wait(5)
        redis_server.start()
        client = redis_server.client()
        try:
            assert client.get(KEYS.lease("r")) is None
            pub.flush(0.2)  # the writer retries now rather than after its backoff
            wait_for(lambda: pub.held or pub.stats.fenced["r"], 10, "the publisher retrying while the lease is free")
            assert pub.stats.fenced["r"] == 0 and pub.held > 0
        finally:
            resume.set()
        wait_for(lambda: "r" in sup.running and seqs_of(client, "r")[-1] > before + 20, 20,
                 "camera r taken back and publishing again")
        assert client.get(KEYS.lease("r")) == b"me"
        seqs = seqs_of(client, "r")
        assert seqs == sorted(set(seqs))
        buffered = [s for s in seqs if s > before]
        assert buffered[0] == before + 1, "results buffered during the outage were lost"
        state = camera_states(client, KEYS, ["r"])["r"]
        missing = (buffered[-1] - before) - len(buffered)
        assert missing <= int(state["dropped"]) + int(state.get("publish_dropped", 0)), (missing, state)
        assert pub.stats.fenced["r"] == 0
    finally:
        bg.stop()
        pub.close()
