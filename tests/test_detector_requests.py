"""A native OpenVINO detector whose infer requests fail in OpenVINO's callback (the real shared
model, its queue's callback given an output that cannot be read): the batch fails at once and
its frames, retried alone, are detected."""

from __future__ import annotations

from pipeline.models import prepare_frame

from .conftest import DETECTOR
from .test_detector_backends import detector, frames


def test_a_request_whose_output_cannot_be_read_fails_its_batch_at_once(monkeypatch):
    """An infer request's output that raises when read (in OpenVINO's callback) left its batch
    waiting for the 60 s timeout, then again at each halving of the batch. It fails the batch at
    once now; its frames, retried alone, are detected."""
    import threading

    import pipeline.backends.openvino_detector as ov_detector

    from .waiting import wait_for

    real = ov_detector._request_done

    class Gone:  # the request as the callback sees it, its output tensor unreadable
        def get_output_tensor(self, index):
            raise RuntimeError("output tensor 0 cannot be read")

    monkeypatch.setattr(ov_detector, "_request_done", lambda request, userdata: real(Gone(), userdata))
    det = detector(DETECTOR)  # (its queue's callback: the one above)
    batch = [prepare_frame(f, 640) for f in frames("traffic.mp4", [3, 9])]
    out: list = []
    worker = threading.Thread(target=lambda: out.append(det.detect_batch(batch)), daemon=True)
    worker.start()
    wait_for(lambda: out, 30, "the batch answered (it waited out the 60 s timeout)")
    assert all(len(d) > 0 for d in out[0]), out  # each frame alone: the single request, not the queue
