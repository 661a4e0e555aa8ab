"""A camera's password in nothing an open that fails writes: its error (the camera hash, the
status stream, the log) and FFmpeg's own log lines (a decoder's stderr, Ray's log files). Real
FFmpeg through OpenCV and PyAV, against servers on loopback."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading

import pytest

from pipeline.capture import open_capture
from pipeline.config import CameraConfig
from pipeline.config_env import resolve_camera
from pipeline.redis_server import free_port
from pipeline.sources import SourceError

from .conftest import REPO

PLAYLIST = b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n" \
           b"#EXT-X-KEY:METHOD=AES-128,URI=\"key.bin\"\n#EXTINF:2.0,\nseg0.ts\n#EXT-X-ENDLIST\n"


@pytest.fixture
def hls_server():
    """A playlist whose key and segments are not there (404): FFmpeg fetches them at URLs it
    makes from the playlist's, its credentials copied in."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            found = self.path.endswith(".m3u8")
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/vnd.apple.mpegurl")
            self.send_header("Content-Length", str(len(PLAYLIST) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(PLAYLIST)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_ffmpegs_log_lines_through_opencv_carry_no_password(hls_server):
    """FFmpeg's HLS demuxer logged ``Unable to open key file http://admin:<password>@…`` through
    OpenCV to stderr: a decoder's stderr is a Ray log file."""
    url = f"http://admin:Hunter2Secret@127.0.0.1:{hls_server}/live.m3u8"
    code = ("import pipeline.capture as c\n"
            f"try:\n    c.open_capture('dock', {url!r}, open_timeout_s=3)\nexcept Exception as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in __import__("os").environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"})
    assert "cannot open http://***@127.0.0.1" in out.stdout, (out.stdout, out.stderr)
    assert "Hunter2Secret" not in out.stdout + out.stderr, out.stderr


@pytest.mark.parametrize("password", ["Summer;2024!", "my secret pw", "it's-hunter2", "Tr0ub'ad\\or", 'it\'s"ok'])
@pytest.mark.parametrize("decode", ["all", "keyframes"])
def test_a_password_with_a_semicolon_space_quote_or_backslash_is_scrubbed_whole(password, decode):
    """The scrubbing patterns stop at a ``;``, a space or a quote: ``pwd=***;2024!``; PyAV's error
    quotes the URL as Python does (``Tr0ub'ad\\\\or``), which no longer matched the secret."""
    port = free_port()  # nothing listens: the open fails
    camera = CameraConfig(id="dock", url=f"rtsps://admin:${{CAM_DOCK_PASSWORD}}@127.0.0.1:{port}/s"
                                         "?pwd=${CAM_DOCK_PASSWORD}")
    resolved = resolve_camera(camera, {"CAM_DOCK_PASSWORD": password})
    with pytest.raises(SourceError) as failed:
        open_capture("dock", resolved.url, decode=decode, open_timeout_s=2, secrets=resolved.secrets)
    message = str(failed.value)
    pieces = [p for p in password.replace(";", " ").replace("'", " ").replace('"', " ").replace("\\", " ").split()
              if len(p) >= 3]
    assert not any(p in message for p in pieces), message


def test_ffmpegs_log_lines_through_pyav_carry_no_password(hls_server):
    """The same through PyAV (``decode: keyframes``), in a process whose PyAV sends FFmpeg's log to
    Python's logging (a PyAV release that does so by default, or a library that turned it on):
    ``Error when loading first segment 'http://admin:<password>@…'``. The open turns it off."""
    url = f"http://admin:Hunter2Secret@127.0.0.1:{hls_server}/live.m3u8"
    code = ("import logging, av.logging\nlogging.basicConfig(level=logging.DEBUG)\n"
            "av.logging.set_level(av.logging.VERBOSE)\nimport pipeline.capture as c\n"
            f"try:\n    c.open_capture('dock', {url!r}, decode='keyframes', open_timeout_s=3)\n"
            "except Exception as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "cannot open http://***@127.0.0.1" in out.stdout, (out.stdout, out.stderr)
    assert "Hunter2Secret" not in out.stdout + out.stderr, out.stderr
