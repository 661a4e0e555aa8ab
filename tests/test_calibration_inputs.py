"""INT8 calibration frames from videos (`models export --calib`): each video's frames under names
of their own, videos beside images in one folder, a recording with no index; and a label's class
written as a float, as `percept eval` reads it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.lifecycle.export_inputs import calibration_frames


def clip(path: Path, value: int, frames: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for _ in range(frames):
        out.write(np.full((48, 64, 3), value, np.uint8))
    out.release()
    return path


def test_two_videos_of_one_name_each_give_their_own_frames(tmp_path):
    """``camA/clip.mp4`` and ``camB/clip.mp4`` wrote the same ``clip_000000.jpg``…: all of camA's
    frames were camB's, and the count said twice as many as there were."""
    a, b = clip(tmp_path / "camA" / "clip.mp4", 40), clip(tmp_path / "camB" / "clip.mp4", 200)
    into = tmp_path / "frames"
    into.mkdir()
    got = calibration_frames([a, b], limit=10, into=into)
    assert len(got) == len(set(got)) == 10, got  # (their 20 frames written, 10 taken evenly)
    means = sorted(round(float(cv2.imread(str(p)).mean()), -1) for p in got)
    assert means.count(40.0) >= 1 and means.count(200.0) >= 1, means


def test_a_folder_of_images_and_videos_gives_frames_of_both(tmp_path):
    """A recordings folder with one ``snapshot.jpg`` beside its videos calibrated on that one image."""
    folder = tmp_path / "calib"
    clip(folder / "cam1.mp4", 90)
    cv2.imwrite(str(folder / "snapshot.jpg"), np.full((48, 64, 3), 10, np.uint8))
    into = tmp_path / "frames"
    into.mkdir()
    got = calibration_frames([folder], limit=20, into=into)
    assert folder / "snapshot.jpg" in got and any(p.parent == into for p in got), got


def test_a_recording_without_an_index_gives_frames(tmp_path):
    """An MKV written as a stream (a piped or live capture) has no frame count (OpenCV: -2.3e17):
    "cannot read frames" though every frame decodes."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg not installed (scripts/install-system-deps.sh --test installs it)")
    ts = subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=6",
                         "-c:v", "mpeg2video", "-f", "mpegts", "-"], capture_output=True, check=True, timeout=60).stdout
    mkv = tmp_path / "live.mkv"
    subprocess.run([ffmpeg, "-v", "error", "-f", "mpegts", "-i", "-", "-c", "copy", "-f", "matroska", "-live", "1",
                    str(mkv)], input=ts, check=True, timeout=60)
    cap = cv2.VideoCapture(str(mkv))
    assert not 1 <= cap.get(cv2.CAP_PROP_FRAME_COUNT) <= 1e8  # (what makes it a case: no count to spread over)
    cap.release()
    into = tmp_path / "frames"
    into.mkdir()
    got = calibration_frames([mkv], limit=4, into=into)
    assert 3 <= len(got) <= 4, got


def test_a_label_class_written_as_a_float_is_read_by_finetune_as_by_eval(tmp_path):
    from pipeline.lifecycle.finetune_data import FinetuneError, read_dataset

    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "labels").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "d" / "images" / f"{i}.jpg"), np.full((48, 64, 3), 50 * i, np.uint8))
        (tmp_path / "d" / "labels" / f"{i}.txt").write_text("2.0 0.5 0.5 0.2 0.2\n")
    ds = read_dataset(tmp_path / "d", model_names={0: "person", 1: "bicycle", 2: "car"})
    assert len(ds.train) == 3
    (tmp_path / "d" / "labels" / "0.txt").write_text("2.5 0.5 0.5 0.2 0.2\n")
    with pytest.raises(FinetuneError, match="not a YOLO label line"):
        read_dataset(tmp_path / "d", model_names={0: "person", 1: "bicycle", 2: "car"})
