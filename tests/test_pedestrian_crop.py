"""The pedestrian card's crop (`configs/models/person-attributes.yaml`): the person's box
stretched to 80x160, as Open Model Zoo's crossroad demo feeds that network. Widened to 1:2 with
context, a person filled half the crop. The shipped network on ultralytics' bus.jpg."""

from __future__ import annotations

import cv2

from pipeline.models import prepare_crop

from .test_classifier_backends import people  # noqa: F401 (the fixture)


def test_people_in_trousers_are_said_to_wear_long_pants(people):
    """The card's crop: the person's box stretched to 80x160, as the network was made for. The
    box widened to 1:2 with context filled half the crop with street and bus: of bus.jpg's three
    people in trousers (boxes yolo11n-coco finds there), one had long pants 0.33, another 0.51."""
    from ultralytics.utils import ASSETS

    image = cv2.imread(str(ASSETS / "bus.jpg"))
    boxes = [(671, 395, 810, 879), (48, 400, 240, 904), (223, 408, 345, 860)]
    results = people.classify_batch([prepare_crop(image, box, people.crop_size, context=people.crop_context,
                                                  fit=people.crop_fit) for box in boxes])
    pants = [r["has_longpants"] for r in results]
    assert all(p["value"] and p["probability"] >= 0.8 for p in pants), pants  # (measured: 0.97, 0.92, 0.90)
