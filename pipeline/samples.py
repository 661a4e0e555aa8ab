"""The demo's cameras and models: the shared sample clips looping as cameras (or ultralytics'
bundled images as still cameras), a sign camera made from the GTSDB street scenes when they
are there, and the best models found in the models folder for all three categories:

- vehicles → type and colour (Intel's vehicle-attributes network),
- pedestrians → 8 attributes (Intel's person-attributes network),
- signs → the GTSDB sign detector beside the COCO model, the GTSRB classifier on every sign
  crop (a second opinion, ``sign``), traffic lights (COCO) → ``state``.

Used by `percept demo` and as the base configuration of `percept bench`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .config import PerceptConfig, parse_config

log = logging.getLogger("percept.samples")
ENV_SAMPLE_VIDEOS = "PERCEPT_SAMPLE_VIDEOS"
CLIP_CAMERAS = (("traffic.mp4", "traffic"), ("vtest.avi", "pedestrians"), ("people.mp4", "crowd"))
VEHICLE_LABELS = [
    "minivan", "sports_car", "cab", "pickup", "police_van", "minibus", "school_bus", "trolleybus", "jeep",
    "limousine", "convertible", "beach_wagon", "moving_van", "ambulance", "fire_engine", "garbage_truck",
    "tow_truck", "trailer_truck", "moped", "motor_scooter", "mountain_bike", "bicycle-built-for-two",
]
# model files (under PERCEPT_MODELS_DIR) the demo uses when they are there
COCO_DETECTORS = ("yolo11n_int8_openvino_model", "yolo11n-coco.pt")
SIGN_DETECTOR = "traffic-sign-detector-gtsdb43/yolov5n_gtsdb43_640_fp16w.onnx"
VEHICLE_ATTRIBUTES = "vehicle-attributes-recognition-barrier-0039/FP16-INT8/vehicle-attributes-recognition-barrier-0039.xml"
PERSON_ATTRIBUTES = "person-attributes-recognition-crossroad-0230/FP16-INT8/person-attributes-recognition-crossroad-0230.xml"
SIGN_CLASSIFIER = "gtsrb-sign-classifier-32/gtsrb_gray32.xml"
LIGHT_STATE = "traffic-light-state/tl_state_bgr32.onnx"
IMAGENET_CLASSIFIER = "yolov8n-cls-imagenet.pt"
SIGN_CAMERA_SECONDS_PER_IMAGE = 1.0


def sign_video(images_dir: Path, out: Path, *, seconds_per_image: float = SIGN_CAMERA_SECONDS_PER_IMAGE,
               limit: int | None = None) -> Path:
    """A video of a folder of street images (sorted by name), each shown ``seconds_per_image``:
    a camera that sees traffic signs. Written once; an existing file is reused."""
    import cv2

    if out.exists() and out.stat().st_size > 0:
        return out
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]
    first = next((image for image in map(cv2.imread, map(str, images)) if image is not None), None)
    if first is None:
        raise FileNotFoundError(f"no image OpenCV can read in {images_dir}")
    h, w = first.shape[:2]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), 1.0 / seconds_per_image, (w, h))
    try:
        for path in images:
            image = cv2.imread(str(path))
            if image is not None:
                writer.write(image if image.shape[:2] == (h, w) else cv2.resize(image, (w, h)))
    finally:
        writer.release()
    tmp.replace(out)
    return out


def _sample_cameras(videos_dir: str | None, sign_images: str | None, state_dir: str) -> list[dict[str, Any]]:
    cameras: list[dict[str, Any]] = []
    if videos_dir:
        for name, cam_id in CLIP_CAMERAS:
            path = Path(videos_dir) / name
            if path.exists():
                cameras.append({"id": cam_id, "url": str(path), "fps": 4, "loop": True})
        images = Path(sign_images) if sign_images else Path(videos_dir).parent / "gtsdb-sample" / "images"
        if images.is_dir():
            try:
                video = sign_video(images, Path(state_dir) / "samples" / "signs.mp4")
                cameras.append({"id": "signs", "url": str(video.resolve()), "fps": 1, "loop": True})
            except FileNotFoundError as exc:  # the other cameras run
                log.warning("no sign camera: %s", exc)
    if not cameras:
        from ultralytics.utils import ASSETS

        for name in ("bus.jpg", "zidane.jpg"):
            cameras.append({"id": Path(name).stem, "url": str(ASSETS / name), "fps": 2, "loop": True})
    return cameras


def demo_models(models_dir: str | None) -> dict[str, Any]:
    """The detectors and classifiers of the demo: every model found in ``models_dir``; online
    without it, ultralytics' own detector and ImageNet classifier."""
    mdir = Path(models_dir) if models_dir else None

    def have(name: str) -> bool:
        return bool(mdir and (mdir / name).exists())

    coco = next((n for n in COCO_DETECTORS if have(n)), "yolo11n.pt")
    categories = {"vehicle": ["car", "truck", "bus", "motorcycle", "bicycle"], "pedestrian": ["person"],
                  "sign": ["stop sign", "traffic light"]}
    # the COCO detector runs on every core of this machine (as ultralytics' own loop does): on a
    # 2-core laptop that is 58 fps bare instead of 32 with one thread, +17 % e2e with 4 cameras
    detectors: list[dict[str, Any]] = [{"weights": coco, "imgsz": 640, "categories": categories,
                                        "threads": os.cpu_count() or 1}]
    if have(SIGN_DETECTOR):
        detectors.append({"weights": SIGN_DETECTOR, "name": "signs", "imgsz": 640, "categories": {"sign": ["*"]}})
    classifiers: dict[str, list[dict[str, Any]]] = {}
    if have(VEHICLE_ATTRIBUTES):
        classifiers["vehicle"] = [{"weights": VEHICLE_ATTRIBUTES, "on": ["car", "truck", "bus"], "max_per_frame": 8}]
    else:
        classifiers["vehicle"] = [{"weights": IMAGENET_CLASSIFIER if have(IMAGENET_CLASSIFIER) else "yolov8n-cls.pt",
                                   "labels": VEHICLE_LABELS, "max_per_frame": 8}]
    if have(PERSON_ATTRIBUTES):
        classifiers["pedestrian"] = [{"weights": PERSON_ATTRIBUTES, "max_per_frame": 8}]
    signs = []
    if have(SIGN_CLASSIFIER):
        signs.append({"weights": SIGN_CLASSIFIER, "not_on": ["traffic light"], "max_per_frame": 8})
    if have(LIGHT_STATE):
        signs.append({"weights": LIGHT_STATE, "on": ["traffic light"], "max_per_frame": 8})
    if signs:
        classifiers["sign"] = signs
    return {"detectors": detectors, "classifiers": classifiers}


def demo_config(videos_dir: str | None, models_dir: str | None, state_dir: str,
                sign_images: str | None = None, *, videos_from: str = ENV_SAMPLE_VIDEOS) -> PerceptConfig:
    """The demo's configuration. ``videos_dir`` given but not a folder: a `ConfigError` naming
    where it came from (``videos_from``), rather than a demo on ultralytics' two still images."""
    if videos_dir and not Path(videos_dir).is_dir():
        from .config_errors import ConfigError

        raise ConfigError([f"{videos_from}: no such folder: {videos_dir}"])
    return parse_config(
        {
            "cameras": _sample_cameras(videos_dir, sign_images, state_dir),
            **demo_models(models_dir),
            "models_dir": models_dir,
            "state_dir": state_dir,
        },
        env={},
    )
