"""A camera's file and FFmpeg's process-wide settings as the openers see them: OpenCV's options
variable, a file name the system cannot look up, what FFmpeg quotes in a PyAV camera's debug
lines (real files, real OpenCV and PyAV)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.capture import open_capture
from pipeline.capture_av import open_skipping
from pipeline.sources import SourceError, SourceState, VideoSource


def test_opencvs_options_variable_is_emptied_between_opens_never_removed(videos):
    """Adding or removing an environment variable reallocates the environment while other threads
    may read it (getenv("TZ") behind every log line's time): the options variable is set for each
    open and emptied after it, never removed. An empty one at start is a parent's, not the user's."""
    import os

    import pipeline.capture as capture

    if capture._USER_OPTIONS is not None:
        pytest.skip("the user set OPENCV_FFMPEG_CAPTURE_OPTIONS")
    cap = open_capture("file", str(videos / "vtest.avi"))
    try:
        assert cap.read()[0]
    finally:
        cap.release()
    assert os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS") == ""
    child = subprocess.run([sys.executable, "-c", "import pipeline.capture as c; print(c._USER_OPTIONS)"],
                           env={**os.environ, "OPENCV_FFMPEG_CAPTURE_OPTIONS": ""}, capture_output=True, text=True,
                           timeout=120, cwd=str(Path(capture.__file__).parents[1]))
    assert child.stdout.strip() == "None", child.stderr[-2000:]


def test_a_file_that_cannot_be_looked_at_is_a_camera_error_not_a_reader_crash(tmp_path, monkeypatch):
    """`Path.is_file` raises for anything but a missing file: a name too long, no permission, a
    network share gone away (ENOTCONN, ESTALE, EIO). The OSError escaped the opener and crashed
    the camera's reader (restarted as a crash, a looping file's place lost) instead of being a
    camera error: final for a name that can never open, retried for a share that may come back."""
    import errno
    import pathlib

    from pipeline.capture import open_capture

    long_name = str(tmp_path / ("x" * 300 + ".mp4"))
    for opener in (open_capture, open_skipping):
        with pytest.raises(SourceError, match="cannot look at .*: File name too long") as caught:
            opener("cam", long_name)
        assert not caught.value.retryable
    gone = tmp_path / "share" / "loop.mp4"
    real_stat = pathlib.Path.stat

    def stat(self, *args, **kwargs):
        if self == gone:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    for opener in (open_capture, open_skipping):
        with pytest.raises(SourceError, match="Transport endpoint is not connected") as caught:
            opener("cam", str(gone))
        assert caught.value.retryable
    events = []
    src = VideoSource("cam", lambda: open_capture("cam", long_name), fps=5, is_file=True, on_status=events.append)
    assert list(src.frames()) == [] and src.state == SourceState.FAILED, [e.state for e in events]
    assert "File name too long" in src.last_error


def test_what_ffmpeg_quotes_in_a_pyav_cameras_debug_log_has_none_of_its_secrets(videos, caplog):
    """PyAV's errors quote the URL it opened: a ``${VAR}`` value in a path or a query parameter
    (``srt://…?streamid=``) is nothing the generic patterns know as a credential, so the debug
    lines of a read that stopped named it unless scrubbed with the camera's own secrets."""
    import av

    from pipeline.capture_av import SkippingCapture

    container = av.open(str(videos / "vtest.avi"))
    cap = SkippingCapture(container, container.streams.video[0], read_timeout_s=2.0, secrets=("T0ken-s3cr3t",))

    def broken():
        raise av.error.FFmpegError(5, "Input/output error", "srt://cam:9000?streamid=T0ken-s3cr3t")
        yield

    cap._packets = broken()
    try:
        with caplog.at_level(logging.DEBUG, logger="percept.capture"):
            assert not cap.grab()
    finally:
        cap.release()
    assert "demux stopped" in caplog.text and "T0ken-s3cr3t" not in caplog.text, caplog.text


def test_a_file_with_a_damaged_packet_is_read_past_it_not_ended_there(videos, tmp_path):
    """OpenCV's grab() says False for one damaged packet, and the frames after it read: the
    file camera ended there (`ended`: never read again), 170 of traffic.mp4's 480 frames."""
    import av

    with av.open(str(videos / "traffic.mp4")) as container:
        positions = [p.pos for p in container.demux(container.streams.video[0]) if p.size]
    data = bytearray((videos / "traffic.mp4").read_bytes())
    data[positions[172] : positions[172] + 4] = b"\x7f\xff\xff\xff"  # packet 172's NAL size: far past the file
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    src = VideoSource("cam", lambda: open_capture("cam", str(damaged)), fps=0, is_file=True, realtime=False)
    frames = list(src.frames())
    assert len(frames) >= 470 and src.state == SourceState.STOPPED, (len(frames), src.state, src.last_error)


def test_keyframes_of_a_stream_with_b_frames_come_out_with_their_own_packet(videos):
    """traffic.mp4 reorders (B-frames): with the other frames skipped, its decoder held each
    keyframe until the next one came — on a live camera a whole GOP late, and with a GOP longer
    than the frame timeout never (the camera stuck `reconnecting`)."""
    cap = open_skipping("cam", str(videos / "traffic.mp4"), decode="keyframes")
    got = []
    while cap.grab():
        ok, image = cap.retrieve()
        got.append((round(cap.get(0) / 1000, 2), cap.packets, ok and image.shape == (360, 640, 3)))
    cap.release()
    assert got == [(0.0, 1, True), (10.43, 251, True)], got  # each keyframe at its own packet, at its time


def test_a_keyframes_camera_keeps_each_keyframe_that_comes_not_its_phase_of_the_period():
    """A live camera's frames fall on its phase of the sampling period; a keyframes camera's
    come seconds apart, so its first keyframe was passed over for the grid point after it (the
    next keyframe a GOP later: with a GOP over 10 s the camera got no frame at all)."""
    from pipeline.camera_open import _video_source
    from pipeline.config import CameraConfig, PerceptConfig
    from pipeline.frame_slot import LatestFrameSlot

    def source(decode):
        camera = CameraConfig(id="cam", url="rtsp://cam.local/s", fps=5, decode=decode)
        return _video_source(camera, PerceptConfig(), LatestFrameSlot(), seq_start=0, on_status=lambda e: None,
                             native_fps=None)

    keyframes, every = source("keyframes"), source("all")
    assert keyframes._sampler.phase is None and every._sampler.phase is not None
    assert keyframes._sampler.accept(1000.123)  # the first keyframe is kept, wherever it falls


def test_a_keyframes_read_ends_at_the_readers_stop_not_after_its_gop(videos):
    """A keyframes grab reads a GOP of packets (up to the frame timeout, 10 s) without looking
    at the stop: the reader outlived the conductor's wait, its connection open beside the
    camera's next one. The source gives the capture its stop; a grab ends at it."""
    cap = open_skipping("cam", str(videos / "vtest.avi"), decode="keyframes")
    assert cap.grab() and cap.packets == 1
    stopping = []
    cap.stopping = lambda: bool(stopping)
    stopping.append(True)
    assert not cap.grab() and cap.packets == 1  # no packet read after the stop
    cap.release()
    opened = []
    src = VideoSource("cam", lambda: opened.append(open_skipping("cam", str(videos / "vtest.avi"), decode="keyframes"))
                      or opened[-1], fps=0, is_file=True, realtime=False)
    for _ in src.frames():
        assert opened[0].stopping is not None and not opened[0].stopping()  # the source's stop, given
        src.stop()
        assert opened[0].stopping()
    assert src.state == SourceState.STOPPED, src.state


def ts_clip(path: Path, seconds: float, *options: str) -> Path:
    """An MPEG-TS test clip (160x120, 10 fps, a keyframe every 5 frames, no B-frames)."""
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc=d={seconds}:s=160x120:r=10", "-c:v",
                    "libx264", "-g", "5", "-bf", "0", *options, "-f", "mpegts", str(path)], check=True, timeout=120)
    return path


