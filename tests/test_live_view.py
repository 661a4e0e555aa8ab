"""The live view and privacy blur, on real components.

Graph level (the pipeline-level drawing and blurring tests are in test_view.py): Ray Serve runs the graph on the shared clips (file
cameras, looping) plus a camera nobody serves; headless Chromium loads the page; MJPEG parts
decode; a snapshot is blurred; bad input gets 404 / 503; a stalled MJPEG socket does not slow the
camera. ``PERCEPT_SAVE_SCREENSHOT=1`` also writes the page's screenshot to docs/live-view.png."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import parse_config
from pipeline.streams import StreamKeys, camera_states, parse_entry_id

from .conftest import DETECTOR, REPO, VIDEOS
from .http import get as _get
from .waiting import hold, wait_for

pytestmark = pytest.mark.integration
PREFIX = "lvtest"
KEYS = StreamKeys(PREFIX)
from .view_frames import VIEW_WIDTH, border_band, clip_frame, decode, faces


@pytest.fixture(scope="module")
def live(ray_session, session_redis, models_dir, videos):
    from ray import serve

    from deployments.graph import build_app
    from pipeline.redis_server import free_port

    config = parse_config({
        "redis": {"url": session_redis.url, "stream_prefix": PREFIX},
        "cameras": [
            {"id": "crowd", "url": str(videos / "people.mp4"), "fps": 3, "loop": True},
            {"id": "traffic", "url": str(videos / "traffic.mp4"), "fps": 3, "loop": True,
             "zones": {"corner": [[0, 0], [0.25, 0], [0.25, 0.2], [0, 0.2]]}, "lines": {"gate": [[0.6, 0.05], [0.9, 0.05]]}},
            {"id": "dead", "url": f"rtsp://127.0.0.1:{free_port()}/nothing", "fps": 3, "open_timeout_s": 2},
        ],
        "detector": {"weights": DETECTOR, "num_cpus": 1, "threads": 2, "batch": {"max_size": 4, "wait_ms": 20}},
        "view": {"fps": 5, "width": VIEW_WIDTH, "stream_max_s": 15},
        "models_dir": models_dir,
    }, env={})
    serve.run(build_app(config), name="percept-live", route_prefix="/lv", logging_config={"enable_access_log": False})
    client = session_redis.client()
    wait_for(lambda: all(client.xlen(KEYS.detections(c)) >= 5 for c in ("crowd", "traffic")), 240,
             "both file cameras publishing")
    wait_for(lambda: camera_states(client, KEYS, ["dead"])["dead"].get("state") == "reconnecting", 60,
             "the camera nobody serves reconnecting")
    yield ray_session.serve_http_url + "/lv", client
    serve.delete("percept-live")


def test_nothing_is_encoded_before_anyone_watches(live):
    _, client = live
    assert not any(client.exists(KEYS.view_jpeg(c), KEYS.view_want(c)) for c in ("crowd", "traffic", "dead"))


def test_unknown_camera_is_404_listing_the_cameras(live):
    api, _ = live
    for path in ("/cameras/nope/snapshot.jpg", "/cameras/nope/live"):
        code, _, body = _get(api + path)
        assert code == 404, (path, code, body)
        detail = json.loads(body)["detail"]
        assert detail["message"] == "no camera 'nope'" and detail["cameras"] == ["crowd", "dead", "traffic"]


def test_reconnecting_camera_snapshot_is_503_with_retry_after(live):
    api, _ = live
    for path in ("/cameras/dead/snapshot.jpg", "/cameras/dead/live"):
        code, headers, body = _get(api + path)
        assert code == 503 and int(headers["Retry-After"]) >= 1, (path, code, headers)
        detail = json.loads(body)["detail"]
        assert detail["state"] == "reconnecting" and "refused" in detail["last_error"], detail


def _snapshot(api: str, camera: str) -> tuple[np.ndarray, int]:
    code, headers, body = _get(f"{api}/cameras/{camera}/snapshot.jpg")
    assert code == 200 and headers["Content-Type"] == "image/jpeg", (code, headers, body[:200])
    seq = int(re.search(r"seq=(\d+)", headers["X-Percept-Frame"]).group(1))
    return decode(body), seq


def _entry(client, camera: str, seq: int) -> dict:
    for entry_id, fields in client.xrevrange(KEYS.detections(camera), count=200):
        if parse_entry_id(entry_id)[1] == seq:
            return json.loads(fields[b"json"])
    pytest.fail(f"{camera}: no stream entry with seq {seq}")


def _raw_frame(name: str, pts: float, size: tuple[int, int]) -> np.ndarray:
    """The clip's frame at ``pts`` (looping: pts keep growing across loops), at ``size``."""
    cap = cv2.VideoCapture(str(VIDEOS / name))
    fps, count = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    index = int(round((pts % (count / fps)) * fps)) % count
    return cv2.resize(clip_frame(name, index), size, interpolation=cv2.INTER_AREA)


