"""A dataset's and an output's mistakes, caught as bad input (exit 2, naming the file and what is
wrong in it) by `percept eval`, `models compare`, `models finetune` and `models export`: a data.yaml
whose entries are not text or whose class ids are not numbers, labels of classes its ``names``
lacks, a fine-tuning ``--out`` that would overwrite its own input or land in the models folder, and
INT8 calibration images that do not decode. Four coco128-val images, copied into tmp."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from .conftest import SHARED
from .inprocess import percept

MODELS, COCO = SHARED / "models", SHARED / "data" / "coco128-val"
COCO_PT = MODELS / "yolo11n-coco.pt"

os.environ.setdefault("YOLO_OFFLINE", "1")


def need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"shared models/data not found: {', '.join(missing)} (set PERCEPT_SHARED)")


def coco4(root: Path, spec: dict | None = None, keep: set[int] | None = None) -> Path:
    """4 coco128-val images and labels (only the classes in ``keep``, when given) in a YOLO
    folder at ``root``, with a data.yaml of ``spec`` (``val``/``train`` default to images)."""
    need(COCO)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for image in sorted((COCO / "images").glob("*.jpg"))[:4]:
        shutil.copyfile(image, root / "images" / image.name)
        rows = (COCO / "labels" / f"{image.stem}.txt").read_text().splitlines()
        rows = [r for r in rows if r.strip() and (keep is None or int(r.split()[0]) in keep)]
        (root / "labels" / f"{image.stem}.txt").write_text("".join(f"{r}\n" for r in rows))
    if spec is not None:
        (root / "data.yaml").write_text(yaml.safe_dump({"val": "images", "train": "images", **spec}, sort_keys=False))
    return root


def run_all(data: Path, *extra: str) -> dict[str, tuple[int, str, str]]:
    """The three commands that read --data, each stopped before it measures or trains anything."""
    return {
        "eval": percept("eval", "detector", "--weights", str(COCO_PT), "--data", str(data), "--imgsz", "64"),
        "compare": percept("models", "compare", str(COCO_PT), "--data", str(data), "--timing-images", "1"),
        "finetune": percept("models", "finetune", str(COCO_PT), "--data", str(data), "--epochs", "1",
                            "--imgsz", "64", *extra),
    }


# --- 1. path / val / train that are not text ------------------------------------------------------

@pytest.mark.parametrize("key, value, shown", [("path", 2024, "2024"), ("path", [1, 2], "[1, 2]"),
                                               ("val", 7, "7")])
def test_a_data_yaml_entry_that_is_not_text_exits_2_naming_the_file_and_key(tmp_path, key, value, shown):
    """``path: 2024`` (or ``[1, 2]``) was a TypeError traceback and exit 1 in eval, compare and
    finetune: ``Path(2024)``. Now exit 2: ``--data: <file>: path: must be a folder name (text)``."""
    need(COCO_PT)
    data = coco4(tmp_path / "d", {key: value, "names": ["person"]})
    for command, (code, stdout, stderr) in run_all(data / "data.yaml", "--out", str(tmp_path / "o.pt")).items():
        assert code == 2, (command, stderr[-2000:])
        assert f"--data: {data / 'data.yaml'}: {key}: must be a folder" in stderr and f"got {shown}" in stderr, stderr
        assert "Traceback" not in stderr and stdout == "", (command, stderr)
    assert not (tmp_path / "o.pt").exists()


# --- 2. names keys that are not class ids ----------------------------------------------------------

def test_data_yaml_names_keyed_by_words_exit_2_naming_the_file_and_key(tmp_path):
    """``names: {a: person, b: car}`` said ``eval: invalid literal for int() with base 10: 'a'``
    (no file, no key; finetune the same). Now: ``--data: <file>: names: key 'a' is not a class id``."""
    need(COCO_PT)
    data = coco4(tmp_path / "d", {"names": {"a": "person", "b": "car"}})
    for command, (code, stdout, stderr) in run_all(data, "--out", str(tmp_path / "o.pt")).items():
        assert code == 2, (command, stderr[-2000:])
        assert f"--data: {data / 'data.yaml'}: names: key 'a' is not a class id (a whole number)" in stderr, stderr
    assert not (tmp_path / "o.pt").exists()


def test_data_yaml_names_keyed_by_numbers_written_as_text_still_read(tmp_path):
    """Keys quoted as text (``'0': person``) were read as ids before; they still are."""
    from pipeline.evaluate import find_yolo_images

    data = coco4(tmp_path / "d", {"names": {"0": "person", 1: "bicycle"}})
    assert find_yolo_images(data)[1] == {0: "person", 1: "bicycle"}


# --- 3. labels of classes data.yaml does not name -----------------------------------------------------

def test_a_label_of_a_class_data_yaml_does_not_name_exits_2(tmp_path):
    """With ``names: [person, car]`` over 4 coco images the labels of every other class were
    dropped without a word (2 instances counted instead of 42, exit 0). Now exit 2 naming the
    label file, its line and the class; labels of the named classes are evaluated as before."""
    from pipeline.evaluate import EvalError, evaluate_detector

    need(COCO_PT)
    names = ["person", "bicycle", "car"]  # the model's ids 0-2, in its order
    good = coco4(tmp_path / "good", {"names": names}, keep={0, 1, 2})
    r = evaluate_detector(str(COCO_PT), good, imgsz=160)
    assert r["instances"] == sum(len(p.read_text().splitlines()) for p in (good / "labels").iterdir()) > 0
    assert r["warnings"] == []
    bad = coco4(tmp_path / "bad", {"names": ["person", "car"]})
    with pytest.raises(EvalError) as refused:
        evaluate_detector(str(COCO_PT), bad, imgsz=160)
    first = next(p for p in sorted((bad / "labels").iterdir()) if any(
        int(r.split()[0]) > 1 for r in p.read_text().splitlines()))
    line = next(n for n, r in enumerate(first.read_text().splitlines(), 1) if int(r.split()[0]) > 1)
    cls = int(first.read_text().splitlines()[line - 1].split()[0])
    assert str(refused.value) == f"{first}:{line}: class {cls} is not in data.yaml's names (0..1)"
    code, stdout, stderr = percept("eval", "detector", "--weights", str(COCO_PT), "--data", str(bad), "--imgsz", "160")
    assert code == 2 and f"{first}:{line}: class {cls} is not in data.yaml's names" in stderr, stderr[-2000:]


# --- 4. finetune's --out: never its own input, never the models folder by default -----------------------

def test_finetune_refuses_an_out_that_is_its_own_weights_or_data_yaml(tmp_path):
    """``models finetune BASE.pt --out BASE.pt`` trained and then overwrote the starting weights.
    Now exit 2 naming --out before anything is read or written; so is --out naming --data's yaml."""
    need(COCO_PT)
    base = tmp_path / "base.pt"
    shutil.copyfile(COCO_PT, base)
    data = coco4(tmp_path / "d", {"names": None})
    link = tmp_path / "link.pt"  # the same file by another name
    link.symlink_to(base)
    for out, words in ((base, "is the starting weights"), (link, "is the starting weights"),
                       (data / "data.yaml", "is --data's data.yaml")):
        code, stdout, stderr = percept("models", "finetune", str(base), "--data", str(data / "data.yaml"),
                                       "--epochs", "1", "--imgsz", "64", "--batch", "4", "--out", str(out))
        assert code == 2, stderr[-2000:]
        assert stderr.splitlines()[-1].startswith("percept: models finetune: --out: ") and words in stderr, stderr
    assert base.read_bytes() == COCO_PT.read_bytes()


