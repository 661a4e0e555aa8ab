"""An RTSP camera that answers every request (OPTIONS, DESCRIBE with its SDP, SETUP, PLAY) but
sends no video — an encoder hung behind a live RTSP server — passes `camera_probe`'s question,
and FFmpeg's open then waits for video for the whole ``open_timeout_s``. OpenCV opens one input at a
time in a process: each reconnect of such a camera held every other camera's (re)connect in its
decoder replica, and a looping file's rewind, for that long. After one such open it is opened
with PyAV, outside that lock. A real RTSP conversation on a real socket with FFmpeg; FFmpeg's
open is watched, not replaced."""

from __future__ import annotations

import logging
import re
import socket
import threading

import pytest

import pipeline.capture as capture
from pipeline.sources import SourceError

from .waiting import wait_for

SDP = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=mute\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
       "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\na=control:stream=0\r\n")


def _answer(request: str) -> bytes:
    """The 200 a camera gives to each RTSP request, with an H.264 SDP for DESCRIBE."""
    method, target = (request.split(" ", 2) + ["", ""])[:2]
    cseq = re.search(r"CSeq:\s*(\d+)", request, re.I)
    lines, body = ["RTSP/1.0 200 OK", f"CSeq: {cseq.group(1) if cseq else 0}"], ""
    if method == "OPTIONS":
        lines.append("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN")
    elif method == "DESCRIBE":
        body = SDP
        lines += ["Content-Type: application/sdp", f"Content-Base: {target}/", f"Content-Length: {len(body)}"]
    elif method == "SETUP":
        lines += ["Session: 12345678;timeout=60", "Transport: RTP/AVP/TCP;unicast;interleaved=0-1"]
    elif method == "PLAY":
        lines.append("Session: 12345678")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


@pytest.fixture
def mute_camera():
    """(url, requests): an RTSP server that answers every request and never sends a packet."""
    server = socket.create_server(("127.0.0.1", 0))
    asked: list[str] = []

    def talk(conn: socket.socket) -> None:
        pending = b""
        with conn:
            while data := conn.recv(4096):
                pending += data
                while b"\r\n\r\n" in pending:
                    head, pending = pending.split(b"\r\n\r\n", 1)
                    asked.append(head.decode(errors="replace").split(" ", 1)[0])
                    conn.sendall(_answer(head.decode(errors="replace")))

    _accepting(server, lambda conn: threading.Thread(target=lambda: _quietly(talk, conn), daemon=True).start())
    yield f"rtsp://127.0.0.1:{server.getsockname()[1]}/live", asked
    server.close()


def _accepting(server: socket.socket, each) -> None:
    """``each(conn)`` for every connection ``server`` takes, in a thread, until it is closed."""
    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed at the test's end
                return
            each(conn)

    threading.Thread(target=accept, daemon=True).start()


def _quietly(talk, conn) -> None:
    try:
        talk(conn)
    except OSError:  # FFmpeg hung up
        pass


def _open(url: str, timeout: float, returned: threading.Event | None = None) -> BaseException | None:
    """One open of the camera (``returned`` set when it returns) and one read; what failed
    (None: a frame came)."""
    try:
        cap = capture.open_capture("mute", url, open_timeout_s=timeout, read_timeout_s=1.0)
    except BaseException as exc:  # noqa: BLE001 (the test reads it)
        return exc
    finally:
        if returned is not None:
            returned.set()
    try:
        return None if cap.grab() else RuntimeError("no frame")
    finally:
        cap.release()


