"""``decode: keyframes`` and ``reference`` (pipeline/capture_av.py): only keyframes (reference
frames) are decoded, on the shared clips and (keyframes) on a live RTSP camera, the frames
counted against an independent count (ffprobe's packet flags or its own ``-skip_frame noref``
decoding; a second RTSP session that decodes everything); less decoder CPU than decoding every
frame; the same open errors and read timeout as the OpenCV path; a bad value is a config error.
Decoder CPU numbers belong to the bench (`percept bench`, phase ``decode``); the inequality
asserted here has a wide margin."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from pipeline.capture import open_capture
from pipeline.capture_av import DecodedRate, open_skipping
from pipeline.config import ConfigError, parse_config
from pipeline.sources import SourceError, SourceState, VideoSource

from .test_decode_files import looped_pts, ts_clip
from .waiting import wait_for

CLIPS = ("traffic.mp4", "vtest.avi", "people.mp4")
REPO = Path(__file__).resolve().parents[1]


def ffprobe_keyframes(path: Path) -> list[float]:
    """Presentation times of the video's keyframe packets, as ffprobe reads them."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, timeout=120, check=True)
    rows = [line.split(",") for line in out.stdout.split() if line]
    return [float(pts) for pts, flags in rows if "K" in flags]


def ffprobe_reference_frames(path: Path) -> list[float]:
    """Presentation times of the frames FFmpeg's decoder gives with ``-skip_frame noref`` (ffprobe's
    own decoding: every frame another frame depends on)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-skip_frame", "noref", "-select_streams", "v:0", "-show_frames",
                          "-show_entries", "frame=pts_time", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, timeout=120, check=True)
    return [float(line.split(",")[0]) for line in out.stdout.splitlines() if line.split(",")[0]]


def read_all(url: str, decode: str, *, fps: float = 0, camera: str = "cam") -> list:
    src = VideoSource(camera, lambda: open_capture(camera, url, decode=decode, fps=fps), fps=fps, is_file=True,
                      realtime=False)
    return list(src.frames())


@pytest.mark.parametrize("clip", CLIPS)
def test_keyframes_mode_yields_exactly_the_files_keyframes(videos, clip):
    keyframes = ffprobe_keyframes(videos / clip)
    frames = read_all(str(videos / clip), "keyframes")
    assert [f.meta.pts for f in frames] == pytest.approx(keyframes, abs=1e-3)
    everything = read_all(str(videos / clip), "all")
    assert len(everything) > 10 * len(frames)  # the clips have few keyframes: the test means something
    assert frames[0].image.shape == everything[0].image.shape and frames[0].image.dtype == everything[0].image.dtype


@pytest.mark.parametrize("clip", CLIPS)
def test_reference_mode_yields_the_frames_other_frames_depend_on(videos, clip, caplog):
    """``decode: reference`` keeps what FFmpeg keeps with ``-skip_frame noref``: on the two H.264
    clips (B-frames) about half of the frames, at an even step, and a warning that the camera,
    sampled at every frame, gets only those; on vtest.avi (no B-frames) all, and no warning."""
    kept = ffprobe_reference_frames(videos / clip)
    camera = f"ref-{clip}"
    with caplog.at_level(logging.WARNING, logger="percept.capture"):
        frames = read_all(str(videos / clip), "reference", camera=camera)
    assert [f.meta.pts for f in frames] == pytest.approx(kept, abs=1e-3)
    warned = [r.getMessage() for r in caplog.records if camera in r.getMessage()]
    everything = read_all(str(videos / clip), "all")
    if clip == "vtest.avi":
        assert len(frames) == len(everything) and not warned, warned
    else:
        assert 0.3 * len(everything) < len(frames) < 0.6 * len(everything), (len(frames), len(everything))
        assert len(warned) == 1 and "decode: reference gives" in warned[0], warned
    assert frames[-1].image.shape == everything[-1].image.shape and frames[-1].image.dtype == everything[-1].image.dtype


def test_keyframes_mode_decodes_a_file_with_less_cpu(videos):
    """Process CPU for the whole of traffic.mp4 sampled at 1 fps: every frame decoded (OpenCV),
    then keyframes only, then reference frames only (PyAV), each the least of three runs. Only
    that keyframes are all that is decoded is checked here (~20× less CPU: a decoder that decoded
    every frame and dropped the rest would not come near); what ``reference`` saves (~1.5–2×,
    two different FFmpeg builds compared) is the bench's to measure (`percept bench`, decode)."""
    url = str(videos / "traffic.mp4")
    for mode in ("keyframes", "reference", "all"):  # imports and codec set-up out of the measurement
        read_all(url, mode, fps=1)
    cpu: dict[str, float] = {}
    for _ in range(3):  # interleaved, the least of three: a load spike on a shared machine lands in one run
        for mode in ("all", "keyframes", "reference"):
            t0 = time.process_time()
            frames = read_all(url, mode, fps=1)
            cpu[mode] = min(cpu.get(mode, float("inf")), time.process_time() - t0)
            assert frames
    print(f"decoder CPU for traffic.mp4 (20 s): {cpu}")
    assert cpu["keyframes"] < 0.5 * cpu["all"], cpu


