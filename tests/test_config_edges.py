"""Config values that passed validation and then failed later, where the error no longer named
the field: refused at load now, naming it (`pipeline/config*.py`, `pipeline/config_yaml.py`)."""

import textwrap

import pytest

from pipeline.config import ConfigError, load_config, parse_config


def errors_of(data):
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    return info.value.errors


@pytest.mark.parametrize("text, line", [("cameras: &a [*a]\n", 1), ("cameras:\n  - &cam {id: a, url: a.mp4, zones: {q: *cam}}\n", 2)])
def test_a_yaml_alias_inside_the_node_it_names_is_a_yaml_error_not_a_recursion(tmp_path, text, line):
    """The structure contained itself, and reading it recursed until Python gave up: a traceback
    (RecursionError, exit 1) instead of the exit 2 of a bad config."""
    path = tmp_path / "loop.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    (err,) = info.value.errors
    assert err.startswith(f"YAML syntax error at line {line}, column ") and "inside the node" in err and "a loop" in err
    path.write_text("x-cam: &cam {url: a.mp4}\ncameras:\n  - {id: a, url: a.mp4}\n")  # an alias used elsewhere: fine
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.errors == ["x-cam: unknown key"]


def test_ray_resources_that_ray_refuses_are_refused_naming_the_field():
    """Ray refused these only when the graph was deployed ("deployment failed", exit 3, after
    Redis and Ray had started); `percept build` wrote them into serve.yaml."""
    assert errors_of({"decoder": {"resources": {"CPU": 2}}}) == [
        "decoder.resources: CPU: not a custom resource (use num_cpus / num_gpus)"]
    assert errors_of({"detector": {"resources": {"memory": 1, "GPU": 1}}}) == [
        "detector.resources: GPU, memory: not a custom resource (use num_cpus / num_gpus)"]
    assert errors_of({"classifiers": {"vehicle": {"weights": "v.xml", "resources": {"node_a": -1}}}}) == [
        "classifiers.vehicle.resources: node_a: a quantity must be from 0 to 1e12"]
    assert parse_config({"decoder": {"resources": {"node_a": 0.5}}}, env={}).decoder.resources == {"node_a": 0.5}
    # sizes no cluster has: Ray's arithmetic overflowed at `percept run` (a traceback), or Ray refused them at deploy
    for section, key, value in (("decoder", "num_cpus", 1e308), ("detector", "num_cpus", 1e300),
                                ("detector", "replicas", 10**9), ("detector", "num_gpus", float("inf")),
                                ("decoder", "replicas", 10**6)):
        (err,) = errors_of({section: {key: value}})
        assert err.startswith(f"{section}.{key}: "), err
    errs = errors_of({"detector": {"replicas": {"min": 1, "max": 10**6}}})
    assert any(e.startswith("detector.replicas.max: must be <= 4096") for e in errs), errs


def test_numbers_the_sampler_or_redis_cannot_use_are_refused():
    (err,) = errors_of({"cameras": [{"id": "a", "url": "a.mp4", "fps": 1e-310}]})
    assert err.startswith("cameras[0].fps: must be 0 (every frame) or at least 0.000277778 (a frame an hour)"), err
    (err,) = errors_of({"redis": {"maxlen": 10**20}})  # Redis: "value is not an integer or out of range" on every XADD
    assert err.startswith("redis.maxlen: "), err
    assert parse_config({"cameras": [{"id": "a", "url": "a.mp4", "fps": 0.001}]}, env={}).cameras[0].fps == 0.001


