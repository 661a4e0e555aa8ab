"""The real models from ../shared: detection, categories, classification and load errors."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from ultralytics.utils import ASSETS

from pipeline.config import ClassifierConfig, DetectorConfig
from pipeline.backends import load_classifier, load_detector
from pipeline.models import CategoryMap, ModelError, prepare_crop, prepare_frame

from .conftest import CLASSIFIER, DETECTOR


@pytest.fixture(scope="module")
def detector(models_dir):
    return load_detector(DetectorConfig(weights=DETECTOR, num_cpus=2), models_dir=models_dir)


def test_bus_image_gives_a_vehicle_and_pedestrians_in_frame_pixels(detector):
    img = cv2.imread(str(ASSETS / "bus.jpg"))
    (dets,) = detector.detect_batch([prepare_frame(img, 640)])
    assert dets.labels.count("bus") == 1 and dets.labels.count("person") >= 3
    bus = dets[[dets.labels.index("bus")]]
    assert bus.categories == ("vehicle",)
    x1, y1, x2, y2 = bus.xyxy[0]
    h, w = img.shape[:2]
    # the bus spans most of the 810-px-wide frame: boxes are in camera pixels, not 640 space
    assert x2 - x1 > 0.8 * w and 0 <= x1 and x2 <= w and y2 <= h


def test_batch_results_line_up_with_inputs(detector, videos):
    cap = cv2.VideoCapture(str(videos / "traffic.mp4"))
    for _ in range(30):
        ok, frame = cap.read()
    cap.release()
    blank = np.zeros((360, 640, 3), np.uint8)
    out = detector.detect_batch([prepare_frame(frame, 640), prepare_frame(blank, 640)])
    assert "car" in out[0].labels and len(out[1]) == 0


def test_unmapped_labels_are_dropped():
    cm = CategoryMap({"vehicle": ["car"]}, {0: "person", 1: "car", 2: "dog"})
    d = cm.detections(np.zeros((3, 4), np.float32), np.array([0.9, 0.8, 0.7]), np.array([0, 1, 2]))
    assert d.labels == ("car",) and d.categories == ("vehicle",)


def test_a_box_that_is_no_number_is_no_object_and_a_box_outside_the_frame_crops_grey():
    """A network's NaN box was published as ``"bbox": [null, …]`` (and a NaN track never ended);
    a box wholly outside the frame crashed the crop (cv2.error)."""
    cm = CategoryMap({"vehicle": ["car"]}, {1: "car"})
    boxes = np.array([[np.nan, 0, 10, 10], [0, 0, np.inf, 10], [0, 0, 10, 10], [1, 1, 5, 5]], np.float32)
    d = cm.detections(boxes, np.array([0.9, 0.9, 0.8, np.nan]), np.array([1, 1, 1, 1]))
    assert d.xyxy.tolist() == [[0, 0, 10, 10]] and d.scores.tolist() == pytest.approx([0.8])
    crop = prepare_crop(np.zeros((100, 200, 3), np.uint8), [300, 150, 340, 190], (32, 48))
    assert crop.shape == (48, 32, 3) and (crop == 114).all()


def test_classifier_restricted_to_labels(models_dir):
    """The bus of bus.jpg is police_van 0.44 / minibus 0.41 to the ImageNet model: restricted to
    labels with minibus it is a minibus; to labels none of which fits (the best, minivan, 0.01) it
    gets no answer — not "minivan 0.011" — unless min_score is lowered."""
    img = cv2.imread(str(ASSETS / "bus.jpg"))
    crop = prepare_crop(img, [8, 229, 798, 735], 224)
    assert crop.shape == (224, 224, 3) and crop.flags["C_CONTIGUOUS"]

    def classify(labels, **kw):
        clf = load_classifier(ClassifierConfig(weights=CLASSIFIER, labels=labels, **kw), models_dir=models_dir,
                              field="classifiers.vehicle", warmup=False)
        return clf.classify_batch([crop])[0]

    answer = classify(["minivan", "minibus", "cab"])["type"]
    assert answer["label"] == "minibus" and 0.1 <= answer["score"] <= 1
    assert classify(["minivan", "school_bus", "cab"]) == {}
    assert classify(["minivan", "school_bus", "cab"], min_score=0.005)["type"]["label"] == "minivan"


def test_a_label_of_several_classes_maps_them_all():
    """The sign detector's names.yaml gives classes 9 and 10 one label: both belong to its category."""
    cm = CategoryMap({"sign": ["no overtaking", "stop"]}, {9: "no overtaking", 10: "no overtaking", 14: "stop", 1: "x"})
    assert cm.class_ids == [9, 10, 14]
    d = cm.detections(np.zeros((4, 4), np.float32), np.array([0.9, 0.8, 0.7, 0.6]), np.array([9, 10, 1, 14]))
    assert d.labels == ("no overtaking", "no overtaking", "stop") and set(d.categories) == {"sign"}


