"""`percept explain --image/--video` (no running graph) draws its heat map on the frame with the
faces blurred, as the service's own explain endpoint does; ``--no-blur`` draws on the frame as
it is. Real detector and YuNet from the shared models, people.mp4."""

from __future__ import annotations

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
