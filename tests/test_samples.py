"""The demo's cameras (`pipeline.samples`): the shared clips, and a sign camera made from the
street images beside them when there are any it can read."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from pipeline.samples import demo_config


def test_a_sign_image_folder_with_nothing_readable_leaves_the_demo_its_other_cameras(tmp_path, videos, caplog):
    """An empty ``gtsdb-sample/images`` beside the videos, or one whose first image is not an
    image, stopped ``percept demo`` with a traceback before anything ran."""
    clips = tmp_path / "videos"
    clips.mkdir()
    (clips / "traffic.mp4").symlink_to(videos / "traffic.mp4")
    images = tmp_path / "gtsdb-sample" / "images"
    images.mkdir(parents=True)

    def cameras(state: str) -> list[str]:
        return [c.id for c in demo_config(str(clips), None, str(tmp_path / state)).cameras]

    with caplog.at_level(logging.WARNING, logger="percept.samples"):
        assert cameras("empty") == ["traffic"]
        (images / "a.jpg").write_bytes(b"not an image")
        assert cameras("unreadable") == ["traffic"]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and all(f"no sign camera: no image OpenCV can read in {images}" == m for m in said), said
    assert cv2.imwrite(str(images / "b.jpg"), np.full((48, 64, 3), 128, np.uint8))
    assert cameras("readable") == ["traffic", "signs"]  # the unreadable one skipped
