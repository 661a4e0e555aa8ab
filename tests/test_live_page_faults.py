"""The live view page (`deployments/static/index.html`) in headless Chromium when the view or the
API misbehaves: a view that stopped answering images, an API that takes connections and never
answers, and cameras with no view frame beside one that has them (real API on redis-server,
as `test_live_page.py`; a stub HTTP server for the API that hangs)."""

from __future__ import annotations

import functools
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from pipeline.redis_server import free_port
from pipeline.view import encode_jpeg

from .test_live_page import KEYS, door_tile, page_server  # noqa: F401 (a fixture)
from .test_live_view import Chromium
from .waiting import wait_for

PAGE = Path(__file__).resolve().parents[1] / "deployments" / "static" / "index.html"


def _add(url: str, camera: str) -> None:
    body = json.dumps({"id": camera, "url": f"rtsp://cam.local/{camera}"}).encode()
    request = urllib.request.Request(url + "/cameras", body, {"Content-Type": "application/json"})
    assert urllib.request.urlopen(request, timeout=30).status == 201


def _jpeg(camera: str, seq: int) -> bytes:
    return encode_jpeg(np.full((48, 64, 3), 50 + seq % 200, np.uint8), comment=f"percept camera={camera} seq={seq} ts={seq}.000")


def test_an_image_whose_view_stopped_is_greyed_and_says_why(page_server, redis_server, tmp_path):
    """The camera online, its view frames stopped (the decoder no longer draws, privacy failing
    closed): every snapshot answered 503, and the tile kept its last image in full colour, no
    word over it, for good."""
    client = redis_server.client()
    _add(page_server, "door")
    client.hset(KEYS.camera("door"), mapping={"state": "online"})
    client.set(KEYS.view_jpeg("door"), _jpeg("door", 1), px=3000)  # the last view frame, gone in 3 s
    browser = Chromium(tmp_path / "profile")
    try:
        browser.call("Page.navigate", url=page_server + "/")
        tile = functools.partial(door_tile, browser)

        live = wait_for(lambda: tile(lambda t: t["frames"] >= 1), 60, "the tile's image")
        assert live["filter"] == "none" and not live["visible"], live
        stale = wait_for(lambda: tile(lambda t: t["showing"] == "stale"), 60, "the image marked no longer live")
        assert stale["state"] == "online" and "grayscale" in stale["filter"] and stale["visible"], stale
        assert "no view frame yet" in stale["overlay"], stale
        client.set(KEYS.view_jpeg("door"), _jpeg("door", 2), px=600_000)  # frames again: live again
        back = wait_for(lambda: tile(lambda t: t["showing"] == "image"), 60, "the tile live again")
        assert back["filter"] == "none" and not back["visible"], back
    finally:
        browser.close()


def test_an_api_that_takes_connections_and_never_answers_is_no_answer(tmp_path):
    """A wedged replica or a proxy queueing requests: the page's fetches had no timeout, so the
    list never failed, and the tile stayed a green `online` with its last image for good."""
    hung = threading.Event()
    page = PAGE.read_text().replace("{{fps}}", "5")
    cameras = [{"id": "door", "url": "rtsp://cam/s", "fps_target": 5, "state": "online", "fps": 5.0, "dropped": 0,
                "lag_s": 0.1, "last_error": None, "objects": {}, "e2e_ms": 40}]

    class Api(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path != "/" and hung.is_set():
                time.sleep(120)  # (the wedged API: the request taken, never answered; no wait of the test's)
                return
            body, kind = ((page.encode(), "text/html") if self.path == "/" else
                          (json.dumps(cameras).encode(), "application/json") if self.path == "/cameras" else
                          (_jpeg("door", 1), "image/jpeg"))
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Api)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser = Chromium(tmp_path / "profile")
    try:
        browser.call("Page.navigate", url=f"http://127.0.0.1:{server.server_port}/")
        wait_for(lambda: door_tile(browser, lambda t: t["frames"] >= 1), 60, "the tile's image")
        hung.set()
        gone = wait_for(lambda: door_tile(browser, lambda t: t["state"] == "unknown"), 30, "the tile's state unknown")
        assert "grayscale" in gone["filter"] and gone["visible"], gone
        assert gone["overlay"] == "no answer from the API (none in 5 s)", gone
    finally:
        browser.close()
        server.shutdown()


def test_cameras_with_no_view_frame_leave_the_others_images_coming(page_server, redis_server, tmp_path):
    """Every tile held a snapshot request, and the API holds one for a camera with no view frame
    until a first frame comes (6 s and more): eight such cameras took the browser's six
    connections to the API, and a camera with frames got 0.1 images a second instead of 5."""
    client = redis_server.client()
    stuck = [f"a{i}" for i in range(8)]
    for camera in [*stuck, "zz"]:
        _add(page_server, camera)
        client.hset(KEYS.camera(camera), mapping={"state": "online", "fps": "5"})
    stop = threading.Event()

    def draw():  # camera zz: a new view frame five times a second, as a watched camera gets
        seq = 0
        while not stop.wait(0.2):  # (the view's rate, not a wait for anything)
            seq += 1
            client.set(KEYS.view_jpeg("zz"), _jpeg("zz", seq), px=5000)

    drawer = threading.Thread(target=draw, daemon=True)
    drawer.start()
    browser = Chromium(tmp_path / "profile", width=3000, height=3000)  # (every tile on screen)
    frames_js = """(() => { const t = document.querySelector('.tile[data-camera="zz"]'); return t ? +t.dataset.frames : 0; })()"""
    try:
        browser.call("Page.navigate", url=page_server + "/")
        first = wait_for(lambda: browser.js(frames_js) or None, 60, "camera zz's first image")
        wait_for(lambda: browser.js(frames_js) >= first + 15, 30, "fifteen more images of camera zz (5 a second)")
    finally:
        stop.set()
        drawer.join(5)
        browser.close()
