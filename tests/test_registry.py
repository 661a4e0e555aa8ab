"""The camera registry on a real redis-server: bad entries are skipped and reported once, camera
URLs keep their ``${VAR}`` in Redis and are expanded from the decoder's environment."""

from __future__ import annotations

import json

import pytest

from pipeline.config import CameraConfig
from pipeline.publish import Publisher
from pipeline.registry import CameraRegistry
from pipeline.streams import StreamKeys, camera_states

KEYS = StreamKeys("reg")
BAD = {
    "neg": json.dumps({"source": "api", "camera": {"id": "neg", "url": "x.mp4", "fps": -2}}),
    "garbage": "{not json",
    "nourl": json.dumps({"source": "api", "camera": {"id": "nourl"}}),
    "renamed": json.dumps({"source": "api", "camera": {"id": "other", "url": "x.mp4"}}),
    "bare": json.dumps({"id": "bare", "url": "x.mp4"}),
    "extra": json.dumps({"source": "config", "camera": {"id": "extra", "url": "rtsp://u:pw@h/x", "fsp": 3}}),
}


def registry(server) -> CameraRegistry:
    reg = CameraRegistry(server.client(), KEYS)
    reg.seed([CameraConfig(id="good", url="a.mp4"), CameraConfig(id="good2", url="b.mp4")])
    server.client().hset(reg.key, mapping=BAD)
    return reg


def status_entries(client, camera: str) -> list[dict[bytes, bytes]]:
    return [f for _, f in client.xrange(KEYS.status) if f[b"camera"] == camera.encode()]


def test_invalid_entries_are_skipped_with_path_precise_errors(redis_server):
    reg = registry(redis_server)
    assert [c.id for c in reg.cameras()] == ["good", "good2"]  # the old code raised here
    valid, invalid = reg.read()
    assert [c.id for c in valid] == ["good", "good2"]
    errors = {bad.id: bad.error for bad in invalid}
    assert errors["neg"] == "cameras[neg].fps: must be >= 0, got -2"
    assert errors["garbage"].startswith("cameras[garbage]: not valid JSON")
    assert errors["nourl"] == "cameras[nourl].url: required key is missing"
    assert errors["renamed"] == "cameras[renamed].id: must equal the registry key 'renamed', got 'other'"
    assert errors["bare"].startswith("cameras[bare]: not a registry entry")
    assert errors["extra"] == "cameras[extra].fsp: unknown key"
    # a config change still seeds, and leaves entries it cannot read alone
    assert reg.seed([CameraConfig(id="good", url="c.mp4")])
    assert [c.id for c in reg.cameras()] == ["good"]
    assert set(reg.client.hkeys(reg.key)) >= {b"garbage", b"bare"}


def test_invalid_entry_is_reported_failed_once_per_change(redis_server):
    reg = registry(redis_server)
    client = redis_server.client()
    pub = Publisher(client, keys=KEYS, maxlen=100).start()
    try:
        for _ in range(3):  # three lease rounds
            cameras = reg.runnable({}, pub)
            assert pub.flush(5)
        assert [c.id for c in cameras] == ["good", "good2"]
        state = camera_states(client, KEYS, ["neg"])["neg"]
        assert state["state"] == "failed" and state["last_error"] == "cameras[neg].fps: must be >= 0, got -2"
        assert state["url"] == "x.mp4"
        assert camera_states(client, KEYS, ["extra"])["extra"]["url"] == "rtsp://***@h/x"
        for cam in BAD:
            assert len(status_entries(client, cam)) == 1, cam
        # a change is reported again, once
        client.hset(reg.key, "neg", json.dumps({"source": "api", "camera": {"id": "neg", "url": "x.mp4", "fps": -3}}))
        for _ in range(3):
            reg.runnable({}, pub)
            assert pub.flush(5)
        entries = status_entries(client, "neg")
        assert [e[b"error"] for e in entries] == [b"cameras[neg].fps: must be >= 0, got -2",
                                                   b"cameras[neg].fps: must be >= 0, got -3"]
        # fixed: it runs
        client.hset(reg.key, "neg", json.dumps({"source": "api", "camera": {"id": "neg", "url": "x.mp4"}}))
        assert "neg" in [c.id for c in reg.runnable({}, pub)]
    finally:
        pub.close()