def test_snapshot_draws_boxes_on_the_frame(live):
    api, client = live

    def with_cars():
        image, seq = _snapshot(api, "traffic")
        payload = _entry(client, "traffic", seq)
        return (image, payload) if any(o["category"] == "vehicle" for o in payload["objects"]) else None

    image, payload = wait_for(with_cars, 60, "a traffic snapshot with a car in it")
    assert image.shape[1] == VIEW_WIDTH  # traffic.mp4 is 640 wide: scaled to view.width
    raw = _raw_frame("traffic.mp4", payload["pts"], (image.shape[1], image.shape[0]))
    diff = np.abs(image.astype(int) - raw.astype(int)).sum(axis=2)
    car = next(o for o in payload["objects"] if o["category"] == "vehicle")
    box = np.array(car["bbox"]) * image.shape[1] / payload["width"]
    on_box = diff[border_band(image.shape, box, top=False)].mean()  # the sides and bottom: no label there
    assert on_box > 3 * max(np.median(diff), 5), f"box outline differs by {on_box:.0f}, the frame by {np.median(diff):.0f}"


def test_crowd_snapshot_has_no_face_yunet_finds(live):
    api, client = live
    image, seq = _snapshot(api, "crowd")
    assert image.shape[1] == VIEW_WIDTH
    raw = _raw_frame("people.mp4", _entry(client, "crowd", seq)["pts"], (image.shape[1], image.shape[0]))
    assert faces(image) == 0, "a face is left unblurred in the snapshot"
    assert faces(raw) >= 1, "the raw frame has faces (else this test proves nothing)"


def _mjpeg_parts(api: str, camera: str, n: int, timeout: float = 60) -> list[bytes]:
    resp = urllib.request.urlopen(f"{api}/cameras/{camera}/live", timeout=timeout)
    try:
        assert resp.status == 200
        ctype = resp.headers["Content-Type"]
        assert ctype.startswith("multipart/x-mixed-replace"), ctype
        boundary = b"--" + ctype.split("boundary=")[1].encode()
        buf, parts, deadline = b"", [], time.monotonic() + timeout
        while len(parts) < n and time.monotonic() < deadline:
            buf += resp.read1(65536)
            while True:
                start = buf.find(boundary)
                head_end = buf.find(b"\r\n\r\n", start)
                if start < 0 or head_end < 0:
                    break
                length = int(re.search(rb"Content-Length: (\d+)", buf[start:head_end]).group(1))
                if len(buf) < head_end + 4 + length:
                    break
                parts.append(buf[head_end + 4:head_end + 4 + length])
                buf = buf[head_end + 4 + length:]
        return parts
    finally:
        resp.close()


def test_mjpeg_parts_decode_at_the_configured_width(live):
    api, _ = live
    parts = _mjpeg_parts(api, "crowd", 5)
    assert len(parts) >= 5, f"only {len(parts)} parts"
    images = [decode(p) for p in parts]
    assert all(im.shape[:2] == (288, VIEW_WIDTH) for im in images), [im.shape for im in images]
    seqs = [int(re.search(rb"seq=(\d+)", p[:200]).group(1)) for p in parts]
    assert seqs == sorted(set(seqs)), f"parts repeat or go back: {seqs}"


def _published_fps(client, camera: str, seconds: float) -> float:
    start = client.xlen(KEYS.detections(camera))
    t0 = time.monotonic()
    hold(seconds, "a window to count the frames the camera publishes")
    return (client.xlen(KEYS.detections(camera)) - start) / (time.monotonic() - t0)


