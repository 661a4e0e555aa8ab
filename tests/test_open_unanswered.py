"""A network camera that takes no connection, or an RTSP camera whose server takes it and says
nothing (hung, SIGSTOP), fails before FFmpeg is asked to open it (`camera_probe.camera_unanswered`:
a connection, for RTSP an OPTIONS request, for RTMP the handshake's first bytes; no credentials). OpenCV opens one
input at a time in a process, so before,
such a camera held every other camera's (re)connect in its decoder replica for its whole
``open_timeout_s``, each try. Real sockets; FFmpeg's open is watched, not replaced."""

from __future__ import annotations

import socket
import threading

import pytest

import pipeline.capture as capture
from pipeline.sources import SourceError


@pytest.fixture(params=["rtsp: no connection", "rtsp: no answer", "http: no connection", "rtmp: no connection",
                        "rtmp: no answer"])
def silent_camera(request):
    """(scheme, port): a camera that does not answer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    held = []
    scheme, what = request.param.split(": ")
    if what == "no connection":  # a backlog of 0 held full: the kernel drops further SYNs
        listener.listen(0)
        held.append(socket.create_connection(listener.getsockname()))
    else:  # the kernel takes connections for it; nobody ever reads or answers
        listener.listen(8)
    yield scheme, listener.getsockname()[1]
    for sock in [*held, listener]:
        sock.close()


def test_a_camera_that_does_not_answer_fails_before_ffmpeg_opens_it(silent_camera, monkeypatch):
    scheme, port = silent_camera
    opened, real = [], capture._ffmpeg_open
    monkeypatch.setattr(capture, "_ffmpeg_open", lambda url, *params: (opened.append(url), real(url, *params))[1])
    url = f"{scheme}://admin:S3cret@127.0.0.1:{port}/live"
    with pytest.raises(SourceError) as caught:
        capture.open_capture("dead", url, open_timeout_s=1.0)
    assert str(caught.value) == (f"camera dead: cannot open {scheme}://***@127.0.0.1:{port}/live: "
                                 f"no answer from 127.0.0.1:{port} within 1 s (unreachable or hung)")
    assert caught.value.retryable
    assert opened == [], "FFmpeg was asked to open it: the open lock was held for the whole timeout"


def test_an_rtsp_server_that_answers_is_opened_by_ffmpeg(monkeypatch):
    """A server that answers OPTIONS (here with 401, as a camera wanting credentials may) is
    left to FFmpeg, which then fails on it as before: the camera's error comes from its diagnosis."""
    server = socket.create_server(("127.0.0.1", 0))
    port, asked = server.getsockname()[1], []

    def answer():
        for _ in range(8):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(4096)
                asked.append(request.split(b" ", 1)[0])
                if request:
                    conn.sendall(b"RTSP/1.0 401 Unauthorized\r\nCSeq: 1\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    opened, real = [], capture._ffmpeg_open
    monkeypatch.setattr(capture, "_ffmpeg_open", lambda url, *params: (opened.append(url), real(url, *params))[1])
    try:
        with pytest.raises(SourceError, match="401 Unauthorized: the camera wants a user and password"):
            capture.open_capture("cam", f"rtsp://127.0.0.1:{port}/live", open_timeout_s=2.0)
    finally:
        server.close()
    assert opened == [f"rtsp://127.0.0.1:{port}/live"] and asked[0] == b"OPTIONS", asked


def test_an_rtmp_server_that_answers_the_handshake_is_left_to_ffmpeg():
    """An RTMP server answers the client's first handshake bytes (C0, C1) with its own (S0: the
    version, 3) before any stream is named; one that does answer is opened by FFmpeg."""
    from pipeline.camera_probe import camera_unanswered

    server = socket.create_server(("127.0.0.1", 0))
    port, hello = server.getsockname()[1], []

    def answer():
        conn, _ = server.accept()
        with conn:
            got = b""
            while len(got) < 1537:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                got += chunk
            hello.append(got)
            conn.sendall(b"\x03" + bytes(1536))

    threading.Thread(target=answer, daemon=True).start()
    try:
        assert camera_unanswered(f"rtmp://127.0.0.1:{port}/live/cam", timeout_s=2.0) is None
    finally:
        server.close()
    assert hello and hello[0][:1] == b"\x03" and len(hello[0]) == 1537  # C0 and C1, nothing else


def test_a_host_that_cannot_be_looked_up_is_the_cameras_error_not_a_crash():
    """IDNA refuses an empty or over-long label: a UnicodeError (no OSError) escaped the open
    and crashed the camera's reader."""
    for url in ("rtsp://cam..local/live", "http://cam..local/video.mjpg"):
        with pytest.raises(SourceError, match=r"cannot open .*: the host of cam\.\.local:\d+ cannot be looked up") as caught:
            capture.open_capture("bad", url, open_timeout_s=1.0)
        assert caught.value.retryable


def test_a_name_the_dns_does_not_answer_for_fails_within_the_open_timeout(monkeypatch):
    """The system's resolver has no timeout of its own (5 s a try, per try and search domain): a
    camera whose DNS server did not answer took that long past its ``open_timeout_s``, FFmpeg
    never asked. A resolver that never answers stands in for it."""
    import pipeline.camera_probe as probe

    answered, asked = threading.Event(), []
    real = socket.getaddrinfo

    def silent_dns(host, *args, **kw):
        if host != "cam.example":
            return real(host, *args, **kw)
        asked.append(host)
        answered.wait()
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(probe.socket, "getaddrinfo", silent_dns)
    result: list = []
    opener = threading.Thread(target=lambda: result.append(
        probe.camera_unanswered("rtsp://user:pw@cam.example:554/live", timeout_s=0.5)), daemon=True)
    try:
        opener.start()
        opener.join(30)
        assert result == ["host 'cam.example' was not looked up within 0.5 s (DNS server slow or unreachable)"]
        assert asked == ["cam.example"] and not answered.is_set()
        again = probe.camera_unanswered("rtsp://cam.example:554/live", timeout_s=0.2)  # reconnecting meanwhile
        assert again is not None and "was not looked up within 0.2 s" in again, again
        assert asked == ["cam.example"], "a second lookup of the name while the first still runs"
    finally:
        answered.set()


def test_an_http_camera_behind_a_proxy_is_left_to_ffmpeg(silent_camera, monkeypatch):
    """FFmpeg reaches an HTTP camera through ``http_proxy`` unless ``no_proxy`` names it: then
    a direct connection says nothing about it."""
    from pipeline.camera_probe import camera_unanswered

    scheme, port = silent_camera
    url = f"{scheme}://127.0.0.1:{port}/live"
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert (camera_unanswered(url, timeout_s=0.5) is None) == (scheme == "http")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert camera_unanswered(url, timeout_s=0.5).startswith(f"no answer from 127.0.0.1:{port} within 0.5 s")


def test_an_ipv6_camera_is_asked_with_its_address_in_brackets():
    from pipeline.camera_probe import _target

    host, port, where, clean = _target("rtsp://admin:pw@[::1]:8554/live?ch=1")
    assert (host, port, where, clean) == ("::1", 8554, "[::1]:8554", "rtsp://[::1]:8554/live?ch=1")


@pytest.mark.parametrize("path,status,expected", [
    ("/video.mjpg", 404, "404 Not Found: check the stream path in the camera URL"),
    ("/secret.mjpg", 401, "401 Unauthorized: the server wants credentials; check the user and password"),
    ("/video.mjpg", 403, "403 Forbidden: the server refuses this stream")])
def test_an_http_camera_that_answers_an_error_says_which(path, status, expected):
    """An HTTP server takes the connection (the check before the open passes) and answers 404 or
    401: FFmpeg's open fails, and the camera said "no answer", as for a server that is down."""
    from .http import answering

    with answering(status, b"{}") as base:
        url = base.replace("http://", "http://viewer:Hunter22@") + path
        with pytest.raises(SourceError) as failed:
            capture.open_capture("cam", url, open_timeout_s=3)
    message = str(failed.value)
    assert expected in message and "Hunter22" not in message and failed.value.retryable, message


def test_ffmpeg_opens_the_address_that_answered_not_the_name(rtsp_cameras, monkeypatch):
    """OpenCV opens one input at a time, and FFmpeg looked the camera's host name up again under
    that lock: a camera whose DNS answered slowly held every other camera's open for the lookup,
    past its own open timeout. FFmpeg now opens the address the check before reached (a real
    RTSP server named ``localhost``); the user, password, port and path are as written, and the
    camera's words name the URL as written."""
    opened, real = [], capture._ffmpeg_open
    monkeypatch.setattr(capture, "_ffmpeg_open", lambda url, *params: (opened.append(url), real(url, *params))[1])
    url = rtsp_cameras.url("traffic").replace("127.0.0.1", "localhost", 1)
    assert "@localhost:" in url or "//localhost:" in url, url
    cap = capture.open_capture("cam", url, open_timeout_s=10.0)
    try:
        assert cap.read()[0], "no frame"
    finally:
        cap.release()
    assert opened == [url.replace("localhost", "127.0.0.1", 1)], opened
    from pipeline.camera_probe import with_address

    for written, expected in (("rtsp://u:p%40ss@cam.local:8554/s?x=1", "rtsp://u:p%40ss@10.0.0.5:8554/s?x=1"),
                              ("RTSP://Cam.Local/s", "RTSP://10.0.0.5/s"),
                              ("rtsp://10.0.0.9/s", "rtsp://10.0.0.9/s"),  # (an address already)
                              ("rtsp://user:Tr0ub@dor/horse@cam/s", "rtsp://user:Tr0ub@dor/horse@cam/s"),  # (unclear host)
                              ("rtsps://cam.local/s", "rtsps://cam.local/s")):  # (TLS: its certificate names the host)
        assert with_address(written, "10.0.0.5") == expected, written
    assert with_address("rtsp://cam.local/s", "fe80::1") == "rtsp://[fe80::1]/s"