def looped_pts(opener, n: int) -> list[float]:
    """The pts of the first ``n`` frames of a file read in a loop (not paced)."""
    src = VideoSource("cam", opener, fps=0, is_file=True, loop=True, realtime=False)
    pts = []
    for frame in src.frames():
        pts.append(frame.meta.pts)
        if len(pts) == n:
            src.stop()
    return pts


def test_recordings_joined_loop_without_a_gap_of_the_first_parts_length(tmp_path):
    """Two recordings joined (MPEG-TS: the timestamps start again at the second), read with PyAV
    in a loop: a pass ended where the longer first part ends, not where the file does, so each
    loop put a silent gap of the difference into the timeline (paced: no frame for seconds)."""
    joined = tmp_path / "joined.ts"
    joined.write_bytes(ts_clip(tmp_path / "a.ts", 4).read_bytes() + ts_clip(tmp_path / "b.ts", 1).read_bytes())
    pts = looped_pts(lambda: open_skipping("cam", str(joined), decode="reference"), 110)  # two passes and more
    steps = [round(b - a, 3) for a, b in zip(pts, pts[1:])]
    assert max(steps) < 0.5 and min(steps) > 0, [(i, s) for i, s in enumerate(steps) if not 0 < s < 0.5]


@pytest.mark.parametrize("scheme", ["rtsp", "RTSP", "Rtsps"])
def test_a_urls_scheme_in_capitals_is_read_as_in_lower_case(scheme, videos, monkeypatch):
    """URL schemes are case-insensitive: ``RTSP://`` (as configs write it) was opened without the
    RTSP options (over UDP, with FFmpeg's full probe) on the PyAV path, and ``FILE:///…`` was
    taken for a live camera (no pacing, looping or end; ``backpressure: wait`` refused)."""
    import av

    from pipeline.capture_av import RTSP_OPTIONS
    from pipeline.config import CameraConfig

    given = []

    def fake_open(target, options=None, timeout=None):  # what FFmpeg would be asked (pure logic)
        given.append(options)
        raise OSError("refused")

    monkeypatch.setattr(av, "open", fake_open)
    with pytest.raises(SourceError):
        open_skipping("cam", f"{scheme}://h/s", decode="keyframes")
    assert given == [RTSP_OPTIONS]
    monkeypatch.undo()
    url = f"{'FILE' if scheme.isupper() else 'File' if scheme[0].isupper() else 'file'}://{videos / 'vtest.avi'}"
    cap = open_skipping("cam", url, decode="keyframes")
    try:
        assert cap.grab() and cap.retrieve()[0]
    finally:
        cap.release()
    assert CameraConfig(id="cam", url=url, backpressure="wait").backpressure == "wait"


