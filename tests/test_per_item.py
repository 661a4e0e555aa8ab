"""`per_item` (pipeline/backends/base.py): a failed batch run is retried by halves so that only
the bad items fail, unless the model fails whatever it gets. Pure logic;
the backends' own batches, and a model that fails whatever it gets, are in test_detector_backends.py
and test_classifier_backends.py."""

from __future__ import annotations

from pipeline.backends.base import per_item


def test_bad_items_first_in_a_batch_fail_alone_not_every_cameras_items_after_them():
    """One frame's 4 crops that the model cannot take, first in a classifier batch of 32 (the
    crops of every camera in arrival order): the first half's items all failing was taken for a
    model that fails everything, and the other 28 crops, other cameras' among them, got no answer."""
    def run(items):
        if any(i < 4 for i in items):
            raise ValueError("a crop the model cannot take")
        return [i * 2 for i in items]

    for n in (8, 16, 32):
        out = per_item(run, list(range(n)))
        assert all(isinstance(x, ValueError) for x in out[:4]), out
        assert out[4:] == [i * 2 for i in range(4, n)], (n, out)