def test_names_with_a_trailing_newline_and_a_device_index_that_is_no_number_are_refused():
    """Python's ``$`` matches before a final newline: ``"z\\n"`` passed as a zone name and
    ``"vehicle\\n"`` became a Serve deployment name; ``str.isdigit`` is true for ``²``, which
    the camera's open then failed to read as an index."""
    (err,) = errors_of({"cameras": [{"id": "a", "url": "a.mp4", "zones": {"z\n": [[0, 0], [1, 0], [1, 1]]}}]})
    assert err.startswith("cameras[0].zones['z\\n']: ") and "a zone name must match" in err, err
    assert "\n" not in err, "the message split over two lines"
    # a key is quoted in the path as it is: a URL pasted as a zone's name had its password shown
    pasted = {"rtsp://admin:hunter22@cam/s": [[0, 0], [1, 0], [1, 1]]}
    (err,) = errors_of({"cameras": [{"id": "a", "url": "a.mp4", "zones": pasted}]})
    assert err.startswith("cameras[0].zones.rtsp://***@cam/s: a zone name must match") and "hunter22" not in err, err
    (err,) = errors_of({"detector": {"categories": {"vehicle\n": ["car"]}}})
    assert err.startswith("detector.categories: category name 'vehicle\\n' must match"), err
    (err,) = errors_of({"cameras": [{"id": "a", "url": "device:²"}]})
    assert err.startswith("cameras[0].url: device: takes the camera's index"), err


@pytest.mark.parametrize("url, says", [
    ("rtsp:/cam/stream", "rtsp:/… is not a URL: write rtsp://host/…"),
    ("rtsp//cam/stream", "rtsp//… is not a URL: write rtsp://host/…"),
    ("http:cam/video.mjpg", "http:… is not a URL: write http://host/…"),
    (" rtsp://cam/stream", "spaces or line breaks before or after the URL"),
    ("rtsp://cam/stream\n", "spaces or line breaks before or after the URL"),
])
def test_a_camera_url_missing_a_slash_or_with_spaces_around_it_is_refused(url, says):
    """These passed the scheme check (written for ``rtps://``) and failed only when the camera
    opened, as a file that was not found."""
    assert errors_of({"cameras": [{"id": "a", "url": url}]}) == [f"cameras[0].url: {says}"]
    for fine in ("clips/rtsp/a.mp4", "C:/videos/a.mp4", "file:/v/a.mp4", "device:0", "https://cam/x",
                 "zmq:tcp://127.0.0.1:5555", "unix:/run/cam.sock"):  # (FFmpeg's own forms of these)
        assert parse_config({"cameras": [{"id": "a", "url": fine}]}, env={}).cameras[0].url == fine


@pytest.mark.parametrize("url, starts", [("admin:Hunter2Pass@192.0.2.11/s", "user:password@"),
                                         ("admin:${CAM_A_PASSWORD}@192.0.2.11/s", "user:password@"),
                                         ("192.0.2.11:554/stream1", "host:port"), ("cam.local:8554", "host:port")])
def test_a_network_camera_written_without_its_scheme_is_refused_without_quoting_it(url, starts):
    """Read as a file path it passed, then failed as "file not found: …admin:Hunter2Pass@…": the
    password in the camera's status in Redis and in the logs (the inline-password check looks at
    URLs with a scheme only)."""
    (err,) = errors_of({"cameras": [{"id": "a", "url": url}]})
    assert err.startswith("cameras[0].url: no scheme, so it is read as a file path, but it starts with " + starts), err
    assert "Hunter2Pass" not in err and "192.0.2.11" not in err, err
    for fine in ("me@home.mp4", "clips/a:1.mp4", "/v/cam:554/a.mp4", "device:1", "${CAM_URL}"):
        assert parse_config({"cameras": [{"id": "a", "url": fine}]}, env={}).cameras[0].url == fine


def test_a_boolean_where_a_number_goes_is_refused_naming_the_field():
    """``fps: yes`` ran the camera at 1 fps (pydantic read true as 1); booleans stay booleans."""
    (err,) = errors_of({"cameras": [{"id": "a", "url": "a.mp4", "fps": True}]})
    assert err == "cameras[0].fps: must be a number, got true (YAML reads yes/no, on/off and true/false as booleans)"
    for data, path in (({"detector": {"batch": {"max_size": False}}}, "detector.batch.max_size"),
                       ({"detector": {"replicas": True}}, "detector.replicas"), ({"redis": {"maxlen": True}}, "redis.maxlen")):
        (err,) = errors_of(data)
        assert err.startswith(f"{path}: must be a number, got "), err
    (err,) = errors_of({"cameras": [{"id": "a", "url": "a.mp4", "zones": {"z": [[True, False], [1, 0], [1, 1]]}}]})
    assert err == "cameras[0].zones.z[0]: coordinates are numbers, got [true, false]", err  # (was "all on one line")
    cfg = parse_config({"cameras": [{"id": "a", "url": "a.mp4", "fps": 2, "loop": True}], "tracker": {"enabled": False}},
                       env={})
    assert cfg.cameras[0].loop is True and cfg.tracker.enabled is False and cfg.cameras[0].fps == 2