@pytest.mark.parametrize("rate", ["30", "30000/1001"])
def test_a_file_with_millisecond_timestamps_sampled_at_its_own_rate_keeps_every_frame(rate, tmp_path):
    """An MKV (timestamps in whole milliseconds) at 30 or 29.97 fps with ``fps: 30``: its frames
    at 33, 67, 100 ms came each just before the sampler's grid of 1/30 s and were passed over —
    85 of 90 and 240 of 300 kept. Every frame is kept; at ``fps: 10`` still 10 a second."""
    clip = tmp_path / "ms.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc=size=64x36:rate={rate}:duration=4",
                    "-c:v", "mpeg4", "-g", "30", str(clip)], check=True, timeout=60)
    counts = {}
    for fps in (30, 10, 0):
        src = VideoSource("cam", lambda: open_capture("cam", str(clip)), fps=fps, is_file=True, loop=False,
                          realtime=False)
        counts[fps] = len(list(src.frames()))
    assert counts[0] >= 119 and counts[30] == counts[0], counts
    assert 39 <= counts[10] <= 41, counts


def test_ffmpegs_own_url_forms_open_as_ffmpeg_reads_them(videos, tmp_path):
    """``file:/path`` and ``unix:/run/cam.sock`` pass the config's checks (FFmpeg's own forms) but
    were looked up as files named ``file:/…`` and ``unix:/…``: "file not found", the camera failed
    for good. ``hls://…`` passed too, and failed for good: FFmpeg has no such protocol."""
    import socket
    import threading

    from pipeline.config_urls import camera_url_problem

    def first_frame(url: str, decode: str = "all") -> bool:
        cap = open_capture("cam", url, decode=decode, open_timeout_s=10, read_timeout_s=10)
        try:
            return cap.grab() and cap.retrieve()[0]
        finally:
            cap.release()

    for decode in ("all", "keyframes"):
        assert first_frame(f"file:{videos / 'vtest.avi'}", decode), decode
    stream = ts_clip(tmp_path / "cam.ts", 2).read_bytes()
    path = tmp_path / "cam.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(60)

    def serve() -> None:  # each connection gets the stream, as a camera's local socket gives it
        try:
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.sendall(stream)
        except OSError:  # (closed at the test's end)
            pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        assert first_frame(f"unix:{path}")
    finally:
        server.close()
    assert camera_url_problem(f"unix:{path}") is None and camera_url_problem("file:/srv/a.mp4") is None
    assert camera_url_problem("hls://cams.example/live.m3u8") == (
        "hls:// is no FFmpeg protocol: give the playlist's own http(s)://…/….m3u8 URL")


