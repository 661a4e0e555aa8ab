"""The places of the OpenVINO detector's compiled input sizes (`pipeline/backends/openvino_sizes.py`):
real detector from the shared models, traffic.mp4 (640x384 frames) and vtest.avi (640x480)."""

from __future__ import annotations

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
    assert det.sizes.runners.get((384, 640)) is not None
    det.detect_batch([walk])  # no place: the square, while traffic's size is in use
    assert det.sizes.runners.get((480, 640), "never tried") is None
    det.sizes.used[(384, 640)] -= SIZE_IDLE_S  # traffic's size ran no frame for a minute ...
    det.sizes.full_at[(480, 640)] -= SIZE_IDLE_S  # ... and the refusal is as old
    got = det.detect_batch([walk])[0]
    assert det.sizes.runners.get((480, 640)) is not None and (384, 640) not in det.sizes.runners, list(det.sizes.runners)
    assert isinstance(got, Detections) and len(got) > 0
    det.detect_batch([traffic])  # its place taken now (the other one just ran): the square, not an error
    assert det.sizes.runners.get((384, 640), "never tried") is None