def test_urls_keep_variables_in_redis_and_are_expanded_for_the_decoder(redis_server):
    client = redis_server.client()
    reg = CameraRegistry(client, KEYS)
    url = "rtsp://viewer:${PERCEPT_REG_PW}@10.0.0.5/s1"
    reg.seed([CameraConfig(id="cam", url=url)])
    assert reg.add(CameraConfig(id="api-cam", url="rtsp://viewer:${CAM_API_CAM_PASSWORD}@10.0.0.6/s1"))
    # the same camera again (a POST retried after a timeout whose write landed): added; other settings: no
    assert reg.add(CameraConfig(id="api-cam", url="rtsp://viewer:${CAM_API_CAM_PASSWORD}@10.0.0.6/s1"))
    assert not reg.add(CameraConfig(id="api-cam", url="rtsp://viewer:${CAM_API_CAM_PASSWORD}@10.0.0.6/s1", fps=2))
    # the config's own camera: not added (answered as added, it went when the file dropped it)
    assert not reg.add(CameraConfig(id="cam", url=url)) and reg.source("cam") == "config"
    assert reg.source("api-cam") == "api" and reg.source("none") is None
    assert json.loads(client.hget(reg.key, "cam"))["camera"]["url"] == url
    pub = Publisher(client, keys=KEYS, maxlen=100).start()
    try:
        env = {"PERCEPT_REG_PW": "Pw-9"}
        for _ in range(2):
            cameras = reg.runnable(env, pub)
            assert pub.flush(5)
        assert [(c.id, c.url) for c in cameras] == [("cam", "rtsp://viewer:Pw-9@10.0.0.5/s1")]
        state = camera_states(client, KEYS, ["api-cam"])["api-cam"]
        assert state["state"] == "failed"
        assert state["last_error"].startswith("cameras[api-cam].url: environment variable CAM_API_CAM_PASSWORD is not set")
        assert state["url"] == "rtsp://***@10.0.0.6/s1"
        assert len(status_entries(client, "api-cam")) == 1
        # a camera leased by another replica (which has the variable) is not reported failed here
        client.hset(KEYS.camera("api-cam"), "state", "online")
        client.set(KEYS.lease("api-cam"), "other-replica")
        reg.runnable(env, pub)
        assert pub.flush(5)
        assert camera_states(client, KEYS, ["api-cam"])["api-cam"]["state"] == "online"
    finally:
        pub.close()
    assert b"Pw-9" not in b"".join(client.hvals(reg.key))


def test_a_variable_that_makes_a_host_unreadable_fails_that_camera_only(redis_server):
    """``${CAM_GATE_HOST}`` set to ``[fe80::1`` (an unclosed IPv6 bracket): urlsplit raised
    ValueError out of the lease round, which stopped every camera of every replica."""
    client = redis_server.client()
    reg = CameraRegistry(client, KEYS)
    reg.seed([CameraConfig(id="gate", url="rtsp://${CAM_GATE_HOST}/live"), CameraConfig(id="yard", url="b.mp4")])
    client.hset(reg.key, "nested", "[" * 100_000 + "]" * 100_000)  # json.loads: RecursionError
    pub = Publisher(client, keys=KEYS, maxlen=100).start()
    try:
        for host in ("[fe80::1", "cam]1"):
            assert [c.id for c in reg.runnable({"CAM_GATE_HOST": host}, pub)] == ["yard"]
            assert pub.flush(5)
            state = camera_states(client, KEYS, ["gate"])["gate"]
            assert state["state"] == "failed", state
            assert "cameras[gate].url, its variables expanded: the host cannot be read" in state["last_error"], state
        assert "nested" in {bad.id for bad in reg.read()[1]}
    finally:
        pub.close()


