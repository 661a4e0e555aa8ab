"""`percept` fails early and clearly on bad input, before starting anything."""

import ast
import subprocess
import sys
from pathlib import Path

from pipeline.redis_server import free_port

REPO = Path(__file__).resolve().parents[1]


def percept(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_invalid_config_exits_2_naming_the_path(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("cameras:\n  - {id: a, url: x.mp4}\n  - {id: b, url: y.mp4, fps: -2}\n")
    out = percept("run", "-c", str(cfg))
    assert out.returncode == 2
    assert "cameras[1].fps: must be >= 0, got -2" in out.stderr


def test_missing_config_file_exits_2(tmp_path):
    out = percept("run", "-c", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "cannot read" in out.stderr


def test_missing_model_exits_2_naming_field_and_variable(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"redis: {{url: 'redis://127.0.0.1:{free_port()}/0'}}\ndetector: {{weights: ./models/none.pt}}\n")
    out = percept("run", "-c", str(cfg))
    assert out.returncode == 2
    assert "detector.weights: cannot load './models/none.pt'" in out.stderr and "PERCEPT_MODELS_DIR" in out.stderr


def test_classifier_given_as_detector_exits_2(tmp_path, models_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models_dir: {models_dir}\ndetector: {{weights: yolov8n-cls-imagenet.pt}}\n")
    out = percept("run", "-c", str(cfg))
    assert out.returncode == 2
    assert "detector.weights: 'yolov8n-cls-imagenet.pt' is a classify model; this stage needs a detect model" in out.stderr


def test_unreachable_redis_exits_3_without_password(tmp_path, models_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"redis: {{url: 'redis://:topsecret@127.0.0.1:{free_port()}/0'}}\n"
                   f"models_dir: {models_dir}\ndetector: {{weights: yolo11n_int8_openvino_model}}\n")
    out = percept("run", "-c", str(cfg))
    assert out.returncode == 3
    assert "redis.url: cannot reach redis://***@127.0.0.1" in out.stderr
    assert "topsecret" not in out.stderr + out.stdout


def test_pipeline_package_does_not_import_ray():
    for path in (REPO / "pipeline").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "ray" or n.startswith("ray.") for n in names), f"{path.name} imports ray"
