"""`percept models export` and `percept models compare`: the shared models and data, nothing
mocked, every output in tmp (the shared folder is never written: calibration frames and eval
subsets are linked file by file into tmp, so ultralytics' caches land there too).

The exports are made once per module at imgsz 320 (INT8 calibration takes a minute on two busy
cores); calibration uses the last 32 images of coco128-val, the comparisons the first 32."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from .inprocess import percept
from .test_finetune import network_refused

SHARED = Path(os.environ.get("PERCEPT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MODELS, COCO = SHARED / "models", SHARED / "data" / "coco128-val"
COCO_PT, CLS_PT = MODELS / "yolo11n-coco.pt", MODELS / "yolov8n-cls-imagenet.pt"
IMGSZ = 320

os.environ.setdefault("YOLO_OFFLINE", "1")


def need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"shared models/data not found: {', '.join(missing)} (set PERCEPT_SHARED)")


def link_images(root: Path, images: list[Path], *, labels: bool) -> Path:
    """A YOLO folder in tmp whose files are links to the shared ones (``labels`` too if asked)."""
    (root / "images").mkdir(parents=True)
    for image in images:
        (root / "images" / image.name).symlink_to(image)
        label = COCO / "labels" / f"{image.stem}.txt"
        if labels and label.exists():
            (root / "labels").mkdir(exist_ok=True)
            (root / "labels" / label.name).symlink_to(label)
    return root


def coco_images() -> list[Path]:
    return sorted((COCO / "images").glob("*.jpg"))


def shared_untouched() -> None:
    assert not list(COCO.glob("*.cache")), "ultralytics wrote a label cache into the shared data"
    assert not [p.name for p in MODELS.iterdir() if p.name.startswith(("yolo11n-coco_", "yolov8n-cls-imagenet."))
                and p.suffix != ".pt"], "an export was written into the shared models folder"


@pytest.fixture(scope="module")
def detector_exports(tmp_path_factory):
    """The two OpenVINO variants, and what the export tried to reach on the network (refused)."""
    from ultralytics.utils import checks

    need(COCO_PT, COCO)
    tmp = tmp_path_factory.mktemp("export")
    calib = link_images(tmp / "calib", coco_images()[-32:], labels=False) / "images"
    cached = getattr(checks.check_font, "__wrapped__", None)  # its answer is cached per process:
    if hasattr(cached, "cache_clear"):  # an earlier test's answer would hide the lookup
        cached.cache_clear()
    tried: list = []
    with network_refused(tried):
        code, stdout, stderr = percept("models", "export", str(COCO_PT), "--to", "openvino-fp32,openvino-int8",
                                       "--calib", str(calib), "--out", str(tmp / "out"), "--imgsz", str(IMGSZ),
                                       "--json", str(tmp / "export.json"))
    assert code == 0, stderr
    print(stdout)
    return json.loads((tmp / "export.json").read_text()), stdout, tmp / "out", tried


@pytest.fixture(scope="module")
def classifier_export(tmp_path_factory):
    need(CLS_PT)
    tmp = tmp_path_factory.mktemp("export-cls")
    here = os.getcwd()
    os.chdir(tmp)  # no --out, the weights found in PERCEPT_MODELS_DIR: the variant lands here, not in the shared folder
    try:
        code, stdout, stderr = percept("models", "export", "yolov8n-cls-imagenet.pt", "--to", "onnx", "--task",
                                       "classify", "--json", str(tmp / "export.json"))
    finally:
        os.chdir(here)
    assert code == 0, stderr
    return json.loads((tmp / "export.json").read_text()), stdout, tmp


def _detect(weights: str, image: np.ndarray):
    from pipeline.backends import load_detector
    from pipeline.config_models import DetectorConfig
    from pipeline.models import prepare_frame

    cfg = DetectorConfig(weights=weights, imgsz=IMGSZ, categories={"all": ["*"]})
    det = load_detector(cfg, models_dir=None, field="detector")
    [res] = det.detect_batch([prepare_frame(image, IMGSZ)])
    assert not isinstance(res, Exception), res
    return det, res


def test_detector_exports_load_and_detect(detector_exports):
    """Both variants load through the service's backends (no card: ultralytics' metadata) and find
    what the .pt finds: the same top box, label and about the same score."""
    import cv2
    import torch
    from ultralytics.utils.metrics import box_iou

    result, stdout, out, _ = detector_exports
    variants = {v["format"]: v for v in result["variants"]}
    assert list(variants) == ["openvino-fp32", "openvino-int8"]
    assert result["calibration"]["images"] == 32 and result["imgsz"] == IMGSZ
    fp32, int8 = Path(variants["openvino-fp32"]["path"]), Path(variants["openvino-int8"]["path"])
    assert fp32 == out / "yolo11n-coco_openvino_model" and int8 == out / "yolo11n-coco_int8_openvino_model"
    for folder in (fp32, int8):
        assert (folder / "metadata.yaml").is_file() and len(list(folder.glob("*.xml"))) == 1
    assert variants["openvino-int8"]["size_mb"] < 0.5 * variants["openvino-fp32"]["size_mb"]  # INT8 weights
    assert not list(out.glob(".percept-export-*")), "the staging folder was left behind"
    assert "openvino-int8" in stdout and "yolo11n-coco_int8_openvino_model" in stdout
    image = cv2.imread(str(COCO / "images" / "000000001584.jpg"))  # a street: a bus, people
    _, ref = _detect(str(COCO_PT), image)
    assert len(ref.labels) >= 2
    top = int(np.argmax(ref.scores))
    for folder in (fp32, int8):
        det, res = _detect(str(folder), image)
        assert type(det).__module__.endswith("openvino_detector") and det.name == folder.name
        assert res.labels and len(res.labels) >= len(ref.labels) - 2
        iou = box_iou(torch.from_numpy(ref.xyxy[top:top + 1]), torch.from_numpy(res.xyxy)).numpy()[0]
        best = int(np.argmax(iou))
        assert iou[best] > 0.8 and res.labels[best] == ref.labels[top], (folder.name, res.labels, ref.labels)
        assert abs(float(res.scores[best]) - float(ref.scores[top])) < 0.1
    shared_untouched()


def test_export_reaches_no_network(detector_exports):
    """INT8 calibration runs ultralytics' dataset check, whose font check asks GitHub for
    Arial.ttf even under YOLO_OFFLINE=1: the export looks up no host at all."""
    *_, tried = detector_exports
    assert tried == [], f"the export tried to reach the network: {tried}"


def test_a_detector_of_other_classes_exports_and_its_variant_loads(tmp_path):
    """A detector none of whose classes is a COCO one (the config's default categories map none
    of its labels): the variant is written, checked loading with all its classes, exit 0."""
    from ultralytics import YOLO

    from pipeline.backends import load_detector
    from pipeline.config_models import DetectorConfig

    need(COCO_PT)
    model = YOLO(str(COCO_PT))
    parts = {i: f"part_{i}" for i in range(len(model.names))}
    model.model.names = parts  # the same network, other classes
    custom = tmp_path / "parts.pt"
    model.save(str(custom))
    code, stdout, stderr = percept("models", "export", str(custom), "--to", "onnx", "--imgsz", "160",
                                   "--out", str(tmp_path / "out"), "--json", str(tmp_path / "export.json"))
    assert code == 0, stderr
    [variant] = json.loads((tmp_path / "export.json").read_text())["variants"]
    assert variant["path"] == str(tmp_path / "out" / "parts.onnx") and variant["backend"] == "ultralytics"
    det = load_detector(DetectorConfig(weights=variant["path"], imgsz=160, categories={"parts": ["*"]}),
                        models_dir=None, field="detector")
    assert dict(det.names) == parts


def test_classifier_export_to_onnx_loads_and_classifies(classifier_export):
    import cv2
    from ultralytics.utils import ASSETS

    from pipeline.backends import load_classifier
    from pipeline.config_models import ClassifierConfig
    from pipeline.models import prepare_crop

    result, _, out = classifier_export
    [variant] = result["variants"]
    onnx = out / "yolov8n-cls-imagenet.onnx"
    assert variant["format"] == "onnx" and Path(variant["path"]) == onnx and onnx.is_file()
    assert result["task"] == "classify" and result["imgsz"] == 224 and variant["backend"] == "ultralytics"
    bus = cv2.imread(str(ASSETS / "bus.jpg"))[200:900]
    answers = []
    for weights in (CLS_PT, onnx):
        clf = load_classifier(ClassifierConfig(weights=str(weights)), models_dir=None, field="classifier")
        crop = prepare_crop(bus, (0, 0, bus.shape[1], bus.shape[0]), clf.crop_size, context=1.0)
        [res] = clf.classify_batch([crop])
        assert not isinstance(res, Exception), res
        answers.append(res["type"])
    assert answers[1]["label"] == answers[0]["label"] and abs(answers[1]["score"] - answers[0]["score"]) < 0.02
    shared_untouched()


def test_an_onnx_model_runs_on_the_replicas_threads(classifier_export):
    """ultralytics opens an ONNX Runtime session with a thread per core of the machine; the
    replica's `threads` (else its `num_cpus`) is what it runs on, as for every other format."""
    from pipeline.backends import load_classifier
    from pipeline.config_models import ClassifierConfig

    _, _, out = classifier_export
    for threads, num_cpus, expected in ((1, 0.25, 1), (None, 2, 2), (3, 1, 3)):
        cfg = ClassifierConfig(weights=str(out / "yolov8n-cls-imagenet.onnx"), threads=threads, num_cpus=num_cpus)
        clf = load_classifier(cfg, models_dir=None, field="classifier")  # (its warm-up ran an inference)
        session = clf.model.predictor.model.backend.session
        options = session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (expected, 1), (threads, num_cpus)
        [res] = clf.classify_batch([np.full((224, 224, 3), 127, np.uint8)])
        assert not isinstance(res, Exception) and clf.model.predictor.model.backend.session is session  # opened once