@pytest.mark.parametrize("rotate", [90, 180, 270])
def test_a_rotated_recording_comes_out_upright_whichever_decoder_reads_it(rotate, tmp_path):
    """A phone's or body cam's recording carries a display rotation: OpenCV turns its frames
    upright, PyAV (``decode: keyframes``/``reference``, network streams) gave them sideways — the
    people lying down, pixel zones drawn on the upright frames elsewhere."""
    import cv2

    clip = ts_clip(tmp_path / "flat.ts", 1)
    turned = tmp_path / "turned.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(clip), "-c", "copy", "-metadata:s:v:0", f"rotate={rotate}",
                    str(turned)], check=True, timeout=120)
    upright = open_capture("cam", str(turned))  # OpenCV's
    assert upright.grab()
    want = upright.retrieve()[1]
    upright.release()
    assert want.shape[:2] == ((160, 120) if rotate != 180 else (120, 160))
    for decode in ("all", "keyframes", "reference"):
        cap = open_skipping("cam", str(turned), decode=decode)
        try:
            assert cap.grab()
            got = cap.retrieve()[1]
            assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).mean() < 1.0, decode
            assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (want.shape[1], want.shape[0])
        finally:
            cap.release()


def test_keyframes_further_apart_than_the_watchdog_are_said_once(tmp_path, caplog):
    """``decode: keyframes`` on a camera whose keyframes come every 6 s ("smart codec" settings)
    with ``watchdog_s`` 4: the camera went ``reconnecting`` at every gap, reopened, and nothing
    said why. The first such gap now says it, naming ``watchdog_s``; the next ones do not repeat it."""
    import av

    from pipeline.capture_av import SKIP_FRAME, SkippingCapture, decoded_rate

    clip = ts_clip(tmp_path / "long-gop.ts", 8, "-g", "60", "-keyint_min", "60", "-sc_threshold", "0")  # a keyframe each 6 s
    ticks = iter(range(100_000))
    rate = decoded_rate("gop-cam", 1.0, "keyframes")
    for _ in range(2):  # two opens: one warning
        container = av.open(str(clip))
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = SKIP_FRAME["keyframes"]
        cap = SkippingCapture(container, stream, rate, read_timeout_s=30, frame_timeout_s=4.0,
                              clock=lambda: next(ticks) * 0.25)  # (a quarter second a packet: 10 fps as live)
        try:
            with caplog.at_level(logging.WARNING, logger="percept.capture"):
                assert cap.grab()  # the first keyframe
                assert not cap.grab()  # 4 s of packets and no keyframe: taken for lost
        finally:
            cap.release()
    said = [r.getMessage() for r in caplog.records if "no keyframe came" in r.getMessage()]
    assert len(said) == 1 and "camera gop-cam:" in said[0] and "cameras[].watchdog_s" in said[0], said


def test_a_looping_clip_shorter_than_the_sampling_period_is_not_reopened_flat_out(tmp_path):
    """Two frames at 1000 fps, looped and sampled at 5 fps: each pass (2 ms of video) was reopened
    and read at once, 1600 times a second, a whole core for one camera. A pass shorter than the
    sampling period now stands for one period, as a still image's does."""
    clip = tmp_path / "two.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=1000", "-frames:v", "2",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)], check=True, timeout=120)
    src = VideoSource("cam", lambda: open_capture("cam", str(clip)), fps=5, is_file=True, loop=True, realtime=False)
    pts = []
    for frame in src.frames():
        pts.append(frame.meta.pts)
        if len(pts) == 10:
            src.stop()
    steps = [round(b - a, 3) for a, b in zip(pts, pts[1:])]
    assert src.frames_read <= 4 * len(pts), f"{src.frames_read} frames read for {len(pts)} sampled"
    assert all(0.15 <= s <= 0.25 for s in steps), steps  # (5 fps on the clip's timeline)