def _count(src: VideoSource, seconds: float, arrivals: list[float]) -> None:
    t_end = time.monotonic() + seconds
    for _ in src.frames():
        arrivals.append(time.monotonic())
        if time.monotonic() > t_end:
            src.stop()


def _every_frame_noting(url: str, seconds: float, arrivals: list[float], cpu: dict,
                        noted: Callable[[Any], bool]) -> None:
    """An independent count: a second session decoding every frame, noting when a frame ``noted``
    picks (a keyframe; an I or P frame) arrives."""
    import av

    c0 = time.thread_time()
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=(5, 5)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        t_end = time.monotonic() + seconds
        for frame in container.decode(stream):
            if noted(frame):
                arrivals.append(time.monotonic())
            if time.monotonic() > t_end:
                break
    cpu["pyav-all"] = time.thread_time() - c0


def _common_window(arrivals: dict[str, list[float]]) -> tuple[float, float]:
    """A window every session covered (half a second in from the latest start and earliest end)."""
    assert all(arrivals.values()), {k: len(v) for k, v in arrivals.items()}
    lo = max(a[0] for a in arrivals.values()) + 0.5
    hi = min(a[-1] for a in arrivals.values()) - 0.5
    assert hi - lo > 3, (lo, hi)
    return lo, hi