def test_set_geometry_changes_zones_in_place_and_validates(redis_server):
    import pytest
    from pydantic import ValidationError

    from pipeline.config import format_validation_error

    reg = registry(redis_server)
    cam = reg.set_geometry("good", {"zones": {"door": [[0, 0], [0.5, 0], [0.5, 1]]}, "anchor": "center"})
    assert cam.zones == {"door": [[0, 0], [0.5, 0], [0.5, 1]]} and cam.anchor == "center" and cam.url == "a.mp4"
    assert {c.id: c for c in reg.cameras()}["good"] == cam  # stored, source tag kept
    assert json.loads(redis_server.client().hget(reg.key, "good"))["source"] == "config"
    with pytest.raises(ValidationError) as err:
        reg.set_geometry("good", {"zones": {"door": [[0, 0], [1, 1]]}})
    assert format_validation_error(err.value)[0].startswith("zones.door: a zone needs at least 3 points")
    assert {c.id: c for c in reg.cameras()}["good"] == cam  # unchanged after a refused change
    assert reg.set_geometry("nope", {"zones": {}}) is None
    with pytest.raises(LookupError, match="unreadable"):
        reg.set_geometry("garbage", {"zones": {}})
    # a stored entry that no longer validates is a conflict (409), not the request's fault (422)
    with pytest.raises(LookupError) as err:
        reg.set_geometry("neg", {"zones": {}})
    assert "the stored entry of camera 'neg' no longer validates (fps: must be >= 0, got -2)" in str(err.value)


def test_the_config_cameras_come_back_when_redis_loses_the_registry(redis_server):
    """An external Redis restarted without its data: each round's read writes the config's
    cameras again (API additions are lost with the data); a registry another config seeded is
    not overwritten (a rolling update's old and new replicas do not fight)."""
    client = redis_server.client()
    reg = CameraRegistry(client, KEYS)
    config = [CameraConfig(id="a", url="a.mp4"), CameraConfig(id="b", url="b.mp4")]
    pub = Publisher(client, keys=KEYS, maxlen=100).start()
    try:
        reg.seed(config)
        assert [c.id for c in reg.runnable({}, pub, config)] == ["a", "b"]
        client.flushall()  # as a restart without persistence
        assert [c.id for c in reg.runnable({}, pub, config)] == ["a", "b"]
        reg.remove("b")  # DELETE /cameras/b
        client.hset(reg.key, "api-cam", json.dumps({"source": "api", "camera": {"id": "api-cam", "url": "x.mp4"}}))
        client.delete(reg.digest_key)  # the digest alone gone (evicted): the registry stands, not re-seeded
        assert [c.id for c in reg.runnable({}, pub, config)] == ["a", "api-cam"]
        newer = [CameraConfig(id="c", url="c.mp4")]
        reg.seed(newer)  # a replica of the next config started (the camera added through the API stays)
        assert [c.id for c in reg.runnable({}, pub, config)] == ["api-cam", "c"]
    finally:
        pub.close()


def test_a_seed_that_raced_another_config_reads_again(redis_server):
    """Two replicas of different configs seed at once (a rolling update): the one that writes
    second removes the cameras the first wrote, as if it had seeded after it. Without WATCH it
    removed only those it had read, leaving the other config's camera under its digest."""
    client = redis_server.client()
    CameraRegistry(client, KEYS).seed([CameraConfig(id="x", url="x.mp4"), CameraConfig(id="y", url="y.mp4")])
    reg = CameraRegistry(client, KEYS)
    read, raced = reg._raw, []

    def read_then_raced(pipe=None):
        current = read(pipe)
        if not raced:  # another replica, of a third config, seeds right after this one read
            raced.append(CameraRegistry(redis_server.client(), KEYS).seed([CameraConfig(id="z", url="z.mp4")]))
        return current

    reg._raw = read_then_raced
    assert reg.seed([CameraConfig(id="x", url="x2.mp4")]) and raced == [True]
    assert [c.id for c in reg.cameras()] == ["x"]
    assert sorted(client.hkeys(reg.removed_key)) == [b"x", b"y", b"z"]
    assert not reg.seed([CameraConfig(id="x", url="x2.mp4")])  # seeded: the same config writes nothing


def test_a_field_that_is_not_utf8_neither_blocks_adding_cameras_nor_stays_for_good(redis_server):
    """A registry field written by hand with bytes that are not UTF-8: `read` names it with
    U+FFFD and reports it failed; `ids` (every POST /cameras asks it) raised, so each added
    camera was a 500, and DELETE by the name shown could not remove it."""
    reg = CameraRegistry(redis_server.client(), KEYS)
    reg.seed([CameraConfig(id="good", url="a.mp4")])
    reg.client.hset(reg.key, b"bad\xff", b"{}")
    shown = "bad\ufffd"
    assert shown in reg.ids() and shown in [bad.id for bad in reg.read()[1]]
    assert reg.add(CameraConfig(id="new", url="b.mp4"))
    assert reg.remove(shown) and b"bad\xff" not in reg.client.hkeys(reg.key)
    assert not reg.remove(shown) and sorted(reg.ids()) == ["good", "new"]
    assert not reg.client.hexists(reg.removed_key, b"bad\xff")  # it never ran: no tracks to end