def test_a_camera_that_answers_but_sends_no_video_holds_the_other_cameras_opens_once_at_most(
        videos, monkeypatch, mute_camera, caplog):
    url, asked = mute_camera
    opened, real = [], capture._ffmpeg_open
    monkeypatch.setattr(capture, "_ffmpeg_open", lambda target, *params: (opened.append(target), real(target, *params))[1])
    caplog.set_level(logging.WARNING, logger="percept.capture")
    first = _open(url, 2.0)  # OpenCV's open waits its whole timeout for video
    assert first is not None and "DESCRIBE" in asked and "PLAY" in asked, (first, asked)
    assert opened == [url]
    said = [r.getMessage() for r in caplog.records if "sent no video" in r.getMessage()]
    assert said == ["camera mute: answered but sent no video for 2 s (its open timeout): opened with PyAV until "
                    "video comes, so that its opens do not hold the other cameras' (OpenCV opens one at a time)"], said

    failed: list[BaseException | None] = []
    returned = threading.Event()
    reconnect = threading.Thread(target=lambda: failed.append(_open(url, 8.0, returned)), daemon=True)
    reconnect.start()
    wait_for(lambda: asked.count("PLAY") >= 2, 30, "the mute camera's second open under way")
    cap = capture.open_capture("file", str(videos / "vtest.avi"))  # OpenCV's open, as every file camera's
    try:
        assert not returned.is_set(), "the file camera's open waited until the mute camera's open gave up"
        assert cap.isOpened() and cap.read()[0]
    finally:
        cap.release()
    wait_for(lambda: not reconnect.is_alive(), 60, "the mute camera's reconnect given up")
    assert failed and failed[0] is not None, "the mute camera gave a frame"
    assert not isinstance(failed[0], SourceError) or failed[0].retryable, failed
    assert opened == [url, str(videos / "vtest.avi")], "the mute camera was opened by OpenCV again"


def test_a_camera_that_sends_video_stays_with_opencv_and_one_that_sends_again_goes_back_to_it(
        rtsp_cameras, monkeypatch):
    """A live camera (the GStreamer server) opens within its timeout: every reconnect stays with
    OpenCV (its ``decode: all`` path: PyAV's costs more CPU on RTSP). One that was mute (moved to
    PyAV) and sends video again goes back to OpenCV at its next reconnect."""
    opened, real = [], capture._ffmpeg_open
    monkeypatch.setattr(capture, "_ffmpeg_open", lambda target, *params: (opened.append(target), real(target, *params))[1])
    url = rtsp_cameras.url("walk")
    for _ in range(2):
        assert _open(url, 10.0) is None
    assert opened == [url, url]
    monkeypatch.setattr(capture, "_opened_with_pyav", {("mute", url)})  # as after a mute open
    assert _open(url, 10.0) is None  # PyAV's, and video came
    assert opened == [url, url] and capture._opened_with_pyav == set()
    assert _open(url, 10.0) is None
    assert opened == [url, url, url]


def test_waiting_for_another_cameras_open_is_not_taken_for_a_mute_camera(rtsp_cameras, monkeypatch):
    """The time an open waits for OpenCV's lock (another camera's open under way) is not its own:
    a live camera whose open waited that long was moved to PyAV."""
    monkeypatch.setattr(capture, "_opened_with_pyav", set())
    url = rtsp_cameras.url("walk")
    holding, release = threading.Event(), threading.Event()

    def another_cameras_open() -> None:
        with capture._OPEN_LOCK:
            holding.set()
            release.wait(30)

    threading.Thread(target=another_cameras_open, daemon=True).start()
    assert holding.wait(30)
    threading.Timer(3.0, release.set).start()  # (longer than the open timeout below)
    assert _open(url, 2.0) is None
    assert capture._opened_with_pyav == set()


def test_a_mute_camera_opened_with_pyav_is_said_as_opencvs_open_says_it(monkeypatch):
    """Opened with PyAV after a mute open, an HTTP camera that answers 200 and sends nothing was
    said with FFmpeg's own words ("Immediate exit requested"), not why (as its first open was)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def answer_and_hold(conn: socket.socket) -> None:
        held.append(conn)
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")

    _accepting(server, answer_and_hold)
    url = f"http://127.0.0.1:{server.getsockname()[1]}/video.mjpg"
    monkeypatch.setattr(capture, "_opened_with_pyav", {("mute", url)})  # as after a mute open
    try:
        with pytest.raises(SourceError) as failed:
            capture.open_capture("mute", url, open_timeout_s=2.0, read_timeout_s=1.0)
        assert "answered 'HTTP/1.0 200 OK' but no video could be decoded" in str(failed.value), failed.value
    finally:
        server.close()
        for conn in held:
            conn.close()
