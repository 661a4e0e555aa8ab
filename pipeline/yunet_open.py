"""Making OpenCV's YuNet face detector (``cv2.FaceDetectorYN``) without OpenCV's own warning.
OpenCV 5 warns at every ``create`` that "Targets are not supported by the new graph engine for
now" (its dnn module asked for the default target): written to stderr, a WARN line before every
`percept explain` answer and in a replica's log at each input size, about nothing the user set.
It is silenced for the create alone, and only at OpenCV's default level (``OPENCV_LOG_LEVEL``
set to INFO or DEBUG still shows it)."""

from __future__ import annotations

from typing import Any


def create_yunet(path: str, size: tuple[int, int], score: float, nms_iou: float, top_k: int) -> Any:
    """``cv2.FaceDetectorYN.create(path, "", size, score, nms_iou, top_k)`` (raises cv2.error)."""
    import cv2

    logging = cv2.utils.logging
    level = logging.getLogLevel()
    quiet = level == logging.LOG_LEVEL_WARNING
    if quiet:
        logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    try:
        return cv2.FaceDetectorYN.create(path, "", size, score, nms_iou, top_k)
    finally:
        if quiet:
            logging.setLogLevel(level)
