"""The ``view`` and ``privacy`` sections of the config: the live view on the HTTP ingress (annotated
JPEGs made by the decoder that owns a camera, only while someone watches) and the blurring of
faces and licence plates in every image the service emits. Strict like the rest of the config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .config_models import Strict

FACES_MODEL = "face-detection-yunet/face_detection_yunet_2023mar.onnx"
PLATES_MODEL = ("vehicle-license-plate-detection-barrier-0106/FP32/"
                "vehicle-license-plate-detection-barrier-0106.xml")


class ViewConfig(Strict):
    """``GET /`` (the page), ``/cameras/{id}/live`` (MJPEG) and ``/cameras/{id}/snapshot.jpg``."""

    enabled: bool = Field(True, description="serve the live view; off: no view routes, nothing checked")
    fps: float = Field(5.0, gt=0, le=30, description="annotated frames per second while watched (at most the camera's)")
    width: int = Field(960, ge=64, le=3840, description="width of the view's images; narrower frames are not upscaled")
    quality: int = Field(80, ge=10, le=100, description="JPEG quality")
    watch_ttl_s: float = Field(5.0, ge=1, le=120, description="one request keeps a camera watched this long")
    stream_max_s: float = Field(
        600.0, ge=5, le=86_400,
        description="an MJPEG response ends after this long (bounds what a stalled client can pile up)")
    max_streams: int = Field(
        16, ge=1, le=1024,
        description="MJPEG responses at once (each may pile up to stream_max_s of frames in a stalled client's "
        "proxy buffer); more get HTTP 429")
    keep_frames: int = Field(
        8, ge=0, le=256,
        description="published frames each decoder keeps per camera in memory (images by reference) for "
        "GET /cameras/{id}/explain and `percept explain`, also with the live view off; 0: none")
    keep_mb: float = Field(
        100.0, gt=0, le=65_536,
        description="of those, at most this many MB of images per camera: the oldest go first, the newest always "
        "stays (a 1080p frame is 6 MB, 4K 25 MB, 8K 100 MB)")


class PrivacyConfig(Strict):
    """Blurring before any image leaves the service (live view, snapshots)."""

    blur: list[Literal["faces", "plates"]] | None = Field(
        None, description="what to blur; default: faces when the face model is present; [] turns it off")
    faces_model: str = Field(FACES_MODEL, description="YuNet ONNX (cv2.FaceDetectorYN); a path or under models_dir")
    plates_model: str = Field(PLATES_MODEL, description="OpenVINO plate detector IR; a path or under models_dir")
    face_score: float = Field(0.3, gt=0, lt=1, description="faces at or above this score are blurred")
    plate_score: float = Field(0.4, gt=0, lt=1, description="plates at or above this score are blurred")
    detect_width: int = Field(1280, ge=160, le=7680, description="frames wider are searched for faces at this width")
