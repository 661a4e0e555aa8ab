"""What a camera added through the API may read (`config_urls.api_source_problem`): a stream the
service connects to. A path, ``file:``, ``device:N`` or ``unix:`` read the server's own files,
devices and sockets (a snapshot of any video on the server, whether a file exists); a listening
URL (``tcp://0.0.0.0:9000?listen=1``, a unicast ``udp://``) took video from anyone who reached
the port, on every interface whatever ``http.host`` says. ``security.api_local_sources: true``
lets them through; the config file's cameras are the operator's and are not checked."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from pipeline.config import parse_config
from pipeline.config_urls import api_source_problem

from .conftest import VIDEOS
from .test_api_input import api_app

CONNECTS = ["rtsp://cam/s", "rtsp://x:${CAM_X_PASSWORD}@10.0.0.9/s", "rtsps://cam:322/s", "http://cam/v.mjpg",
            "https://[2001:db8::1]:8443/x", "rtmp://cam/live/x", "srt://cam:9000", "srt://cam:9000?mode=caller",
            "tcp://cam:9000", "udp://239.0.0.1:1234", "rtp://[ff15::1]:5004", "tcp://cam:9000?listen=0",
            "http://cam/video.cgi?mode=server", "rtsp://cam/x?listen=1"]  # (http and rtsp take no such option from the URL)
LOCAL = ["../../../../etc/passwd", "/work/clip.mp4", "file:///etc/shadow", "file:clip.mp4", "device:0",
         "unix:/run/cam.sock", "zmq:tcp://cam:5555"]
LISTENS = ["tcp://0.0.0.0:9000?listen=1", "tcp://cam:9000?listen", "udp://0.0.0.0:9000", "udp://@:1234",
           "udp://10.0.0.5:1234", "rtp://10.0.0.5:5004", "srt://:9000?mode=listener", "srt://cam:9000?MODE=Rendezvous",
           "tcp://[::]:9000", "rist://@:1234",
           "tcp://10.0.0.5:9000#?listen=1", "srt://10.0.0.5:9000#?mode=listener", "tls://cam:9000/?a=1#&listen=1"]


def test_which_urls_an_api_camera_may_read():
    for url in CONNECTS:
        assert api_source_problem(url) is None, url
    for url in LOCAL:
        assert "is a network stream the service connects to" in (api_source_problem(url) or ""), url
    for url in LISTENS:
        assert "this URL listens for whoever sends to a port of the server" in (api_source_problem(url) or ""), url
    for url in CONNECTS + LOCAL + LISTENS:  # (a config file's cameras: any of them)
        assert parse_config({"cameras": [{"id": "c", "url": url}]}, env={"CAM_X_PASSWORD": "pw"}).cameras


def test_the_api_refuses_local_and_listening_sources_unless_the_config_allows_them(redis_server, monkeypatch):
    clip = str(VIDEOS / "traffic.mp4")
    with api_app(redis_server.url, "apisrc", monkeypatch) as app, TestClient(app) as api:
        for url in (clip, "device:0", "tcp://0.0.0.0:27440?listen=1", "udp://0.0.0.0:27441"):
            r = api.post("/cameras", json={"id": "x", "url": url})
            assert r.status_code == 422, (url, r.text)
            [line] = r.json()["detail"]
            assert line.startswith("cameras[x].url: a camera added through the API ") and \
                "security.api_local_sources: true" in line, line
        assert redis_server.client().hgetall("apisrc:cameras") == {}
        assert api.post("/cameras", json={"id": "x", "url": "rtsp://127.0.0.1:8554/walk"}).status_code == 201
    with api_app(redis_server.url, "apisrc2", monkeypatch, security={"api_local_sources": True}) as app, \
            TestClient(app) as api:
        assert api.post("/cameras", json={"id": "clip", "url": clip}).status_code == 201


@pytest.mark.parametrize("url", ["file:///etc/shadow", "udp://@:1234"])
def test_the_refusal_quotes_nothing_of_the_url(url):
    assert url.split("//")[-1] not in api_source_problem(url)


def test_the_api_adds_at_most_api_max_cameras_and_the_files_cameras_do_not_count(redis_server, monkeypatch):
    """Each camera takes a decoder's reader and memory: an API client in a loop is stopped at
    ``security.api_max_cameras`` with 409 naming it. The count is taken in the script that adds
    (POSTs at once cannot all pass); a POST retried for a camera already there still answers 201."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.registry import CameraRegistry, TooManyCameras
    from pipeline.streams import StreamKeys

    registry = CameraRegistry(redis_server.client(), StreamKeys("apimax"))
    assert registry.seed([parse_config({"cameras": [{"id": "file", "url": "rtsp://cam/f"}]}).cameras[0]])
    with api_app(redis_server.url, "apimax", monkeypatch, security={"api_max_cameras": 2}) as app, \
            TestClient(app) as api:
        for cid in ("a", "b"):
            assert api.post("/cameras", json={"id": cid, "url": f"rtsp://cam/{cid}"}).status_code == 201
        r = api.post("/cameras", json={"id": "c", "url": "rtsp://cam/c"})
        assert r.status_code == 409 and "2 cameras added through the API already (security.api_max_cameras)" \
            in r.json()["detail"], r.text
        assert api.post("/cameras", json={"id": "a", "url": "rtsp://cam/a"}).status_code == 201  # (a retry)
        assert api.delete("/cameras/a").status_code == 200
        assert api.post("/cameras", json={"id": "c", "url": "rtsp://cam/c"}).status_code == 201
    assert sorted(registry.ids()) == ["b", "c", "file"]

    def add(cid: str) -> bool:
        try:
            return registry.add(parse_config({"cameras": [{"id": cid, "url": "rtsp://cam/x"}]}).cameras[0], 3)
        except TooManyCameras:
            return False

    with ThreadPoolExecutor(8) as pool:  # one place left, eight at once
        assert sum(pool.map(add, [f"n{i}" for i in range(8)])) == 1
    assert len(registry.ids()) == 4