def test_finetune_writes_nothing_into_a_data_yamls_images_folder_nor_removes_a_split_it_did_not_make(tmp_path):
    """A data.yaml whose ``path:`` is another folder: --out and --work were checked against the
    yaml's folder only, and went into the dataset itself. A --work folder's ``split/`` was removed
    whatever it was (the user's own notes in it went)."""
    need(COCO_PT)
    data = coco4(tmp_path / "data16")
    (tmp_path / "cfgs").mkdir()
    spec = tmp_path / "cfgs" / "signs.yaml"
    spec.write_text(yaml.safe_dump({"path": "../data16", "train": "images", "val": "images", "names": None}))
    for option, value in (("--out", data / "ft.pt"), ("--work", data / "work")):
        code, _, stderr = percept("models", "finetune", str(COCO_PT), "--data", str(spec), "--epochs", "1",
                                  "--imgsz", "64", option, str(value))
        assert code == 2 and f"{option}: " in stderr and "never written" in stderr, stderr[-2000:]
    assert sorted(p.name for p in data.iterdir()) == ["images", "labels"]
    work = tmp_path / "mine"
    (work / "split").mkdir(parents=True)
    (work / "split" / "notes.txt").write_text("mine\n")
    code, _, stderr = percept("models", "finetune", str(COCO_PT), "--data", str(data), "--epochs", "1",
                              "--imgsz", "64", "--work", str(work))
    assert code == 2 and "not a split a finetune run made" in stderr, stderr[-2000:]
    assert (work / "split" / "notes.txt").read_text() == "mine\n"