@pytest.mark.parametrize("data, line", [
    ({"cameras": [{"id": "a" * 65, "url": "a.mp4"}]}, f"cameras[0].id: must be at most 64 characters, got '{'a' * 65}'"),
    ({"cameras": [{"id": "a", "url": "a.mp4", "max_inflight": 1.5}]}, "cameras[0].max_inflight: must be a whole number, got 1.5"),
    ({"cameras": ["rtsp://u:Pw9x@h/s"]}, "cameras[0]: must be a mapping of keys, got 'rtsp://***@h/s'"),
    ({"detector": {"categories": "vehicle"}}, "detector.categories: must be a mapping of keys, got 'vehicle'"),
])
def test_pydantics_own_wording_is_said_in_the_configs_terms(data, line):
    """It said "String should have at most 64 characters", "valid integer, got a number with a
    fractional part, got 1.5" and "a valid dictionary or instance of CameraConfig" (a class name)."""
    assert errors_of(data) == [line]


@pytest.mark.parametrize("text", ["", "# nothing yet\n\n"])
def test_a_config_file_with_no_settings_is_refused(tmp_path, text):
    """It ran with every default and no camera, without a word (a file truncated, the wrong one)."""
    from pipeline.config import load_config

    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == ["no settings in the file (empty, or comments only): write at least `cameras: []`"]
    (tmp_path / "none.yaml").write_text("cameras: []\n")
    assert load_config(tmp_path / "none.yaml").cameras == []


def test_tracker_thresholds_that_match_anything_or_nothing_are_refused():
    """`match_thresh: 1` took a cost of 1 as a match: any detection continued any track, a person
    far across the frame the car's (a pair of two categories costs more than any threshold now
    too); 0 matched nothing, and `merge_iou: 0` made every touching pair of boxes one object."""
    errors = errors_of({"tracker": {"match_thresh": 1}})
    assert len(errors) == 1 and errors[0].startswith("tracker.match_thresh: "), errors
    assert errors_of({"tracker": {"match_thresh": 0, "merge_iou": 0}})[1].startswith("tracker.merge_iou: ")
    assert parse_config({"tracker": {"match_thresh": 0.999, "merge_iou": 1}}, env={}).tracker.match_thresh == 0.999


def test_a_pair_of_two_categories_never_matches_at_the_highest_threshold():
    import numpy as np

    from pipeline.config import TrackerConfig
    from pipeline.schema import Detections
    from pipeline.tracking import ObjectTracker

    def dets(*objs):
        return Detections(xyxy=np.array([o[0] for o in objs], np.float32), scores=[0.9] * len(objs),
                          labels=[o[1] for o in objs], categories=[o[2] for o in objs])

    tracker = ObjectTracker(TrackerConfig(match_thresh=0.999), fps=4)
    car, person = ([100, 100, 200, 160], "car", "vehicle"), ([800, 100, 830, 180], "person", "pedestrian")
    for k in range(3):
        first = tracker.update(dets(car, person), (720, 1280), ts=k * 0.25)
    car_id = first.track_ids[0]
    tracker._tracker.args.match_thresh = 1.0  # as `match_thresh: 1` was let through before
    later = [tracker.update(dets(([1000, 500, 1030, 580], "person", "pedestrian")), (720, 1280), ts=1 + k * 0.25)
             for k in range(3)]
    assert car_id is not None and all(car_id not in out.track_ids for out in later), (car_id, later)


