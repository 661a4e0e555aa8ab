"""A file's timeline with `decode: reference` and `keyframes` (real files through the camera's own
reader, as `camera_open` builds it): gaps closed like `decode: all`, not waited out; a looping
file's passes as long as the file."""

from __future__ import annotations

import subprocess
import threading

import pytest

from pipeline.capture import open_capture
from pipeline.sources import VideoSource

from .test_decode import ffprobe_keyframes


@pytest.mark.parametrize("decode", ["reference", "keyframes"])
def test_recordings_joined_an_hour_apart_are_not_paced_through_the_gap(tmp_path, decode):
    """`decode: reference` keeps frames at most a few intervals apart: a gap of an hour between
    two joined recordings is no gap of its frames, and a realtime read waited it out, silent
    (the watchdog took the camera for lost). With `keyframes`, whose frames are seconds apart
    by design, a gap past the watchdog and over 4 of its keyframe steps is closed (to one step)."""
    from pipeline.camera_open import _video_source
    from pipeline.config import CameraConfig, PerceptConfig
    from pipeline.frame_slot import LatestFrameSlot

    parts = []
    seconds = 1 if decode == "reference" else 3  # keyframes every 0.5 s: 6 a part
    for k, offset in enumerate(("0", "3600")):
        part = tmp_path / f"part{k}.ts"
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc=d={seconds}:s=160x120:r=10", "-c:v", "libx264",
                        "-g", "5", "-bf", "2", "-output_ts_offset", offset, "-f", "mpegts", str(part)],
                       check=True, timeout=120)
        parts.append(part.read_bytes())
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(parts))
    camera = CameraConfig(id="nvr", url=str(joined), fps=0, decode=decode, realtime=True, watchdog_s=2)
    src = _video_source(camera, PerceptConfig(), LatestFrameSlot(), seq_start=0, on_status=lambda e: None,
                        native_fps=lambda: 10.0)
    src._prepare = src._wants_frame = None  # (no conductor here: every sampled frame is read)
    pts: list[float] = []
    reader = threading.Thread(target=lambda: pts.extend(f.meta.pts for f in src.frames()), daemon=True)
    reader.start()
    try:
        reader.join(30)  # 2 or 6 s of video, paced; an hour if the gap were waited out
        assert not reader.is_alive(), f"still reading after 30 s; frames so far {len(pts)}"
    finally:
        src.stop()
    assert len(pts) >= 10 and pts == sorted(pts) and pts[-1] - pts[0] < 2 * seconds + 2, (pts, src.state, src.last_error)


def test_a_looping_file_read_for_its_keyframes_starts_each_pass_where_the_file_ends(videos):
    """traffic.mp4 (20.02 s) has keyframes at 0 and 10.43 s. A pass ended one frame after the last
    keyframe kept: each pass was 10.47 s long, paced twice as fast as the file plays, and its
    first keyframe came one frame after the last one (a sampler at 2 fps dropped it)."""
    clip = videos / "traffic.mp4"
    keyframes = ffprobe_keyframes(clip)
    end = float(subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=duration",
                                "-of", "csv=p=0", str(clip)], capture_output=True, text=True, check=True).stdout)
    assert len(keyframes) == 2 and keyframes[-1] < end - 5, (keyframes, end)  # the case: the file goes on after
    src = VideoSource("cam", lambda: open_capture("cam", str(clip), decode="keyframes", fps=2), fps=2, is_file=True,
                      loop=True, realtime=False)
    pts = []
    for frame in src.frames():
        pts.append(frame.meta.pts)
        if len(pts) == 6:  # three passes
            src.stop()
    expected = [n * end + k for n in range(3) for k in keyframes]
    assert pts == pytest.approx(expected, abs=0.05), (pts, expected)
