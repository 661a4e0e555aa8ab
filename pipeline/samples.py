"""The demo's cameras and models: the shared sample clips looping as cameras (or ultralytics'
bundled images as still cameras) and the best detector/classifier found in the models folder.
Used by `percept demo` and as the base configuration of `percept bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import PerceptConfig, parse_config

ENV_SAMPLE_VIDEOS = "PERCEPT_SAMPLE_VIDEOS"
CLIP_CAMERAS = (("traffic.mp4", "traffic"), ("vtest.avi", "pedestrians"), ("people.mp4", "crowd"))
VEHICLE_LABELS = [
    "minivan", "sports_car", "cab", "pickup", "police_van", "minibus", "school_bus", "trolleybus", "jeep",
    "limousine", "convertible", "beach_wagon", "moving_van", "ambulance", "fire_engine", "garbage_truck",
    "tow_truck", "trailer_truck", "moped", "motor_scooter", "mountain_bike", "bicycle-built-for-two",
]


def _sample_cameras(videos_dir: str | None) -> list[dict[str, Any]]:
    cameras: list[dict[str, Any]] = []
    if videos_dir:
        for name, cam_id in CLIP_CAMERAS:
            path = Path(videos_dir) / name
            if path.exists():
                cameras.append({"id": cam_id, "url": str(path), "fps": 4, "loop": True})
    if not cameras:
        from ultralytics.utils import ASSETS

        for name in ("bus.jpg", "zidane.jpg"):
            cameras.append({"id": Path(name).stem, "url": str(ASSETS / name), "fps": 2, "loop": True})
    return cameras


def demo_config(videos_dir: str | None, models_dir: str | None, state_dir: str) -> PerceptConfig:
    mdir = Path(models_dir) if models_dir else None

    def pick(*names: str) -> str:
        for n in names:
            if mdir and (mdir / n).exists():
                return n
        return names[-1]

    return parse_config(
        {
            "cameras": _sample_cameras(videos_dir),
            "detector": {"weights": pick("yolo11n_int8_openvino_model", "yolo11n-coco.pt", "yolo11n.pt"), "imgsz": 640},
            "classifiers": {
                "vehicle": {
                    "weights": pick("yolov8n-cls-imagenet.pt", "yolov8n-cls.pt"),
                    "labels": VEHICLE_LABELS,
                    "max_per_frame": 8,
                }
            },
            "models_dir": models_dir,
            "state_dir": state_dir,
        },
        env={},
    )