def test_compare_prints_table_and_json(detector_exports, tmp_path):
    _, _, out, _ = detector_exports
    data = link_images(tmp_path / "coco32", coco_images()[:32], labels=True)
    variants = [str(COCO_PT), str(out / "yolo11n-coco_openvino_model"), str(out / "yolo11n-coco_int8_openvino_model")]
    code, stdout, stderr = percept("models", "compare", *variants, "--data", str(data), "--imgsz", str(IMGSZ),
                                   "--batches", "1,4", "--timing-images", "8", "--repeat", "1",
                                   "--json", str(tmp_path / "compare.json"), "--markdown")
    assert code == 0, stderr
    print(stdout)
    result = json.loads((tmp_path / "compare.json").read_text())
    assert result["task"] == "detect" and result["images"] == 32 and result["batches"] == [1, 4]
    rows = {Path(r["weights"].rstrip("/")).name: r for r in result["variants"]}
    assert list(rows) == ["yolo11n-coco.pt", "yolo11n-coco_openvino_model", "yolo11n-coco_int8_openvino_model"]
    for name, row in rows.items():
        for key in ("map50_95", "map50", "ms_b1", "ms_best", "best_batch", "size_mb", "backend", "imgsz"):
            assert row[key] is not None, (name, key)
        assert set(row["ms_per_image"]) == {"1", "4"} and row["ms_best"] == min(row["ms_per_image"].values())
        assert 0.2 < row["map50_95"] < row["map50"] < 1 and row["imgsz"] == IMGSZ and row["eval"]["images"] == 32
        assert sum(line.startswith(name + " ") for line in stdout.splitlines()) == 1  # its row in the table
        assert f"| `{name}` |" in stdout  # and in the Markdown one
    pt, fp32, int8 = rows.values()
    assert pt["backend"] == "ultralytics" and fp32["backend"] == int8["backend"] == "openvino"
    assert abs(fp32["map50_95"] - pt["map50_95"]) < 0.02  # the same network
    assert abs(int8["map50_95"] - fp32["map50_95"]) < 0.05  # quantised, calibrated on other images
    assert int8["size_mb"] < fp32["size_mb"]
    assert "mAP50-95" in stdout and "ms/img b1" in stdout