def test_rtsp_camera_in_keyframes_mode_gets_its_keyframes(rtsp_cameras):
    """The walk camera (vtest.avi over RTSP, a keyframe every 10 frames). Three sessions at once
    for 8 s: keyframes mode, every frame through OpenCV (today's path), and PyAV decoding every
    frame to count the keyframes independently. Over the same window the counts match (the
    decoder threads' CPU is printed; what each mode costs is the bench's `decode` phase)."""
    url = rtsp_cameras.url("walk")
    arrivals = {"keyframes": [], "opencv-all": [], "pyav-all": []}
    cpu: dict[str, float] = {}

    def run(mode: str) -> None:
        c0 = time.thread_time()
        src = VideoSource(f"walk-{mode}", lambda: open_capture(f"walk-{mode}", url, decode=mode.split("-")[-1]),
                          fps=0, is_file=False)
        _count(src, 8.0, arrivals[mode])
        cpu[mode] = time.thread_time() - c0

    threads = [threading.Thread(target=run, args=("keyframes",)), threading.Thread(target=run, args=("opencv-all",)),
               threading.Thread(target=_every_frame_noting, args=(url, 8.0, arrivals["pyav-all"], cpu,
                                                                  lambda frame: frame.key_frame))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    lo, hi = _common_window(arrivals)
    seen = {k: sum(lo <= t <= hi for t in v) for k, v in arrivals.items()}
    print(f"frames in a {hi - lo:.1f} s window: {seen}; decoder thread CPU (s): {cpu}")
    assert seen["keyframes"] >= 2 and abs(seen["keyframes"] - seen["pyav-all"]) <= 1, seen
    assert seen["opencv-all"] >= 5 * seen["keyframes"], seen  # (the CPU each costs: the bench's, printed here)


def test_rtsp_camera_with_b_frames_in_reference_mode_gets_its_reference_frames(rtsp_server_cls, videos):
    """A live camera encoded with two B-frames after every I or P frame (vtest.avi at 10 fps,
    the server's ``@bframes``). For 8 s at once: reference mode, and PyAV decoding every frame
    to count the I and P frames independently. Over the same window the counts match, a third
    of all frames (the stream's B-frames are its only non-reference frames: x264 without a
    B-pyramid)."""
    from av.video.frame import PictureType

    arrivals: dict[str, list[float]] = {"reference": [], "pyav-all": []}
    cpu: dict[str, float] = {}
    with rtsp_server_cls({"walk-b": f"{videos / 'vtest.avi'}@bframes"}) as server:
        url = server.url("walk-b")
        src = VideoSource("walk-ref", lambda: open_capture("walk-ref", url, decode="reference"), fps=0, is_file=False)
        stop = threading.Timer(30, src.stop)  # a camera that never yields a frame still ends
        stop.start()
        threads = [threading.Thread(target=_count, args=(src, 8.0, arrivals["reference"])),
                   threading.Thread(target=_every_frame_noting, args=(url, 8.0, arrivals["pyav-all"], cpu,
                                                                      lambda frame: frame.pict_type != PictureType.B))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stop.cancel()
        src.stop()
    assert not any(t.is_alive() for t in threads)
    lo, hi = _common_window(arrivals)
    seen = {k: sum(lo <= t <= hi for t in v) for k, v in arrivals.items()}
    print(f"I/P frames in a {hi - lo:.1f} s window: {seen}")
    assert seen["reference"] >= 0.5 * (10 / 3) * (hi - lo), seen  # ~3.3 a second: two of three frames skipped
    assert abs(seen["reference"] - seen["pyav-all"]) <= 2, seen


def test_a_hung_rtsp_camera_in_keyframes_mode_reconnects(rtsp_server_cls, videos):
    """The read timeout holds for PyAV too: a server that stops sending is lost, and the camera
    comes back online once it sends again."""
    events = []
    with rtsp_server_cls({"walk": str(videos / "vtest.avi")}) as server:
        url = server.url("walk")
        src = VideoSource("hung", lambda: open_skipping("hung", url, open_timeout_s=3, read_timeout_s=1.5), fps=0,
                          is_file=False, on_status=events.append)
        reader = threading.Thread(target=lambda: [None for _ in src.frames()], daemon=True)
        reader.start()
        try:
            wait_for(lambda: src.state == SourceState.ONLINE, 30, "the camera online")
            server.pause()
            wait_for(lambda: src.state == SourceState.RECONNECTING, 30, "the camera lost after the read timeout")
            server.resume()
            wait_for(lambda: src.state == SourceState.ONLINE, 60, "the camera online again")
        finally:
            server.resume() if server.running else None
            src.stop()
            reader.join(15)
    states = [e.state for e in events]
    assert states.count(SourceState.ONLINE) >= 2 and SourceState.RECONNECTING in states


def test_open_errors_say_what_is_wrong_and_whether_to_retry(tmp_path, rtsp_cameras):
    with pytest.raises(SourceError, match="file not found") as missing:
        open_skipping("cam", str(tmp_path / "none.mp4"))
    assert not missing.value.retryable
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(SourceError, match="is not a video FFmpeg can decode") as bad:
        open_skipping("cam", str(junk))
    assert not bad.value.retryable
    with pytest.raises(SourceError, match="404 Not Found") as absent:
        open_skipping("cam", rtsp_cameras.url("nothing-here"), open_timeout_s=3)
    assert absent.value.retryable
    # through OpenCV: the server answers the OPTIONS asked first (`camera_unanswered`), so FFmpeg opens it
    with pytest.raises(SourceError, match="404 Not Found") as absent:
        open_capture("cam", rtsp_cameras.url("nothing-here"), open_timeout_s=3)
    assert absent.value.retryable


def test_a_camera_sampled_above_its_keyframe_rate_is_warned_about_once(caplog):
    rate = DecodedRate("slow", fps=5)
    with caplog.at_level(logging.WARNING, logger="percept.capture"):
        for t in (0.0, 1.0, 2.0, 3.0, 0.0, 1.0):  # 1 keyframe/s, then the file loops
            rate.decoded(t)
    assert rate.rate == pytest.approx(1.0)
    warnings = [r.getMessage() for r in caplog.records if "slow" in r.getMessage()]
    assert len(warnings) == 1 and "1.00 frames/s" in warnings[0] and "fps 5" in warnings[0]
    fine = DecodedRate("fine", fps=0.5)
    with caplog.at_level(logging.WARNING, logger="percept.capture"):
        for t in (0.0, 1.0, 2.0, 3.0):
            fine.decoded(t)
    assert not [r for r in caplog.records if "fine" in r.getMessage()]
    ref = DecodedRate("refs", fps=0, decode="reference")  # every frame wanted, every other one decoded
    with caplog.at_level(logging.WARNING, logger="percept.capture"):
        for k in range(11):
            ref.decoded(k / 12)
        assert ref.rate is None  # uneven steps: judged over 12 intervals
        ref.decoded(11 / 12)
        ref.decoded(1.0)
    warnings = [r.getMessage() for r in caplog.records if "refs" in r.getMessage()]
    assert len(warnings) == 1 and "decode: reference gives 12.00 frames/s" in warnings[0], warnings
    whole = DecodedRate("whole", fps=0, decode="reference")  # a stream without B-frames: nothing skipped
    whole.reopened(25.0)
    with caplog.at_level(logging.WARNING, logger="percept.capture"):
        for k in range(40):
            whole.decoded(k / 25)
    assert whole.rate == pytest.approx(25.0)
    assert not [r for r in caplog.records if "whole" in r.getMessage()]


def test_decode_value_is_checked_naming_the_camera(tmp_path):
    cams = [{"id": "a", "url": "a.mp4"}, {"id": "b", "url": "b.mp4", "decode": "some"}]
    with pytest.raises(ConfigError) as bad:
        parse_config({"cameras": cams}, env={})
    assert bad.value.errors == ["cameras[1].decode: must be 'all', 'reference' or 'keyframes', got 'some'"]
    with pytest.raises(ConfigError) as device:
        parse_config({"cameras": [{"id": "w", "url": "device:0", "decode": "keyframes"}]}, env={})
    assert device.value.errors[0].startswith("cameras[0].decode: keyframes needs an encoded stream or file")
    with pytest.raises(ConfigError) as device:
        parse_config({"cameras": [{"id": "w", "url": "device:0", "decode": "reference"}]}, env={})
    assert device.value.errors[0].startswith("cameras[0].decode: reference needs an encoded stream or file")
    assert parse_config({"cameras": [{"id": "r", "url": "r.mp4", "decode": "reference"}]}, env={}).cameras[0].decode == "reference"
    assert parse_config({"cameras": [{"id": "k", "url": "k.mp4", "decode": "keyframes"}]}, env={}).cameras[0].decode == "keyframes"
    assert parse_config({"cameras": [{"id": "d", "url": "d.mp4"}]}, env={}).cameras[0].decode == "all"
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("cameras:\n  - {id: a, url: a.mp4, decode: keyframe}\n")
    out = subprocess.run([sys.executable, "-m", "cli", "run", "-c", str(cfg)], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 2 and "cameras[0].decode: must be 'all', 'reference' or 'keyframes', got 'keyframe'" in out.stderr


def test_a_keyframes_camera_publishes_one_frame_per_keyframe(redis_server, videos):
    """Through the conductor (open_camera): vtest.avi with decode: keyframes and backpressure:
    wait publishes exactly its four keyframes, at their times."""
    from pipeline.camera_open import open_camera
    from pipeline.config import CameraConfig, PerceptConfig, TrackerConfig
    from pipeline.publish import Publisher
    from pipeline.schema import Detections
    from pipeline.streams import StreamKeys, connect_redis

    keys = StreamKeys("kf")
    camera = CameraConfig(id="kf", url=str(videos / "vtest.avi"), fps=0, realtime=False, backpressure="wait",
                          decode="keyframes")
    config = PerceptConfig(cameras=[camera], tracker=TrackerConfig(enabled=False))
    shapes = []

    async def detect(inp):
        shapes.append((inp.image.shape, inp.orig_shape, inp.camera))
        return Detections()

    async def scenario():
        pub = Publisher(connect_redis(redis_server.url), keys=keys, maxlen=1000).start()
        conductor = await open_camera(camera, config=config, publisher=pub, detect=detect, classifiers={},
                                      models={"detector": "fake"})
        await asyncio.wait_for(conductor.run(), 120)
        assert pub.flush(10)
        pub.close()

    asyncio.run(scenario())
    payloads = [json.loads(f[b"json"]) for _, f in redis_server.client().xrange(keys.detections("kf"))]
    assert [p["pts"] for p in payloads] == pytest.approx(ffprobe_keyframes(videos / "vtest.avi"), abs=1e-3)
    assert shapes == [((640, 640, 3), (576, 768), "kf")] * 4


def test_bench_decode_phase_reports_cpu_per_camera_and_the_frame_path(rtsp_cameras, videos):
    """`percept bench`'s decode phase (benchmarks/decode.py) on one RTSP camera and one clip: both
    modes measured on the camera, all and reference on the clip as a file, keys present and sane; the frame crosses from decoder to detector in three
    writes (the BGR frame, the letterboxed square, its shared-memory slot: only a handle is
    pickled), where ultralytics' LetterBox alone wrote 1.75 squares for this clip (never timed)."""
    from benchmarks.decode import phase_decode

    out = phase_decode([rtsp_cameras.url("walk")], ["walk"], [str(videos / "vtest.avi")], imgsz=640, seconds=3)
    cam = out["decoder_cpu"]["cameras"]["walk"]
    for mode in ("all", "keyframes"):
        assert "error" not in cam[mode], cam[mode]
        assert cam[mode]["cpu_ms_per_s"] > 0 and cam[mode]["frames"] >= 1 and cam[mode]["seconds"] >= 3, cam[mode]
    assert cam["all"]["decoded_per_s"] > 5 * cam["keyframes"]["decoded_per_s"], cam  # a keyframe every 10 frames
    assert out["decoder_cpu"]["total_cpu_ms_per_s"]["all"] == pytest.approx(cam["all"]["cpu_ms_per_s"])
    files = out["decoder_cpu_files"]  # the clip as a file: every frame, then the reference frames only
    walk = files["cameras"]["vtest.avi"]
    for mode in ("all", "reference"):
        assert "error" not in walk[mode], walk[mode]
        assert walk[mode]["cpu_ms_per_s"] > 0 and walk[mode]["frames"] >= 1, walk[mode]
    assert walk["reference"]["decoded_per_s"] > 0.8 * walk["all"]["decoded_per_s"], walk  # no B-frames: none skipped
    assert files["reference_over_all"] == pytest.approx(walk["reference_over_all"]) and files["sampled_fps"] == 5.0
    path = out["frame_path"]
    (clip,) = path["clips"]
    assert clip["frame_shape"] == [576, 768, 3] and clip["frames"] == 20
    assert clip["object_store"]["bytes"] == 640 * 640 * 3 and path["shipped_bytes_pixels"] > 640 * 640 * 3
    assert clip["shared_memory"]["bytes"] == 640 * 640 * 3 and 0 < path["shipped_bytes"] < 1000, path
    assert path["copies"] == pytest.approx(3.0, abs=0.05), path
    assert clip["ultralytics_letterbox"]["copies"] > clip["letterbox"]["copies"] + 0.5, clip


def test_a_video_stall_while_audio_flows_ends_the_read(tmp_path):
    """PyAV restarts its read timeout on every packet of any stream: a camera whose video stops
    while its audio goes on would block its reader forever. Here a real file, 1 s of video then
    audio only, read with a clock that moves 20 ms a packet: the read ends once no video came
    for the read timeout, and the frames before it were all read."""
    import av

    from pipeline.capture_av import SkippingCapture

    clip = tmp_path / "stall.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=d=1:s=160x120:r=10", "-f", "lavfi",
                    "-i", "sine=d=8", "-c:v", "libx264", "-g", "5", "-bf", "0", "-c:a", "aac", str(clip)], check=True, timeout=120)
    ticks = iter(range(100_000))
    container = av.open(str(clip))
    container.streams.video[0].codec_context.thread_count = 1  # as a live camera's: no frame delay
    cap = SkippingCapture(container, container.streams.video[0], read_timeout_s=2.0,
                          clock=lambda: next(ticks) * 0.02)
    try:
        frames = 0
        while cap.grab():
            frames += 1
        audio_left = sum(1 for _ in container.demux(container.streams.audio[0]))
    finally:
        cap.release()
    assert frames == 10  # every video frame, then the stall ends the read (not the file's end)
    assert audio_left > 50, "the read should end while audio is still flowing"


def test_an_mpeg_ts_file_keeps_its_frame_rate_after_an_rtsp_camera_opened(tmp_path, monkeypatch):
    """An RTSP open sets OpenCV's FFmpeg options for the whole process (a tiny probe); a file's
    frame rate (what pacing and loops go by) is read without them."""
    from pipeline.capture import probe_fps

    clip = tmp_path / "ntsc.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=d=2:s=160x120:r=24000/1001",
                    "-c:v", "libx264", "-f", "mpegts", str(clip)], check=True, timeout=120)
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp|analyzeduration;0|probesize;32")
    assert abs(probe_fps(str(clip)) - 23.976) < 0.01
    assert probe_fps(str(tmp_path / "none.ts")) is None


