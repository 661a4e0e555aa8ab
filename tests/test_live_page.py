"""The live view page (`deployments/static/index.html`) in headless Chromium, served over real
HTTP by the camera API's FastAPI app (uvicorn in a thread; Serve's replica context stands in
for the proxy) on a real redis-server, the camera states written as a decoder writes them."""

from __future__ import annotations

import functools
import json
import threading

import pytest

from pipeline.redis_server import free_port
from pipeline.streams import StreamKeys

from .test_api_input import api_app
from .test_live_view import Chromium
from .waiting import wait_for

KEYS = StreamKeys("livepage")
OVERLAY_JS = """(() => { const t = document.querySelector('.tile[data-camera="gate"]');
  return t ? JSON.stringify({state: t.querySelector('.state').textContent, overlay: t.querySelector('.overlay').innerText,
                             error: t.querySelector('.error').textContent,
                             visible: getComputedStyle(t.querySelector('.overlay')).display !== 'none'}) : null; })()"""


class PageServer(str):
    """The page's base URL; `stop` ends the server (the API gone)."""

    def __new__(cls, url: str, server):
        out = super().__new__(cls, url)
        out.server = server
        return out

    def stop(self) -> None:
        self.server.should_exit = True
        wait_for(lambda: not _answers(self), 30, "the API gone")


def _answers(url: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(url + "/cameras", timeout=2)
        return True
    except OSError:
        return False


@pytest.fixture
def page_server(redis_server, monkeypatch):
    import uvicorn

    server = None
    with api_app(redis_server.url, KEYS.prefix, monkeypatch) as app:
        try:
            server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
            threading.Thread(target=server.run, daemon=True).start()
            wait_for(lambda: server.started, 30, "uvicorn serving the API")
            yield PageServer(f"http://127.0.0.1:{server.config.port}", server)
        finally:
            if server is not None:
                server.should_exit = True


def test_an_online_tile_with_no_image_says_why_not_a_stale_state(page_server, redis_server, tmp_path):
    """A camera connecting, then online with no view frame (none drawn yet, or privacy failing
    closed): the tile kept its big "connecting" over an "online" badge, and never said why it
    had no image. Now it shows what the view answered; and, while Redis refuses writes, that its
    results are held (the hash still says online)."""
    import urllib.request

    client = redis_server.client()
    body = json.dumps({"id": "gate", "url": "rtsp://cam.local/s"}).encode()
    request = urllib.request.Request(page_server + "/cameras", body, {"Content-Type": "application/json"})
    assert urllib.request.urlopen(request, timeout=30).status == 201
    client.hset(KEYS.camera("gate"), mapping={"state": "connecting"})
    browser = Chromium(tmp_path / "profile")
    try:
        browser.call("Page.navigate", url=page_server + "/")

        def tile(state):
            found = json.loads(browser.js(OVERLAY_JS) or "null")
            return found if found and found["state"] == state else None

        assert "connecting" in wait_for(lambda: tile("connecting"), 60, "the tile connecting")["overlay"]
        client.hset(KEYS.camera("gate"), mapping={"state": "online"})
        shown = wait_for(lambda: (lambda t: t if t and "no view frame yet" in t["overlay"] else None)(tile("online")),
                         60, "the online tile saying why it has no image")
        assert shown["visible"] and "connecting" not in shown["overlay"] and shown["error"] == "", shown
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1")  # (Redis refusing writes: the hash still says online)
        try:
            held = wait_for(lambda: (lambda t: t if t and "redis refuses writes (OOM " in t["error"] else None)(tile("online")),
                            60, "the online tile saying its results are held")
        finally:
            client.config_set("maxmemory", "0")
        assert held["state"] == "online", held
    finally:
        browser.close()


TILE_JS = """(() => { const t = document.querySelector('.tile[data-camera="door"]'); if (!t) return null;
  return JSON.stringify({state: t.querySelector('.state').textContent, showing: t.dataset.showing,
                         frames: +t.dataset.frames, overlay: t.querySelector('.overlay').innerText,
                         visible: getComputedStyle(t.querySelector('.overlay')).display !== 'none',
                         filter: getComputedStyle(t.querySelector('img')).filter}); })()"""


def door_tile(browser, check=lambda tile: True):
    """The "door" tile as `TILE_JS` reads it, when ``check`` holds of it (else None)."""
    found = json.loads(browser.js(TILE_JS) or "null")
    return found if found and check(found) else None


def test_a_tile_whose_api_stops_answering_is_greyed_and_says_so(page_server, redis_server, tmp_path):
    """The API (or the Redis behind it) gone, the page kept each tile's last image in full colour
    under a green "online", only the summary line saying anything: a frozen frame that looked
    live. Now the tile is greyed, its state `unknown`, and says why."""
    import urllib.request

    from pipeline.view import encode_jpeg

    client = redis_server.client()
    body = json.dumps({"id": "door", "url": "rtsp://cam.local/s"}).encode()
    request = urllib.request.Request(page_server + "/cameras", body, {"Content-Type": "application/json"})
    assert urllib.request.urlopen(request, timeout=30).status == 201
    client.hset(KEYS.camera("door"), mapping={"state": "online"})
    image = encode_jpeg(__import__("numpy").full((48, 64, 3), 200, "uint8"), comment="percept camera=door seq=1 ts=1.000")
    client.set(KEYS.view_jpeg("door"), image, px=600_000)
    browser = Chromium(tmp_path / "profile")
    try:
        browser.call("Page.navigate", url=page_server + "/")
        tile = functools.partial(door_tile, browser)
        live = wait_for(lambda: tile(lambda t: t["state"] == "online" and t["frames"] >= 1), 60, "the tile's image")
        assert live["filter"] == "none" and not live["visible"], live
        page_server.stop()
        gone = wait_for(lambda: tile(lambda t: t["state"] == "unknown"), 30, "the tile to say its state is unknown")
        assert "grayscale" in gone["filter"] and gone["visible"] and gone["showing"] == "image", gone
        assert gone["overlay"] == "no answer from the API (Failed to fetch)", gone
    finally:
        browser.close()
        client.delete(KEYS.camera("door"), KEYS.view_jpeg("door"))
