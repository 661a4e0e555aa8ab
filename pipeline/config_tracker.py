"""The tracker's config (``tracker:``): ByteTrack per camera, made time-aware (pipeline/tracking.py)."""

from __future__ import annotations

from pydantic import Field, model_validator

from .config_models import Strict


class TrackerConfig(Strict):
    """ByteTrack (ultralytics) per camera: fills track_id; classifiers then run once per track.
    Matching follows the sampling rate, so tracks hold at a few fps (pipeline/tracking.py)."""

    enabled: bool = True
    track_high_thresh: float = Field(0.25, ge=0, le=1)
    track_low_thresh: float = Field(0.1, ge=0, le=1)
    new_track_thresh: float = Field(0.25, ge=0, lt=1, description="a detection this sure starts a track (1: none would)")
    track_buffer: int = Field(30, ge=1, le=10_000, description="usual frame intervals a lost track is kept (7.5 s at 4 fps)")
    match_thresh: float = Field(0.9, gt=0, lt=1, description="a detection continues a track when 1 - IoU of their grown "
                                "boxes is below this (0 would match nothing; 1 boxes that do not even touch)")
    match_buffer: float = Field(
        1.2, ge=0, le=10, description="boxes grow by this fraction of their size per second between frames before they "
        "are matched (0.3 at 4 fps, 0.05 at 24 fps), so an object that moved more than its size still meets its track; 0: plain IoU")
    fuse_score: bool = Field(False, description="weigh matches by the detection score (ultralytics' default); off: a faint "
                             "detection continues its track as well")
    merge_iou: float = Field(0.7, gt=0, le=1, description="detections of one category overlapping more than this are one "
                             "object (NMS is per label: a car is sometimes also a truck) and share its track id; 1: off")
    snapshot_every: int = Field(20, ge=0, le=100_000, description="frames between snapshots of the open tracks to Redis, "
                                "from which the camera's next owner continues them; 0: only at the owner's first frame and "
                                "after a zone or line change")

    @model_validator(mode="after")
    def _passes(self) -> "TrackerConfig":
        if self.track_low_thresh > self.track_high_thresh:  # ByteTrack's second pass would match nothing
            raise ValueError(f"track_low_thresh ({self.track_low_thresh:g}) must not be above track_high_thresh "
                             f"({self.track_high_thresh:g}): the low pass takes the detections between them")
        return self