def test_a_file_camera_opened_after_an_rtsp_camera_still_decodes(tmp_path):
    """OpenCV reads FFmpeg's options from the environment at every open: the RTSP cameras' tiny
    probe, left there for the process, made an MPEG-TS file with audio decode nothing (every
    grab, no frame: `online` and silent). They are set for an RTSP open only."""
    import os

    clip = tmp_path / "av.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=d=3:s=320x240:r=25", "-f", "lavfi",
                    "-i", "sine=d=3", "-c:v", "mpeg2video", "-c:a", "mp2", "-f", "mpegts", str(clip)], check=True, timeout=120)
    with pytest.raises(SourceError):
        open_capture("rtsp", "rtsp://127.0.0.1:9/none", open_timeout_s=1)
    assert os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS", "") == ""  # (empty: OpenCV's "no options")
    assert len(read_all(str(clip), "all", fps=5)) >= 14  # 3 s at 5 fps


def test_a_looping_file_whose_timestamps_start_late_continues_across_the_loop(tmp_path):
    """PyAV gives a frame's time from 0 of the stream's clock, not of its start: a file starting
    at 600 s looped with a 600 s jump (realtime: a 600 s pause). Positions count from the start."""
    clip = ts_clip(tmp_path / "late.ts", 2, "-output_ts_offset", "600")
    pts = looped_pts(lambda: open_capture("cam", str(clip), decode="keyframes"), 10)  # two passes and more
    steps = [b - a for a, b in zip(pts, pts[1:])]
    assert pts[0] < 1 and all(0 < s < 1 for s in steps), pts


