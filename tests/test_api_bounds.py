"""What a caller's body costs the camera API (`deployments/api.py`, in-process on a real
redis-server as in test_api_input.py): a 422 of bounded size, text checked for secrets in time
that grows with its length (not its square), a POST retried that changes nothing, and data in
Redis that percept did not write answered as such, not with a 500."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.streams import StreamKeys

from .conftest import REPO
from .test_api_input import api_app

KEYS = StreamKeys("apibd")


@pytest.fixture
def api(redis_server, monkeypatch):
    from fastapi.testclient import TestClient

    with api_app(redis_server.url, "apibd", monkeypatch) as app, TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_scrubbing_a_long_text_of_underscores_takes_no_longer_than_its_length_allows():
    """Every "_" could start a path secret (`/user=admin_password=…`) and the name was looked for
    backwards and forwards from each: 4000 underscores (a PUT key, an id, a URL's path) took 7 s
    on the API's event loop, the time growing as the square of the length (100 000: hours)."""
    code = ("from pipeline.redact import redact, redact_url, query_secrets\n"
            "text = '_' * 100_000\n"
            "assert redact(text) == text and redact_url('rtsp://cam/' + text) == 'rtsp://cam/' + text\n"
            "assert query_secrets(text + '=') == [] and redact('_password=S3cret') == '_password=***'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_422_lists_a_bounded_number_of_problems(api):
    """100 000 unknown keys in a PUT (930 kB) were answered with a 12.5 MB 422, a line each."""
    assert api.post("/cameras", json={"id": "a", "url": "rtsp://cam.local/s"}).status_code == 201
    r = api.put("/cameras/a", json={f"k{i}": 1 for i in range(1000)})
    detail = r.json()["detail"]
    assert r.status_code == 422 and len(detail) == 51 and detail[-1] == "… and 950 more", detail[-3:]
    assert detail[0].startswith("k0: only zones, lines")
    zones = {"z": [[-1, -1]] * 300}  # (a problem per point)
    r = api.post("/cameras", json={"id": "b", "url": "rtsp://cam.local/s", "zones": zones, **{f"x{i}": 1 for i in range(200)}})
    assert r.status_code == 422 and len(r.json()["detail"]) <= 51 and r.json()["detail"][-1].endswith("more"), r.text[:500]


def test_a_422_quotes_a_long_key_cut_and_scrubbed(api):
    """A zone name of 1 MB (a name is no point list) was quoted whole in the 422's path: an answer
    as large as the request; the cut comes after the scrubbing (a password past it stays hidden)."""
    assert api.post("/cameras", json={"id": "a", "url": "rtsp://cam.local/s"}).status_code == 201
    long_name = "z" * 1_000_000
    r = api.put("/cameras/a", json={"zones": {long_name: "not points", "rtsp://u:S3cretZ@h/x" + "y" * 200: "no"}})
    assert r.status_code == 422 and len(r.content) < 4000, (r.status_code, len(r.content))
    assert "z" * 80 + "…" in r.text and "S3cretZ" not in r.text and "rtsp://***@h/x" in r.text, r.text[:600]


def test_the_same_camera_posted_again_keeps_its_live_image(api, redis_server):
    """A POST retried is answered as added and changes nothing: it deleted the camera's live
    image, so the snapshot said "no view frame yet" (503) until the next one."""
    client = redis_server.client()
    body = {"id": "door", "url": "rtsp://cam.local/s"}
    assert api.post("/cameras", json=body).status_code == 201
    client.set(KEYS.view_jpeg("door"), b"\xff\xd8 its image", px=60_000)
    assert api.post("/cameras", json=body).status_code == 201
    assert client.get(KEYS.view_jpeg("door")) == b"\xff\xd8 its image"


@pytest.mark.parametrize("odd", ["trackstate of another type", "pixel sizes as a list", "added_ms 1e400"])
def test_a_put_beside_data_percept_did_not_write_is_no_500(api, redis_server, odd):
    client = redis_server.client()
    assert api.post("/cameras", json={"id": "c", "url": "rtsp://cam.local/s"}).status_code == 201
    if odd == "trackstate of another type":
        client.set(KEYS.trackstate("c"), "a string")
    elif odd == "pixel sizes as a list":
        client.hset(KEYS.trackstate("c"), "json", json.dumps({"events": {"pixel_sizes": [[640, 480]], "zones": {}}}))
    else:
        entry = json.loads(client.hget("apibd:cameras", "c"))
        client.hset("apibd:cameras", "c", json.dumps(entry).replace(f'"added_ms": {entry["added_ms"]}', '"added_ms": 1e400'))
    client.xadd(KEYS.detections("c"), {"v": "1", "camera": "c", "seq": "1",
                                       "json": json.dumps({"camera": "c", "width": 640, "height": 480, "objects": []})})
    r = api.put("/cameras/c", json={"zones": {"dock": [[10, 10], [600, 10], [600, 400]]}})
    assert r.status_code == 200, r.text


def test_a_404_names_the_failed_cameras_too(api, redis_server):
    """A wrong id's 404 named the valid cameras only: an entry that failed, listed by
    `GET /cameras` as failed and removed by its id, was left out (`cameras: none`)."""
    redis_server.client().hset("apibd:cameras", "bad", '{"source": "api", "camera": {"id": "bad"}}')  # (no url)
    assert [c["state"] for c in api.get("/cameras").json()] == ["failed"]
    r = api.delete("/cameras/Bad")
    assert r.status_code == 404 and r.json()["detail"] == "no camera 'Bad'; cameras: bad", r.text


def test_a_put_that_changes_nothing_is_a_422_naming_the_fields(api):
    """`PUT {}` was answered 200 with the camera's geometry as it was: a client that sent the
    wrong body (a form, fields nested one level too deep) was told it had changed the camera."""
    assert api.post("/cameras", json={"id": "still", "url": "rtsp://cam.local/s"}).status_code == 201
    r = api.put("/cameras/still", json={})
    assert r.status_code == 422 and r.json()["detail"] == [
        "nothing to change: give one or more of zones, lines, anchor, line_margin, zone_margin"], r.text
    assert api.put("/cameras/still", json={"anchor": "center"}).status_code == 200


@pytest.mark.parametrize("path", ["/cameras/{id}/snapshot.jpg", "/cameras/{id}"])
def test_an_unknown_cameras_404_quotes_a_long_id_cut(api, path):
    """A 60 000-character id came back whole in the 404 (an answer as large as the request)."""
    r = api.get(path.format(id="b" * 60_000)) if "snapshot" in path else api.put(path.format(id="b" * 60_000),
                                                                                   json={"anchor": "center"})
    assert r.status_code == 404 and len(r.content) < 1000, (r.status_code, len(r.content))
    assert "'" + "b" * 80 + "…'" in r.text, r.text[:300]