@pytest.mark.parametrize("config, field, says", [
    ({"detector": {"categories": {}}}, "detector.categories", "no category: every detection would be dropped"),
    ({"detector": {"categories": {"vehicle": [], "person": ["person"]}}}, "detector.categories", "vehicle: no labels"),
    ({"detector": {"weights": ""}}, "detector.weights", "must not be empty"),
    ({"detector": {"categories": {"sign": ["*", "stop"]}}}, "detector.categories", "'*' (every label of the model) "
     "needs to be its only label"),
    ({"classifiers": {"vehicle": {"weights": "v.pt", "on": []}}}, "classifiers.vehicle.on", "at least 1 item"),
    ({"classifiers": {"vehicle": {"weights": "v.pt", "labels": []}}}, "classifiers.vehicle.labels", "at least 1 item"),
    ({"decoder": {"lease_ttl_s": 1e306}}, "decoder.lease_ttl_s", "must be <= 86400"),
    ({"redis": {"username": "bob"}}, "redis.username", "only with redis.url"),
    ({"redis": {"tls_ca_file": "/etc/ca.pem"}}, "redis.tls_ca_file", "only with redis.url"),
    ({"redis": {"url": "redis://h:6379/0", "tls_ca_file": "/etc/ca.pem"}}, "redis.tls_ca_file",
     "only with a rediss:// URL: redis:// and unix:// do not use TLS (the password would go in clear)"),
])
def test_settings_that_would_validate_and_then_do_nothing_or_fail_later_are_refused(config, field, says):
    """An empty category map dropped every detection; `on: []` never ran the classifier (and
    `labels: []` meant the opposite of its non-empty self); an empty detector path resolved to
    '.'; a lease TTL Redis cannot hold failed every round; a user name or CA file for the private
    redis-server (password only, no TLS) failed every connection as 'cannot reach'; a CA file
    beside a plain redis:// URL was ignored, and the password went in clear."""
    errors = errors_of(config)
    assert len(errors) == 1 and errors[0].startswith(f"{field}: ") and says in errors[0], errors


def test_tracker_thresholds_that_would_track_nothing_are_refused():
    """A low pass above the high one, or a new-track threshold of 1, left ByteTrack matching
    nothing or starting no track: no zone or line event ever fired, silently."""
    assert errors_of({"tracker": {"track_low_thresh": 0.9, "track_high_thresh": 0.1}}) == [
        "tracker: track_low_thresh (0.9) must not be above track_high_thresh (0.1): the low pass takes the detections "
        "between them"]
    assert errors_of({"tracker": {"new_track_thresh": 1}}) == ["tracker.new_track_thresh: must be < 1, got 1"]
    lowered = {"tracker": {"track_low_thresh": 0.25}, "detector": {"conf": 0.1}}
    assert parse_config(lowered, env={}).tracker.track_low_thresh == 0.25


def test_a_low_pass_threshold_the_detector_never_feeds_is_refused():
    """ByteTrack's second pass takes detections between ``track_low_thresh`` and
    ``track_high_thresh``, but the tracker gets only what the detector keeps (its ``conf``): with
    conf at or above the high threshold, a track_low_thresh set did nothing, without a word."""
    assert errors_of({"tracker": {"track_low_thresh": 0.05}}) == [
        "tracker.track_low_thresh: 0.05 does nothing: the detector keeps no detection below its conf 0.25, at or "
        "above track_high_thresh 0.25, so ByteTrack's second pass gets none; lower detector.conf (published objects "
        "then go down to it) or raise track_high_thresh"]
    for fed in ({"tracker": {"track_low_thresh": 0.05}, "detector": {"conf": 0.1}},
                {"tracker": {"track_low_thresh": 0.05, "track_high_thresh": 0.5}},
                {"tracker": {"track_low_thresh": 0.05, "enabled": False}}):
        parse_config(fed, env={})  # (raises ConfigError if refused)


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """A few hundred bytes of aliases of aliases expand to millions of values: reading the config
    (its ${VAR}s are substituted in every value) ran for minutes and then ran out of memory."""
    from pipeline.config import ConfigError, load_config

    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefgh"):
        prev = "abcdefgh"[i]
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as caught:  # (before: minutes, then out of memory; pytest's timeout bounds it)
        load_config(path, env={})
    assert caught.value.errors == ["YAML refused: the document's aliases expand to more than 100000 values (aliases "
                                   "of aliases): refused"], caught.value.errors


