"""Every model of a config is checked before anything starts: `percept run` on a config whose
models disagree with their cards, the detectors or each other exits 2 with one line per problem,
naming the config path (no Redis, no Ray started)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import yaml

from pipeline.samples import PERSON_ATTRIBUTES, SIGN_CLASSIFIER, SIGN_DETECTOR, VEHICLE_ATTRIBUTES

from .conftest import DETECTOR, MODELS, REPO

pytestmark = pytest.mark.needs_models


def run_config(tmp_path, config: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "percept.yaml"
    path.write_text(yaml.safe_dump({"cameras": [{"id": "cam", "url": "/no/such.mp4"}], "models_dir": str(MODELS),
                                    "state_dir": str(tmp_path / "state"), **config}))
    return subprocess.run([sys.executable, "-m", "cli", "run", "-c", str(path), "--duration", "1"],
                          capture_output=True, text=True, timeout=300)


def test_model_errors_name_the_config_path_and_exit_2(tmp_path):
    """An `on:` label no detector has, two classifiers writing one attribute, a card whose input
    size disagrees with the network and a .xml without its .bin: all reported at once."""
    lonely = tmp_path / "lonely.xml"  # an IR without its weights file
    shutil.copy(MODELS / SIGN_CLASSIFIER, lonely)
    bad_card = tmp_path / "wrong-size.yaml"
    bad_card.write_text(yaml.safe_dump({
        "task": "classify", "input": {"size": [64, 64], "layout": "NHWC", "color": "GRAY", "scale": 0.0039},
        "outputs": [{"name": "dense_10/Softmax:0", "kind": "softmax", "attribute": "sign",
                     "labels_file": str(MODELS / "gtsrb-sign-classifier-32" / "signnames.csv")}]}))
    result = run_config(tmp_path, {
        "detectors": [{"weights": DETECTOR}, {"weights": SIGN_DETECTOR, "name": "signs", "categories": {"sign": ["*"]}}],
        "classifiers": {
            "vehicle": [{"weights": VEHICLE_ATTRIBUTES, "on": ["car", "hovercraft"]},
                        {"weights": VEHICLE_ATTRIBUTES.replace("FP16-INT8", "FP32"), "name": "again"}],
            "pedestrian": {"weights": str(lonely)},
            "sign": {"weights": SIGN_CLASSIFIER, "card": str(bad_card)},
        },
    })
    assert result.returncode == 2, result.stderr
    err = result.stderr
    assert "classifiers.vehicle[0].on[1]: no detector gives 'hovercraft' in category 'vehicle'" in err
    assert "classifiers.vehicle[1]: writes attribute 'type', so does classifiers.vehicle[0]" in err
    assert "classifiers.pedestrian" in err and "lonely.bin" in err
    assert "classifiers.sign" in err and "wrong-size.yaml" in err and "input.size" in err
    assert "redis" not in err.lower()  # nothing was started


def test_a_classifier_whose_category_gets_no_label_of_the_model_is_refused(tmp_path):
    """``pedestrian: [persons]`` (a typo: the model says person) left the category with no class,
    a warning only; its classifier deployed with ``on: [persons]``, unchecked, and never ran."""
    result = run_config(tmp_path, {
        "detector": {"weights": DETECTOR, "categories": {"vehicle": ["car"], "pedestrian": ["persons"]}},
        "classifiers": {"pedestrian": {"weights": PERSON_ATTRIBUTES, "on": ["persons"]}},
    })
    assert result.returncode == 2, result.stderr
    assert "classifiers.pedestrian: no detector gives category 'pedestrian' any object" in result.stderr, result.stderr


def test_card_of_the_wrong_task_and_a_missing_card(tmp_path):
    result = run_config(tmp_path, {
        "detectors": [{"weights": DETECTOR},
                      {"weights": PERSON_ATTRIBUTES, "name": "people", "categories": {"pedestrian": ["*"]}}],
        "classifiers": {"vehicle": {"weights": VEHICLE_ATTRIBUTES, "card": "no-such-card.yaml"}},
    })
    assert result.returncode == 2, result.stderr
    assert "detectors[1]: card" in result.stderr and "describes a classify model" in result.stderr
    assert "classifiers.vehicle.card: 'no-such-card.yaml' does not exist" in result.stderr


def test_a_card_path_reads_only_a_small_yaml_file_and_quotes_none_of_it(tmp_path):
    """A card path can come over the API (`PUT /models/…`): only a .yaml file of at most 64 KiB
    is read, and a syntax error names the line, not its text."""
    from pipeline.backends.card import load_card
    from pipeline.config import ConfigError
    from pipeline.lifecycle.swap_service import SwapRequest

    secret = tmp_path / "secret.txt"
    secret.write_text("token: SECRET_TOKEN_abc\n")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 70_000 + "\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("type: openvino\nfoo: [unclosed SECRET_TOKEN_abc\n")
    for path, expected in ((secret, "a model card is a .yaml file"), (big, "a YAML file of at most 64 KiB"),
                           (tmp_path, "a model card is a .yaml file"), (broken, "YAML syntax error at line 3")):
        with pytest.raises(ConfigError) as err:
            load_card(path)
        assert expected in str(err.value) and "SECRET_TOKEN" not in str(err.value), err.value
    # YAML that parses: a Kubernetes Secret, a card whose values are wrong; neither is quoted
    k8s = tmp_path / "secret.yaml"
    k8s.write_text("apiVersion: v1\nkind: Secret\ntype: Opaque\ndata: {password: SECRET_TOKEN_abc}\n")
    odd = tmp_path / "odd.yaml"
    odd.write_text("task: SECRET_TOKEN_abc\ninput: {size: [32, 32]}\noutputs: [{name: SECRET_TOKEN_abc}]\n")
    for path, expected in ((k8s, "not a model card"), (odd, "task: must be 'classify' or 'detect'")):
        with pytest.raises(ConfigError) as err:
            load_card(path)
        assert expected in str(err.value) and "SECRET_TOKEN" not in str(err.value), err.value
        assert "apiVersion" not in str(err.value) and "Opaque" not in str(err.value)
    with pytest.raises(ValueError) as err:
        SwapRequest.model_validate({"weights": "~nosuchuser-percept/x.pt"})
    assert "its ~ cannot be expanded" in str(err.value)
    with pytest.raises(ValueError, match="card"):  # (the API took "", which the CLI refuses: a card of ".")
        SwapRequest.model_validate({"weights": "x.pt", "card": ""})


def _sign_card(tmp_path, name: str, labels_file: str) -> str:
    """The shipped GTSRB card with another labels file (a path relative to the card)."""
    card = yaml.safe_load((REPO / "configs" / "models" / "gtsrb-signs.yaml").read_text())
    card["outputs"][0]["labels_file"] = labels_file
    path = tmp_path / name
    path.write_text(yaml.safe_dump(card))
    return str(path)


def bad_labels_cards(tmp_path) -> dict[str, tuple[str, str]]:
    """Cards whose labels file is broken: card → (labels file, the words its error must have).
    None of them quotes the file's text (SECRET_TOKEN)."""
    names = (MODELS / "gtsrb-sign-classifier-32" / "signnames.csv").read_text()
    (tmp_path / "blank-first.csv").write_text("\n" + names)  # a blank first line: still a good file
    (tmp_path / "bad-id.csv").write_text("ClassId,SignName\n0,SECRET_TOKEN_abc\nSECRET_TOKEN_x,b\n")
    (tmp_path / "keys.yaml").write_text("names:\n  0: a\n  SECRET_TOKEN_k: b\n")
    (tmp_path / "folder.csv").mkdir()
    return {
        _sign_card(tmp_path, "blank-first.yaml", "blank-first.csv"): ("blank-first.csv", ""),
        _sign_card(tmp_path, "bad-id.yaml", "bad-id.csv"): (
            "bad-id.csv", "line 3: the ClassId (first column) is not a whole number"),
        _sign_card(tmp_path, "word-keys.yaml", "keys.yaml"): (
            "keys.yaml", "names: entry 2: its key is not a class id"),
        _sign_card(tmp_path, "folder.yaml", "folder.csv"): ("folder.csv", "not a file"),
    }