def test_compare_shows_the_size_a_carded_classifier_ran_at(tmp_path):
    """The GTSRB card's network takes 32x32 crops: the table said 224 (the default --imgsz)."""
    gtsrb = MODELS / "gtsrb-sign-classifier-32"
    data = MODELS.parent / "data" / "gtsrb-test-sample"
    need(gtsrb / "gtsrb_gray32.xml", data / "labels.csv")
    code, stdout, stderr = percept("models", "compare", str(gtsrb / "gtsrb_gray32.xml"), "--data", str(data / "images"),
                                   "--labels", str(data / "labels.csv"), "--batches", "1", "--timing-images", "2",
                                   "--repeat", "1", "--json", str(tmp_path / "c.json"))
    assert code == 0, stderr
    [row] = json.loads((tmp_path / "c.json").read_text())["variants"]
    assert row["imgsz"] == 32 and row["top1"] > 0.9, row


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Each case names --out in tmp: a check that slipped would write there, never beside the shared weights."""
    (tmp / "empty").mkdir()
    (tmp / "notes").mkdir()
    (tmp / "notes" / "readme.txt").write_text("no images here\n")
    export = ["models", "export", str(COCO_PT), "--out", str(tmp / "out")]
    (tmp / "a-file").write_text("not a folder\n")
    return {
        "out that is a file": (["models", "export", str(CLS_PT), "--to", "onnx", "--out", str(tmp / "a-file")],
                               f"--out: cannot make the folder {tmp / 'a-file'}: a file is there"),
        "unknown format": (export + ["--to", "openvino-int4"], "unknown format 'openvino-int4'"),
        "calibration folder without images": (export + ["--to", "openvino-int8", "--calib", str(tmp / "notes")],
                                              "no images in"),
        "INT8 without calibration": (export + ["--to", "openvino-int8"], "--calib"),
        "weights of another task": (["models", "export", str(CLS_PT), "--to", "onnx", "--task", "detect",
                                     "--out", str(tmp / "out")], "is a classify model, not a detect model"),
        "missing weights": (["models", "export", str(tmp / "nope.pt"), "--to", "onnx", "--out", str(tmp / "out")],
                            "nope.pt' does not exist"),
        "not a .pt": (["models", "export", str(COCO / "images" / "000000001584.jpg"), "--to", "onnx",
                       "--out", str(tmp / "out")], "starts from an ultralytics .pt"),
        # an export folder was said not to exist
        "an export folder": (["models", "export", str(MODELS / "yolo11n_int8_openvino_model"), "--to", "onnx",
                              "--out", str(tmp / "out")], "starts from an ultralytics .pt file (a folder: an export already?"),
        "compare: missing variant": (["models", "compare", str(tmp / "gone_openvino_model"), "--data", str(COCO)],
                                     f"variant {str(tmp / 'gone_openvino_model')!r} does not exist"),
        "compare: no images": (["models", "compare", str(COCO_PT), "--data", str(tmp / "empty")], "no images found"),
        "compare: a classifier as detector": (["models", "compare", str(CLS_PT), "--data", str(COCO),
                                               "--timing-images", "1"],
                                              "is a classify model; without --labels, compare measures detectors"),
    }


@pytest.mark.parametrize("case", ["out that is a file", "unknown format", "calibration folder without images", "INT8 without calibration",
                                  "weights of another task", "missing weights", "not a .pt", "an export folder",
                                  "compare: missing variant", "compare: no images",
                                  "compare: a classifier as detector"])
def test_bad_input_exits_2(tmp_path, case):
    need(COCO_PT, CLS_PT, COCO)
    argv, words = _bad_inputs(tmp_path)[case]
    code, stdout, stderr = percept(*argv)
    assert code == 2, (stdout, stderr)
    assert words in stderr and stderr.splitlines()[-1].startswith(f"percept: models {argv[1]}:"), stderr
    assert stdout == ""
    assert not (tmp_path / "out").exists(), "nothing is written when the input is bad"


def test_compare_says_where_it_looked_for_a_variant_that_does_not_load(tmp_path, monkeypatch):
    """An empty .pt: "… (looked in the current directory; PERCEPT_MODELS_DIR is not set)" though
    it was (the folder was not handed on to the loader)."""
    need(COCO)
    (tmp_path / "empty.pt").write_bytes(b"")
    monkeypatch.setenv("PERCEPT_MODELS_DIR", str(MODELS))
    code, stdout, stderr = percept("models", "compare", str(tmp_path / "empty.pt"), "--data", str(COCO),
                                   "--timing-images", "1")
    assert code == 2 and f"PERCEPT_MODELS_DIR={MODELS}" in stderr and "is not set" not in stderr, stderr
    # the variant named as compare takes it (it said `eval`'s "--weights:", an option compare has not)
    assert f"models compare: variant '{tmp_path / 'empty.pt'}': cannot load" in stderr and "--weights" not in stderr


def test_tensorrt_needs_a_gpu(tmp_path):
    import torch

    need(COCO_PT)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: TensorRT export is allowed here")
    code, stdout, stderr = percept("models", "export", str(COCO_PT), "--to", "openvino-fp32,tensorrt-fp16",
                                   "--out", str(tmp_path / "out"))
    assert code == 2 and "tensorrt-fp16: needs a GPU" in stderr and stdout == ""
    assert not (tmp_path / "out").exists()


def test_a_variant_that_does_not_load_replaces_no_earlier_one(tmp_path, monkeypatch):
    """The variant is loaded where it was made, before it replaces the one of an earlier export:
    one that does not load (the service's load stood in by a refusal) leaves the earlier file
    as it was and no staging folder behind, exit 2; one that loads (the real check) replaces it."""
    from pipeline.lifecycle import export

    need(COCO_PT)
    out = tmp_path / "out"
    out.mkdir()
    earlier = out / "yolo11n-coco.onnx"
    earlier.write_bytes(b"the earlier export")
    argv = ("models", "export", str(COCO_PT), "--to", "onnx", "--imgsz", "160", "--out", str(out))
    with monkeypatch.context() as patched:
        def refused(path, task, imgsz, *, shown=None):
            assert Path(path).exists() and Path(path) != earlier  # loaded where it was made
            raise export.ExportError(f"{shown}: does not load (stand-in)")

        patched.setattr(export, "check_loads", refused)
        code, stdout, stderr = percept(*argv)
    assert code == 2 and "does not load (stand-in)" in stderr, stderr
    assert earlier.read_bytes() == b"the earlier export"
    assert [p.name for p in out.iterdir()] == [earlier.name], "the staging folder is gone"
    code, stdout, stderr = percept(*argv)
    assert code == 0, stderr
    assert earlier.stat().st_size > 1e6 and [p.name for p in out.iterdir()] == [earlier.name]


def test_an_export_failing_part_way_names_the_variants_it_already_wrote(tmp_path, monkeypatch):
    """`--to onnx,openvino-fp32` whose second format fails: the first variant was written (and may have
    replaced an earlier one), and the error did not say so."""
    from pipeline.lifecycle import export

    need(COCO_PT)

    def one(model, fmt, src, out_dir, **kw):  # the exporter stood in: the first format lands, the second fails
        if fmt.name == "onnx":
            return {"format": "onnx", "path": str(out_dir / "yolo11n-coco.onnx")}
        raise export.ExportError(f"{fmt.name}: ultralytics' exporter failed: RuntimeError: stand-in")

    monkeypatch.setattr(export, "_export_one", one)
    with pytest.raises(export.ExportError) as failed:
        export.export_model(str(COCO_PT), "onnx,openvino-fp32", imgsz=160, out=str(tmp_path))
    assert f"(already written: {tmp_path / 'yolo11n-coco.onnx'})" in str(failed.value), failed.value


def test_weights_named_by_their_path_in_the_models_folder_export_to_the_current_folder(tmp_path, monkeypatch):
    """The shared models folder is never written without ``--out`` naming it: weights given by
    their path there (not looked up by name) export to the current folder too, not beside them."""
    need(CLS_PT)
    monkeypatch.setenv("PERCEPT_MODELS_DIR", str(MODELS))
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = percept("models", "export", str(CLS_PT), "--to", "onnx", "--task", "classify",
                                   "--imgsz", "64")
    assert code == 0, stderr
    assert (tmp_path / "yolov8n-cls-imagenet.onnx").stat().st_size > 1e6
    shared_untouched()


def test_compare_rows_of_the_same_file_name_are_told_apart():
    """Two ``best.pt`` from two runs, or the ``.xml`` of two export folders: their rows are
    labelled by the variant as given, not twice by the same file name (pure table logic)."""
    from pipeline.lifecycle.compare import compare_markdown, compare_table

    def row(variant, model):
        return {"variant": variant, "model": model, "backend": "ultralytics", "imgsz": 640, "map50_95": 0.4,
                "map50": 0.6, "ms_b1": 10.0, "ms_best": 9.0, "best_batch": 4, "size_mb": 5.0}

    result = {"task": "detect", "threads": 1, "variants": [row("runs/a/best.pt", "best.pt"),
              row("runs/b/best.pt", "best.pt"), row("yolo11n-coco.pt", "yolo11n-coco.pt")],
              "images": 3, "data": "d", "timing_images": 1, "batches": [1, 4], "repeat": 1}
    table, markdown = compare_table(result), compare_markdown(result)
    for text in (table, markdown):
        assert "runs/a/best.pt" in text and "runs/b/best.pt" in text and "yolo11n-coco.pt" in text, text


def test_an_export_run_from_inside_the_models_folder_writes_nothing_there(tmp_path, monkeypatch):
    """Without --out the variants go to the current folder for weights in the models folder (shared,
    never written): run from inside that folder, they went into it."""
    need(CLS_PT)
    models = tmp_path / "models"
    (models / "work").mkdir(parents=True)
    (models / "cls.pt").symlink_to(CLS_PT)
    monkeypatch.setenv("PERCEPT_MODELS_DIR", str(models))
    for cwd, weights in ((models, "cls.pt"), (models / "work", str(models / "cls.pt"))):
        monkeypatch.chdir(cwd)
        code, _, err = percept("models", "export", weights, "--to", "onnx", "--task", "classify")
        assert code == 2 and f"--out: the current folder {cwd} is in the models folder" in err, (code, err)
    assert sorted(str(p.relative_to(models)) for p in models.rglob("*")) == ["cls.pt", "work"]
