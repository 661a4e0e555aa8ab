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