def test_one_object_under_two_class_ids_of_one_label_is_kept_once():
    """NMS ran per class id: a sign seen as class 9 by one anchor and class 10 by the next, both
    "no overtaking", was published twice at the same place. Ids of one label share NMS."""
    from pipeline.backends.decode import decode

    def row(box, cls, p):
        out = np.zeros(5 + 43, np.float32)
        out[:4], out[4], out[5 + cls] = box, 1.0, p
        return out

    raw = np.stack([row([100, 100, 40, 40], 9, 0.48), row([102, 101, 40, 40], 10, 0.40),
                    row([300, 300, 40, 40], 14, 0.81)])
    kwargs = dict(conf=0.25, iou=0.45, max_det=300, size=(640, 640))
    assert len(decode(raw, "yolov5", **kwargs).class_ids) == 3  # per id: both kept
    kept = decode(raw, "yolov5", same={10: 9}, **kwargs)
    assert sorted(kept.class_ids.tolist()) == [9, 14] and np.allclose(sorted(kept.scores), [0.48, 0.81])


def test_classifier_label_not_in_model_is_an_error(models_dir):
    with pytest.raises(ModelError, match=r"classifiers.vehicle.labels\[1\]: 'hovercraft' is not a class"):
        load_classifier(ClassifierConfig(weights=CLASSIFIER, labels=["cab", "hovercraft"]),
                        models_dir=models_dir, field="classifiers.vehicle", warmup=False)


def test_classifier_given_as_detector_is_refused(models_dir):
    with pytest.raises(ModelError, match="detector.weights: .* is a classify model; this stage needs a detect model"):
        load_detector(DetectorConfig(weights=CLASSIFIER), models_dir=models_dir, warmup=False)


def test_missing_weights_name_the_path_and_variable(tmp_path):
    with pytest.raises(ModelError) as info:
        load_detector(DetectorConfig(weights="absent-model.pt"), models_dir=str(tmp_path), warmup=False)
    msg = str(info.value)
    assert "detector.weights" in msg and "PERCEPT_MODELS_DIR" in msg and "absent-model.pt" in msg


