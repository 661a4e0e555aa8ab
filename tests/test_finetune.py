"""`percept models finetune` on the shared models, clips and coco128-val, nothing mocked.

The classifier test cuts crops from the shared clips with the shipped detector (the service's own
letterbox and crops), labels them by the detector's category (cars, trucks, buses → vehicle,
persons → pedestrian), fine-tunes the ImageNet classifier on them at imgsz 64 with its backbone
frozen, and loads the result as the graph does. The detector test fine-tunes YOLO11n for one epoch
at imgsz 160 on 30 coco128-val images. Both run with the network refused (any attempt is recorded);
every output goes to tmp, the shared folder and the user's data folder are never written."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from .inprocess import percept

SHARED = Path(os.environ.get("PERCEPT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MODELS, VIDEOS, COCO = SHARED / "models", SHARED / "data" / "videos", SHARED / "data" / "coco128-val"
CLS_PT, COCO_PT, INT8_DET = MODELS / "yolov8n-cls-imagenet.pt", MODELS / "yolo11n-coco.pt", MODELS / "yolo11n_int8_openvino_model"
CATEGORIES = {"vehicle": ["car", "truck", "bus"], "pedestrian": ["person"]}
CLIP_FRAMES = {"traffic.mp4": 30, "vtest.avi": 12, "people.mp4": 4}  # frames sampled evenly from each clip
EPOCHS, IMGSZ = 4, 64

pytestmark = pytest.mark.needs_models
os.environ.setdefault("YOLO_OFFLINE", "1")


def need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"shared models/data not found: {', '.join(missing)} (set PERCEPT_SHARED)")


LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@contextlib.contextmanager
def network_refused(attempts: list):
    """Every DNS lookup or connection beyond this machine fails, and is recorded in ``attempts``
    (loopback is no network: a local redis-server's client in another thread goes on)."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if sock.family == socket.AF_UNIX or (isinstance(address, tuple) and address[0] in LOOPBACK):
            return real_connect(sock, address)
        attempts.append(("connect", address))
        raise OSError("network refused by the test")

    def getaddrinfo(host, *args, **kwargs):
        if host in LOOPBACK:
            return real_getaddrinfo(host, *args, **kwargs)
        attempts.append(("getaddrinfo", host))
        raise socket.gaierror("network refused by the test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        mp.setattr(socket.socket, "connect", connect)
        yield


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.lstat().st_mtime for p in folder.rglob("*")}


def cut_crops(into: Path) -> dict[str, int]:
    """Crops of the detector's vehicles and pedestrians on frames of the shared clips, at 96 px."""
    import cv2

    from pipeline.backends import load_detector
    from pipeline.config_models import DetectorConfig
    from pipeline.models import prepare_crop, prepare_frame

    det = load_detector(DetectorConfig(weights=str(INT8_DET), imgsz=640, conf=0.3, categories=CATEGORIES),
                        models_dir=None, field="detector")
    counts = {c: 0 for c in CATEGORIES}
    for clip, frames in CLIP_FRAMES.items():
        cap = cv2.VideoCapture(str(VIDEOS / clip))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        for k in range(frames):
            cap.set(cv2.CAP_PROP_POS_FRAMES, k * total // frames)
            ok, frame = cap.read()
            assert ok, f"cannot read frame {k * total // frames} of {clip}"
            [found] = det.detect_batch([prepare_frame(frame, 640)])
            for i, (box, category) in enumerate(zip(found.xyxy, found.categories)):
                if min(box[2] - box[0], box[3] - box[1]) < 12:  # as classifiers' min_box skips tiny boxes
                    continue
                (into / category).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(into / category / f"{Path(clip).stem}_{k:02d}_{i:02d}.jpg"), prepare_crop(frame, box, 96))
                counts[category] += 1
        cap.release()
    return counts


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    need(CLS_PT, INT8_DET, VIDEOS / "traffic.mp4")
    tmp = tmp_path_factory.mktemp("finetune-cls")
    crops = tmp / "crops"
    counts = cut_crops(crops)
    assert min(counts.values()) >= 60, counts  # a few hundred crops, both classes well represented
    before = snapshot(crops)
    attempts: list = []
    here = os.getcwd()
    os.chdir(tmp)  # --work given relative to it: ultralytics put such a run under its own runs_dir
    try:
        with network_refused(attempts):
            code, stdout, stderr = percept(
                "models", "finetune", "yolov8n-cls-imagenet.pt", "--data", str(crops), "--epochs", str(EPOCHS),
                "--imgsz", str(IMGSZ), "--freeze-backbone", "--out", str(tmp / "out" / "veh-ped.pt"),
                "--work", "work", "--json", str(tmp / "finetune.json"))
    finally:
        os.chdir(here)
    assert code == 0, stderr
    print(stdout)
    result = json.loads((tmp / "finetune.json").read_text())
    return {"result": result, "stdout": stdout, "stderr": stderr, "counts": counts, "crops": crops,
            "tmp": tmp, "attempts": attempts, "untouched": snapshot(crops) == before}


def test_classifier_finetune_learns_the_new_classes(classifier_run):
    r, counts = classifier_run["result"], classifier_run["counts"]
    assert r["task"] == "classify" and r["names"] == ["pedestrian", "vehicle"] and r["freeze"] == 9
    s = r["split"]
    assert s["train"] + s["val"] == sum(counts.values()) and not s["kept_folder_split"]
    for name, (n_train, n_val) in s["per_class"].items():  # 20 % held out per class
        assert n_train + n_val == counts[name] and abs(n_val - 0.2 * counts[name]) <= 1, (name, n_train, n_val)
    losses = [e["loss"] for e in r["history"]]
    assert [e["epoch"] for e in r["history"]] == list(range(1, EPOCHS + 1))
    assert losses[-1] < 0.75 * losses[0], losses  # the training loss goes down
    assert r["before"] is None and "has none of the 2 classes" in r["notes"][0]  # ImageNet has no 'vehicle'
    after = r["after"]
    assert after["images"] == s["val"] and after["backend"] == "ultralytics"
    assert after["top1"] >= 0.8 and min(after["per_class_recall"].values()) >= 0.7, after
    assert r["augment"]["flip"] == 0.5 and r["train_args"]["fliplr"] == 0.5 and r["train_args"]["auto_augment"] is None


def test_classifier_finetune_reports_progress_and_stays_local(classifier_run):
    run = classifier_run
    stdout, stderr, r = run["stdout"], run["stderr"], run["result"]
    assert f"fine-tuned on {r['split']['train']} images" in stdout and r["out"] in stdout
    assert "top-1" in stdout and f"{r['after']['top1']:.3f}" in stdout
    for epoch in range(1, EPOCHS + 1):  # a bar per epoch, then its loss and held-out top-1
        assert f"percept: epoch {epoch}/{EPOCHS} loss" in stderr and f"percept: epoch {epoch}/{EPOCHS}: loss" in stderr
    assert "100%" in stderr
    assert run["attempts"] == [], run["attempts"]  # nothing reached for the network
    assert run["untouched"] and not list(run["crops"].rglob("*.cache")), "the data folder was written"
    work = run["tmp"] / "work"
    assert (work / "split" / "train.cache").is_file() and (work / "train" / "results.csv").is_file()


def test_finetuned_classifier_loads_in_the_graph(classifier_run):
    """The .pt loads through pipeline.backends from a ClassifierConfig, answers with the new labels
    on the held-out crops, and kept its frozen backbone: the ImageNet layers are unchanged."""
    import cv2
    import torch

    from pipeline.backends import load_classifier
    from pipeline.config_models import ClassifierConfig
    from pipeline.models import prepare_crop

    out = Path(classifier_run["result"]["out"])
    cfg = ClassifierConfig(weights=str(out), imgsz=IMGSZ, labels=["pedestrian", "vehicle"])
    clf = load_classifier(cfg, models_dir=None, field="classifiers.vehicle")
    assert dict(clf.names) == {0: "pedestrian", 1: "vehicle"}
    heldout = sorted(p for p in (classifier_run["tmp"] / "work" / "split" / "val").rglob("*.jpg"))
    crops = [cv2.imread(str(p)) for p in heldout]
    answers = clf.classify_batch([prepare_crop(c, (0, 0, c.shape[1], c.shape[0]), clf.crop_size, context=1.0)
                                  for c in crops])
    right = [a["type"]["label"] == p.parent.name for a, p in zip(answers, heldout)]
    assert len(right) == classifier_run["result"]["split"]["val"] and sum(right) / len(right) >= 0.8
    tuned = torch.load(out, map_location="cpu", weights_only=False)["model"].state_dict()
    base = torch.load(CLS_PT, map_location="cpu", weights_only=False)["model"].state_dict()
    change = lambda key: float((tuned[key].float() - base[key].float()).abs().max())
    for key in ("model.0.conv.weight", "model.8.cv2.conv.weight", "model.8.cv2.bn.running_mean"):
        assert change(key) == 0, f"{key} changed: the backbone was not frozen"
    assert tuned["model.9.linear.weight"].shape[0] == 2 and base["model.9.linear.weight"].shape[0] == 1000
    assert change("model.9.conv.conv.weight") > 1e-3 and change("model.9.conv.bn.running_mean") > 0.1  # trained


def test_detector_finetune_one_epoch(tmp_path):
    """YOLO11n, 1 epoch at imgsz 160 on 30 coco128-val images (24 train, 6 held out): measured
    before and after on the held-out images; the result loads as the graph's detector."""
    import cv2

    from pipeline.backends import load_detector
    from pipeline.config_models import DetectorConfig
    from pipeline.models import prepare_frame

    need(COCO_PT, COCO)
    data = tmp_path / "coco30"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for image in sorted((COCO / "images").glob("*.jpg"))[:30]:
        (data / "images" / image.name).symlink_to(image)
        label = COCO / "labels" / f"{image.stem}.txt"
        if label.exists():
            (data / "labels" / label.name).symlink_to(label)
    attempts: list = []
    with network_refused(attempts):
        code, stdout, stderr = percept("models", "finetune", str(COCO_PT), "--data", str(data), "--epochs", "1",
                                       "--imgsz", "160", "--batch", "16", "--out", str(tmp_path / "det.pt"),
                                       "--json", str(tmp_path / "det.json"))
    assert code == 0, stderr
    print(stdout)
    r = json.loads((tmp_path / "det.json").read_text())
    assert attempts == [], attempts
    assert r["task"] == "detect" and r["names_from"] == "model" and len(r["names"]) == 80
    assert r["split"] == {"train": 24, "val": 6, "kept_folder_split": False, "val_fraction": 0.2, "seed": 0,
                          "per_class": None}
    assert r["train_args"]["mosaic"] == 1.0 and len(r["history"]) == 1 and np.isfinite(r["history"][0]["loss"])
    before, after = r["before"], r["after"]
    assert before["images"] == after["images"] == 6 and before["instances"] == after["instances"] > 0
    assert 0.1 < before["map50_95"] < 1 and after["map50_95"] > 0.5 * before["map50_95"], (before, after)
    assert "mAP50-95" in stdout and "percept: epoch 1/1" in stderr
    assert not list(COCO.rglob("*.cache")) and not list(data.rglob("*.cache")), "a label cache beside the data"
    det = load_detector(DetectorConfig(weights=str(tmp_path / "det.pt"), imgsz=320), models_dir=None, field="detector")
    [found] = det.detect_batch([prepare_frame(cv2.imread(str(COCO / "images" / "000000001584.jpg")), 320)])
    assert "pedestrian" in found.categories, found.labels  # a street with people: still found


# --- bad input: exit 2, one line naming the problem, nothing written --------------------------------

def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    street = COCO / "images" / "000000001584.jpg"
    images = sorted((COCO / "images").glob("*.jpg"))[:4]

    def folder(name: str, files: dict[str, Path]) -> str:
        for rel, src in files.items():
            (tmp / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name / rel).symlink_to(src)
        (tmp / name).mkdir(exist_ok=True)
        return str(tmp / name)

    classes = folder("classes", {f"{c}/{i}.jpg": im for c in ("a", "b") for i, im in enumerate(images)})
    loose = folder("loose", {"x.jpg": street})
    mixed = folder("mixed", {"x.jpg": street, "a/1.jpg": images[0], "b/1.jpg": images[1]})
    kept_split = folder("w/split", {f"{c}/{i}.jpg": im for c in ("a", "b") for i, im in enumerate(images)})
    one = folder("one", {"cars/1.jpg": images[0], "cars/2.jpg": images[1]})
    empty = folder("empty", {})
    (tmp / "empty" / "a").mkdir()
    (tmp / "empty" / "a" / "notes.txt").write_text("no images\n")
    nolabels = folder("nolabels", {"images/x.jpg": street})
    badlabel = folder("badlabel", {"images/x.jpg": street, "images/y.jpg": images[0]})
    (tmp / "badlabel" / "labels").mkdir()
    (tmp / "badlabel" / "labels" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n80 0.5 0.5 0.1 0.1\n")
    pixels = folder("pixels", {"images/x.jpg": street})
    (tmp / "pixels" / "labels").mkdir()
    (tmp / "pixels" / "labels" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n0 320 240 64 128\n")  # the second in pixels
    binary = folder("binary", {"images/x.jpg": street})
    (tmp / "binary" / "labels").mkdir()
    (tmp / "binary" / "labels" / "x.txt").write_bytes(b"0 0.5 0.5 0.2 0.2\n\xff\xd8\n")
    out = ["--out", str(tmp / "out" / "x.pt")]
    cls = ["models", "finetune", str(CLS_PT)]
    a_file = tmp / "notes.txt"
    a_file.write_text("not a folder\n")
    return {
        "unknown weights format": (["models", "finetune", str(INT8_DET), "--data", classes, *out],
                                   "fine-tuning starts from an ultralytics .pt file"),
        "missing weights": (["models", "finetune", str(tmp / "nope.pt"), "--data", classes, *out], "nope.pt' does not exist"),
        "missing data": ([*cls, "--data", str(tmp / "gone"), *out], f"--data: {str(tmp / 'gone')!r} does not exist"),
        "images without class folders": ([*cls, "--data", loose, *out], "holds images (x.jpg, …) but no class folders"),
        "images beside class folders": ([*cls, "--data", mixed, *out], "has images at its top level (x.jpg, …)"),
        "a folder with no images": ([*cls, "--data", empty, *out], f"no images in {empty}"),
        "one class": ([*cls, "--data", one, *out], "has 1 class folder (cars): a classifier needs at least 2 classes"),
        "detection folder without labels": (["models", "finetune", str(COCO_PT), "--data", nolabels, *out],
                                            "has images/ but no labels/"),
        "a label of no class": (["models", "finetune", str(COCO_PT), "--data", badlabel, *out],
                                "labels/x.txt:2: class 80 is not one of the 80 classes"),
        "labels in pixels": (["models", "finetune", str(COCO_PT), "--data", pixels, *out],
                             "labels/x.txt:2: coordinates outside 0-1 (YOLO labels are normalised"),
        "a label file not UTF-8": (["models", "finetune", str(COCO_PT), "--data", binary, *out],
                                   "labels/x.txt:2: not UTF-8 text (byte 18)"),
        "detector on a classification folder": (["models", "finetune", str(COCO_PT), "--data", classes, *out],
                                                "yolo11n-coco.pt is a detect model, but"),
        "classifier on a detection folder": ([*cls, "--data", str(COCO), *out],
                                             "yolov8n-cls-imagenet.pt is a classify model, but"),
        "mosaic for a classifier": ([*cls, "--data", classes, "--mosaic", "0.5", *out], "--mosaic: mosaic is a detection"),
        "freezing every layer": ([*cls, "--data", classes, "--freeze", "10", *out], "--freeze: between 0 and 9"),
        "out inside the data": ([*cls, "--data", classes, "--out", f"{classes}/x.pt"], "inside the data folder"),
        "data inside the work folder": ([*cls, "--data", kept_split, "--work", str(tmp / "w"), *out],
                                        f"--work: the data folder {kept_split} is inside {tmp / 'w'}"),
        "imgsz off the stride": ([*cls, "--data", classes, "--imgsz", "100", *out], "--imgsz: a multiple of 32"),
        "work that is a file": ([*cls, "--data", classes, "--work", str(a_file), *out], f"--work: {a_file} is a file"),
        "out that cannot be written": ([*cls, "--data", classes, "--out", "/proc/percept-ft.pt"],
                                       "--out: cannot write /proc/percept-ft.pt"),  # (it trained, then failed)
    }


@pytest.mark.parametrize("case", ["unknown weights format", "missing weights", "missing data",
                                  "images without class folders", "images beside class folders",
                                  "a folder with no images", "one class", "detection folder without labels",
                                  "a label of no class", "labels in pixels", "a label file not UTF-8",
                                  "detector on a classification folder",
                                  "classifier on a detection folder", "mosaic for a classifier",
                                  "freezing every layer", "out inside the data", "data inside the work folder",
                                  "imgsz off the stride", "work that is a file",
                                  "out that cannot be written"])
def test_bad_input_exits_2(tmp_path, case):
    need(CLS_PT, COCO_PT, COCO, INT8_DET)
    argv, words = _bad_inputs(tmp_path)[case]
    data = Path(argv[argv.index("--data") + 1])
    before = snapshot(data) if data.is_dir() else None
    code, stdout, stderr = percept(*argv)
    assert code == 2, (stdout, stderr)
    assert words in stderr and stderr.splitlines()[-1].startswith("percept: models finetune:"), stderr
    assert stdout == "" and not (tmp_path / "out").exists(), "nothing is written when the input is bad"
    assert before is None or snapshot(data) == before


# --- the split and the augmentation arguments (pure logic) ------------------------------------------

def _tiny_classes(root: Path, counts: dict[str, int]) -> None:
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{i:03d}.jpg").write_bytes(b"")


def test_split_is_stratified_and_deterministic(tmp_path):
    from pipeline.lifecycle.finetune_data import read_dataset, split

    _tiny_classes(tmp_path / "d", {"cat": 50, "dog": 11, "owl": 2})
    ds = read_dataset(tmp_path / "d")
    train, val = split(ds, 0.2, seed=0)
    by = lambda items, c: sorted(p.name for p, k in items if k == c)
    assert [len(by(val, c)) for c in ("cat", "dog", "owl")] == [10, 2, 1]  # each class keeps one on each side
    assert not set(map(str, train)) & set(map(str, val)) and len(train) + len(val) == 63
    assert split(ds, 0.2, seed=0) == (train, val)
    assert split(ds, 0.2, seed=1)[1] != val


def test_a_folder_already_split_keeps_its_split(tmp_path):
    from pipeline.lifecycle.finetune_data import FinetuneError, read_dataset, split

    _tiny_classes(tmp_path / "d" / "train", {"a": 5, "b": 4})
    _tiny_classes(tmp_path / "d" / "val", {"a": 2, "b": 1})
    ds = read_dataset(tmp_path / "d")
    train, val = split(ds, 0.5, seed=0)
    assert ds.presplit and ds.names == {0: "a", 1: "b"} and (len(train), len(val)) == (9, 3)
    assert all(p.parts[-3] == "val" for p, _ in val)
    _tiny_classes(tmp_path / "d" / "val", {"c": 1})
    with pytest.raises(FinetuneError, match="val/c is not a class of"):
        read_dataset(tmp_path / "d")


def test_images_ultralytics_does_not_read_are_handed_to_it_as_png(tmp_path):
    """GTSRB's crops are ``.ppm``: linked as they are, ultralytics found "no training images"
    (fine-tuning and INT8 calibration on them failed). They go in as PNG, the same pixels;
    the held-out CSV still lists them."""
    import cv2
    from ultralytics.data.utils import IMG_FORMATS

    from pipeline.lifecycle.export import calibration_data
    from pipeline.lifecycle.finetune_data import heldout_csv, read_dataset, split, write_split

    crops = sorted((SHARED / "data" / "gtsrb-test-sample" / "images").glob("*.ppm"))[:6]
    if len(crops) < 6:
        pytest.skip("the shared GTSRB sample is not here")
    for i, crop in enumerate(crops):
        (tmp_path / "d" / ("stop" if i % 2 else "yield")).mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / ("stop" if i % 2 else "yield") / crop.name).write_bytes(crop.read_bytes())
    ds = read_dataset(tmp_path / "d")
    write_split(ds, *split(ds, 0.34, seed=0), into=tmp_path / "split")
    given = sorted(p for p in (tmp_path / "split").rglob("*") if p.is_file() and p.name != ".percept-split")
    assert len(given) == 6 and {p.suffix.lstrip(".") for p in given} <= IMG_FORMATS, given
    assert (cv2.imread(str(given[0])) == cv2.imread(str(next(c for c in crops if c.stem == given[0].stem.split("_", 1)[1])))).all()
    assert heldout_csv(ds.names, tmp_path / "split" / "val", tmp_path / "h.csv")[1] == 2
    with calibration_data([tmp_path / "d"], "classify", {0: "stop", 1: "yield"}) as (root, n):
        frames = [p for p in Path(root).rglob("*") if p.is_file()]
        assert n == 6 and frames and {p.suffix.lstrip(".") for p in frames} <= IMG_FORMATS, frames


def test_augmentations_map_to_ultralytics_arguments():
    from pipeline.lifecycle.finetune import Augment
    from pipeline.lifecycle.finetune_data import FinetuneError

    cls = Augment(flip=0.3, vflip=0.1, crop=0.4, color_jitter=(0.0, 0.5, 0.2)).train_args("classify", 8)
    assert cls == {"fliplr": 0.3, "flipud": 0.1, "scale": 0.4, "hsv_h": 0.0, "hsv_s": 0.5, "hsv_v": 0.2,
                   "auto_augment": None}
    det = Augment(mosaic=0.7).train_args("detect", 20)
    assert det["mosaic"] == 0.7 and det["close_mosaic"] == 5 and "auto_augment" not in det
    assert Augment().train_args("detect", 100)["close_mosaic"] == 10
    with pytest.raises(FinetuneError, match="--mosaic"):
        Augment(mosaic=0.5).train_args("classify", 5)
    with pytest.raises(FinetuneError, match="--flip: between 0 and 1"):
        Augment(flip=1.5).train_args("classify", 5)


def test_a_held_out_split_of_backgrounds_only_is_measured(tmp_path):
    """`write_split` may hold out only images without objects; `percept eval` refuses a folder
    without label files, but fine-tuning's after-measurement must not (it failed after training)."""
    from types import SimpleNamespace

    from ultralytics import YOLO

    from pipeline.lifecycle.finetune import evaluate_heldout

    need(COCO_PT, COCO)
    (tmp_path / "val" / "images").mkdir(parents=True)
    (tmp_path / "val" / "labels").mkdir()
    image = sorted((COCO / "images").glob("*.jpg"))[0]
    (tmp_path / "val" / "images" / image.name).write_bytes(image.read_bytes())
    names = dict(YOLO(str(COCO_PT)).names)
    r = evaluate_heldout(COCO_PT, names, SimpleNamespace(task="detect", names=names), tmp_path / "val", tmp_path,
                         tag="after", imgsz=320, device="cpu", threads=1)
    assert r is not None and r["instances"] == 0 and r["images"] == 1
