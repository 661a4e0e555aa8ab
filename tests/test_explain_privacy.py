"""`percept explain --image/--video` (no running graph) draws its heat map on the frame with the
faces blurred, as the service's own explain endpoint does; ``--no-blur`` draws on the frame as
it is; what could not be shown, or has nothing to explain, is refused before the work. Real
detector and YuNet from the shared models, people.mp4."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from .conftest import DETECTOR, VIDEOS
from .inprocess import percept
from .view_frames import clip_frame, faces

FRAME = 30  # people.mp4: YuNet finds a dozen faces in it


@pytest.mark.integration
def test_offline_explanations_blur_faces_unless_told_not_to(models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPT_MODELS_DIR", str(models_dir))
    assert faces(clip_frame("people.mp4", FRAME)) >= 5
    found = {}
    for flags in ((), ("--no-blur",)):
        out = tmp_path / f"explain{len(flags)}.png"
        code, _, stderr = percept("explain", "--video", str(VIDEOS / "people.mp4"), "--frame", str(FRAME),
                                  "--weights", DETECTOR, "--object", "0", "--masks", "16", "--out", str(out), *flags)
        assert code == 0, stderr
        found[flags] = faces(cv2.imread(str(out)))
    assert found[()] == 0, f"YuNet finds {found[()]} faces in the explanation"
    assert found[("--no-blur",)] >= 5


@pytest.mark.integration
def test_an_explanation_that_could_not_be_shown_is_refused_before_any_work(models_dir, tmp_path, monkeypatch):
    """A face model that does not load: `percept explain` ran the whole explanation (thousands of
    detector calls: the service's one explain worker held for minutes) and then failed with a
    traceback. It is refused first now, the detector not even loaded, saying how to go on."""
    broken = tmp_path / "face-detection-yunet" / "face_detection_yunet_2023mar.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not an onnx file")
    monkeypatch.setenv("PERCEPT_MODELS_DIR", str(tmp_path))
    out = tmp_path / "explain.png"
    code, stdout, stderr = percept("explain", "--video", str(VIDEOS / "people.mp4"), "--frame", str(FRAME),
                                   "--weights", str(Path(models_dir) / DETECTOR), "--object", "0", "--masks", "16",
                                   "--out", str(out))
    assert code == 2 and "Traceback" not in stderr, stderr
    assert "privacy asks for faces" in stderr and "--no-blur" in stderr, stderr
    assert not out.exists() and "detector calls" not in stdout


@pytest.mark.integration
def test_an_object_the_explaining_detector_does_not_find_is_an_error_not_an_empty_heat_map(models_dir):
    """An object the detector explaining does not find on the frame (the published frame came
    from weights swapped out since, or another imgsz): the heat map was all zero, answered 200
    with a heat ratio of inf and deletion scores of 0 — read as a perfect explanation."""
    import numpy as np

    from pipeline.backends import load_detector
    from pipeline.config import DetectorConfig
    from pipeline.explain import ExplainError, Target, explain

    detector = load_detector(DetectorConfig(weights=DETECTOR, conf=0.05, threads=2), models_dir=str(models_dir))
    grey = np.full((360, 640, 3), 114, np.uint8)  # nothing on it
    ghost = Target(box=(100.0, 100.0, 200.0, 160.0), label="car", score=0.8)
    calls = []
    batch = detector.detect_batch
    detector.detect_batch = lambda inputs: calls.append(len(inputs)) or batch(inputs)
    with pytest.raises(ExplainError, match="does not find this car"):
        explain(detector, grey, ghost, imgsz=640, method="rise", masks=64)
    assert calls == [1], "the masks were run for an object the detector does not find"


def test_the_explain_endpoint_refuses_before_loading_a_detector_when_it_could_not_blur(tmp_path):
    """The service's explain worker: the same order (`ExplainApi._run`), a blur asked for whose
    model is missing refused before the detector is even chosen."""
    from deployments.explain import ExplainApi
    from pipeline.config import PerceptConfig
    from pipeline.privacy import PrivacyUnavailable

    api = ExplainApi(PerceptConfig.model_validate({"models_dir": str(tmp_path), "privacy": {"blur": ["faces"]}}),
                     None, None, None, None)
    chosen = []
    api._detector_for = lambda frame, target: chosen.append(target) or pytest.fail("a detector was chosen")
    with pytest.raises(PrivacyUnavailable):
        api._run(None, 0, None, "rise", 16)
    assert chosen == []


@pytest.mark.integration
def test_out_is_written_whole_where_it_was_checked_and_never_over_the_input(models_dir, tmp_path, monkeypatch):
    """``--out=~/car.png`` (no shell expands it there) was checked at home and then written to
    ``./~/car.png``: refused after the whole explanation. ``--out`` naming the ``--image`` replaced
    the photo with the PNG. A write cut short (a full disk) left a cut PNG over the file there,
    the reason unsaid."""
    import shutil
    import subprocess
    import sys

    from .conftest import REPO, SHARED

    photo = tmp_path / "street.jpg"
    shutil.copy(SHARED / "data" / "coco128-val" / "images" / "000000000139.jpg", photo)
    before = photo.read_bytes()
    monkeypatch.setenv("PERCEPT_MODELS_DIR", str(models_dir))
    base = ("explain", "--image", str(photo), "--weights", DETECTOR, "--object", "0", "--masks", "16", "--threads", "1")
    code, stdout, stderr = percept(*base, "--out", str(photo))
    assert code == 2 and f"--out: {str(photo)!r} is the --image itself" in stderr, stderr
    assert photo.read_bytes() == before and "detector calls" not in stdout
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    code, _, stderr = percept(*base, "--out=~/car.png")
    assert code == 0 and cv2.imread(str(home / "car.png")) is not None, stderr
    kept = tmp_path / "kept.png"
    kept.write_bytes(b"an earlier explanation")
    script = f"ulimit -f 64; exec {sys.executable} -m cli {' '.join(base)} --out {kept}"  # (64 kB: the PNG is ~400)
    done = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and f"cannot write {kept}: File too large" in done.stderr, done.stderr[-2000:]
    assert kept.read_bytes() == b"an earlier explanation" and sorted(p.name for p in tmp_path.glob(".*")) == []


class _StandIn:
    """A detector that always finds the object (the deletion check's own cost is measured)."""

    def __init__(self, box):
        self.box = box

    def detect_batch(self, inputs):
        from pipeline.schema import Detections

        return [Detections(xyxy=[self.box], scores=[0.9], labels=("car",), categories=("vehicle",)) for _ in inputs]


def test_the_deletion_check_costs_the_detectors_input_not_the_frames_size():
    """It greyed pixels of the full frame: a full-size argsort, five copies of the frame and a
    draw without replacement over every pixel, 270 MB and 1.8 s for a 4000 × 4000 frame (0.75 GB
    and 10 s for 8K, on the API's replica, for one number)."""
    import tracemalloc

    import numpy as np

    from pipeline.explain import Target, deletion_check

    side = 4000
    frame = np.full((side, side, 3), 100, np.uint8)
    box = (1600.0, 1600.0, 2400.0, 2400.0)
    heat = np.zeros((side, side), np.float32)
    heat[1600:2400, 1600:2400] = 1.0
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        check = deletion_check(_StandIn(box), frame, Target(box, "car", 0.9), heat, imgsz=640)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert check.original == pytest.approx(0.9) and check.hottest == pytest.approx(0.9)
    assert peak < 3 * frame.nbytes / 4, f"{peak / 2**20:.0f} MB for a {frame.nbytes / 2**20:.0f} MB frame"