@pytest.mark.parametrize("name", ["yolo11n.pt", "yolo11s"])
def test_an_ultralytics_name_offline_is_no_download(tmp_path, monkeypatch, name):
    """``yolo11n.pt``, no such local file, ``YOLO_OFFLINE`` set: refused at once naming the field
    (ultralytics tried to download it: "Download failure …", and online it lands in the current
    folder); ``yolo11s`` too, which ultralytics downloads as ``yolo11s.pt``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        load_detector(DetectorConfig(weights=name), models_dir=str(tmp_path), warmup=False)
    msg = str(info.value)
    assert msg.startswith(f"detector.weights: cannot load '{name}'") and "nothing is downloaded" in msg, msg
    assert "Download" not in msg and list(tmp_path.iterdir()) == []


def test_crops_keep_the_model_aspect_ratio():
    """A pedestrian model's 80x160 crop around a 40x120 person: cut tall at 1:2 (never stretched)
    and resized to (width 80, height 160); a square model gets a square crop."""
    img = np.zeros((400, 400, 3), np.uint8)
    img[100:220, 180:220] = 255  # the person: 40 wide, 120 tall
    tall = prepare_crop(img, [180, 100, 220, 220], (80, 160), context=1.0)
    assert tall.shape == (160, 80, 3)
    ys, xs = np.nonzero(tall[..., 0] > 127)
    # the 120-px-tall box sets a 60x120 crop: the person fills its height and 40 of its 60 px
    # width, i.e. x 13..67 of 80 once resized
    assert ys.min() <= 2 and ys.max() >= 157 and 11 <= xs.min() <= 15 and 65 <= xs.max() <= 69
    square = prepare_crop(img, [180, 100, 220, 220], 64, context=1.0)
    assert square.shape == (64, 64, 3)


@pytest.mark.parametrize("fit", ["context", "stretch", "letterbox"])
def test_a_crop_past_the_frames_edge_is_the_part_inside_beside_grey_never_a_frame_sized_copy(fit, monkeypatch):
    """A box past the edge was padded at the frame's resolution first, then shrunk: an 8K
    frame's truck made an 8832-px grey square (~2 s on the event loop, every camera waiting).
    Now only the part inside is resized, into its place in the output; a box wholly above the
    frame cut rows from its bottom (negative indices), now it is grey."""
    frame = np.full((4320, 7680, 3), 200, np.uint8)
    sources = []
    real = cv2.resize
    monkeypatch.setattr(cv2, "resize", lambda src, *a, **k: sources.append(src.shape) or real(src, *a, **k))
    # a 8640-px square box: its left 6000 px and its lower half outside the frame
    crop = prepare_crop(frame, [-6000, 0, 2640, 8640], (224, 224), context=1.0, fit=fit)
    assert sources and all(h <= 4320 and w <= 7680 for h, w, _ in sources), sources
    assert crop.shape == (224, 224, 3)
    left = round(224 * 6000 / 8640)  # 156
    assert (crop[:, : left - 1] == 114).all() and (crop[113:] == 114).all(), crop[::16, ::16, 0]
    assert (crop[:111, left + 1 :] == 200).all(), crop[::16, ::16, 0]
    above = prepare_crop(np.arange(100 * 200 * 3, dtype=np.uint32).astype(np.uint8).reshape(100, 200, 3),
                         [50, -80, 110, -20], (32, 32), context=1.0, fit=fit)
    assert (above == 114).all()


def test_crops_of_a_large_share_of_the_frame_are_cut_off_the_event_loop(monkeypatch):
    """A 4K camera's truck took ~0.2 s to cut, on the loop every camera of the replica shares."""
    import asyncio
    import threading
    import types

    import pipeline.classify as classify

    where = []
    monkeypatch.setattr(classify, "prepare_crop", lambda *a, **k: where.append(threading.current_thread()) or
                        np.zeros((8, 8, 3), np.uint8))
    route = types.SimpleNamespace(size=224, crop_context=1.15, crop_fit="context")
    frame = np.zeros((2160, 3840, 3), np.uint8)

    async def cut(boxes):
        return await classify.cut_crops(frame, np.array(boxes, np.float32), route)

    assert len(asyncio.run(cut([[100, 100, 160, 180], [300, 300, 340, 380]]))) == 2
    assert where == [threading.main_thread()] * 2  # small ones: at once, on the loop
    where.clear()
    assert len(asyncio.run(cut([[0, 0, 1600, 1200], [100, 100, 160, 180]]))) == 2
    assert len(where) == 2 and threading.main_thread() not in where
    # thin boxes across the frame: small as boxes, but cut to the classifier's square they take
    # the whole frame (six of them held an 8K camera's replica 0.44 s)
    where.clear()
    assert len(asyncio.run(cut([[0, 100 * k, 3840, 100 * k + 16] for k in range(6)]))) == 6
    assert len(where) == 6 and threading.main_thread() not in where


