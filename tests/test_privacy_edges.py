"""Privacy blur edge cases (`pipeline/privacy.py`; no Ray): a face model named with a typo, an
image shown wider than the face search, faces and plates the service's own detectors name in
their own spelling. Real YuNet and people.mp4 from ../shared."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from pipeline.config import CameraConfig
from pipeline.config_view import PrivacyConfig, ViewConfig
from pipeline.privacy import Blurrer, PrivacyUnavailable
from pipeline.schema import Detections, FrameMeta, FrameResult
from pipeline.view import render_jpeg

from .conftest import MODELS, SHARED
from .view_frames import clip_frame, decode, faces

pytestmark = pytest.mark.integration  # YuNet and the clips


def test_a_face_model_named_that_is_not_there_refuses_images_not_faces_shown(caplog, monkeypatch):
    """``privacy.faces_model`` with a typo (``blur`` unset): the blurrer was empty, no word in the
    log, and the live view showed every face. A face model named asks for faces as ``blur`` does.
    Plate settings while ``blur`` does not list plates are said to do nothing."""
    from pipeline import privacy

    monkeypatch.setattr(privacy, "_warned", set())  # (said once a process: whatever another test said)
    frame = clip_frame("people.mp4", 30)
    with caplog.at_level(logging.WARNING, logger="percept.privacy"):
        typo = Blurrer.from_config(PrivacyConfig(faces_model="face-detection-yunet/face_detection_yunet.onx"),
                                   str(MODELS))
        Blurrer.from_config(PrivacyConfig(plate_score=0.6), str(MODELS))
        Blurrer.from_config(PrivacyConfig(blur=["plates"], face_score=0.8), str(MODELS))  # faces tuned, not asked
    assert typo and typo.missing == ("faces",)
    with pytest.raises(PrivacyUnavailable):
        typo.blur(frame)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "face_detection_yunet.onx" in said and "no image is shown" in said, said
    assert "plates are not blurred" in said and "faces are not blurred" in said, said
    assert Blurrer.from_config(PrivacyConfig(), str(MODELS)).kinds == ["faces"]  # the default still blurs


def test_an_image_shown_wider_than_the_face_search_has_no_face_left_at_that_width():
    """Faces are searched at ``detect_width`` (1280): a 4K image shown whole (an explanation's PNG,
    a view ``width`` of 3840) kept faces 14-25 px wide that the search at 1280 could not find,
    readable there. The search goes up to the width the image is shown at."""
    big = np.tile(cv2.resize(clip_frame("people.mp4", 100), (480, 270)), (8, 8, 1))  # a crowd 8 × 8 times over, in 4K
    assert faces(big) >= 20
    blurrer = Blurrer.from_config(PrivacyConfig(), str(MODELS))
    assert faces(blurrer.blur(big)) == 0, "faces left in the image shown at its own width"
    result = FrameResult(FrameMeta("crowd", 0, 0.0, None, big.shape[1], big.shape[0]), Detections(), {}, {})
    wide = decode(render_jpeg(big, result, CameraConfig(id="crowd", url="x"), ViewConfig(width=big.shape[1]), blurrer))
    assert faces(wide) == 0, "faces left in a view as wide as the camera"


@pytest.mark.parametrize("label,category", [("License_Plate", "vehicle"), ("number-plate", "vehicle"),
                                            ("Face", "person"), ("human face", "person"), ("thing", "plate"),
                                            ("LicensePlate", "vehicle"), ("licence-plates", "vehicle"),
                                            ("plate_number", "vehicle"), ("number plates", "vehicle"),
                                            ("Faces", "person"), ("thing", "license_plates")])
def test_faces_and_plates_a_detector_names_in_its_own_spelling_are_blurred(label, category):
    """The service's own detections were blurred only under the exact labels ``face`` /
    ``plate`` / ``license_plate``: a fine-tuned model's ``License_Plate`` or ``Face`` (or a label
    mapped to the category ``plate``) was drawn, unblurred; then only under a fixed list of
    spellings: ``LicensePlate``, ``licence-plates``, ``plate_number`` were not."""
    frame = clip_frame("vtest.avi", 0)
    blurrer = Blurrer.from_config(PrivacyConfig(blur=["faces", "plates"]), str(MODELS))
    box = [652, 43, 722, 101]  # the parked van: nothing the blurrer's own search finds
    x1, y1, x2, y2 = box
    assert np.array_equal(blurrer.blur(frame)[y1:y2, x1:x2], frame[y1:y2, x1:x2])
    for other in ("surface", "template", "plateau", "person", "car"):  # words that only contain one
        odd = Detections(xyxy=[box], scores=[0.9], labels=(other,), categories=(other,))
        assert np.array_equal(blurrer.blur(frame, odd)[y1:y2, x1:x2], frame[y1:y2, x1:x2]), other
    own = Detections(xyxy=[box], scores=[0.9], labels=(label,), categories=(category,))
    assert np.abs(blurrer.blur(frame, own)[y1:y2, x1:x2].astype(int) - frame[y1:y2, x1:x2]).mean() > 5


def test_plates_on_a_road_scene_are_blurred_not_only_those_filling_the_frame():
    """The plate SSD got the whole frame squashed to its 300×300 input: on the GTSDB sample's road
    scenes (1360×800) a plate 40 px wide came to 8 px there and none was found — every plate
    shown readable with ``blur: [plates]``. Plates are searched in the tiles of two grids too.
    What is a plate here: what the same network finds in the frame's four quarters (another cut
    from the finder's own)."""
    blurrer = Blurrer.from_config(PrivacyConfig(blur=["plates"]), str(MODELS))
    finder = blurrer.plates
    scenes = sorted((SHARED / "data" / "gtsdb-sample" / "images").glob("*.jpg"))  # (100)
    plates = blurred = whole = 0
    for path in [*scenes, SHARED / "data" / "coco128-val" / "images" / "000000001532.jpg"]:
        image = cv2.imread(str(path))
        h, w = image.shape[:2]
        quarters = np.concatenate([finder._in(image, x, y, w // 2, h // 2) for y in (0, h // 2) for x in (0, w // 2)])
        out, alone = blurrer.blur(image), finder._in(image, 0, 0, w, h)
        for x1, y1, x2, y2 in quarters.astype(int):
            plates += 1
            whole += any(_iou((x1, y1, x2, y2), box) > 0.3 for box in alone)
            blurred += not np.array_equal(out[y1:y2, x1:x2], image[y1:y2, x1:x2])
    assert plates >= 10, plates
    assert whole <= 0.1 * plates, (whole, plates)  # (why: the frame squashed whole shows almost none)
    assert blurred >= 0.75 * plates, (blurred, plates)


def test_faces_the_services_own_detector_reports_are_blurred_without_the_face_search_model(tmp_path, monkeypatch):
    """``privacy.blur`` unset and the YuNet file not where the blurrer looks (models_dir elsewhere,
    the camera's detector loaded from an absolute path): the blurrer had no kind, counted as none,
    and the view drew the detector's own face boxes over unblurred faces."""
    monkeypatch.delenv("PERCEPT_MODELS_DIR", raising=False)
    frame = clip_frame("vtest.avi", 0)
    blurrer = Blurrer.from_config(PrivacyConfig(), str(tmp_path))  # (a models folder without YuNet)
    assert blurrer and blurrer.kinds == [] and not blurrer.missing
    box = [652, 43, 722, 101]
    x1, y1, x2, y2 = box
    own = Detections(xyxy=[box], scores=[0.9], labels=("face",), categories=("face",))
    assert np.abs(blurrer.blur(frame, own)[y1:y2, x1:x2].astype(int) - frame[y1:y2, x1:x2]).mean() > 5
    assert blurrer.blur(frame) is frame  # (nothing else to blur: the image as it is)
    off = Blurrer.from_config(PrivacyConfig(blur=[]), str(tmp_path))
    assert not off and off.blur(frame, own) is frame  # ``blur: []``: nothing blurred


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9)
