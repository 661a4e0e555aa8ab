"""Config errors name the YAML path and value; env substitution; defaults."""

import textwrap
from pathlib import Path

import pytest

from pipeline.config import CameraConfig, ConfigError, PerceptConfig, load_config, parse_config


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
    assert cfg.cameras[0].url == "rtsp://user:${CAM_PASS}@10.0.0.5:554/stream1"  # expanded by the decoder
    assert cfg.cameras[1].fps == 5 and cfg.cameras[1].loop
    assert cfg.detector.categories["pedestrian"] == ["person"]
    assert cfg.detector.replicas.max == 4
    assert cfg.classifiers["vehicle"][0].labels == ["minivan", "cab"]
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
    from pipeline.config_env import resolve_camera

    cfg = parse_config({"redis": {"password": "${U}"}, "cameras": [{"id": "a", "url": "${U}"}]},
                       env={"U": "{id: injected}"})
    assert cfg.redis.password == "{id: injected}"
    assert resolve_camera(cfg.cameras[0], {"U": "{id: injected}"}).url == "{id: injected}"


def test_invalid_yaml_reports_line_and_column(tmp_path):
    p = write(tmp_path, "cameras:\n  - id: a\n    url: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert "YAML syntax error at line" in info.value.errors[0] and "column" in info.value.errors[0]


@pytest.mark.parametrize("text, words", [
    ("cameras:\n  - id: a\n    url: a.mp4\ncameras:\n  - id: c\n    url: c.mp4\n",
     "line 4, column 1: duplicate key 'cameras' (first given at line 1)"),
    ("cameras:\n  - id: a\n    url: a.mp4\n    id: b\n", "line 4, column 5: duplicate key 'id' (first given at line 2)"),
    ("detector: {conf: 0.3, conf: 0.5}\n", "duplicate key 'conf'"),
])
def test_a_key_given_twice_is_an_error_not_the_last_one_silently(tmp_path, text, words):
    """PyYAML keeps the last of repeated keys: a second ``cameras:`` block dropped the first
    camera without a word. A merge (``<<: *defaults``) may still be overridden."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert words in info.value.errors[0], info.value.errors
    merged = write(tmp_path, "x-cam: &cam {fps: 2, loop: true}\ncameras:\n  - <<: *cam\n    id: a\n    url: a.mp4\n"
                             "    fps: 4\n")
    with pytest.raises(ConfigError) as info:  # (x-cam is no config key: the merge itself was read)
        load_config(merged, env={})
    assert info.value.errors == ["x-cam: unknown key"], info.value.errors


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400"])
def test_an_infinite_or_nan_number_is_refused_naming_the_field(tmp_path, value):
    for section, field in (("detector", "num_gpus"), ("decoder", "lease_ttl_s")):
        text = f"{section}: {{{field}: {value}}}\n"
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text), env={})
        assert any("must be a finite number" in e for e in info.value.errors), (field, info.value.errors)


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


# --- camera credentials: ${VAR} stays in the config (and Redis), expanded by the decoder ------

def test_camera_url_keeps_its_variables_and_the_decoder_expands_them():
    from pipeline.config_env import camera_env_vars, resolve_camera

    cfg = parse_config({"redis": {"password": "${REDIS_PW}"},
                        "cameras": [{"id": "a", "url": "rtsp://viewer:${CAM_PASS}@10.0.0.5/s1"},
                                    {"id": "b", "url": "${VIDEOS}/b.mp4"}, {"id": "c", "url": "c.mp4"}]},
                       env={"REDIS_PW": "r", "CAM_PASS": "s3cret", "VIDEOS": "/v"})
    assert cfg.redis.password == "r"  # other fields are substituted at load time, as before
    assert [c.url for c in cfg.cameras] == ["rtsp://viewer:${CAM_PASS}@10.0.0.5/s1", "${VIDEOS}/b.mp4", "c.mp4"]
    assert "s3cret" not in cfg.model_dump_json()
    assert camera_env_vars(cfg) == {"CAM_PASS", "VIDEOS"}
    resolved = resolve_camera(cfg.cameras[0], {"CAM_PASS": "s3cret"})
    assert resolved.url == "rtsp://viewer:s3cret@10.0.0.5/s1" and resolved.fps == cfg.cameras[0].fps
    assert resolve_camera(cfg.cameras[2], {}) == cfg.cameras[2]
    # a value is inserted as is, never expanded again
    assert resolve_camera(cfg.cameras[1], {"VIDEOS": "${CAM_PASS}"}).url == "${CAM_PASS}/b.mp4"


def test_resolve_camera_names_the_field_and_the_missing_variable():
    from pipeline.config_env import CameraEnvError, resolve_camera

    cam = CameraConfig(id="dock", url="rtsp://viewer:${CAM_DOCK_PW}@10.0.0.9/s1")
    with pytest.raises(CameraEnvError) as info:
        resolve_camera(cam, {"OTHER": "x"})
    assert str(info.value).startswith("cameras[dock].url: environment variable CAM_DOCK_PW is not set")


def test_load_config_requires_the_variables_of_camera_urls(tmp_path):
    p = write(tmp_path, 'cameras: [{id: a, url: "rtsp://viewer:${CAM_PASS}@10.0.0.5/s1"}]\n')
    with pytest.raises(ConfigError) as info:
        load_config(p, env={})
    assert info.value.errors == ["cameras[0].url: environment variable CAM_PASS is not set"]
    assert load_config(p, env={"CAM_PASS": "x"}).cameras[0].url == "rtsp://viewer:${CAM_PASS}@10.0.0.5/s1"


def test_relative_file_url_with_a_variable_resolves_next_to_config(tmp_path):
    from pipeline.config_env import resolve_camera

    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"")
    cfg = load_config(write(tmp_path, 'cameras: [{id: a, url: "${CLIPS}/a.mp4"}]\n'), env={"CLIPS": "clips"})
    resolved = resolve_camera(cfg.cameras[0], {"CLIPS": "clips"})
    assert Path(resolved.url).resolve() == (tmp_path / "clips" / "a.mp4").resolve()


def test_inline_camera_password_is_refused_with_how_to_use_a_variable():
    (err,) = errors_of({"cameras": [{"id": "x", "url": "rtsp://user:secret@10.0.0.9/s1"}]})
    assert err.startswith("cameras[0].url: inline password refused; write rtsp://user:${CAM_X_PASSWORD}@10.0.0.9/s1 "
                          "and set CAM_X_PASSWORD in the decoder's environment")
    assert "security.allow_inline_credentials: true" in err and "secret" not in err.replace("security", "")
    (err,) = errors_of({"cameras": [{"id": "front-2", "url": "rtsp://u:pre${P}@h/s"}]}, env={"P": "x"})
    assert "CAM_FRONT_2_PASSWORD" in err
    # variables, a user without a password, no credentials at all, files: fine
    for url in ("rtsp://user:${CAM_PW}@h/s", "rtsp://${A}:${B}@h/s", "rtsp://user@h/s", "rtsp://h/s", "/v/a.mp4", "${URL}"):
        assert parse_config({"cameras": [{"id": "a", "url": url}]}, env={}).cameras[0].url == url


def test_inline_camera_password_allowed_when_opted_in():
    cfg = parse_config({"security": {"allow_inline_credentials": True},
                        "cameras": [{"id": "x", "url": "rtsp://user:secret@10.0.0.9/s1"}]}, env={})
    assert cfg.security.allow_inline_credentials and cfg.cameras[0].url == "rtsp://user:secret@10.0.0.9/s1"
    assert errors_of({"security": {"allow_inline_credential": True}}) == ["security.allow_inline_credential: unknown key"]


def test_inline_password_check_for_one_camera():
    from pipeline.config import inline_password_error

    assert inline_password_error(CameraConfig(id="x", url="rtsp://user:${PW}@h/s"), "cameras[x].url") is None
    msg = inline_password_error(CameraConfig(id="x", url="rtsp://user:p%40ss@h:554/s"), "cameras[x].url")
    assert msg.startswith("cameras[x].url: inline password refused; write rtsp://user:${CAM_X_PASSWORD}@h:554/s")
    assert "p%40ss" not in msg


def test_unescaped_password_characters_are_still_refused():
    """A password with "/", "#", "?" or "@" typed as is ends the URL's host part early (or late):
    refused all the same, its text never in the message; a port and a path with "@" are fine."""
    for url, host in (("rtsp://bob:Qz/9k@10.0.0.1/s", "10.0.0.1/s"), ("rtsp://bob:Qz#9k@h:554/s", "h:554/s"),
                      ("rtsp://bob:Qz?9k@h/s", "h/s"), ("rtsp://bob:Qz@9k@h/s", "h/s")):
        (err,) = errors_of({"cameras": [{"id": "a", "url": url}]})
        assert err.startswith(f"cameras[0].url: inline password refused; write rtsp://bob:${{CAM_A_PASSWORD}}@{host} "), err
        assert "Qz" not in err and "9k" not in err, err
    assert parse_config({"cameras": [{"id": "a", "url": "rtsp://h:554/live@main"}]}, env={}).cameras
    # an "@" then a "/" in the password: FFmpeg's reading ends it at the first "@" and takes the
    # rest for the host; the example quoted that "host", a piece of the password
    for url in ("rtsp://admin:p@ss/word@10.0.0.9/s1", "rtsp://admin:Qz@9k#x@h/s"):
        (err,) = errors_of({"cameras": [{"id": "a", "url": url}]})
        assert err.startswith("cameras[0].url: inline password refused; write its password as ${CAM_A_PASSWORD} "
                              "(scheme://admin:${CAM_A_PASSWORD}@host/…) and set CAM_A_PASSWORD"), err
        assert "ss/word" not in err and "word@" not in err and "9k" not in err, err
    # an "@" after the host part of a URL whose password is a variable; an XMEye path password so written
    for url in ("rtsp://admin:${CAM_A_PASSWORD}@10.0.0.5/live?notify=ops@example.com",
                "rtsp://10.0.0.5:554/user=admin_password=${CAM_A_PASSWORD}_channel=1_stream=0.sdp"):
        assert parse_config({"cameras": [{"id": "a", "url": url}]}, env={}).cameras[0].url == url
    (err,) = errors_of({"cameras": [{"id": "a", "url": "rtsp://10.0.0.5/user=admin_password=Qz9k_channel=1"}]})
    assert "write rtsp://10.0.0.5/user=admin_password=${CAM_A_PASSWORD}_channel=1 " in err and "Qz9k" not in err


def test_a_password_in_the_query_string_is_refused_too():
    (err,) = errors_of({"cameras": [{"id": "c", "url": "http://cam/video.cgi?user=admin&pwd=Qz9k&token=Tk7"}]})
    assert err.startswith("cameras[0].url: inline password refused; write "
                          "http://cam/video.cgi?user=admin&pwd=${CAM_C_PASSWORD}&token=${CAM_C_PASSWORD} "), err
    assert "Qz9k" not in err and "Tk7" not in err
    assert parse_config({"cameras": [{"id": "c", "url": "http://cam/v.cgi?pwd=${PW}&ch=1"}]}, env={}).cameras
    (err,) = errors_of({"cameras": [{"id": "c", "url": "https://cams.example/live.m3u8?access_token=SUPER7"}]})
    assert "inline password refused" in err and "SUPER7" not in err, err
    (err,) = errors_of({"cameras": [{"id": "c", "url": "http://cam/snap.cgi?user=admin&pw=Hunt3r"}]})  # a CGI's name
    assert "&pw=${CAM_C_PASSWORD} " in err and "Hunt3r" not in err, err


def test_a_bare_number_where_a_name_goes_says_to_quote_it(tmp_path):
    """YAML reads ``id: 0123`` as the octal number 83: the error says why 83, and what to do."""
    from pipeline.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("cameras:\n  - {id: 0123, url: /x/a.mp4}\n  - {id: '0124', url: /x/b.mp4}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.errors == ["cameras[0].id: must be a valid string (quote it: YAML reads a bare 0123 as the "
                                   "octal number 83, 1_000 as 1000, yes/on as true), got 83"], caught.value.errors


def test_config_errors_never_quote_credentials():
    """The ``got …`` of an error line: URLs' credentials scrubbed, password fields not shown."""
    errors = errors_of({"cameras": ["rtsp://bob:S3cretPW@10.0.0.1/s", {"id": "b", "url": ["rtsp://u:S3cretPW@h/s"]}],
                        "redis": {"url": "redis://:S3cretPW@127.0.0.1:6379/0", "password": 12345678}})
    assert any(e.startswith("cameras[0]: ") and "rtsp://***@10.0.0.1/s" in e for e in errors), errors
    assert any(e.startswith("cameras[1].url: ") for e in errors), errors
    assert any(e.startswith("redis.password: must be a valid string (quote it") and e.endswith(", got ***")
               for e in errors), errors
    assert not [e for e in errors if "S3cretPW" in e or "12345678" in e], errors
    (err,) = errors_of({"redis": {"url": "redis://user:s3cr/etPW@host:6379/0"}})  # redis-py: "cannot cast 's3cr'"
    assert err.startswith("redis.url: not a Redis URL: a user name or password with / ? # or @") and "s3cr" not in err, err
    (err,) = errors_of({"redis": "redis://:S3cretPW@127.0.0.1:6379/0"})
    assert err.startswith("redis: ") and "S3cretPW" not in err and "redis://***@127.0.0.1" in err, err


def test_num_gpus_above_one_must_be_whole():
    with pytest.raises(ConfigError) as err:
        parse_config({"detector": {"num_gpus": 1.5}}, env={})
    assert "detector.num_gpus" in str(err.value) and "whole GPUs" in str(err.value)
    assert parse_config({"detector": {"num_gpus": 2}}, env={}).detector.num_gpus == 2


def test_several_detectors_and_classifiers_become_named_deployments():
    cfg = parse_config({
        "detectors": [{"weights": "coco.pt"},
                      {"weights": "faces/yunet.onnx", "categories": {"face": ["face"]}}],
        "classifiers": {"vehicle": {"weights": "attrs.xml"},
                        "face": [{"weights": "a.xml"}, {"weights": "b.xml", "name": "second"}]},
    }, env={})
    assert cfg.detector.weights == "coco.pt"
    assert [s.deployment for s in cfg.detector_sections()] == ["detector", "detector-yunet"]
    assert [(s.deployment, s.field) for s in cfg.classifier_sections()] == [
        ("classifier-vehicle", "classifiers.vehicle"),
        ("classifier-face", "classifiers.face[0]"),
        ("classifier-face-second", "classifiers.face[1]"),
    ]
    # what deployments receive (model_dump) validates to the same config
    again = PerceptConfig.model_validate(cfg.model_dump(mode="json"))
    assert [s.deployment for s in again.classifier_sections()] == [s.deployment for s in cfg.classifier_sections()]


def test_errors_of_several_models_name_their_paths():
    (err,) = errors_of({"detector": {"weights": "a.pt"}, "detectors": [{"weights": "b.pt"}]})
    assert "detector and detectors" in err
    # detectors written as a mapping beside a detector: its own error (it was a KeyError traceback)
    (err,) = errors_of({"detector": {"weights": "a.pt"}, "detectors": {"b": {"weights": "b.pt"}}})
    assert err.startswith("detectors: must be a valid list"), err
    (err,) = errors_of({"classifiers": {"vehicle": {"weights": "a.pt", "min_size": [72]}}})
    assert err.startswith("classifiers.vehicle.min_size")  # a single mapping keeps its own path
    (err,) = errors_of({"classifiers": {"vehicle": [{"weights": "a.pt"}, {"weights": "b.pt", "imgsz": 0}]}})
    assert err.startswith("classifiers.vehicle[1].imgsz: must be >= 32")
    # (100 was taken: ultralytics ran 128 on crops cut at 100, a warning each predict)
    (err,) = errors_of({"classifiers": {"vehicle": {"weights": "a.pt", "imgsz": 100}}})
    assert err.startswith("classifiers.vehicle.imgsz: must be a multiple of 32"), err
    (err,) = errors_of({"classifiers": {"vehicle": [{"weights": "c.pt"}, {"weights": "x/a.pt"}, {"weights": "y/a.pt"}]}})
    assert err.startswith("classifiers.vehicle[2].name") and "classifier-vehicle-a" in err
    (err,) = errors_of({"detectors": [{"weights": "a.pt"}, {"weights": "f.onnx", "categories": {"face": ["face"]}}],
                        "classifiers": {"faces": {"weights": "c.xml"}}})
    assert err.startswith("classifiers.faces: no such category") and "'face'" in err


def test_detectors_of_different_imgsz_are_refused():
    """Every detector gets the frame letterboxed once, at detectors[0].imgsz: another imgsz would be ignored."""
    assert errors_of({"detectors": [{"weights": "a.pt"}, {"weights": "s.onnx", "name": "signs", "imgsz": 1280}]}) == [
        "detectors[1].imgsz: every detector runs on the same letterboxed frame: must equal detectors[0].imgsz (640), "
        "got 1280"]
    (err,) = errors_of({"detectors": [{"weights": "a.pt", "imgsz": 320}, {"weights": "b.pt", "imgsz": 320},
                                      {"weights": "c.pt", "imgsz": 640}]})
    assert err.startswith("detectors[2].imgsz: ") and "detectors[0].imgsz (320), got 640" in err
    cfg = parse_config({"detectors": [{"weights": "a.pt", "imgsz": 320}, {"weights": "b.pt", "imgsz": 320}]}, env={})
    assert [d.imgsz for d in cfg.all_detectors] == [320, 320] and cfg.detector.imgsz == 320
    assert parse_config({"detector": {"weights": "a.pt", "imgsz": 1280}}, env={}).detector.imgsz == 1280
    # a size off the models' stride (ultralytics would run another: `percept build` took 33)
    assert errors_of({"detector": {"weights": "a.pt", "imgsz": 33}}) == ["detector.imgsz: must be a multiple of 32, got 33"]
    assert errors_of({"http": {"port": 0}}) == ["http.port: must be >= 1, got 0"]  # (a port the system picks: unfound)


def test_unquoted_on_key_in_yaml_is_the_label_filter(tmp_path):
    """YAML 1.1 reads `on:` as the boolean true; a classifier's `on:` still means its labels."""
    path = tmp_path / "c.yaml"
    path.write_text("classifiers:\n  vehicle:\n    weights: a.xml\n    on: [car, bus]\n")
    assert load_config(path, env={}).classifiers["vehicle"][0].on == ["car", "bus"]


def test_config_that_is_not_text_or_has_a_bad_redis_url_or_device(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00cameras")
    with pytest.raises(ConfigError) as err:
        load_config(binary)
    assert err.value.errors == ["not a UTF-8 text file (byte 0): a YAML config is text"]
    assert errors_of({"redis": {"url": "redis://:S3cretPW@127.0.0.1:abc/0"}}) == [
        "redis.url: not a Redis URL: Port could not be cast to integer value as 'abc'"]
    # options of the query redis-py does not take: a traceback at the first command (percept run too)
    for query, expected in (("ssl_cert_reqs=required", "unexpected keyword argument 'ssl_cert_reqs'"),
                            ("max_connections=-1", "must be a positive integer"), ("decode_responses=yes", "as bytes"),
                            ("protocol=9", "protocol must be either 2 or 3")):
        (err,) = errors_of({"redis": {"url": f"redis://:S3cretPW@127.0.0.1:6379/0?{query}"}})
        assert err.startswith("redis.url: not a Redis URL") and expected in err and "S3cret" not in err, err
    assert parse_config({"redis": {"url": "rediss://h:6380/0?ssl_cert_reqs=none"}}, env={}).redis.url
    for path in ("abc", "-1", "0/1"):  # redis-py read these as database 0, -1 and 1
        assert errors_of({"redis": {"url": f"redis://127.0.0.1:6379/{path}"}}) == [
            f"redis.url: not a Redis URL: the path is the database's number (redis://host:6379/0), got '/{path}'"]
    for fine in ("redis://h", "redis://h/", "redis://h:6379/12", "unix:///run/redis.sock?db=2"):
        assert parse_config({"redis": {"url": fine}}, env={}).redis.url == fine
    assert errors_of({"cameras": [{"id": "a", "url": "device:abc"}]}) == [
        "cameras[0].url: device: takes the camera's index (device:0 for /dev/video0), got 'device:abc'"]
    assert parse_config({"cameras": [{"id": "a", "url": "device:1"}]}, env={}).cameras[0].url == "device:1"
    # a validator's message quoting the value quotes it without its credentials
    assert errors_of({"cameras": [{"id": "a", "url": "device:rtsp://admin:S3cretPW@cam/s"}]}) == [
        "cameras[0].url: device: takes the camera's index (device:0 for /dev/video0), got 'device:rtsp://***@cam/s'"]


def test_a_camera_url_whose_variables_make_it_wrong_is_refused_where_they_are_expanded():
    """A URL that is all ${VAR} passes the config; what the variable holds is checked where the
    decoder expands it, and says so without quoting it."""
    from pipeline.config_env import CameraEnvError, resolve_camera

    camera = parse_config({"cameras": [{"id": "a", "url": "${CAM_URL}"}]}, env={"CAM_URL": "x"}).cameras[0]
    with pytest.raises(CameraEnvError) as info:
        resolve_camera(camera, {"CAM_URL": "rtps://user:S3cretPW@h:99999/x"})
    assert str(info.value).startswith("cameras[a].url, its variables expanded: unknown scheme rtps://")
    assert "S3cretPW" not in str(info.value)
    assert resolve_camera(camera, {"CAM_URL": "rtsp://[fe80::1]:554/s"}).url == "rtsp://[fe80::1]:554/s"


def test_a_camera_url_with_a_bad_scheme_host_or_port_is_refused_at_load():
    """A typo in the scheme, a port out of range, no host: refused naming the field (they passed,
    then failed at run time as "no answer" or a misleading hint); parts written as ${VAR}, files,
    multicast and listener URLs pass."""
    cases = {"rtps://127.0.0.1/x": "unknown scheme rtps:// (a camera is rtsp://, rtsps://, http(s)://",
             "rtsp://127.0.0.1:99999/x": "the port must be a number from 1 to 65535",
             "rtsp://u:${PW}@h:0/x": "the port must be a number from 1 to 65535",
             "rtsp://": "no host (rtsp://host[:port]/…)",
             # (a host no name lookup answers: accepted, it failed at every open)
             "rtsp://ho st/x": "the host is no address or host name (letters, digits, - and . between them): 'ho st'",
             "rtsp://u:${PW}@-/x": "the host is no address or host name"}
    for url, expected in cases.items():
        (err,) = errors_of({"cameras": [{"id": "a", "url": url}]}, env={"PW": "x"})
        assert err.startswith(f"cameras[0].url: {expected}"), (url, err)
    for url in ("rtsp://${CAM_HOST}/s", "${URL}", "clips/a.mp4", "file:///v/a.mp4", "udp://@239.0.0.1:1234",
                "srt://:9000?mode=listener", "RTSP://h:554/x", "rtsp://u:${PW}@h:554/s", "http://cam_1.lan/x",
                "rtsp://[fe80::1]:554/s", "rtsp://kamera.münchen.de/s"):
        assert parse_config({"cameras": [{"id": "a", "url": url}]}, env={"PW": "x"}).cameras[0].url == url


def test_a_camera_differs_at_runtime_only_when_nothing_but_its_zones_and_lines_changed():
    running = CameraConfig(id="a", url="rtsp://cam/1", zones={"z": [[0, 0], [1, 0], [1, 1]]})
    assert CameraConfig(id="a", url="rtsp://cam/1", lines={"l": [[0, 0.5], [1, 0.5]]},
                        anchor="center").differs_at_runtime_only(running)
    assert not CameraConfig(id="a", url="rtsp://cam/2", zones=running.zones).differs_at_runtime_only(running)
    assert not CameraConfig(id="a", url="rtsp://cam/1", fps=2, zones=running.zones).differs_at_runtime_only(running)


def test_backpressure_wait_is_refused_for_a_device_camera():
    with pytest.raises(ValueError, match="wait is for files"):
        CameraConfig(id="c", url="device:0", backpressure="wait")
    assert CameraConfig(id="c", url="/videos/a.mp4", backpressure="wait").backpressure == "wait"


def test_a_camera_file_name_the_system_cannot_look_up_loads_and_fails_as_the_camera(tmp_path):
    """Relative camera paths are looked up beside the config file: a name too long for the
    system raised OSError out of `load_config` (`percept run` printed a traceback). It is left as
    written; the camera itself says why it cannot open (`camera_file`)."""
    from pipeline.source_types import SourceError, camera_file

    name = "x" * 300 + ".mp4"
    cfg = load_config(write(tmp_path, f"cameras:\n  - {{id: a, url: {name}}}\n"), env={})
    assert cfg.cameras[0].url == name
    with pytest.raises(SourceError, match="File name too long"):
        camera_file("a", cfg.cameras[0].url)


def test_opencv_timeouts_below_a_millisecond_stay_timeouts(monkeypatch):
    """``open_timeout_s: 0.0005`` passes validation (> 0) and became 0 ms, which OpenCV reads as
    no timeout at all: a stalled open held every camera's open in its replica for good."""
    import pipeline.capture as capture

    seen = []
    monkeypatch.setattr(capture, "camera_unanswered", lambda url, timeout_s, peer=None: None)  # (it answered)
    monkeypatch.setattr(capture, "_ffmpeg_open", lambda url, params: (seen.append(params), type(
        "Closed", (), {"isOpened": lambda self: False})())[1])
    monkeypatch.setattr(capture, "diagnose_open", lambda url, timeout_s: "no answer")
    from pipeline.source_types import SourceError

    with pytest.raises(SourceError, match="cannot open rtsp://cam.local/s: no answer"):
        capture.open_capture("a", "rtsp://cam.local/s", open_timeout_s=0.0005, read_timeout_s=0.0004)
    import cv2

    params = dict(zip(seen[0][::2], seen[0][1::2]))
    assert params[cv2.CAP_PROP_OPEN_TIMEOUT_MSEC] == 1 and params[cv2.CAP_PROP_READ_TIMEOUT_MSEC] == 1, params


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::", "::1", "localhost", "percept-head.svc.cluster.local",
                                  "my-host.", ""])  # ("": every interface, as a socket reads it)
def test_an_http_host_serve_can_bind_loads(host):
    assert parse_config({"http": {"host": host}}, env={}).http.host == host


@pytest.mark.parametrize("host", ["not a host!", "-edge.example", "a..b", "http://0.0.0.0", "0.0.0.0:8000", "x" * 64,
                                  "[::1]", "999.1.1.1"])
def test_an_http_host_serve_cannot_bind_is_refused_at_load(host):
    # (Serve found out only once its proxy started, in a log on the cluster)
    with pytest.raises(ConfigError, match=r"http\.host: .*not an address to bind"):
        parse_config({"http": {"host": host}}, env={})


def test_an_http_host_left_as_a_variable_is_refused_by_build(tmp_path, capsys):
    """`percept build` keeps an unset ${VAR} for the cluster, but Serve takes its http_options as
    written: the proxy would fail to bind there, in a log nobody reads."""
    from cli.main import main

    path = tmp_path / "c.yaml"
    path.write_text("http:\n  host: ${PERCEPT_TEST_UNSET_HTTP_HOST}\n")
    assert main(["build", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "http.host: '${PERCEPT_TEST_UNSET_HTTP_HOST}' is not expanded" in err, err