def test_a_broken_labels_file_names_the_card_field_and_line(tmp_path):
    """A labels file with a blank first line loads; one with a ClassId that is not a number, a
    YAML ``names:`` keyed by words, or a folder: each one line naming the config path, the card,
    its field and the line, exit 2, no traceback."""
    cards = bad_labels_cards(tmp_path)
    result = run_config(tmp_path, {
        "detectors": [{"weights": DETECTOR}],
        "classifiers": {"sign": [{"weights": SIGN_CLASSIFIER, "card": card, **({"name": f"s{i}"} if i else {})}
                                 for i, card in enumerate(cards)]},
    })
    assert result.returncode == 2, result.stderr
    err = result.stderr
    assert "Traceback" not in err and "SECRET_TOKEN" not in err, err
    lines = err.splitlines()
    for i, (card, (labels, words)) in enumerate(cards.items()):
        mine = [line for line in lines if f"classifiers.sign[{i}]" in line]
        if not words:
            assert mine == [], mine  # the blank first line is skipped
            continue
        assert len(mine) == 1, err
        assert f"{card}: outputs[0].labels_file: {tmp_path / labels}: {words}" in mine[0], mine[0]


def test_a_network_openvino_cannot_read_is_refused_saying_why(tmp_path):
    """A truncated weights file said only "OpenVINO cannot read …: Exception from
    src/inference/src/cpp/core.cpp:84:" (the first line of OpenVINO's error); now its reason."""
    from pipeline.backends import load_classifier, load_detector
    from pipeline.config import ClassifierConfig, DetectorConfig
    from pipeline.models import ModelError

    export = tmp_path / "yolo11n_int8_openvino_model"
    shutil.copytree(MODELS / DETECTOR, export)
    sign = tmp_path / "sign.xml"
    shutil.copy(MODELS / SIGN_CLASSIFIER, sign)
    for xml in (export / "yolo11n.xml", sign):
        bin_file = (MODELS / SIGN_CLASSIFIER).with_suffix(".bin") if xml == sign else MODELS / DETECTOR / "yolo11n.bin"
        xml.with_suffix(".bin").write_bytes(bin_file.read_bytes()[:1000])
    with pytest.raises(ModelError) as det:
        load_detector(DetectorConfig(weights=str(export)), models_dir=None, warmup=False)
    with pytest.raises(ModelError) as clf:
        load_classifier(ClassifierConfig(weights=str(sign), card=str(REPO / "configs/models/gtsrb-signs.yaml")),
                        models_dir=str(MODELS), field="classifiers.sign")
    for info in (det, clf):
        msg = str(info.value)
        assert "OpenVINO cannot read" in msg and "Incorrect weights in bin file" in msg, msg
        assert "Exception from src" not in msg, msg


