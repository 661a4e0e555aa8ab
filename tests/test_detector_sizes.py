"""The places of the OpenVINO detector's compiled input sizes (`pipeline/backends/openvino_sizes.py`):
real detector from the shared models, traffic.mp4 (640x384 frames) and vtest.avi (640x480)."""

from __future__ import annotations

import threading

from pipeline.backends.openvino_sizes import SIZE_IDLE_S
from pipeline.models import prepare_frame
from pipeline.schema import Detections

from .test_detector_backends import ALL, DETECTOR, detector, frames

def test_a_size_no_frame_runs_at_any_more_gives_its_place_to_a_new_one(monkeypatch):
    """The places for compiled sizes went to the first sizes seen, for the replica's life: a
    camera that came back at another resolution (or one removed) kept its place, and every camera
    of a size seen later ran in the padded square. A size idle `SIZE_IDLE_S` gives its place."""
    import pipeline.backends.openvino_detector as ovd

    monkeypatch.setattr(ovd, "MAX_SIZES", 1)  # the square and one rectangle
    det = detector(DETECTOR, categories=ALL)
    traffic, walk = (prepare_frame(f, 640) for f in (frames("traffic.mp4", [5])[0], frames("vtest.avi", [5])[0]))
    det.detect_batch([traffic])
    assert det.wait_compiling(120) and det.sizes.runners.get((384, 640)) is not None
    det.detect_batch([walk])  # no place: the square, while traffic's size is in use
    assert det.sizes.runners.get((480, 640), "never tried") is None
    det.sizes.used[(384, 640)] -= SIZE_IDLE_S  # traffic's size ran no frame for a minute ...
    det.sizes.full_at[(480, 640)] -= SIZE_IDLE_S  # ... and the refusal is as old
    got = det.detect_batch([walk])[0]
    assert det.wait_compiling(120) and det.sizes.runners.get((480, 640)) is not None and (384, 640) not in det.sizes.runners, list(det.sizes.runners)
    assert isinstance(got, Detections) and len(got) > 0
    det.detect_batch([traffic])  # its place taken now (the other one just ran): the square, not an error
    assert det.sizes.runners.get((384, 640), "never tried") is None


def test_a_new_size_is_compiled_while_its_frames_and_the_others_run(monkeypatch):
    """A size was compiled inside the batch of its first frame: every frame of that batch (other
    cameras' too) and every later frame of their cameras waited for it (17 s under load, a
    portrait camera added to three others). Now its frames run in the padded square until the
    compile, in the background, is done; here it is held until the batch has answered."""
    det = detector(DETECTOR, categories=ALL)
    traffic, walk = (prepare_frame(f, 640) for f in (frames("traffic.mp4", [5])[0], frames("vtest.avi", [5])[0]))
    det.detect_batch([traffic])
    assert det.wait_compiling(120)
    release, compile_at = threading.Event(), det._compile_at
    monkeypatch.setattr(det, "_compile_at", lambda size: release.wait(300) and compile_at(size))
    answered: list = []
    worker = threading.Thread(target=lambda: answered.extend(det.detect_batch([traffic, walk])), daemon=True)
    worker.start()
    worker.join(120)  # (inline, the compile held the batch until release: never, here)
    try:
        assert answered and all(isinstance(a, Detections) and len(a) > 0 for a in answered), answered
        assert (480, 640) in det.sizes.runners and det.sizes.runners[(480, 640)] is None  # its place held, compiling
        square = detector(DETECTOR, categories=ALL, rect=False).detect_batch([walk])[0]
        assert answered[1] == square  # (its frames in the square meanwhile)
    finally:
        release.set()
    assert det.wait_compiling(300) and det.sizes.runners[(480, 640)] is not None
    assert len(det.detect_batch([walk])[0]) > 0
