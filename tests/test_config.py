"""Config errors name the YAML path and value; env substitution; defaults."""

import textwrap

import pytest

from pipeline.config import ConfigError, load_config, parse_config


def write(tmp_path, text):
    p = tmp_path / "percept.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def errors_of(data, env=None):
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=env or {})
    return info.value.errors


def test_issue_example_parses_with_defaults(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            """
            redis: {url: "redis://127.0.0.1:6379/0", stream_prefix: percept, maxlen: 1000}
            cameras:
              - {id: traffic, url: "rtsp://user:${CAM_PASS}@10.0.0.5:554/stream1", fps: 5}
              - {id: door-2, url: clip.mp4, loop: true}
            detector:
              weights: yolo11n.pt
              batch: {max_size: 8, wait_ms: 20}
              replicas: {min: 1, max: 4}
            classifiers:
              vehicle: {weights: yolov8n-cls.pt, imgsz: 224, labels: [minivan, cab]}
            """,
        ),
        env={"CAM_PASS": "s3cret"},
    )
    assert cfg.cameras[0].url == "rtsp://user:s3cret@10.0.0.5:554/stream1"
    assert cfg.cameras[1].fps == 5 and cfg.cameras[1].loop
    assert cfg.detector.categories["pedestrian"] == ["person"]
    assert cfg.detector.replicas.max == 4
    assert cfg.classifiers["vehicle"].labels == ["minivan", "cab"]
    assert cfg.decoder.max_inflight == 2


def test_negative_fps_names_path_and_value():
    assert errors_of({"cameras": [{"id": "a", "url": "x"}, {"id": "b", "url": "y", "fps": -2}]}) == [
        "cameras[1].fps: must be >= 0, got -2"
    ]


def test_unknown_key_is_rejected():
    assert errors_of({"cameras": [{"id": "a", "url": "x", "fsp": 3}]}) == ["cameras[0].fsp: unknown key"]
    assert errors_of({"detectr": {}}) == ["detectr: unknown key"]


def test_wrong_type():
    (err,) = errors_of({"cameras": [{"id": "a", "url": "x", "fps": "fast"}]})
    assert err.startswith("cameras[0].fps: must be a valid number") and err.endswith("got 'fast'")


def test_duplicate_camera_ids():
    assert errors_of({"cameras": [{"id": "a", "url": "x"}, {"id": "a", "url": "y"}]}) == [
        "cameras[1].id: duplicate camera id 'a' (also cameras[0])"
    ]


def test_bad_camera_id_and_missing_url():
    errs = errors_of({"cameras": [{"id": "front door"}]})
    assert "cameras[0].id: must match ^[A-Za-z0-9_-]+$, got 'front door'" in errs
    assert "cameras[0].url: required key is missing" in errs


def test_autoscale_bounds_and_classifier_category():
    assert errors_of({"detector": {"replicas": {"min": 3, "max": 1}}}) == ["detector.replicas: max (1) must be >= min (3)"]
    (err,) = errors_of({"classifiers": {"truck": {"weights": "a.pt"}}})
    assert err.startswith("classifiers.truck: no such category")


def test_missing_env_var_names_the_field():
    assert errors_of({"redis": {"password": "${REDIS_PW}"}}) == [
        "redis.password: environment variable REDIS_PW is not set"
    ]


def test_env_value_is_not_parsed_as_yaml():
    cfg = parse_config({"cameras": [{"id": "a", "url": "${U}"}]}, env={"U": "{id: injected}"})
    assert cfg.cameras[0].url == "{id: injected}"


def test_invalid_yaml_reports_line_and_column(tmp_path):
    p = write(tmp_path, "cameras:\n  - id: a\n    url: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert "YAML syntax error at line" in info.value.errors[0] and "column" in info.value.errors[0]


def test_models_dir_from_environment_unless_configured():
    assert parse_config({}, env={"PERCEPT_MODELS_DIR": "/m"}).models_dir == "/m"
    assert parse_config({"models_dir": "/x"}, env={"PERCEPT_MODELS_DIR": "/m"}).models_dir == "/x"


def test_relative_camera_file_resolves_next_to_config(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    cfg = load_config(write(tmp_path, "cameras: [{id: a, url: clip.mp4}]\n"))
    assert cfg.cameras[0].url == str((tmp_path / "clip.mp4").resolve())


def test_decoder_replicas_default_to_one_per_eight_cameras():
    cams = [{"id": f"c{i}", "url": "x"} for i in range(17)]
    assert parse_config({"cameras": cams}, env={}).decoder_replicas == 3