def test_a_file_read_to_its_end_is_read_again_once_added_again_changed_or_run_again(redis_server):
    """The mark a file camera read to its end leaves (`ended`: no replica reads it again) goes
    when the camera is added again, when a new config changes it, and when `percept run` starts;
    a new config that leaves it as it was keeps it."""
    from cli.run import _read_files_again
    from pipeline.config import PerceptConfig

    client = redis_server.client()
    reg = CameraRegistry(client, KEYS)
    f, g = CameraConfig(id="f", url="f.mp4"), CameraConfig(id="g", url="g.mp4")
    reg.seed([f, g])

    def mark(*ids):
        for cid in ids:
            client.hset(KEYS.camera(cid), mapping={"ended": "x", "state": "stopped"})

    def marked():
        return sorted(c for c in "fgh" if client.hget(KEYS.camera(c), "ended"))

    mark("f", "g")
    reg.seed([f, g])  # the same config again: nothing changes
    assert marked() == ["f", "g"]
    reg.seed([f.model_copy(update={"zones": {"z": [[0, 0], [1, 0], [1, 1]]}}), g])  # f's zones only: as it runs
    assert marked() == ["f", "g"]
    reg.seed([f, g.model_copy(update={"fps": 2.0})])  # a new config that changes g (beyond zones)
    assert marked() == ["f"]
    reg.remove("f")
    assert reg.add(f) and marked() == []  # DELETE, then POST: read again
    mark("f")
    assert reg.add(f) and marked() == ["f"]  # a POST retried (the camera is there as it was)
    assert client.hget(KEYS.camera("f"), "state") == b"stopped"  # only the mark goes
    mark("h")
    _read_files_again(PerceptConfig(cameras=[f.model_dump()], redis={"url": redis_server.url, "stream_prefix": "reg"}))
    assert marked() == ["h"]  # `percept run` with camera f


def test_zones_changed_through_the_api_stay_until_the_file_changes_that_camera(redis_server):
    """A new config rewrote every camera of the file: a PUT's zones on x went back to the file's
    when only y was edited (and the owner's next round moved x's tracks back)."""
    reg = CameraRegistry(redis_server.client(), KEYS)
    x, y = CameraConfig(id="x", url="x.mp4"), CameraConfig(id="y", url="y.mp4")
    reg.seed([x, y])
    road = {"road": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}
    reg.set_geometry("x", {"zones": road})
    assert reg.seed([x, y.model_copy(update={"fps": 2.0})])  # another camera of the file edited
    def cameras():
        return {c.id: c for c in reg.read()[0]}

    assert cameras()["x"].zones == road and cameras()["y"].fps == 2.0
    gate = {"gate": [[0, 0], [0.5, 0], [0.5, 0.5]]}
    assert reg.seed([x.model_copy(update={"zones": gate}), y.model_copy(update={"fps": 2.0})])  # x itself
    assert cameras()["x"].zones == gate


def test_a_post_retried_after_its_entry_landed_alone_still_reads_the_file_again(redis_server, monkeypatch):
    """The entry and the clearing of the file's `ended` mark were two round trips: Redis gone
    between them, the client's retry found "the same camera again" (201) and the mark stayed,
    so no replica ever read the file again. Now one script: a POST that fails wrote nothing."""
    import redis

    client = redis_server.client()
    reg = CameraRegistry(client, KEYS)
    f = CameraConfig(id="f", url="f.mp4")
    client.hset(KEYS.camera("f"), mapping={"ended": "x", "state": "stopped"})  # read to its end, then DELETEd
    real_execute = client.execute_command
    calls = {"n": 0}

    def drop_after_the_first_write(*args, **kwargs):  # Redis gone right after the first write lands
        answer = real_execute(*args, **kwargs)
        if args[0] in ("HSETNX", "EVAL", "EVALSHA"):
            calls["n"] += 1
            if calls["n"] == 1:
                raise redis.ConnectionError("connection lost (the test)")
        return answer

    monkeypatch.setattr(client, "execute_command", drop_after_the_first_write)
    with pytest.raises(redis.ConnectionError):
        reg.add(f)
    assert reg.add(f)  # the client's retry: the same camera again
    assert client.hget(KEYS.camera("f"), "ended") is None, "its file is read again"


