"""A file's timestamp gaps with `decode: reference` and `keyframes` (a real joined MPEG-TS through
the camera's own reader, as `camera_open` builds it): closed like `decode: all`, not waited out."""

from __future__ import annotations

import subprocess
import threading

import pytest


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