def test_a_config_of_many_zones_written_out_is_not_taken_for_an_alias_bomb(tmp_path):
    """The bound counted every value written: 3 cameras of 64 zones of 256 points (as many as a
    camera takes) were refused as "YAML syntax error at unknown position: … aliases of aliases"."""
    import math

    from pipeline.config import load_config

    def zone(k: int) -> str:  # a circle of 256 points, each zone its own
        r = 0.01 + 0.005 * k
        return str([[round(0.5 + r * math.cos(2 * math.pi * j / 256), 5), round(0.5 + r * math.sin(2 * math.pi * j / 256), 5)]
                    for j in range(256)])

    zones = ", ".join(f"z{k}: {zone(k)}" for k in range(64))
    path = tmp_path / "many.yaml"
    path.write_text("cameras:\n" + "".join(f"  - {{id: c{i}, url: c{i}.mp4, zones: {{{zones}}}}}\n" for i in range(3)))
    assert [len(c.zones) for c in load_config(path, env={}).cameras] == [64, 64, 64]


def test_a_yaml_config_nested_hundreds_of_levels_deep_is_a_config_error_not_a_traceback(tmp_path):
    """PyYAML recurses once a level: ~500 levels raised RecursionError, exit 1 with a traceback."""
    path = tmp_path / "deep.yaml"
    path.write_text("cameras: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.errors == ["YAML nested too deeply (lists or mappings hundreds of levels deep): refused"]


def test_a_value_from_the_environment_is_quoted_as_its_variable_in_errors():
    """A secret given to the wrong key (a typo, a wrong indent) was printed in the error line:
    only keys named password/token/secret were masked."""
    env = {"RPW": "hunter2SECRET", "N": "12"}
    with pytest.raises(ConfigError) as err:
        parse_config({"redis": {"url": "redis://localhost/0", "maxlen": "${RPW}"},
                      "detector": {"imgsz": "${RPW}x", "batch": {"max_size": "${N}a"}}}, env=env)
    text = "\n".join(err.value.errors)
    assert "hunter2" not in text and "got '${RPW}'" in text and "got '${RPW}x'" in text, text
    assert "got '12a'" in text, text  # (too short to be told from pieces of the words: left)


def test_a_config_path_that_never_ends_is_refused_not_read_until_memory_runs_out():
    """`-c /dev/zero` (or a huge file) was read whole: a MemoryError traceback."""
    with pytest.raises(ConfigError) as err:
        load_config("/dev/zero")
    assert err.value.errors == ["more than 16 MiB: not a config file"] and err.value.source == "/dev/zero"


def test_classifier_settings_that_would_do_nothing_or_break_its_answers_are_refused():
    """Accepted before: an attribute named ``unclassified`` (it overwrote the marker, and its
    answers never made an ``attributes`` event), a label both in ``on`` and ``not_on`` (the
    classifier ran on nothing, where ``on: []`` was refused for that), a negative ``min_size``."""
    base = {"cameras": [{"id": "a", "url": "a.mp4"}]}
    cases = [({"attribute": "unclassified"}, "classifiers.vehicle.attribute: 'unclassified' is reserved"),
             ({"on": ["car", "van"], "not_on": ["van"]}, "classifiers.vehicle.not_on: 'van' is in on too"),
             ({"min_size": [-5, 40]}, "classifiers.vehicle.min_size[0]: must be > 0, got -5"),
             # (it never ran: none of its labels is the category's, or all of them are left out)
             ({"on": ["person", "spaceship"]}, "classifiers.vehicle.on: none of ['person', 'spaceship'] is a label of "
                                               "category vehicle (bicycle, bus, car, motorcycle, truck): the classifier"),
             ({"not_on": ["car", "truck", "bus", "motorcycle", "bicycle", "van"]},
              "classifiers.vehicle.not_on: every label of category vehicle (bicycle, bus, car, motorcycle, truck)")]
    for given, error in cases:
        (err,) = errors_of({**base, "classifiers": {"vehicle": {"weights": "c.pt", **given}}})
        assert err.startswith(error), err
    for given in ({"on": ["person", "bus"]}, {"not_on": ["car", "truck", "bus", "motorcycle"]}):  # some label left
        parse_config({**base, "classifiers": {"vehicle": {"weights": "c.pt", **given}}}, env={})  # (raises if refused)


def test_a_card_cannot_write_the_reserved_attribute_and_a_stray_yaml_beside_the_cards_is_passed_over(tmp_path):
    import yaml

    from pipeline.backends.card import CARDS_DIR, find_card, load_card

    card = yaml.safe_load((CARDS_DIR / "vehicle-attributes.yaml").read_text())
    card["outputs"][1]["attribute"] = "unclassified"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(ConfigError) as info:
        load_card(tmp_path / "bad.yaml")
    assert "outputs[1]" in info.value.errors[0] and "'unclassified' is reserved" in info.value.errors[0], info.value.errors
    # every classifier and detector without a card: looked for among these, by file name
    (tmp_path / "a-list.yaml").write_text("- red\n- green\n")  # a traceback (AttributeError) before
    (tmp_path / "latin1.yaml").write_bytes("files: [caf\xe9.onnx]\n".encode("latin-1"))  # (UnicodeDecodeError)
    (tmp_path / "one.yaml").write_text("files: model.onnx\n")  # a string: matched `l.onnx` (`in` a string)
    (tmp_path / "z-good.yaml").write_text("files: [net.onnx]\n")
    assert find_card("/m/l.onnx", tmp_path) is None
    assert find_card("/m/net.onnx", tmp_path) == tmp_path / "z-good.yaml"


def test_settings_that_would_do_nothing_are_refused_naming_the_field():
    """A classifier's ``min_score`` without ``labels`` (it gates only a restricted answer), and
    ``loop: true`` / ``realtime: false`` on a live camera (files only): accepted, and nothing
    changed, without a word."""
    assert errors_of({"classifiers": {"vehicle": {"weights": "w.pt", "min_score": 0.9}}}) == [
        "classifiers.vehicle.min_score: applies with labels (the best of them must reach it); without labels every "
        "answer stands: give labels, or leave min_score out"]
    parse_config({"classifiers": {"vehicle": {"weights": "w.pt", "labels": ["minivan"], "min_score": 0.9}}}, env={})
    for field, value in (("loop", True), ("realtime", False)):
        errors = errors_of({"cameras": [{"id": "gate", "url": "rtsp://cam.example/s", field: value}]})
        assert len(errors) == 1 and errors[0].startswith(f"cameras[0].{field}: ") and "for files" in errors[0], errors
        parse_config({"cameras": [{"id": "gate", "url": "clips/gate.mp4", field: value}]}, env={})


def test_a_zone_that_touches_or_repeats_itself_is_refused_naming_the_points():
    """Only edges crossing properly were refused. An outline listed twice (pasted again) was
    accepted, and by the even-odd rule every point was then outside it: no event, ever. A bowtie
    whose edges cross at a corner was accepted, or, with equal lobes, refused as "all on one
    line". Both are refused now, naming the points; a corner in the middle of a straight side,
    or points on one line, are as before."""
    def zone_errors(points):
        return errors_of({"cameras": [{"id": "cam", "url": "x.mp4", "zones": {"z": points}}]})

    square = [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8]]
    assert zone_errors(square + square) == ["cameras[0].zones.z: a zone's points must all differ: point 4 repeats "
                                            "point 0 (list each corner once, in order around the zone)"]
    touch = "cameras[0].zones.z: a zone's edges must not touch: point 3 lies on the edge from point 0 (list the points " \
            "in order around the zone)"
    assert zone_errors([[0, 0], [400, 400], [400, 0], [200, 200], [0, 400]]) == [touch]  # equal lobes
    assert zone_errors([[0, 0], [400, 400], [400, 0], [200, 200], [0, 600]]) == [touch]
    assert zone_errors([[0, 0], [0.5, 0.5], [1, 1]]) == ["cameras[0].zones.z: a zone needs an area: its points are "
                                                         "all on one line"]
    side = [[0.1, 0.1], [0.5, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]]
    assert parse_config({"cameras": [{"id": "cam", "url": "x.mp4", "zones": {"z": side}}]}, env={}).cameras[0].zones == {"z": side}