def test_a_raw_h264_file_without_timestamps_is_sampled_at_its_frame_rate(tmp_path):
    """A raw H.264 file has no positions: each frame comes one frame interval after the last
    (with PyAV's reference decoding it came with none, and the sampler took one frame)."""
    from pipeline.capture import probe_fps

    clip = tmp_path / "raw.h264"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=d=4:s=160x120:r=25", "-c:v", "libx264",
                    "-g", "25", "-bf", "2", "-f", "h264", str(clip)], check=True, timeout=120)
    for decode in ("all", "reference"):
        src = VideoSource("cam", lambda: open_capture("cam", str(clip), decode=decode), fps=5, is_file=True,
                          realtime=False, native_fps=probe_fps(str(clip)))
        frames = list(src.frames())
        assert 18 <= len(frames) <= 23 and 3.5 < frames[-1].meta.pts < 4.5, (decode, [f.meta.pts for f in frames])
    # keyframes (one a second): a second apart on the file's timeline, not one frame interval
    src = VideoSource("cam", lambda: open_capture("cam", str(clip), decode="keyframes"), fps=0, is_file=True,
                      realtime=False, native_fps=probe_fps(str(clip)))
    pts = [f.meta.pts for f in src.frames()]
    assert len(pts) == 4 and all(abs(b - a - 1.0) < 0.05 for a, b in zip(pts, pts[1:])), pts


def test_a_keyframes_camera_whose_packets_bring_no_keyframe_ends_the_read(tmp_path):
    """``decode: keyframes`` on a stream that sends no keyframe after its first (intra refresh,
    or every packet damaged): each packet restarted the read timeout and decoded to nothing, so
    the reader looped forever, ``connecting``, and could not be stopped. Here a real file, one
    keyframe then 249 frames without, read with a clock moving 20 ms a packet: the read ends
    once no frame was kept for the frame timeout (2 s), long before the file's end."""
    import av

    from pipeline.capture_av import SKIP_FRAME, SkippingCapture

    clip = tmp_path / "one-keyframe.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=d=10:s=160x120:r=25", "-c:v", "libx264",
                    "-g", "1000", "-bf", "0", str(clip)], check=True, timeout=120)
    ticks = iter(range(100_000))
    container = av.open(str(clip))
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    stream.codec_context.skip_frame = SKIP_FRAME["keyframes"]
    cap = SkippingCapture(container, stream, read_timeout_s=2.0, frame_timeout_s=2.0, clock=lambda: next(ticks) * 0.02)
    try:
        frames = 0
        while cap.grab():
            frames += 1
    finally:
        cap.release()
    assert frames == 1 and cap.packets < 150, (frames, cap.packets)