def test_finetune_run_from_inside_the_models_folder_writes_nothing_there(tmp_path, monkeypatch):
    """Without --out the weights went to ``finetuned/`` in the current folder, even when that is
    the models folder (``models export`` refuses it). Now the same rule as export: exit 2 naming
    --out; an --out naming a file there is still written."""
    need(COCO_PT)
    models = tmp_path / "models"
    models.mkdir()
    (models / "det.pt").symlink_to(COCO_PT)
    data = coco4(tmp_path / "d")
    monkeypatch.setenv("PERCEPT_MODELS_DIR", str(models))
    monkeypatch.chdir(models)
    code, stdout, stderr = percept("models", "finetune", "det.pt", "--data", str(data), "--epochs", "1",
                                   "--imgsz", "64", "--batch", "4")
    assert code == 2, stderr[-2000:]
    assert f"--out: the current folder {models} is in the models folder" in stderr, stderr
    assert "name the file with --out" in stderr
    assert sorted(p.name for p in models.iterdir()) == ["det.pt"]


def test_finetune_default_out_is_in_the_current_folder_elsewhere(tmp_path, monkeypatch):
    """Outside the models folder the default stays ``./finetuned/<weights>-<data>.pt``."""
    from pipeline.lifecycle.finetune import check_out
    from pipeline.lifecycle.finetune_data import read_dataset

    models, work = tmp_path / "models", tmp_path / "work"
    models.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    ds = read_dataset(coco4(tmp_path / "d", keep={0}), model_names={0: "person"})
    assert check_out(None, COCO_PT, ds, str(models)) == work / "finetuned" / "yolo11n-coco-d.pt"


# --- 5. INT8 calibration counts only images that decode -------------------------------------------------

def calib_folder(root: Path) -> Path:
    """4 good JPEGs, a file of text named .jpg and a JPEG cut after 2000 bytes."""
    need(COCO)
    root.mkdir(parents=True)
    images = sorted((COCO / "images").glob("*.jpg"))[:4]
    for image in images:
        shutil.copyfile(image, root / image.name)
    (root / "bad.jpg").write_bytes(b"not an image\n")
    (root / "truncated.jpg").write_bytes(images[0].read_bytes()[:2000])
    return root


