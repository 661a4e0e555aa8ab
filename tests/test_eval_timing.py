"""`percept eval` and `percept models compare` time a model as it runs once warm. A detector that
fits each frame (an OpenVINO export at ``rect``) compiles per frame size on first use (~0.8 s
here), and that was counted: eval said 188.7 ms/image on 32 COCO images against 29.5 once
compiled; compare at ``--repeat 1`` said 648 and picked the wrong batch size. A stand-in
detector on a fake clock: the rule alone (speed itself is `percept bench`'s)."""

from __future__ import annotations

import types

import cv2
import numpy as np

import pipeline.evaluate
import pipeline.lifecycle.compare
from pipeline.backends.openvino_export import crop_window
from pipeline.schema import Detections


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class SlowOnANewSize:
    """1 s (on the fake clock) for a frame of a size it has not run yet, 10 ms an image after."""

    name, device, names = "stand-in", "cpu", {0: "person", 1: "car"}

    def __init__(self, clock: FakeClock):
        self.clock, self.sizes = clock, set()

    def detect_batch(self, inputs):
        for inp in inputs:
            size = crop_window(inp.orig_shape, inp.image.shape[0])[2:]
            self.clock.t += 0.01 if size in self.sizes else 1.0
            self.sizes.add(size)
        return [Detections() for _ in inputs]


def frames_of_two_sizes(folder):
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    frames = []
    for i, (h, w) in enumerate([(480, 640), (640, 480), (480, 640), (640, 480), (360, 640), (480, 640)]):
        frames.append(np.full((h, w, 3), 90, np.uint8))
        cv2.imwrite(str(folder / "images" / f"{i}.jpg"), frames[-1])
        (folder / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    return frames


def test_eval_times_each_frame_size_after_its_first_run(tmp_path, monkeypatch):
    clock = FakeClock()
    frames_of_two_sizes(tmp_path / "data")
    monkeypatch.setattr(pipeline.evaluate, "time", types.SimpleNamespace(perf_counter=clock))
    monkeypatch.setattr("pipeline.backends.load_detector", lambda *a, **k: SlowOnANewSize(clock))
    out = pipeline.evaluate.evaluate_detector("stand-in.pt", tmp_path / "data", batch=2, categories={"all": ["*"]})
    assert out["ms_per_image"] == 10.0, out["ms_per_image"]  # (before: 505, each size's first run counted)


def test_compare_times_each_frame_size_after_its_first_run(monkeypatch):
    clock = FakeClock()
    images = [np.full((h, w, 3), 90, np.uint8) for h, w in [(480, 640), (640, 480), (360, 640), (480, 640)]]
    monkeypatch.setattr(pipeline.lifecycle.compare, "time", types.SimpleNamespace(perf_counter=clock))
    monkeypatch.setattr(pipeline.lifecycle.compare, "_load", lambda *a, **k: SlowOnANewSize(clock))
    ms = pipeline.lifecycle.compare.time_variant("stand-in.pt", "detect", images, [1, 2], imgsz=640, repeat=1)
    assert ms == {1: 10.0, 2: 10.0}, ms  # (before: 505 at batch 1, its first runs counted)