def test_a_coordinate_past_any_frame_is_refused_naming_it():
    """``1e308`` passed as a coordinate, overflowed the shape checks (a numpy warning) and was
    refused as "all on one line"; now its bound is said. The largest frame's pixels still pass."""
    errors = errors_of({"cameras": [{"id": "cam", "url": "x.mp4",
                                     "zones": {"z": [[0, 0], [1e308, 0], [0, 1e308]]}, "lines": {"l": [[0, 0], [1e9, 5]]}}]})
    assert errors == ["cameras[0].zones.z[1]: coordinates must be at most 65536 (pixels of the largest frame), got [1e+308, 0]",
                      "cameras[0].zones.z[2]: coordinates must be at most 65536 (pixels of the largest frame), got [0, 1e+308]",
                      "cameras[0].lines.l[1]: coordinates must be at most 65536 (pixels of the largest frame), got [1e+09, 5]"], errors
    big = [[0, 0], [7680, 0], [7680, 4320]]
    assert parse_config({"cameras": [{"id": "cam", "url": "x.mp4", "zones": {"z": big}}]}, env={}).cameras[0].zones == {"z": big}


def test_a_key_that_is_no_text_is_said_as_a_key_where_it_is():
    """``yes: 1`` in a camera was said as ``cameras[0][1]: Keys should be strings, got True``:
    a list index, and the key never named."""
    hint = "(quote it: YAML reads yes/no/on/off unquoted as true/false, and digits as a number)"
    assert errors_of({"cameras": [{"id": "a", "url": "a.mp4", True: 1}]}) == [f"cameras[0]: a key must be text, got True {hint}"]
    assert errors_of({3: "x"}) == [f"the top level: a key must be text, got 3 {hint}"]