def test_a_label_the_detector_lacks_is_warned_of_once(caplog):
    """A typo in a category's labels (``carr``) is a warning (the other labels still map), said
    once: the check built the detector's category map again and said it twice."""
    import logging

    from pipeline.backends.checks import check_models
    from pipeline.config import parse_config

    config = parse_config({"models_dir": str(MODELS), "classifiers": {}, "detector": {
        "weights": DETECTOR, "categories": {"vehicle": ["carr", "truck"], "pedestrian": ["person"]}}}, env={})
    with caplog.at_level(logging.WARNING, logger="percept.models"):
        check_models(config)
    said = [r.getMessage() for r in caplog.records if "has no class" in r.getMessage()]
    assert said == ["detector.categories.vehicle: model has no class 'carr'; ignored"], said


def test_labels_from_a_file_are_checked_as_inline_labels_are(tmp_path):
    """A sigmoid output's labels are the attributes it writes: inline, `unclassified` or a name
    with a space is refused; from its labels file they were taken as they came, so a pedestrian
    card could write `unclassified` over another classifier's reasons. And a YAML labels file's
    `off` (unquoted: a YAML boolean) became the label "False"."""
    from pipeline.backends.card import load_card, read_labels
    from pipeline.config_errors import ConfigError

    card = yaml.safe_load((REPO / "configs" / "models" / "person-attributes.yaml").read_text())
    labels = card["outputs"][0].pop("labels")
    card["outputs"][0]["labels_file"] = "attrs.txt"
    (tmp_path / "person.yaml").write_text(yaml.safe_dump(card))
    for written, words in ((labels, None), ([*labels[:-1], "unclassified"], "'unclassified' is reserved"),
                           ([*labels[:-1], "has bag"], "must match ^[A-Za-z_][A-Za-z0-9_]*$, got 'has bag'")):
        (tmp_path / "attrs.txt").write_text("\n".join(written) + "\n")
        loaded = load_card(tmp_path / "person.yaml")
        if words is None:
            assert read_labels(loaded.outputs[0], loaded, None) == labels
            continue
        with pytest.raises(ConfigError, match="outputs.0..labels_file: .*attrs.txt: .*" + re.escape(words)):
            read_labels(loaded.outputs[0], loaded, None)

    lights = yaml.safe_load((REPO / "configs" / "models" / "traffic-light-state.yaml").read_text())
    lights["outputs"][0].pop("labels", None)
    lights["outputs"][0]["labels_file"] = "names.yaml"
    (tmp_path / "lights.yaml").write_text(yaml.safe_dump(lights))
    for names, words in (("[red, yellow, green, 'off']", None), ("[red, yellow, green, off]", "entry 4: read as a boolean"),
                         ("{0: red, 1: yellow, 2: green, 3: no}", "entry 4: read as a boolean"),
                         ("[red, yellow, green, null]", "entry 4: read as nothing")):
        (tmp_path / "names.yaml").write_text(f"names: {names}\n")
        loaded = load_card(tmp_path / "lights.yaml")
        if words is None:
            assert read_labels(loaded.outputs[0], loaded, None) == ["red", "yellow", "green", "off"]
            continue
        with pytest.raises(ConfigError, match=re.escape(words)):
            read_labels(loaded.outputs[0], loaded, None)
