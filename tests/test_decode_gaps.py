"""A file's timestamp gaps with `decode: reference` (a real joined MPEG-TS through the camera's
own reader, as `camera_open` builds it): closed like `decode: all`, not waited out."""

from __future__ import annotations

import subprocess
import threading


def test_recordings_joined_an_hour_apart_are_not_paced_through_the_gap_when_decoding_reference_frames(tmp_path):
    """`decode: reference` keeps frames at most a few intervals apart: a gap of an hour between
    two joined recordings is no gap of its frames, and a realtime read waited it out, silent
    (the watchdog took the camera for lost). Only `keyframes` keeps such gaps (its frames are
    seconds apart by design)."""
    from pipeline.camera_open import _video_source
    from pipeline.config import CameraConfig, PerceptConfig
    from pipeline.frame_slot import LatestFrameSlot

    parts = []
    for k, offset in enumerate(("0", "3600")):
        part = tmp_path / f"part{k}.ts"
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=d=1:s=160x120:r=10", "-c:v", "libx264",
                        "-g", "5", "-bf", "2", "-output_ts_offset", offset, "-f", "mpegts", str(part)],
                       check=True, timeout=120)
        parts.append(part.read_bytes())
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(parts))
    camera = CameraConfig(id="nvr", url=str(joined), fps=0, decode="reference", realtime=True, watchdog_s=2)
    src = _video_source(camera, PerceptConfig(), LatestFrameSlot(), seq_start=0, on_status=lambda e: None,
                        native_fps=lambda: 10.0)
    src._prepare = src._wants_frame = None  # (no conductor here: every sampled frame is read)
    pts: list[float] = []
    reader = threading.Thread(target=lambda: pts.extend(f.meta.pts for f in src.frames()), daemon=True)
    reader.start()
    try:
        reader.join(30)  # 2 s of video, paced; an hour if the gap were waited out
        assert not reader.is_alive(), f"still reading after 30 s; frames so far {len(pts)}"
    finally:
        src.stop()
    assert len(pts) >= 10 and pts == sorted(pts) and pts[-1] - pts[0] < 5, (pts, src.state, src.last_error)
