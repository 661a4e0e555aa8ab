"""The live view page (`deployments/static/index.html`) in headless Chromium, served over real
HTTP by the camera API's FastAPI app (uvicorn in a thread; Serve's replica context stands in
for the proxy) on a real redis-server, the camera states written as a decoder writes them."""

from __future__ import annotations

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
                             visible: getComputedStyle(t.querySelector('.overlay')).display !== 'none'}) : null; })()"""


@pytest.fixture
def page_server(redis_server, monkeypatch):
    import uvicorn

    server = None
    with api_app(redis_server.url, KEYS.prefix, monkeypatch) as app:
        try:
            server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
            threading.Thread(target=server.run, daemon=True).start()
            wait_for(lambda: server.started, 30, "uvicorn serving the API")
            yield f"http://127.0.0.1:{server.config.port}"
        finally:
            if server is not None:
                server.should_exit = True


def test_an_online_tile_with_no_image_says_why_not_a_stale_state(page_server, redis_server, tmp_path):
    """A camera connecting, then online with no view frame (none drawn yet, or privacy failing
    closed): the tile kept its big "connecting" over an "online" badge, and never said why it
    had no image. Now it shows what the view answered."""
    import urllib.request

    client = redis_server.client()
    body = json.dumps({"id": "gate", "url": "rtsp://cam.local/s"}).encode()
    request = urllib.request.Request(page_server + "/cameras", body, {"Content-Type": "application/json"})
    assert urllib.request.urlopen(request, timeout=30).status == 201
    client.hset(KEYS.camera("gate"), mapping={"state": "connecting", "updated_at": "0"})
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
        assert shown["visible"] and "connecting" not in shown["overlay"], shown
    finally:
        browser.close()