def test_int8_calibration_counts_only_images_that_decode(tmp_path):
    """With 4 good JPEGs, a garbage ``bad.jpg`` and a truncated JPEG in --calib, export said
    "INT8 calibrated on 6 images" (JSON too) where NNCF used 4: ultralytics' dataset check drops
    both (the truncated one though ``cv2.imread`` decodes it in part). Now 4, the two others named
    in a warning; each of the 4 given passes ultralytics' check, each left out fails it."""
    from ultralytics.data.utils import check_image

    from pipeline.lifecycle.export import calibration_data

    calib = calib_folder(tmp_path / "calib")
    warnings: list[str] = []
    with calibration_data([calib], "detect", {0: "person"}, warnings=warnings) as (spec, n):
        given = sorted((Path(spec).parent / "images").iterdir())
        for image in given:  # (links in tmp: a repair would write there)
            check_image(str(image))
    assert n == 4 and len(given) == 4, given
    left_out = f"{calib / 'bad.jpg'}, {calib / 'truncated.jpg'}"
    assert warnings == [f"--calib: left out, cannot be read as a whole image: {left_out}"]
    for name in ("bad.jpg", "truncated.jpg"):
        shutil.copyfile(calib / name, tmp_path / name)
        with pytest.raises(Exception):  # noqa: B017 -- ultralytics drops it, whatever it raises
            check_image(str(tmp_path / name))


def test_int8_calibration_of_images_that_all_fail_to_decode_exits_2(tmp_path):
    """Only unreadable images in --calib: refused before the model is exported (it would have
    calibrated on none)."""
    need(COCO_PT)
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "bad.jpg").write_bytes(b"not an image\n")
    (calib / "empty.png").write_bytes(b"")
    code, stdout, stderr = percept("models", "export", str(COCO_PT), "--to", "openvino-int8", "--calib", str(calib),
                                   "--imgsz", "64", "--out", str(tmp_path / "out"))
    assert code == 2, stderr[-2000:]
    assert "--calib: none of the 2 images can be read as a whole image" in stderr, stderr
    assert not (tmp_path / "out").exists()


def test_calibration_sample_is_filled_from_the_other_images_when_some_do_not_decode(tmp_path):
    """``--calib-images 4`` over 6 files of which 2 do not decode: 4 images, not 2 or 3."""
    from pipeline.lifecycle.export_inputs import calibration_frames

    calib = calib_folder(tmp_path / "calib")
    skipped: list[Path] = []
    frames = calibration_frames([calib], limit=4, skipped=skipped)
    assert len(frames) == 4 and {p.name for p in skipped} <= {"bad.jpg", "truncated.jpg"} and skipped


@pytest.mark.integration
def test_int8_export_reports_the_images_it_calibrated_on(tmp_path):
    """The whole export (imgsz 64, ~30 s): table, JSON and warnings say 4 images, not 6."""
    import json

    need(COCO_PT)
    calib = calib_folder(tmp_path / "calib")
    code, stdout, stderr = percept("models", "export", str(COCO_PT), "--to", "openvino-int8", "--calib", str(calib),
                                   "--imgsz", "64", "--out", str(tmp_path / "out"), "--json", str(tmp_path / "r.json"))
    assert code == 0, stderr[-2000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["calibration"]["images"] == 4 and "INT8 calibrated on 4 images of" in stdout, stdout
    assert "INT8 calibrated on 4 images (300 recommended)" in r["warnings"]
    assert any("bad.jpg" in w and "truncated.jpg" in w for w in r["warnings"]) and "bad.jpg" in stderr


def test_an_export_stopped_before_any_variant_leaves_no_folder_it_made(tmp_path):
    """``--out new/folder`` was made before the exporter ran, and stayed (empty) after a failure or
    Ctrl-C that wrote nothing."""
    from pipeline.lifecycle.export import export_model

    need(COCO_PT)

    def interrupt(line: str) -> None:  # Ctrl-C as the first variant starts
        raise KeyboardInterrupt

    out = tmp_path / "exports" / "today"
    with pytest.raises(KeyboardInterrupt):
        export_model(str(COCO_PT), "onnx", out=str(out), progress=interrupt, models_dir=str(MODELS))
    assert not (tmp_path / "exports").exists() and sorted(tmp_path.iterdir()) == []