def test_loading_an_openvino_network_sends_no_usage_statistics(tmp_path, models_dir):
    """Importing openvino started its telemetry: with no consent file in the user's home it took
    consent as given, wrote ~/intel/openvino_ga_cid and had a child process look up Google
    Analytics, from every replica. Loaded here in a process whose home has no consent file."""
    import os
    import subprocess
    import sys

    code = ("from pipeline.backends import load_detector; from pipeline.config import DetectorConfig; "
            f"load_detector(DetectorConfig(weights={DETECTOR!r}), models_dir={models_dir!r}, warmup=False); "
            "import openvino.tools.ovc as ovc; print('consent', ovc.telemetry.consent)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, HOME=str(tmp_path)))
    assert proc.returncode == 0 and proc.stdout.split() == ["consent", "False"], proc.stdout + proc.stderr[-2000:]
    assert not (tmp_path / "intel").exists(), list((tmp_path / "intel").rglob("*"))



def test_an_int8_export_sends_no_usage_statistics(tmp_path):
    """The exporter imported nncf before declining OpenVINO's statistics; nncf imports openvino,
    whose telemetry then took consent as given and looked up Google Analytics (`percept models
    export --to openvino-int8`). Declined before that import now: a process whose home has no
    consent file."""
    import os
    import subprocess
    import sys

    code = ("from pipeline.lifecycle.export import offline_exporter\n"
            "with offline_exporter(quantizing=True):\n"
            "    import nncf, openvino.tools.ovc as ovc; print('consent', ovc.telemetry.consent)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, HOME=str(tmp_path)))
    assert proc.returncode == 0 and proc.stdout.split() == ["consent", "False"], proc.stdout + proc.stderr[-2000:]
    assert not (tmp_path / "intel").exists(), list((tmp_path / "intel").rglob("*"))

def test_weights_not_in_the_drivers_models_dir_are_found_in_this_nodes_own(tmp_path, monkeypatch, models_dir):
    """`percept run --address` binds the driver's ``models_dir`` into the config every replica gets;
    a node whose weights are elsewhere (the Docker image's /models) finds them in its own
    ``PERCEPT_MODELS_DIR``."""
    from pipeline.models import resolve_weights

    monkeypatch.setenv("PERCEPT_MODELS_DIR", str(models_dir))
    assert resolve_weights(DETECTOR, str(tmp_path / "drivers-models")) == str(Path(models_dir) / DETECTOR)
    assert resolve_weights(DETECTOR, str(models_dir)) == str(Path(models_dir) / DETECTOR)
    assert resolve_weights(DETECTOR, str(tmp_path)) == DETECTOR  # a folder that is here: it alone is searched
    monkeypatch.delenv("PERCEPT_MODELS_DIR")
    assert resolve_weights(DETECTOR, str(tmp_path / "drivers-models")) == DETECTOR  # (then: not found, said so)


def test_a_fine_tuned_models_name_says_which_training_run_it_came_from(tmp_path, models_dir):
    """Every ultralytics fine-tune is ``runs/detect/<run>/weights/best.pt``: messages named each
    one ``best.pt``, so a swap from one run's model to the next could not be told apart in them."""
    from pipeline.backends import load_detector
    from pipeline.config import DetectorConfig

    names = []
    for run in ("train3", "train4"):
        weights = tmp_path / "runs" / "detect" / run / "weights" / "best.pt"
        weights.parent.mkdir(parents=True)
        weights.symlink_to(Path(models_dir) / "yolo11n-coco.pt")
        names.append(load_detector(DetectorConfig(weights=str(weights)), models_dir=models_dir, field="detector",
                                   warmup=False).name)
    assert names == ["train3/best.pt", "train4/best.pt"]
    assert load_detector(DetectorConfig(weights="yolo11n-coco.pt"), models_dir=models_dir, field="detector",
                         warmup=False).name == "yolo11n-coco.pt"  # others keep their file's name


def test_an_open_model_zoo_networks_name_says_its_precision(models_dir):
    """Open Model Zoo ships each network as ``<model>/FP32/<model>.xml`` and
    ``<model>/FP16-INT8/<model>.xml``: messages named both the same, so a swap from one to the
    other (or which one a replica serves) could not be told apart in them."""
    from pipeline.backends import load_classifier
    from pipeline.config import ClassifierConfig

    net = "vehicle-attributes-recognition-barrier-0039"
    names = [load_classifier(ClassifierConfig(weights=f"{net}/{precision}/{net}.xml"), models_dir=models_dir,
                             field="classifiers.vehicle", warmup=False).name for precision in ("FP32", "FP16-INT8")]
    assert names == [f"FP32/{net}.xml", f"FP16-INT8/{net}.xml"], names


def test_half_that_a_cpu_backend_cannot_apply_is_said_not_logged_as_applied(models_dir, caplog):
    """``half: true`` on the CPU: ultralytics runs PyTorch weights in FP32 there, yet the load said
    ``fp16=True``; the yunet backend dropped it without a word."""
    import logging

    from pipeline.backends import load_detector
    from pipeline.config import DetectorConfig

    with caplog.at_level(logging.INFO):
        load_detector(DetectorConfig(weights="yolo11n-coco.pt", device="cpu", half=True), models_dir=models_dir,
                      field="detector", warmup=False)
        load_detector(DetectorConfig(weights="face-detection-yunet/face_detection_yunet_2023mar.onnx", half=True,
                                     categories={"face": ["face"]}),
                      models_dir=models_dir, field="detectors[1]", warmup=False)
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("detector.half: not applied") for m in said), said
    assert any("fp16=False" in m for m in said) and not any("fp16=True" in m for m in said), said
    assert any(m.startswith("detectors[1]: half: not applied") for m in said), said
