"""An ``udp://``, ``srt://``, ``rtp://``, ``tcp://`` … camera has no request to answer before FFmpeg's open (UDP: nothing
to ask; see test_open_unanswered.py for the others), and OpenCV opens one input at a time in a
process: one that sent nothing held every other camera's (re)connect in its decoder replica for
its whole ``open_timeout_s``, each try. Such cameras are read with PyAV (every frame decoded),
outside that lock. Real sockets, a real FFmpeg sender and a real file camera."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading

import pytest

import pipeline.capture as capture
from pipeline.sources import SourceError

from .waiting import wait_for

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_url(request):
    """A camera URL of ``request.param``'s protocol that sends nothing: a UDP port nobody sends to,
    or a TCP port that takes the connection (the kernel's backlog) and never writes."""
    if request.param == "tcp":
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        return
    yield f"{request.param}://127.0.0.1:{free_udp_port()}"


@pytest.mark.parametrize("silent_url", ["udp", "rtp", "tcp"], indirect=True)
def test_a_network_camera_sending_nothing_holds_up_no_other_cameras_open(videos, monkeypatch, silent_url):
    opened, real = [], capture._ffmpeg_open
    monkeypatch.setattr(capture, "_ffmpeg_open", lambda url, *params: (opened.append(url), real(url, *params))[1])
    silent = silent_url
    failed: list[BaseException] = []

    def open_silent() -> None:
        try:
            capture.open_capture("silent", silent, open_timeout_s=8.0, read_timeout_s=2.0)
        except BaseException as exc:  # noqa: BLE001 (the test reads it)
            failed.append(exc)

    opening = threading.Thread(target=open_silent, daemon=True)
    opening.start()
    cap = capture.open_capture("file", str(videos / "vtest.avi"))  # OpenCV's open, as every file camera's
    try:
        assert opening.is_alive(), f"the file camera's open waited until the {silent}'s open gave up"
        assert cap.isOpened() and cap.read()[0]
    finally:
        cap.release()
    wait_for(lambda: not opening.is_alive(), 60, "the silent camera's open given up")
    assert len(failed) == 1 and isinstance(failed[0], SourceError) and failed[0].retryable, failed
    assert str(failed[0]).startswith(f"camera silent: cannot open {silent}: "), failed[0]
    assert opened == [str(videos / "vtest.avi")], f"{silent} was opened by OpenCV (under its open lock)"


def test_only_cameras_with_nothing_to_ask_first_are_read_with_pyav():
    for url in ("udp://@239.0.0.1:1234", "SRT://h:9000", "rtp://h:5004", "tcp://h:9", "rist://h:1968"):
        assert capture.unasked(url), url
    for url in ("rtsp://h/s", "RTSPS://h/s", "http://h/v.ts", "https://h/v.m3u8", "rtmp://h/live", "file:///v/a.mp4",
                "clips/a.mp4", "device:0"):
        assert not capture.unasked(url), url


def test_a_udp_camera_that_sends_is_read_frame_by_frame():
    port = free_udp_port()
    sender = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc=s=160x120:r=10", "-c:v", "libx264",
         "-g", "10", "-tune", "zerolatency", "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"],
        stdin=subprocess.DEVNULL)
    try:
        cap = capture.open_capture("udp", f"udp://127.0.0.1:{port}", open_timeout_s=20.0, read_timeout_s=5.0)
        try:
            shapes, positions = [], []
            for _ in range(20):
                assert cap.grab()
                ok, image = cap.retrieve()
                assert ok
                shapes.append(image.shape)
                positions.append(cap.get(0))
        finally:
            cap.release()
    finally:
        sender.kill()
        sender.wait()
    assert set(shapes) == {(120, 160, 3)}
    steps = {round(b - a) for a, b in zip(positions, positions[1:])}
    assert steps == {100}, positions  # every frame of the 10 fps stream, none skipped


def test_a_protocol_this_ffmpeg_lacks_fails_the_camera_for_good_saying_so():
    """The wheels' FFmpeg (PyAV's, as OpenCV's) has no libsrt: an ``srt://`` camera was retried
    forever with FFmpeg's "Protocol not found"; it now fails, naming the protocol (the
    credentials hidden). Where a build has SRT, it is opened (and fails on the port nobody serves)."""
    import av

    try:
        av.open("srt://127.0.0.1:9", timeout=(1.0, 1.0)).close()
    except av.error.ProtocolNotFoundError:
        pass
    except av.error.FFmpegError:
        pytest.skip("this FFmpeg build has SRT")
    with pytest.raises(SourceError) as caught:
        capture.open_capture("srt", "srt://admin:S3cret@127.0.0.1:9/live", open_timeout_s=1.0)
    assert str(caught.value) == ("camera srt: cannot open srt://***@127.0.0.1:9/live: this FFmpeg build has no "
                                 "srt:// protocol") and not caught.value.retryable
