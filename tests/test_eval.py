"""`percept eval`: real models and data from the shared folder, the CLI run in-process.

The detector's mAP must agree with ultralytics' own ``model.val()`` on the same images: the
service's path (prepare_frame's square letterbox + the backend's NMS) is compared with val at
``rect=False`` (every image letterboxed to a 640 square, as the decoder does; val's default
rect batching pads each batch to its own rectangle instead and scores ~0.007 lower here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from .inprocess import percept

SHARED = Path(os.environ.get("PERCEPT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MODELS, DATA = SHARED / "models", SHARED / "data"
COCO = DATA / "coco128-val"
GTSDB = DATA / "gtsdb-sample"
GTSRB = DATA / "gtsrb-test-sample"
COCO_PT = MODELS / "yolo11n-coco.pt"
SIGN_DETECTOR = MODELS / "traffic-sign-detector-gtsdb43" / "yolov5n_gtsdb43_640_fp16w.onnx"
SIGN_CLASSIFIER = MODELS / "gtsrb-sign-classifier-32" / "gtsrb_gray32.xml"
REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("YOLO_OFFLINE", "1")


def need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"shared models/data not found: {', '.join(missing)} (set PERCEPT_SHARED)")


@pytest.fixture(scope="module")
def coco_eval(tmp_path_factory):
    need(COCO_PT, COCO)
    out = tmp_path_factory.mktemp("eval") / "coco.json"
    code, stdout, stderr = percept("eval", "detector", "--weights", str(COCO_PT), "--data", str(COCO),
                                   "--json", str(out))
    assert code == 0, stderr
    print(stdout)
    return json.loads(out.read_text()), stdout


@pytest.fixture(scope="module")
def ultralytics_val(tmp_path_factory):
    """``model.val()`` on coco128-val. It writes a label cache beside the labels folder (even a
    read-only one, when run as root) and resolves folder links, so each file is linked one by one
    into real folders here: the cache lands in tmp, never in the shared folder."""
    need(COCO_PT, COCO)
    import yaml
    from ultralytics import YOLO

    root = tmp_path_factory.mktemp("coco128")
    for sub in ("images", "labels"):
        (root / sub).mkdir()
        for f in (COCO / sub).iterdir():
            (root / sub / f.name).symlink_to(f)
    model = YOLO(str(COCO_PT))
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images", "val": "images",
                                                   "names": dict(model.names)}))
    metrics = model.val(data=str(root / "data.yaml"), imgsz=640, batch=8, conf=0.001, iou=0.7, rect=False,
                        plots=False, save_json=False, project=str(root / "runs"), name="val", verbose=False,
                        device="cpu")
    assert not (COCO / "labels.cache").exists(), "ultralytics wrote its label cache into the shared folder"
    return {"map50_95": float(metrics.box.map), "map50": float(metrics.box.map50)}, root


def test_detector_agrees_with_ultralytics_val(coco_eval, ultralytics_val):
    ours, theirs = coco_eval[0], ultralytics_val[0]
    print(f"\nyolo11n-coco.pt on coco128-val: percept eval mAP50-95 {ours['map50_95']:.4f} mAP50 {ours['map50']:.4f}; "
          f"model.val(rect=False) mAP50-95 {theirs['map50_95']:.4f} mAP50 {theirs['map50']:.4f}")
    assert abs(ours["map50_95"] - theirs["map50_95"]) <= 0.02
    assert abs(ours["map50"] - theirs["map50"]) <= 0.02


def test_detector_json_and_table(coco_eval):
    result, stdout = coco_eval
    for key in ("map50_95", "map50", "per_category", "ms_per_image", "images", "weights", "backend"):
        assert key in result, key
    assert 0.3 < result["map50_95"] < result["map50"] <= 1  # yolo11n: ~0.45 / ~0.60 here
    assert result["images"] == 128 and result["instances"] == 898
    assert result["ms_per_image"] > 0
    assert result["backend"] == "ultralytics" and result["weights"].endswith("yolo11n-coco.pt")
    cats = result["per_category"]
    assert {"vehicle", "pedestrian", "sign"} <= set(cats)
    assert cats["pedestrian"]["instances"] == 350  # every person label
    for name in ("vehicle", "pedestrian"):
        assert 0 < cats[name]["map50_95"] <= cats[name]["map50"] <= 1
    assert result["per_class"]["person"]["instances"] == 350
    lines = stdout.splitlines()
    assert any("mAP50-95" in line for line in lines)
    assert any(line.split()[:2] == ["all", "898"] for line in lines)
    assert any(line.startswith("vehicle") for line in lines) and "ms/image" in stdout


def test_data_yaml_is_found(ultralytics_val):
    from pipeline.evaluate import find_yolo_images, read_yolo_labels

    images, names = find_yolo_images(ultralytics_val[1] / "data.yaml")
    assert len(images) == 128 and names[0] == "person"
    images_dir, _ = find_yolo_images(ultralytics_val[1])  # the folder holding data.yaml
    assert len(images_dir) == 128
    classes, boxes = read_yolo_labels(images[0], (480, 640), 80)
    assert len(classes) == len(boxes) > 0 and (boxes[:, 2:] > boxes[:, :2]).all() and boxes.max() <= 640


def test_sign_detector_on_gtsdb(tmp_path):
    need(SIGN_DETECTOR, GTSDB)
    out = tmp_path / "gtsdb.json"
    code, stdout, stderr = percept("eval", "detector", "--weights", str(SIGN_DETECTOR), "--data", str(GTSDB),
                                   "--json", str(out))
    assert code == 0, stderr
    print(stdout)
    result = json.loads(out.read_text())
    assert result["images"] == 100 and result["instances"] == 163  # street-photos/ (no labels) is not read
    assert set(result["per_category"]) == {"sign"}  # not a COCO model: every label is a sign
    # finding signs (the service's "sign" category): the model was trained on these images
    assert result["per_category"]["sign"]["map50"] >= 0.85
    # the right one of 43 classes; rare classes (1-5 instances, often confused) weigh on the mean
    assert result["map50"] >= 0.5


def test_classifier_on_gtsrb(tmp_path):
    need(SIGN_CLASSIFIER, GTSRB)
    out = tmp_path / "gtsrb.json"
    code, stdout, stderr = percept("eval", "classifier", "--weights", str(SIGN_CLASSIFIER), "--data", str(GTSRB),
                                   "--labels", str(GTSRB / "labels.csv"), "--json", str(out))
    assert code == 0, stderr
    print(stdout)
    result = json.loads(out.read_text())
    assert result["top1"] >= 0.95 and f"top-1 {result['top1']:.3f}" in stdout
    for key in ("top1", "per_class_recall", "ms_per_image", "images", "weights"):
        assert key in result, key
    assert result["images"] == 430 and len(result["per_class_recall"]) == 43
    assert result["per_class_recall"]["Stop"] == 1.0 and result["ms_per_image"] > 0


def test_imagenet_classifier_runs(tmp_path):
    """The ultralytics classifier path: labels are the model's own names."""
    weights = MODELS / "yolov8n-cls-imagenet.pt"
    need(weights, GTSRB)
    import cv2
    from ultralytics.utils import ASSETS

    (tmp_path / "images").mkdir()
    bus = cv2.imread(str(ASSETS / "bus.jpg"))
    cv2.imwrite(str(tmp_path / "images" / "bus.jpg"), bus[200:900, :])
    (tmp_path / "labels.csv").write_text("Filename,ClassId\nbus.jpg,779\n")  # 779: school_bus
    code, _, stderr = percept("eval", "classifier", "--weights", str(weights), "--data", str(tmp_path),
                                   "--labels", str(tmp_path / "labels.csv"), "--json", str(tmp_path / "r.json"))
    assert code == 0, stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["backend"] == "ultralytics" and result["images"] == 1
    assert set(result["per_class_recall"]) == {"school_bus"} and result["top1"] in (0.0, 1.0)


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "empty").mkdir()
    (tmp / "crops").mkdir()
    (tmp / "crops" / "a.png").write_bytes((GTSRB / "images" / "00000.ppm").read_bytes())
    (tmp / "noheader.csv").write_text("a.png,16\n")
    (tmp / "missing.csv").write_text("Filename,ClassId\na.png,16\nnot-there.png,3\n")
    (tmp / "yolo" / "images").mkdir(parents=True)
    (tmp / "yolo" / "labels").mkdir()
    (tmp / "yolo" / "images" / "x.jpg").write_bytes((COCO / "images" / "000000000139.jpg").read_bytes())
    (tmp / "yolo" / "labels" / "x.txt").write_text("0 0.5 0.5 0.2\n")
    for name, label in (("pixels", b"0 0.5 0.5 0.2 0.2\n0 320 240 64 128\n"), ("binary", b"0 0.5 0.5 0.2 0.2\n\xff\xd8\n")):
        (tmp / name / "images").mkdir(parents=True)
        (tmp / name / "labels").mkdir()
        (tmp / name / "images" / "x.jpg").write_bytes((COCO / "images" / "000000000139.jpg").read_bytes())
        (tmp / name / "labels" / "x.txt").write_bytes(label)
    det = ["eval", "detector", "--weights", str(COCO_PT), "--data"]
    clf = ["eval", "classifier", "--weights", str(SIGN_CLASSIFIER), "--data", str(tmp / "crops"), "--labels"]
    for suffix in (".xml", ".bin"):  # a plain network (no ultralytics export) without its card
        (tmp / f"plain{suffix}").write_bytes(SIGN_CLASSIFIER.with_suffix(suffix).read_bytes())
    (tmp / "labels.csv").write_text("Filename,ClassId\na.png,16\n")
    (tmp / "bad-card.yaml").write_text("task: classify\ninputs: 3\n")
    return {
        # (the option that gives it, not "--weights.card")
        "a plain network without its card": (["eval", "detector", "--weights", str(tmp / "plain.xml"), "--data",
                                              str(COCO)], "give one with --card ("),
        "a card that is no card": (clf + [str(tmp / "labels.csv"), "--card", str(tmp / "bad-card.yaml")], "--card: "),
        "missing data folder": (det + [str(tmp / "nowhere")], "does not exist"),
        "no images": (det + [str(tmp / "empty")], "no images found"),
        "bad label line": (det + [str(tmp / "yolo")], "x.txt:1"),
        # (in pixels: every category 0.000, exit 0; not UTF-8: the decoder's words, no file named)
        "labels in pixels": (det + [str(tmp / "pixels")], "x.txt:2: coordinates outside 0-1 (YOLO labels are normalised"),
        "a label file not UTF-8": (det + [str(tmp / "binary")], "labels/x.txt:2: not UTF-8 text (byte 18)"),
        "weights that do not load": (["eval", "detector", "--weights", str(tmp / "nope.pt"), "--data", str(COCO)],
                                     "nope.pt"),
        "a classifier as detector": (["eval", "detector", "--weights", str(MODELS / "yolov8n-cls-imagenet.pt"),
                                      "--data", str(COCO)], "classify model"),
        "CSV without header": (clf + [str(tmp / "noheader.csv")], "header 'Filename,ClassId'"),
        "file listed in CSV missing": (clf + [str(tmp / "missing.csv")], "'not-there.png' not found"),
        "missing CSV": (clf + [str(tmp / "absent.csv")], "absent.csv"),
        "a folder as the CSV": (clf + [str(tmp / "yolo")], "is not a file"),  # (it said "does not exist")
        "CSV not UTF-8": (clf + [str(_write(tmp / "latin.csv", b"Filename,ClassId\na.png,16\n\xff\n"))],
                          "latin.csv:3: not UTF-8 text (byte 26)"),
        "bad --categories": (det + [str(COCO), "--categories", "vehicle"], "NAME=LABEL"),
        "images without label files": (det + [str(tmp / "crops")], "none of the 1 images has a label file"),
        "classes the model does not have": (det + [str(_named(tmp / "named", ["stapler", "mug"]))],
                                            "none of data.yaml's names is a class of the model"),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_labels_csv_with_a_byte_order_mark_is_read(tmp_path):
    """A spreadsheet's UTF-8 export starts with a byte-order mark: it was "the header must be
    'Filename,ClassId' (got ['\\ufeffFilename', …])"."""
    from pipeline.evaluate_classifier import read_label_csv

    need(GTSRB)
    (tmp_path / "a.ppm").write_bytes((GTSRB / "images" / "00000.ppm").read_bytes())
    rows = read_label_csv(_write(tmp_path / "l.csv", "\ufeffFilename,ClassId\na.ppm,16\n".encode()), tmp_path)
    assert rows == [(tmp_path / "a.ppm", 16)]


def _named(folder: Path, names: list[str], *, images: int = 1, swap: dict[int, int] | None = None) -> Path:
    """A YOLO dataset of COCO images whose data.yaml names ``names``, label ids moved by ``swap``."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for image in sorted((COCO / "images").glob("*.jpg"))[:images]:
        (folder / "images" / image.name).write_bytes(image.read_bytes())
        rows = [line.split() for line in (COCO / "labels" / f"{image.stem}.txt").read_text().splitlines() if line.strip()]
        (folder / "labels" / f"{image.stem}.txt").write_text(
            "".join(" ".join([str((swap or {}).get(int(r[0]), int(r[0]))), *r[1:]]) + "\n" for r in rows))
    (folder / "data.yaml").write_text(yaml.safe_dump({"path": str(folder), "val": "images", "names": names}))
    return folder / "data.yaml"


def test_a_data_yaml_in_another_class_order_is_matched_by_name(tmp_path):
    """A dataset naming COCO's classes in another order (person and car swapped, ids with them;
    "Person", "traffic_light"): read by name, the same metrics as in COCO's order (it warned,
    and counted cars as people)."""
    from pipeline.evaluate import evaluate_detector
    from ultralytics import YOLO

    need(COCO_PT, COCO)
    names = [YOLO(str(COCO_PT)).names[k] for k in range(80)]
    swapped = list(names)
    swapped[0], swapped[2] = names[2], names[0].title()  # "Person": case aside
    swapped[9] = names[9].replace(" ", "_")  # "traffic_light"
    plain = evaluate_detector(str(COCO_PT), _named(tmp_path / "a", names, images=16), imgsz=320)
    moved = evaluate_detector(str(COCO_PT), _named(tmp_path / "b", swapped, images=16, swap={0: 2, 2: 0}), imgsz=320)
    assert plain["instances"] == moved["instances"] > 0 and plain["warnings"] == []
    assert moved["map50_95"] == plain["map50_95"] and moved["per_category"] == plain["per_category"]
    assert moved["warnings"] == [f"{tmp_path / 'b' / 'data.yaml'}: data.yaml's class ids are in another order "
                                 "than the model's: matched by name"]


@pytest.mark.parametrize("case", ["missing data folder", "no images", "bad label line", "labels in pixels",
                                  "a label file not UTF-8", "weights that do not load",
                                  "a classifier as detector", "CSV without header", "file listed in CSV missing",
                                  "missing CSV", "a folder as the CSV", "CSV not UTF-8", "bad --categories", "images without label files",
                                  "classes the model does not have", "a plain network without its card",
                                  "a card that is no card"])
def test_bad_input_exits_2(tmp_path, case):
    need(COCO_PT, COCO, GTSRB, MODELS / "yolov8n-cls-imagenet.pt")
    argv, words = _bad_inputs(tmp_path)[case]
    code, stdout, stderr = percept(*argv)
    assert code == 2, (stdout, stderr)
    assert words in stderr and stderr.startswith("percept: eval:"), stderr
    assert stdout == ""


def test_an_export_of_a_fixed_size_is_reported_at_the_size_it_ran_at(tmp_path):
    """The shared INT8 export takes 640×640 frames whatever ``--imgsz`` asks (it says so as it
    loads): `eval`'s JSON and `models compare`'s row said 320, its accuracy read as 320's."""
    from pipeline.evaluate import evaluate_detector
    from ultralytics import YOLO

    export = MODELS / "yolo11n_int8_openvino_model"
    need(COCO_PT, COCO, export)
    names = [YOLO(str(COCO_PT)).names[k] for k in range(80)]
    result = evaluate_detector(str(export), _named(tmp_path / "a", names, images=4), imgsz=320)
    assert result["imgsz"] == 640, result["imgsz"]
    assert evaluate_detector(str(COCO_PT), _named(tmp_path / "b", names, images=4), imgsz=320)["imgsz"] == 320
