"""The loopback RTSP server the tests and the bench use (benchmarks/rtsp_server.py): a test
pattern mount serves frames (without GStreamer's pango plugin too: its clock overlay is left
out, where the media used to fail with 503), plain mounts carry no B-frames like most IP
cameras, and ``@bframes`` mounts carry two after every I or P frame."""

from __future__ import annotations

from collections import Counter

import pytest


def _picture_types(url: str, frames: int) -> Counter:
    import av
    from av.video.frame import PictureType

    types: Counter = Counter()
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=(10, 10)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            types[PictureType(frame.pict_type).name] += 1
            if sum(types.values()) >= frames:
                break
    return types


@pytest.mark.parametrize("bframes", [False, True])
def test_a_test_pattern_mount_serves_frames_with_b_frames_only_when_asked(rtsp_server_cls, bframes):
    spec = "testsrc@320x240@15" + ("@bframes" if bframes else "")
    with rtsp_server_cls({"pattern": spec}) as server:
        types = _picture_types(server.url("pattern"), 30)
    assert sum(types.values()) == 30 and types["I"] >= 1, types
    if bframes:
        assert types["B"] >= 15 and types["P"] >= 5, types  # two B after every I/P frame
    else:
        assert types["B"] == 0 and types["P"] >= 20, types


def test_a_clip_encoded_once_loops_as_a_live_camera(rtsp_server_cls, tmp_path):
    """``encode_once`` (the bench's cameras): the clip is encoded at start and its H.264 sent
    again and again. A 1 s clip read for 3 s: every frame decodes, at the mount's rate (the
    frames' own times 1/15 s apart, rising across each loop), without B-frames."""
    import subprocess

    import av
    from av.video.frame import PictureType

    clip = tmp_path / "one-second.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=1",
                    "-pix_fmt", "yuv420p", str(clip)], check=True, timeout=120)
    with rtsp_server_cls({"clip": f"{clip}@15"}, encode_once=True) as server:
        times, types = [], Counter()
        with av.open(server.url("clip"), options={"rtsp_transport": "tcp"}, timeout=(10, 10)) as container:
            for frame in container.decode(container.streams.video[0]):
                assert (frame.width, frame.height) == (320, 240)
                if frame.time is not None:  # (PyAV: none on the first frame of an RTSP stream)
                    times.append(frame.time)
                types[PictureType(frame.pict_type).name] += 1
                if sum(types.values()) >= 45:
                    break
        said = server.stderr_text()
    assert "/clip: 15 frames encoded once, 2 keyframes" in said, said  # 1 s at 15 fps, a keyframe every 10
    steps = [b - a for a, b in zip(times, times[1:])]
    assert len(steps) >= 40, times
    assert all(s > 0 for s in steps), steps  # rising across the loops
    assert sorted(steps)[len(steps) // 2] == pytest.approx(1 / 15, rel=0.1), steps
    assert types["B"] == 0 and types["I"] >= 3, types  # a keyframe every 10 frames, loops included