def test_a_stalled_mjpeg_socket_does_not_slow_the_camera(live):
    api, client = live
    host, port = re.match(r"http://([^:/]+):(\d+)", api).groups()
    baseline = _published_fps(client, "crowd", 8)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    try:
        sock.sendall(f"GET /lv/cameras/crowd/live HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())  # and never read
        wait_for(lambda: json.loads(_get(api + "/view")[2])["streams"] >= 1, 30, "the stalled stream running")
        stalled = _published_fps(client, "crowd", 8)
        # (a camera blocked by the viewer stops: 0 fps; half its rate leaves room for a loaded machine)
        assert stalled >= 0.5 * baseline, f"camera at {stalled:.2f} fps with a stalled viewer, {baseline:.2f} before"
        # the API answers (within the request's timeout), and another viewer gets frames, while the
        # stalled one is connected
        assert _get(api + "/cameras", timeout=10)[0] == 200
        assert len(_mjpeg_parts(api, "crowd", 2)) >= 2
        # the stalled response is ended (view.stream_max_s 15) although its socket never read
        wait_for(lambda: json.loads(_get(api + "/view")[2])["streams"] == 0, 40, "the stalled stream dropped")
    finally:
        sock.close()


# --- the page in a real browser -----------------------------------------------------------------

class Chromium:
    """Headless Chromium driven over the DevTools protocol (a websocket, one page)."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000):
        from websockets.sync.client import connect

        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            pytest.fail("chromium is not installed (scripts/install-system-deps.sh --test installs it)")
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        browser_ws = None
        deadline = time.monotonic() + 60
        while browser_ws is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                pytest.fail(f"chromium exited with {self.proc.returncode}")
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            browser_ws = m.group(1) if m else None
        assert browser_ws, "chromium did not open its DevTools port"
        port = re.search(r":(\d+)/", browser_ws).group(1)
        pages = wait_for(lambda: [t for t in json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{port}/json/list", timeout=5).read()) if t["type"] == "page"], 30, "a chromium page")
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self._id = 0
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self._id:
                assert "error" not in msg, (method, msg["error"])
                return msg["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def screenshot(self) -> np.ndarray:
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


TILES_JS = """JSON.stringify([...document.querySelectorAll('.tile')].map(t => {
  const img = t.querySelector('img'), r = img.getBoundingClientRect();
  return {id: t.dataset.camera, state: t.querySelector('.state').textContent, frames: +t.dataset.frames,
          showing: t.dataset.showing || '',
          frame: t.dataset.frame || '', width: img.naturalWidth, overlay: t.querySelector('.overlay').innerText,
          visibleOverlay: getComputedStyle(t.querySelector('.overlay')).display !== 'none',
          stats: t.querySelector('.stats').innerText,
          box: [Math.round(r.left), Math.round(r.top), Math.round(r.right), Math.round(r.bottom)]};
}))"""


STATE_LOOK_JS = """(() => { const t = document.querySelector('.tile[data-camera="traffic"]');
  t.dataset.state = '%s';
  return getComputedStyle(t.querySelector('.overlay')).display + '|' + getComputedStyle(t.querySelector('img')).filter;
})()"""


BLOB_COUNTER_JS = """window.__blobs = {created: 0, revoked: 0};
const _create = URL.createObjectURL, _revoke = URL.revokeObjectURL;
URL.createObjectURL = (b) => { window.__blobs.created++; return _create(b); };
URL.revokeObjectURL = (u) => { window.__blobs.revoked++; return _revoke(u); };"""


HIDDEN_JS = """Object.defineProperty(document, 'hidden', {configurable: true, get: () => %s});
document.dispatchEvent(new Event('visibilitychange')); true"""


def test_the_page_in_headless_chromium(live, tmp_path):
    api, client = live
    browser = Chromium(tmp_path / "profile")
    try:
        browser.call("Page.enable")
        browser.call("Page.addScriptToEvaluateOnNewDocument", source=BLOB_COUNTER_JS)
        browser.call("Page.navigate", url=api + "/")

        def tiles():
            return {t["id"]: t for t in json.loads(browser.js(TILES_JS) or "[]")}

        def ready():
            t = tiles()
            return t if (set(t) == {"crowd", "traffic", "dead"}
                         and all(t[c]["width"] == VIEW_WIDTH if c == "crowd" else t[c]["width"] > 0
                                 for c in ("crowd", "traffic"))
                         # an image's size is known before its load event, when the page shows it
                         and all(t[c]["showing"] == "image" and t[c]["state"] == "online" for c in ("crowd", "traffic"))
                         and t["dead"]["state"] == "reconnecting") else None

        first = wait_for(ready, 90, "every tile showing an image, the dead camera reconnecting")
        shot1 = browser.screenshot()
        shown = tiles()  # the frames shown in shot1 are these or older ones
        assert browser.js("document.querySelectorAll('.tile').length") == 3  # one tile per camera
        states = {c: s["state"] for c, s in camera_states(client, KEYS, ["crowd", "traffic", "dead"]).items()}
        assert {c: t["state"] for c, t in first.items()} == states
        assert first["dead"]["visibleOverlay"] and "reconnecting" in first["dead"]["overlay"]
        assert first["dead"]["width"] == 0, "a reconnecting camera shows no image"
        for cam in ("crowd", "traffic"):
            assert "fps" in first[cam]["stats"] and "objects" in first[cam]["stats"], first[cam]["stats"]
            assert not first[cam]["visibleOverlay"], first[cam]

        def newer():
            t = tiles()
            return t if all(t[c]["frame"] not in (first[c]["frame"], shown[c]["frame"]) for c in ("crowd", "traffic")) else None

        later = wait_for(newer, 60, "a newer frame in each live tile")
        shot2 = browser.screenshot()
        for cam in ("crowd", "traffic"):
            x1, y1, x2, y2 = later[cam]["box"]
            a, b = shot1[y1:y2, x1:x2].astype(int), shot2[y1:y2, x1:x2].astype(int)
            assert a.size and np.abs(a - b).mean() > 1.0, f"tile {cam} did not change between screenshots"
        # each image replaces the last: its blob URL is freed (no memory kept per frame shown)
        wait_for(lambda: sum(t["frames"] for t in tiles().values()) >= 8, 60, "eight images shown in all")
        live_urls = browser.js("window.__blobs.created - window.__blobs.revoked")
        assert browser.js("window.__blobs.created") >= 8 and live_urls <= 4, live_urls  # 2 tiles: shown + in flight
        # a tile whose camera is not online (any state) greys its last image and shows its state
        # over it: read in the same script that sets the state, before the page's next poll resets it
        looks = {state: browser.js(STATE_LOOK_JS % state) for state in
                 ("online", "connecting", "reconnecting", "stopped", "failed", "pending")}
        assert looks.pop("online") == "none|none", looks
        assert all(look.startswith("flex|grayscale(1)") for look in looks.values()), looks
        # the page hidden (another tab): it asks for nothing, so the decoders stop drawing once
        # their watch runs out; shown again, the images come back
        browser.js(HIDDEN_JS % "true")
        wait_for(lambda: not any(client.exists(KEYS.view_want(c)) for c in ("crowd", "traffic")), 60,
                 "the hidden page's cameras no longer watched")
        hidden_frames = {c: t["frames"] for c, t in tiles().items()}
        browser.js(HIDDEN_JS % "false")
        wait_for(lambda: all(tiles()[c]["frames"] > hidden_frames[c] for c in ("crowd", "traffic")), 60,
                 "images again once the page is shown")
        # a tile scrolled off screen asks for nothing: its camera is no longer drawn, while the one
        # on screen still is (a narrow, short window: one tile a row, the second below the fold)
        browser.call("Emulation.setDeviceMetricsOverride", width=420, height=320, deviceScaleFactor=1, mobile=False)
        boxes = wait_for(lambda: (t := tiles()) and t["traffic"]["box"][1] != t["crowd"]["box"][1] and t, 30,
                         "the tiles in one column")
        on, off = sorted(("crowd", "traffic"), key=lambda c: boxes[c]["box"][1])
        assert boxes[on]["box"][1] < 320 <= boxes[off]["box"][1], boxes
        wait_for(lambda: not client.exists(KEYS.view_want(off)), 60, f"the off-screen camera {off} no longer watched")
        on_frames = tiles()[on]["frames"]
        wait_for(lambda: tiles()[on]["frames"] > on_frames + 2, 60, f"images still coming for the on-screen {on}")
        assert client.exists(KEYS.view_want(on)) and not client.exists(KEYS.view_want(off))
        cv2.imwrite(str(tmp_path / "live-view.png"), shot2)
        if os.environ.get("PERCEPT_SAVE_SCREENSHOT"):
            (REPO / "docs").mkdir(exist_ok=True)
            bottom = int(browser.js("document.querySelector('main').getBoundingClientRect().bottom"))
            cv2.imwrite(str(REPO / "docs" / "live-view.png"), shot2[:bottom])
    finally:
        browser.close()