def test_an_api_camera_whose_variables_another_camera_took_since_is_not_expanded(redis_server):
    """`Dock` added over the API naming ${CAM_DOCK_PASSWORD} while no `dock` existed; later the
    operator's config adds `dock` and sets CAM_DOCK_PASSWORD on the decoders. Expanded, `Dock`
    would send dock's password to the host its URL names: it is reported failed instead."""
    client = redis_server.client()
    reg = CameraRegistry(client, KEYS)
    reg.seed([CameraConfig(id="front", url="a.mp4")])
    assert reg.add(CameraConfig(id="Dock", url="rtsp://u:${CAM_DOCK_PASSWORD}@elsewhere.example/s"))
    reg.seed([CameraConfig(id="front", url="a.mp4"), CameraConfig(id="dock", url="rtsp://u:${CAM_DOCK_PASSWORD}@cam/s")])
    pub = Publisher(client, keys=KEYS, maxlen=100).start()
    try:
        cameras = reg.runnable({"CAM_DOCK_PASSWORD": "s3cret-dock"}, pub)
        assert pub.flush(5)
    finally:
        pub.close()
    assert sorted(c.id for c in cameras) == ["dock", "front"]
    state = camera_states(client, KEYS, ["Dock"])["Dock"]
    assert state["state"] == "failed" and "would be camera 'dock''s too" in state["last_error"], state
    assert "s3cret-dock" not in json.dumps(state)


def test_an_api_camera_naming_a_variable_a_config_camera_names_is_not_expanded(redis_server, monkeypatch):
    """The config's `refused` uses ${CAM_REF_PASSWORD} (not named for its own id) and pins its
    host with CAM_REFUSED_HOST; an API camera `ref` naming CAM_REF_PASSWORD passed the own-prefix
    check, the pin (looked up by `ref`) did not hold it, and the decoders sent refused's password
    to the host `ref` named. Refused at the POST, and reported failed where it was added first."""
    from fastapi.testclient import TestClient

    from .test_api_input import api_app

    client = redis_server.client()
    reg = CameraRegistry(client, KEYS)
    assert reg.add(CameraConfig(id="ref", url="rtsp://x:${CAM_REF_PASSWORD}@elsewhere.example/steal"))
    config = [CameraConfig(id="refused", url="rtsp://x:${CAM_REF_PASSWORD}@10.0.0.9/s")]
    reg.seed(config)
    pub = Publisher(client, keys=KEYS, maxlen=100).start()
    try:
        env = {"CAM_REF_PASSWORD": "Refu5edPw", "CAM_REFUSED_HOST": "10.0.0.9"}
        cameras = reg.runnable(env, pub, config)
        assert pub.flush(5)
    finally:
        pub.close()
    assert [c.id for c in cameras] == ["refused"]
    state = camera_states(client, KEYS, ["ref"])["ref"]
    assert state["state"] == "failed" and "is named by camera 'refused''s URL" in state["last_error"], state
    assert "Refu5edPw" not in json.dumps(state)

    assert reg.remove("ref")
    with api_app(redis_server.url, "reg", monkeypatch) as app, TestClient(app) as api:
        r = api.post("/cameras", json={"id": "ref", "url": "rtsp://x:${CAM_REF_PASSWORD}@elsewhere.example/steal"})
        assert r.status_code == 422 and "${CAM_REF_PASSWORD} is named by camera 'refused''s URL" in r.text, r.text
        r = api.post("/cameras", json={"id": "ref", "url": "rtsp://x:${CAM_REF_USER}@elsewhere.example/s"})
        assert r.status_code == 201, r.text  # (its own variable no other camera names)