@pytest.mark.parametrize("secret", ["redis", "must", "cameras"])
def test_a_secret_that_is_a_word_of_the_error_line_is_not_given_away_by_where_it_is_replaced(secret):
    """Values from the environment were replaced in the whole line: ``${REDIS_PW}.maxlen: must be
    …`` (the password is "redis"), ``view.fps: ${REDIS_PW} be > 0`` ("must")."""
    data = {"cameras": [{"id": "a", "url": "a.mp4", "fps": -1}], "redis": {"password": "${REDIS_PW}", "maxlen": -1},
            "view": {"fps": 0}}
    with pytest.raises(ConfigError) as err:
        parse_config(data, env={"REDIS_PW": secret})
    assert "${REDIS_PW}" not in str(err.value), str(err.value)
    assert sorted(err.value.errors) == sorted(parse_errors(data, "x" * 9)), err.value.errors


def test_an_apostrophe_in_a_line_does_not_hide_the_quoted_value_from_the_redaction():
    from pipeline.config_errors import as_written

    assert as_written(["x: the camera's host, got 'hunter22'"], {"hunter22": "PW"}) == ["x: the camera's host, got '${PW}'"]


def parse_errors(data, secret):
    with pytest.raises(ConfigError) as err:
        parse_config(data, env={"REDIS_PW": secret})
    return err.value.errors


@pytest.mark.parametrize("secret", ["hunter2\\secret", "s3cr3t-" * 12, "it's-a-secret"])
def test_a_secret_a_validator_quotes_escaped_or_cut_short_is_quoted_as_its_variable(secret):
    """``http.host`` quoted ``host[:60]!r``: a secret longer than 60 characters or with a backslash
    in it no longer matched the value replaced, and its first 60 characters were printed."""
    with pytest.raises(ConfigError) as err:
        parse_config({"http": {"host": "${PW}"}}, env={"PW": secret})
    text = str(err.value)
    assert "${PW}" in text and secret[:6] not in text and "s3cr3t" not in text, text


