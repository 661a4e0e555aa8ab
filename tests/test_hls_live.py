"""A live HLS camera (a real FFmpeg writing 2 s segments, served over HTTP, read through OpenCV
as `pipeline.camera_open` opens it): its segments come whole, seconds of video at once. Read as
they came, the frames came in bursts a segment apart and the reader, waiting a segment for the
next with a 2 s read timeout, reconnected and read the playlist's last segments again: in 25 s
of a 10 fps stream, 7 opens and 839 frames, the same video published over and over."""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import threading

import pytest

from pipeline.capture import open_capture
from pipeline.source_types import SourceState, is_hls_url
from pipeline.sources import VideoSource

from .waiting import wait_for

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
FPS, SEGMENT_S = 10, 2


@pytest.fixture
def live_playlist(tmp_path):
    encoder = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i", f"testsrc=s=160x120:r={FPS}", "-c:v", "libx264",
         "-preset", "ultrafast", "-g", str(FPS * SEGMENT_S), "-f", "hls", "-hls_time", str(SEGMENT_S),
         "-hls_list_size", "6", "-hls_flags", "delete_segments", str(tmp_path / "live.m3u8")],
        stdin=subprocess.DEVNULL)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # a playlist with some segments in it, as a camera's has when it is added
        wait_for(lambda: len(list(tmp_path.glob("live*.ts"))) >= 4, 60, "four HLS segments written")
        yield f"http://127.0.0.1:{server.server_address[1]}/live.m3u8"
    finally:
        encoder.terminate()
        encoder.wait(10)
        server.shutdown()
        server.server_close()


def test_a_live_hls_camera_is_read_at_its_own_pace_without_reconnecting(live_playlist):
    assert is_hls_url(live_playlist)
    states = []
    source = VideoSource("hls", functools.partial(open_capture, "hls", live_playlist, read_timeout_s=2.0),
                         fps=0, is_file=False, paced=True, on_status=lambda event: states.append(event.state))
    frames = []

    def read():
        for frame in source.frames():
            frames.append(frame.meta)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:  # more than the segments there at the start: read as they came, the reader then reconnected
        wait_for(lambda: len(frames) >= 8 * SEGMENT_S * FPS, 90, "eight segments' frames")
    finally:
        source.stop()
        reader.join(30)
    assert SourceState.RECONNECTING not in states, states
    steady = [m.steady_ts for m in frames[:8 * SEGMENT_S * FPS]]
    # at the stream's pace: eight segments' frames over (at least) most of their 16 s, not in bursts
    assert steady[-1] - steady[0] >= 0.8 * (len(steady) - 1) / FPS, steady[-1] - steady[0]


def test_a_camera_with_a_playlist_url_is_read_paced_and_an_rtsp_one_is_not():
    """And a playlist on disk (a recording exported as HLS) is a file: paced unless `realtime:
    false`, which was ignored for it (a 20 s recording took 20 s, its mp4 0.7 s)."""
    from pipeline.camera_open import _video_source
    from pipeline.config import parse_config
    from pipeline.frame_slot import LatestFrameSlot

    config = parse_config({"cameras": [{"id": "hls", "url": "https://cams.example/live/index.M3U8?lang=en"},
                                       {"id": "rtsp", "url": "rtsp://cams.example/live"},
                                       {"id": "disk", "url": "/recordings/gate.m3u8"},
                                       {"id": "flat", "url": "/recordings/gate.m3u8", "realtime": False}]}, env={})
    paced = [_video_source(camera, config, LatestFrameSlot(), seq_start=0, on_status=lambda event: None,
                           native_fps=None)._timeline.realtime for camera in config.cameras]
    assert paced == [True, False, True, False]
