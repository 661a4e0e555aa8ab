"""Frames and checks the live-view tests share: a clip's frame, faces YuNet finds, JPEG
decoding, the outline of a box."""

from __future__ import annotations

import cv2
import numpy as np

from .conftest import MODELS, VIDEOS

VIEW_WIDTH = 512
FACE_SCORE = 0.6  # "a face YuNet finds": its measured scores on people.mp4 are 0.6-0.92
YUNET = MODELS / "face-detection-yunet" / "face_detection_yunet_2023mar.onnx"


def clip_frame(name: str, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(VIDEOS / name))
    try:
        for _ in range(index + 1):
            ok, frame = cap.read()
            assert ok, f"{name} has no frame {index}"
        return frame
    finally:
        cap.release()


def faces(image: np.ndarray, score: float = FACE_SCORE) -> int:
    """How many faces YuNet finds at ``score`` (a detector of its own, at the image's size)."""
    det = cv2.FaceDetectorYN.create(str(YUNET), "", (image.shape[1], image.shape[0]), score, 0.3, 5000)
    _, found = det.detect(image)
    return 0 if found is None else len(found)


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


def border_band(shape: tuple[int, ...], box: np.ndarray, width: int = 2, top: bool = True) -> np.ndarray:
    """Mask of the pixels on the outline of an xyxy box (``width`` each side of it); without its
    top edge (where the label sits) when ``top`` is False."""
    mask = np.zeros(shape[:2], np.uint8)
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    edges = [((x1, y1), (x1, y2)), ((x2, y1), (x2, y2)), ((x1, y2), (x2, y2))] + ([((x1, y1), (x2, y1))] if top else [])
    for a, b in edges:
        cv2.line(mask, a, b, 255, 2 * width)
    return mask > 0


# --- pipeline level ------------------------------------------------------------------------------