def test_an_api_camera_reading_a_file_stored_before_the_api_refused_files_is_not_read(redis_server):
    """The API refuses a file, device or listening URL unless security.api_local_sources; one
    stored before (an older version, or the setting on then) is reported failed by the decoders,
    the config's own file cameras run."""
    client = redis_server.client()
    reg = CameraRegistry(client, KEYS)
    config = [CameraConfig(id="front", url="a.mp4")]
    reg.seed(config)
    assert reg.add(CameraConfig(id="peek", url="/etc/shadow"))
    assert reg.add(CameraConfig(id="ear", url="tcp://0.0.0.0:9000?listen=1"))
    pub = Publisher(client, keys=KEYS, maxlen=100).start()
    try:
        refused = reg.runnable({}, pub, config, api_local_sources=False)
        allowed = reg.runnable({}, pub, config, api_local_sources=True)
        assert pub.flush(5)
    finally:
        pub.close()
    assert [c.id for c in refused] == ["front"] and sorted(c.id for c in allowed) == ["ear", "front", "peek"]
    states = camera_states(client, KEYS, ["peek", "ear"])
    assert "a camera added through the API is a network stream" in states["peek"]["last_error"], states
    assert "listens for whoever sends to a port" in states["ear"]["last_error"], states


def test_an_add_that_races_a_delete_of_the_same_id_adds_it(redis_server):
    """A POST retried while a DELETE of the same id landed between its two reads got 409
    "exists; DELETE it first" for a camera that no longer existed."""
    client = redis_server.client()
    reg = CameraRegistry(client, KEYS)
    assert reg.add(CameraConfig(id="race", url="old.mp4"))

    class DeletedBetween:  # the DELETE lands after the HSETNX saw the old entry
        def __init__(self, real):
            self.real, self.raced = real, False

        def __getattr__(self, name):
            return getattr(self.real, name)

        def hget(self, *args):
            if not self.raced:
                self.raced = CameraRegistry(self.real, KEYS).remove("race")
            return self.real.hget(*args)

    racing = CameraRegistry(DeletedBetween(client), KEYS)
    assert racing.add(CameraConfig(id="race", url="new.mp4")) and racing.client.raced
    assert [c.url for c in reg.cameras() if c.id == "race"] == ["new.mp4"]


def test_an_unchanged_entry_is_not_validated_again(redis_server, monkeypatch):
    """Every lease round, `GET /cameras` (the page asks every second) and the live view read the
    whole registry: ten cameras of 64 zones × 256 points took 4 s a listing, each validated again.
    An entry as read before gives the camera made then; a changed one is validated afresh."""
    import pipeline.registry_entries as registry_entries

    registry = CameraRegistry(redis_server.client(), StreamKeys("regcache"))
    zones = {f"z{j}": [[0.1, 0.1], [0.9, 0.1 + j / 100], [0.5, 0.9]] for j in range(8)}
    assert registry.add(CameraConfig(id="a", url="rtsp://cam/a", zones=zones))
    assert registry.add(CameraConfig(id="b", url="rtsp://cam/b"))
    validated = []
    real = CameraConfig.model_validate.__func__

    def counting(cls, data, *args, **kwargs):
        validated.append(data.get("id") if isinstance(data, dict) else None)
        return real(cls, data, *args, **kwargs)

    monkeypatch.setattr(CameraConfig, "model_validate", classmethod(counting))
    registry_entries._parsed.cache_clear()  # (other tests' reads)
    first, _ = registry.read()
    again, _ = registry.read()
    assert sorted(validated) == ["a", "b"] and [c.id for c in again] == ["a", "b"], validated
    assert all(x is y for x, y in zip(first, again)) and again[0].zones == first[0].zones
    assert registry.set_geometry("a", {"zones": {"z0": zones["z0"]}}) is not None
    validated.clear()
    changed, _ = registry.read()
    assert validated == ["a"], validated
    assert list(changed[0].zones) == ["z0"] and changed[1] is first[1]
    registry.remove("a")
    registry.remove("b")


def test_a_camera_changed_again_and_again_leaves_no_old_version_parsed_in_memory(redis_server):
    """Every version of an entry read was kept parsed (512 of them): a camera of 64 zones of 256
    points changed by PUT after PUT held 3.4 MiB more each time, in the API and every decoder."""
    import gc
    import weakref

    registry = CameraRegistry(redis_server.client(), StreamKeys("regold"))
    assert registry.add(CameraConfig(id="a", url="rtsp://cam/a"))
    versions = []
    for k in range(5):
        assert registry.set_geometry("a", {"zones": {"z": [[0.1, 0.1], [0.9, 0.1 + k / 100], [0.5, 0.9]]}}) is not None
        (camera,), _ = registry.read()
        versions.append(weakref.ref(camera))
        del camera
    gc.collect()
    assert [v() is not None for v in versions] == [False] * 4 + [True]  # the latest only
    registry.remove("a")