def test_aliased_text_counts_by_its_length_against_the_alias_bound(tmp_path):
    """An alias of a 100 kB string a thousand times (a 0.1 MB file) passed the bound, which
    counted lists and mappings only: 36 s of validation, 1000 error lines, and with a ${VAR} in
    it 190 MiB for the substitution alone."""
    path = tmp_path / "strings.yaml"
    path.write_text("x-big: &a " + "A" * 100_000 + "\ncameras: [" + ", ".join(["*a"] * 1000) + "]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.errors[0].startswith("YAML refused: the document's aliases expand to more than"), caught.value.errors
    path.write_text("cameras:\n  - {id: c0, url: &u rtsp://cam.example/stream}\n" + "".join(
        f"  - {{id: c{i}, url: *u}}\n" for i in range(1, 3)))  # (a real alias of a short text: fine)
    assert len(load_config(path, env={}).cameras) == 3


def test_errors_past_fifty_are_counted_not_each_said():
    with pytest.raises(ConfigError) as err:
        parse_config({"cameras": [{"id": f"c{i}", "url": "a.mp4", "fps": -1} for i in range(200)]}, env={})
    assert len(err.value.errors) == 51 and err.value.errors[-1] == "… and 150 more errors", err.value.errors[-3:]


@pytest.mark.parametrize("text, says", [
    ("state_dir: 2024-02-30\n", "day is out of range for month"),
    ("redis: {maxlen: " + "9" * 5000 + "}\n", "digits"),
])
def test_yaml_values_python_cannot_make_are_a_config_error_not_a_traceback(tmp_path, text, says):
    """PyYAML raises a plain ValueError for a date that does not exist or an integer of thousands
    of digits: a traceback from `percept build` / `run`, exit 1."""
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    (err,) = caught.value.errors
    assert err.startswith("YAML value refused at line 1") and says in err, err


def test_a_date_where_text_goes_says_to_quote_it():
    (err,) = errors_of({"cameras": [], "state_dir": __import__("datetime").date(2024, 1, 1)})
    assert err.startswith("state_dir: ") and "quote it" in err, err


@pytest.mark.parametrize("value", ["${REDIS_PW:-}", "${PW:-x}", "${ REDIS_PW }", "${REDIS-PW}", "a${REDIS_PW"])
def test_a_variable_written_in_another_shells_form_is_refused_not_taken_as_text(value):
    """``${REDIS_PW:-}`` (Compose's default) was taken as the literal password, found out only as
    Redis refused it."""
    (err,) = errors_of({"cameras": [], "redis": {"password": value}})
    assert err.startswith("redis.password: ") and "${NAME}" in err and value not in err, err


def test_an_empty_password_is_refused_not_taken_for_no_password():
    """``password: ${REDIS_PW}`` with REDIS_PW set but empty (a secret never filled in) started
    the private redis-server with no password, without a word."""
    with pytest.raises(ConfigError) as err:
        parse_config({"cameras": [], "redis": {"password": "${REDIS_PW}"}}, env={"REDIS_PW": ""})
    (line,) = err.value.errors
    assert line.startswith("redis.password: ") and "empty" in line, line
    with_url = parse_config({"cameras": [], "redis": {"url": "redis://cache:6379/0", "password": "${REDIS_PW}"}},
                            env={"REDIS_PW": ""})
    assert with_url.redis.password is None  # (a server of its own without AUTH: no password, as before)
    assert "password='" not in repr(parse_config({"cameras": [], "redis": {"password": "hunter2"}}, env={}).redis)


def test_a_second_yaml_document_is_said_so(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("cameras: []\n---\ncameras: []\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.errors == ["YAML syntax error at line 2, column 1: a config is one YAML document, but found "
                                   "another document"], caught.value.errors
