"""Bad command-line values: exit 2 naming the option, before any work; URLs quoted without
their credentials; a file that is no model, a config that is no text, a state folder that
cannot be made: one line saying so, never a traceback."""

import pytest

from cli.main import main
from tests.conftest import SHARED
from tests.http import answering
from tests.test_cli import percept

BAD_VALUES = [
    (["eval", "detector", "--weights", "w", "--data", "d", "--batch", "0"], "argument --batch: must be >= 1, got '0'"),
    (["eval", "detector", "--weights", "w", "--data", "d", "--iou", "1.5"], "argument --iou: must be from 0 to 1"),
    (["eval", "classifier", "--weights", "w", "--data", "d", "--labels", "l", "--context", "-1"],
     "argument --context: must be from 1 to 4, got '-1'"),
    (["explain", "--object", "0", "--image", "i.jpg", "--conf", "2"], "argument --conf: must be from 0 to 1, got '2'"),
    (["explain", "--object", "0", "--image", "i.jpg", "--imgsz", "0"], "argument --imgsz: must be from 32 to 4096"),
    (["models", "export", "w.pt", "--to", "openvino", "--imgsz", "0"], "argument --imgsz: must be from 32 to 4096"),
    # (ultralytics exported at 128 and the result said 100)
    (["models", "export", "w.pt", "--to", "openvino", "--imgsz", "100"], "argument --imgsz: must be a multiple of 32"),
    # (eval and compare reported "imgsz 33" and mAP 0.000; ultralytics ran another size)
    (["eval", "detector", "--weights", "w", "--data", "d", "--imgsz", "33"], "argument --imgsz: must be a multiple of 32"),
    (["models", "compare", "a", "--data", "d", "--imgsz", "33"], "argument --imgsz: must be a multiple of 32"),
    (["explain", "--object", "0", "--image", "i.jpg", "--imgsz", "33"], "argument --imgsz: must be a multiple of 32"),
    (["models", "compare", "a", "--data", "d", "--repeat", "x"], "argument --repeat: must be a whole number, got 'x'"),
    (["subscribe", "cam", "--claim-idle-ms", "-5"], "argument --claim-idle-ms: must be from 0 to 2.592e+09, got '-5'"),
    (["subscribe", "cam", "--from", "garbage"], "argument --from: must be an entry id"),
    (["subscribe", "cam", "--redis", "redis://127.0.0.1:abc"], "argument --redis: the port is no number"),
    (["subscribe", "cam", "--redis", "redis://127.0.0.1:6379/abc"],  # ("got" said twice)
     "argument --redis: the path is the database's number (redis://host:6379/0), got '/abc'\n"),
    (["top", "--redis", "garbage"], "argument --redis: Redis URL must specify one of the following schemes"),
    (["cameras", "zones", "a", "--zones", '{"a": [[0,0],[1,0]'],
     "argument --zones: not JSON (Expecting ',' delimiter at column 19); expected {\"name\": [[x, y], ...]}"),
    # (NaN went to the API as a body that is no JSON; a nesting Python cannot read was a traceback)
    (["cameras", "zones", "a", "--zones", '{"z": [[0,0],[1,NaN],[2,2]]}'], "argument --zones: not JSON (NaN is no JSON number"),
    (["cameras", "zones", "a", "--lines", '{"l": [[0,0],[Infinity,1]]}'], "argument --lines: not JSON (Infinity is no JSON"),
    (["cameras", "zones", "a", "--zones", "[" * 100_000], "argument --zones: nested too deeply; expected"),
    (["cameras", "--api", "notaurl", "ls"], "argument --api: must be an http:// or https:// URL, got 'notaurl'"),
    (["cameras", "--api", "http://127.0.0.1:99999", "ls"],
     "argument --api: the port is out of range (0 to 65535), got 'http://127.0.0.1:99999'"),  # (said: not a URL)
    (["cameras", "--wait", "nan", "ls"], "argument --wait: must be >= 0, got 'nan'"),
    (["subscribe", "cam", "--group", ""], "argument --group: must not be empty"),  # (a plain reader, silently)
    # (tracebacks: the IDNA codec's UnicodeError at connect; redis-py's ValueError/OverflowError; 0 timed every read out)
    (["subscribe", "a", "--redis", "redis://a..b:1/0"], "argument --redis: the host is no address or host name"),
    (["cameras", "--api", "http://a..b:1", "ls"], "argument --api: the host is no address or host name"),
    *[(["top", "--once", "--redis", f"redis://h/0?socket_timeout={t}"], "argument --redis: ?socket_timeout must be a "
       "number of seconds from 0.001 to 86400") for t in ("-1", "nan", "inf", "1e300", "0")],
    # (bytes of another encoding: UnicodeEncodeError where they were sent)
    *[(argv, f"{arg}: is not valid UTF-8") for argv, arg in [
        (["cameras", "rm", "x\udcff"], "argument id"), (["explain", "c\udcff", "--object", "0"], "argument camera"),
        (["subscribe", "a", "--group", "g\udcff"], "argument --group"), (["cameras", "--api", "http://h\udcff:1", "ls"],
                                                                         "argument --api")]],
    (["subscribe", "a", "--redis", "redis://h\udcff:1/0"], "argument --redis: it is not valid UTF-8"),
    (["subscribe", "cam", "--prefix", ""], "argument --prefix: a stream prefix is letters"),  # (read as "percept")
    # (a trailing newline passed: a camera waited for for ever, a junk key made for a group; a prefix read empty)
    (["subscribe", "cam\n", "--redis", "redis://127.0.0.1:1/0"], "argument cameras: a camera id is 1 to 64 letters"),
    (["top", "--prefix", "percept\n", "--once", "--redis", "redis://127.0.0.1:1/0"], "argument --prefix: a stream prefix is letters"),
    (["top", "--prefix", "bad prefix!"], "argument --prefix: a stream prefix is letters"),
    (["cameras", "ls", "--api", "notaurl"], "argument --api: must be an http:// or https:// URL, got 'notaurl'"),
    (["top", "--samples", "0"], "argument --samples: must be from 1 to 100000, got '0'"),
    (["top", "--metrics", "file:///etc/passwd"], "argument --metrics: must be an http:// or https:// URL"),  # (read it)
    (["top", "--metrics", "http://admin:pw@h:8080/metrics"], "argument --metrics: a user or password in the URL"),
    (["top", "--interval", "nan"], "argument --interval: must be from 0.1 to 3600, got 'nan'"),
    # values beyond what Redis or the clock take: they were sent (exit 3 as a Redis error) or overflowed (a traceback)
    (["top", "--interval", "inf"], "argument --interval: must be from 0.1 to 3600, got 'inf'"),
    (["top", "--samples", "99999999999999999999"], "argument --samples: must be from 1 to 100000"),
    (["subscribe", "cam", "--from", "99999999999999999999999"], "argument --from: must be an entry id"),
    (["subscribe", "cam", "--from", "1-18446744073709551616"], "argument --from: must be an entry id"),
    (["subscribe", "cam", "--claim-idle-ms", "99999999999999999999"], "argument --claim-idle-ms: must be from 0 to"),
    (["models", "swap", "detector", "w.pt", "--timeout", "inf"], "argument --timeout: must be from 1 to 3600"),
    (["run", "--duration", "0"], "argument --duration: must be >= 0.1, got '0'"),
    (["top", "--duration", "0"], "argument --duration: must be >= 0.1, got '0'"),  # (0 ran forever)
    (["run", "-c", "c.yaml", "--address", "foo"], "argument --address: not HOST:PORT (or ray://HOST:PORT, local, auto)"),
    (["demo", "--duration", "nan"], "argument --duration: must be >= 0.1, got 'nan'"),
    (["demo", "--http-port", "0"], "argument --http-port: must be a port from 1 to 65535, got '0'"),
    (["models", "swap", "detector", "w.pt", "--wait", "-1"], "argument --wait: must be >= 0, got '-1'"),
    (["build", "-c", "c.yaml", "--http-port", "99999"], "argument --http-port: must be a port from 1 to 65535"),
    # (0: Serve binds a port the system picks, which percept printed as :0 and `cameras --api` cannot find)
    (["build", "-c", "c.yaml", "--http-port", "0"], "argument --http-port: must be a port from 1 to 65535, got '0'"),
    (["build", "-c", "c.yaml", "--http-host", "not a host!"], "argument --http-host: not an address to bind: 'not a host!'"),
    (["build", "-c", "c.yaml", "--http-host", "cam_host.example"], "argument --http-host: not an address to bind"),
    (["build", "-c", "c.yaml", "-o", "/nonexistent-percept/out.yaml"],
     "argument -o/--output: the folder '/nonexistent-percept' does not exist"),
    (["eval", "detector", "--weights", "w", "--data", "d", "--json", "/nonexistent-percept/r.json"],
     "argument --json: the folder '/nonexistent-percept' does not exist"),
    # numbers sent as-is (NaN, Infinity: not JSON), an exit 3 with the API down; ids no camera can have (waited forever)
    (["cameras", "--api", "http://127.0.0.1:1", "add", "a", "x.mp4", "--fps", "nan"], "argument --fps: must be from 0 to 240"),
    (["cameras", "--api", "http://127.0.0.1:1", "add", "a", "x.mp4", "--fps", "inf"], "argument --fps: must be from 0 to 240"),
    (["cameras", "--api", "http://127.0.0.1:1", "add", "a", "x.mp4", "--fps", "-3"], "argument --fps: must be from 0 to 240"),
    (["cameras", "--api", "http://127.0.0.1:1", "add", "a", "x.mp4", "--fps", "1e-9"], "argument --fps: must be 0 (every"),
    (["cameras", "--api", "http://127.0.0.1:1", "zones", "a", "--line-margin", "nan"],
     "argument --line-margin: must be from 0 to 2, got 'nan'"),
    (["cameras", "--api", "http://127.0.0.1:1", "zones", "a", "--zone-margin", "3"], "argument --zone-margin: must be from 0 to 2"),
    (["subscribe", "a b"], "argument cameras: a camera id is 1 to 64 letters, digits, _ and - (as cameras[].id), got 'a b'"),
    (["subscribe", "cam", ""], "argument cameras: a camera id is 1 to 64 letters"),
    (["cameras", "--api", "http://127.0.0.1:1", "add", "a/b", "x.mp4"], "argument id: a camera id is 1 to 64 letters"),
    # `bench soak` took any number: --cameras 0 exited 0 with an empty result, --duration inf never ended
    (["bench", "soak", "--cameras", "0"], "argument --cameras: must be from 1 to 256, got '0'"),
    (["bench", "soak", "--duration", "inf"], "argument --duration: must be from 1 to 2.592e+06, got 'inf'"),
    (["bench", "soak", "--fps", "0"], "argument --fps: must be from 0.1 to 240, got '0'"),
    (["bench", "soak", "--interval", "nan"], "argument --interval: must be from 0.1 to 86400, got 'nan'"),
    (["bench", "soak", "--rtsp-fps", "-1"], "argument --rtsp-fps: must be from 1 to 240, got '-1'"),
    (["eval", "detector", "--weights", "w", "--data", "d", "--json", "-"],
     "argument --json: '-' (stdout) is not taken here: give a file name"),  # (it wrote a file named '-')
    (["explain", "--object", "0", "--image", "i.jpg", "--out", "-"], "argument --out: '-' (stdout) is not taken here"),
    (["eval", "detector", "--weights", "w", "--data", "d", "--json", "/proc/percept-r.json"],
     "argument --json: cannot write '/proc/percept-r.json'"),  # (the table printed, then a traceback)
]


@pytest.mark.parametrize(("argv", "expected"), BAD_VALUES, ids=[" ".join(a[:2]) + " " + a[-2] for a, _ in BAD_VALUES])
def test_bad_option_values_exit_2_naming_the_option(argv, expected, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and expected in err, err
    assert "Traceback" not in err


def test_cameras_zones_without_a_change_names_every_option_it_takes(capsys):
    assert main(["cameras", "zones", "a"]) == 2
    assert "give --zones, --lines, --anchor, --line-margin and/or --zone-margin" in capsys.readouterr().err


def test_urls_in_option_errors_are_shown_without_credentials(capsys):
    with pytest.raises(SystemExit):
        main(["subscribe", "cam", "--redis", "redis://:S3cretPW@127.0.0.1:abc/0"])
    err = capsys.readouterr().err
    assert "redis://***@127.0.0.1:abc/0" in err and "S3cretPW" not in err, err
    with pytest.raises(SystemExit):
        main(["cameras", "--api", "ftp://u:S3cretPW@h/", "ls"])
    err = capsys.readouterr().err
    assert "argument --api" in err and "S3cretPW" not in err, err
    # a password with "/" in it: redis-py reads a piece of it as the port; that piece is not quoted
    with pytest.raises(SystemExit):
        main(["subscribe", "cam", "--redis", "redis://admin:s3cr/etPW@host/0"])
    err = capsys.readouterr().err
    assert "argument --redis: a user name or password with / ? # or @ in it must be percent-encoded" in err, err
    assert "s3cr" not in err and "etPW" not in err, err
    # an "@" and then "/", "?" or "#" in it: the tail was quoted as the path, or dialled as the host
    for url in ("redis://:a@b/s3cretPW@127.0.0.1:1/0", "redis://:a@s3cretPW?x@127.0.0.1:1/0",
                "redis://:a@s3cretPW#x@127.0.0.1:1/0"):
        with pytest.raises(SystemExit):
            main(["subscribe", "cam", "--redis", url])
        err = capsys.readouterr().err
        assert "argument --redis: a user name or password with / ? # or @ in it must be percent-encoded" in err, err
        assert "s3cretPW" not in err, err
    # a "[" in the password: urlsplit's "Invalid IPv6 URL" escaped the check, argparse quoted the URL whole
    with pytest.raises(SystemExit):
        main(["subscribe", "cam", "--redis", "redis://:Tr0ub[dor@redis.example:6379/0"])
    err = capsys.readouterr().err
    assert "argument --redis: the host cannot be read" in err and "Tr0ub" not in err and "dor@" not in err, err
    # a user and password in --api: urllib took them for the host ("cannot reach", whatever the
    # ingress); refused, not quoted
    with pytest.raises(SystemExit) as done:
        main(["cameras", "--api", "http://u:S3cretPW@127.0.0.1:1", "ls"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "argument --api: a user or password in the URL is not sent" in err, err
    assert "http://***@127.0.0.1:1" in err and "S3cretPW" not in err, err
    # an ingress that does not answer: exit 3, its URL scrubbed too
    assert main(["cameras", "--api", "http://127.0.0.1:1/", "--wait", "0", "ls"]) == 3
    assert "cannot reach http://127.0.0.1:1/" in capsys.readouterr().err
    # a query in it: paths were added after it (``/?token=x/cameras``); refused, its secret not quoted
    with pytest.raises(SystemExit) as done:
        main(["cameras", "--api", "http://127.0.0.1:1/?token=S3cretPW", "--wait", "0", "ls"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "argument --api: the graph's address takes no query or fragment" in err, err
    assert "http://127.0.0.1:1/?token=***" in err and "S3cretPW" not in err, err
    # a URL missing its "://" (or its scheme mistyped) was quoted whole, password and all
    for argv in (["subscribe", "cam", "--redis", "redis//:S3cretPW@127.0.0.1:6391/0"],
                 ["subscribe", "cam", "--redis", "redis:S3cretPW@127.0.0.1"],
                 ["cameras", "--api", "u:S3cretPW@127.0.0.1:8000", "ls"],
                 ["top", "--once", "--metrics", "htp:/u:S3cretPW@127.0.0.1"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        err = capsys.readouterr().err
        assert done.value.code == 2 and "***@127.0.0.1" in err and "S3cretPW" not in err, (argv, err)
    # argparse's own errors quoting a URL: one given where a camera id goes, after an option misspelt
    for argv, said in ((["subscribe", "redis://:S3cretPW@127.0.0.1:6399/0"], "argument cameras: a camera id"),
                       (["top", "--redis-url", "redis://:S3cretPW@127.0.0.1/0"], "unrecognized arguments: --redis-url"),
                       (["cameras", "ls", "rtsp://u:S3cretPW@h/s"], "unrecognized arguments: rtsp://")):
        with pytest.raises(SystemExit) as done:
            main(argv)
        err = capsys.readouterr().err
        assert done.value.code == 2 and said in err and "***@" in err and "S3cretPW" not in err, (argv, err)


def test_cameras_add_refuses_an_inline_password_before_sending_it(capsys):
    """It was POSTed, then refused by the API (422); with the API down, exit 3 after a minute."""
    assert main(["cameras", "--api", "http://127.0.0.1:1", "--wait", "0", "add", "dock",
                 "rtsp://viewer:S3cretPW@10.0.0.9/s1"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("percept: cameras add: url: inline password refused; write "
                           "rtsp://viewer:${CAM_DOCK_PASSWORD}@10.0.0.9/s1"), line
    assert "S3cretPW" not in line
    assert "allow_inline_credentials" not in line  # (a setting of the service: no way to send one from here)
    # a URL missing its "//": no credentials were found in it, and it was sent (exit 3: the API is down)
    for url in ("rtsp:/viewer:S3cretPW@10.0.0.9/s1", "rtsp//viewer:S3cretPW@10.0.0.9/s1"):
        assert main(["cameras", "--api", "http://127.0.0.1:1", "--wait", "0", "add", "dock", url]) == 2, url
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"percept: cameras add: url: {url[:6]}… is not a URL: write rtsp://host/…"), line
        assert "S3cretPW" not in line


def test_a_sample_clips_folder_that_is_not_there_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    """Before, the demo silently ran on ultralytics' two still images instead."""
    monkeypatch.setenv("PERCEPT_SAMPLE_VIDEOS", str(tmp_path / "no-such-clips"))
    assert main(["demo", "--state-dir", str(tmp_path / "state"), "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert f"PERCEPT_SAMPLE_VIDEOS: no such folder: {tmp_path / 'no-such-clips'}" in err, err


def test_state_folder_that_cannot_be_made_exits_2(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["demo", "--state-dir", str(blocker / "state")]) == 2
    err = capsys.readouterr().err
    assert f"--state-dir: cannot create the folder {blocker / 'state'}: Not a directory" in err, err
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_dir: {blocker / 'state'}\ncameras: [{{id: a, url: {SHARED}/data/videos/vtest.avi}}]\n")
    assert main(["run", "-c", str(cfg)]) == 2
    assert f"state_dir: cannot create the folder {blocker / 'state'}" in capsys.readouterr().err


def test_a_file_that_is_no_model_exits_2_naming_the_field(tmp_path, models_dir):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"detector: {{weights: {notes}}}\ncameras: [{{id: a, url: {SHARED}/data/videos/vtest.avi}}]\n")
    out = percept("run", "-c", str(cfg), timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"detector.weights: cannot load '{notes}' (looked in" in out.stderr and \
        f"{notes} is there but is no model ultralytics can load" \
        in out.stderr and "not a supported model format" in out.stderr, out.stderr[-2000:]
    assert "Online, ultralytics downloads" not in out.stderr  # (the file is there: no hint to fetch it)
    assert "Traceback" not in out.stderr
    out = percept("eval", "detector", "--weights", str(notes), "--data", str(SHARED / "data" / "coco128-val"),
                  timeout=120)
    assert out.returncode == 2 and f"eval: --weights: cannot load '{notes}'" in out.stderr, out.stderr[-2000:]
    empty = tmp_path / "empty_openvino_model"  # (it said "StopIteration: " and nothing more)
    empty.mkdir()
    out = percept("eval", "detector", "--weights", str(empty), "--data", str(SHARED / "data" / "coco128-val"),
                  timeout=120)
    assert out.returncode == 2 and "a folder without a model in it (an OpenVINO export folder holds an .xml)" \
        in out.stderr and "StopIteration" not in out.stderr, out.stderr[-2000:]


def test_a_weights_name_too_long_for_the_system_is_bad_input_not_a_crash(capsys, redis_server):
    """A name past the system's 255 bytes made pathlib raise (ENAMETOOLONG): `models export` /
    `finetune` printed a traceback and `PUT /models/…` answered 500. Now exit 2 / 422."""
    import asyncio

    from pipeline.config import parse_config
    from pipeline.lifecycle.swap import SwapRefused
    from pipeline.lifecycle.swap_service import ModelSwaps

    long_name = "w" * 300 + ".pt"
    assert main(["models", "export", long_name, "--to", "openvino"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("percept: models export: ") and "Traceback" not in err, err
    swaps = ModelSwaps(parse_config({"redis": {"url": redis_server.url, "stream_prefix": "long"}}, env={}),
                       redis_server.client())
    with pytest.raises(SwapRefused) as refused:
        asyncio.run(swaps.swap("detector", {"weights": long_name}))
    assert refused.value.status == 422 and str(refused.value).startswith(f"weights: '{long_name}' does not exist")


def test_explain_option_errors_name_the_option(capsys):
    image = next((SHARED / "data" / "coco128-val" / "images").glob("*.jpg"))
    assert main(["explain", "--object", "0", "--image", str(image), "--weights", "yolo11n-coco.pt",
                 "--device", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "explain: --device: must match" in err and "got 'bogus'" in err and "validation error" not in err, err


def test_cameras_take_api_after_the_action_and_a_bad_percept_api_is_named(monkeypatch, capsys):
    """`percept cameras ls --api …` was refused (`models served --api …` worked); a PERCEPT_API
    that is no URL was reported as if `--api` had been given."""
    with answering(200, b"[]") as api:
        assert main(["cameras", "ls", "--api", api, "--wait", "0"]) == 0
        assert main(["cameras", "--api", "http://127.0.0.1:1", "ls", "--api", api]) == 0  # (the later one)
    capsys.readouterr()
    monkeypatch.setenv("PERCEPT_API", "127.0.0.1:8000")
    with pytest.raises(SystemExit):
        main(["cameras", "ls"])
    assert "got '127.0.0.1:8000' (PERCEPT_API, its default)" in capsys.readouterr().err


def test_a_gpu_the_machine_does_not_have_is_named_as_the_device(capsys):
    """It failed the warm-up, said against --weights over six lines of ultralytics' text."""
    import torch

    missing = f"cuda:{torch.cuda.device_count() + 7}"
    assert main(["eval", "detector", "--weights", "yolo11n-coco.pt", "--data", str(SHARED / "data" / "coco128-val"),
                 "--device", missing]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"percept: eval: --device: {missing} asked for; this machine has "), line


def test_finetune_checks_the_device_before_anything_loads(capsys):
    """It measured the data and started training, then exited 1 with ultralytics' lines. The
    weights named here do not exist: the device is said first, before they are looked for.
    `models compare` said ``device:``, not the option, once it had read the data."""
    import torch

    missing = f"cuda:{torch.cuda.device_count() + 7}"
    for command in ("finetune", "compare"):
        for device, said in ((missing, f"--device: {missing} asked for; this machine has "),
                             ("bogus", "--device: must be auto, cpu, cuda, cuda:N, N or mps, got 'bogus'")):
            assert main(["models", command, "no-such-weights.pt", "--data", "no-such-data", "--device", device]) == 2
            (line,) = capsys.readouterr().err.splitlines()
            assert line.startswith(f"percept: models {command}: {said}"), line


def test_build_keeps_a_redis_url_variable_for_the_cluster(tmp_path, monkeypatch, capsys):
    """A Redis URL kept in a Kubernetes Secret: ``redis.url: ${REDIS_URL}`` unset where the
    Serve config is built; it was refused as not starting with redis://."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("redis: {url: '${REDIS_URL}'}\ncameras: [{id: a, url: 'rtsp://cam/a', fps: 5}]\n")
    out = tmp_path / "serve.yaml"
    assert main(["build", "-c", str(config), "-o", str(out)]) == 0
    assert "${REDIS_URL}" in out.read_text() and "warning" not in capsys.readouterr().err
    # a password written inline goes into the Serve config as written: said (Serve's API shows it)
    for redis_line in ("{url: 'rediss://default:S3cretPW@redis.example:6380/0'}",
                       "{url: 'redis://redis.example:6379/0', password: S3cretPW}",
                       # (partly a variable: the rest is written out all the same)
                       "{url: 'redis://redis.example:6379/0', password: 'S3cretPW${REDIS_SUFFIX}'}",
                       "{url: 'rediss://default:S3cretPW${REDIS_SUFFIX}@redis.example:6380/0'}",
                       # (redis-py takes ?password= too: it went into the Serve config unsaid)
                       "{url: 'redis://redis.example:6379/0?password=S3cretPW'}"):
        inline = tmp_path / "inline.yaml"
        inline.write_text(f"redis: {redis_line}\ncameras: [{{id: a, url: 'rtsp://cam/a', fps: 5}}]\n")
        assert main(["build", "-c", str(inline), "-o", str(out)]) == 0
        err = capsys.readouterr().err
        assert "holds its password as written" in err and "S3cretPW" not in err, err
        assert "write ${REDIS_PW}" in err, "the variable the compose file and the KubeRay Secret provide"
    # where it is resolved (the cluster, `percept run`), a value that is no Redis URL is still refused
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="redis.url: must start with redis://"):
        load_config(config, env={"REDIS_URL": "not-a-url"})
    # a config without redis.url: the error names the file, as load_config's own
    bare = tmp_path / "bare.yaml"
    bare.write_text("cameras: [{id: a, url: 'rtsp://cam/a', fps: 5}]\n")
    assert main(["build", "-c", str(bare), "-o", str(out)]) == 2
    assert f"invalid config {bare}:" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["subscribe", "cam", "--count", "1"], ["top", "--once"]])
def test_a_bad_redis_url_in_the_environment_is_named(command, monkeypatch, capsys):
    """``PERCEPT_REDIS_URL`` is checked as ``--redis`` is: one line naming it, exit 2, nothing of
    its password (it was a traceback quoting redis-py's "cannot cast 'hun'")."""
    for url, expected in (("localhost:6379", "must specify one of the following schemes"),
                          ("redis://:hun/ter2@host/0", "must be percent-encoded"),
                          ("redis://:hunter2@host/0?ssl_cert_reqs=required", "'ssl_cert_reqs'")):
        monkeypatch.setenv("PERCEPT_REDIS_URL", url)
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("percept: PERCEPT_REDIS_URL: not a Redis URL: ") and expected in err, err
        assert "Traceback" not in err and "hun" not in err and "ter2" not in err, err


def test_top_stops_at_its_duration_though_the_next_refresh_is_later(redis_server):
    """``--duration 1 --interval 600``: top slept a whole interval past its duration."""
    out = percept("top", "--redis", redis_server.url, "--duration", "1", "--interval", "600", timeout=60)
    assert out.returncode == 0 and "camera" in out.stdout.lower(), out.stderr


def test_a_ray_address_in_the_environment_that_is_no_address_exits_2_before_anything_starts(tmp_path, monkeypatch,
                                                                                               capsys):
    """RAY_ADDRESS=foo: before, every model was loaded and the private redis-server started, then
    exit 3 as if a cluster did not answer."""
    monkeypatch.setenv("RAY_ADDRESS", "foo")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\ncameras: [{{id: a, url: {SHARED}/data/videos/vtest.avi}}]\n")
    assert main(["run", "-c", str(cfg)]) == 2
    assert "RAY_ADDRESS: not HOST:PORT (or ray://HOST:PORT, local, auto), got 'foo'" in capsys.readouterr().err
    assert not (tmp_path / "state" / "redis").exists(), "the private redis-server was started"


def test_top_ends_on_sigterm_without_sleeping_out_its_interval(redis_server):
    """``--interval 600`` then SIGTERM (`docker stop`): top slept on to its next refresh, past the
    container's grace, and was killed. A category that is no text (an entry not written by
    percept) crashed its line's sort."""
    import signal
    import subprocess
    import sys
    import threading

    from pipeline.config import CameraConfig
    from pipeline.registry import CameraRegistry
    from pipeline.streams import StreamKeys

    from .conftest import REPO
    from .waiting import wait_for

    keys, client = StreamKeys("percept"), redis_server.client()
    CameraRegistry(client, keys).add(CameraConfig(id="odd", url="a.mp4"))
    client.xadd(keys.detections("odd"), {"json": '{"objects": [{"category": "car"}, {"category": null}]}'})
    proc = subprocess.Popen([sys.executable, "-m", "cli", "top", "--redis", redis_server.url, "--interval", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        # its first table is out: it waits for the next refresh now
        wait_for(lambda: any(line.startswith("odd ") for line in lines) or proc.poll() is not None, 60,
                 "top's first table")
        row = next((line for line in lines if line.startswith("odd ")), None)
        assert row is not None and "car=1" in row, (lines, proc.poll(), proc.poll() is not None and proc.stderr.read())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0  # (TimeoutExpired: sleeping out its 600 s)
    finally:
        proc.kill()


def test_verbose_is_taken_after_a_command_at_every_level():
    """``-v`` was refused after a subcommand's own subcommand (`percept eval detector -v`: the top
    level's usage and "unrecognized arguments"), and `percept -v bench soak` ran no soak."""
    from cli.main import parser

    for argv in (["eval", "detector", "--weights", "w.pt", "--data", "d", "-v"], ["cameras", "ls", "-v"],
                 ["models", "served", "-v"], ["run", "-c", "c.yaml", "-v"], ["-v", "cameras", "ls"]):
        assert parser().parse_known_args(argv)[0].verbose is True, argv
    for argv in (["-v", "bench", "soak", "--help"], ["bench", "soak", "-v", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0, argv


@pytest.mark.parametrize("argv, choices", [([], "{run,demo,build,"), (["models"], "{export,compare,finetune,swap,served}"),
                                           (["eval"], "{detector,classifier}"), (["cameras"], "{ls,add,rm,zones}"),
                                           (["models", "swap"], "{detector,classifier}")])
def test_a_missing_subcommand_is_said_by_its_choices(argv, choices, capsys):
    """``percept models`` said ``required: models_command`` (argparse's internal name)."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"error: the following arguments are required: {choices}" in err, err


def test_a_corrupt_checkpoint_is_one_line_offering_no_download(tmp_path, capsys):
    """Ultralytics' own error for a .pt that is no checkpoint went on "ERROR ❌️ … Recommended
    fixes … 'yolo predict model=yolo26n.pt'": two lines, offering a download offline."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 4)
    data = str(SHARED / "data" / "coco128-val")
    for argv in (["eval", "detector", "--weights", str(junk), "--data", data],
                 ["models", "export", str(junk), "--to", "onnx"], ["models", "finetune", str(junk), "--data", data]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is not a loadable checkpoint" in err, (argv, err)
        assert "ERROR" not in err and "yolo predict" not in err, (argv, err)


def test_a_video_that_is_none_is_said_by_percept_alone(tmp_path):
    """FFmpeg's own line ("moov atom not found") came before percept's about the same file."""
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(bytes(range(256)) * 20)
    out = percept("explain", "--object", "0", "--video", str(fake), "--weights", "yolo11n-coco.pt", timeout=120)
    assert out.returncode == 2 and out.stderr == f"percept: explain: --video: cannot open {str(fake)!r} as a video\n", \
        out.stderr


def test_eval_says_a_bad_device_as_models_does(capsys):
    """`eval --device bogus` said the config's field and its regex (``device: must match ^(auto|…``),
    where `models compare`/`finetune` say the option and its values; ``mps`` was taken where the
    machine has none (and the header said ``mps`` for a run on the CPU)."""
    import torch

    cases = [("bogus", "--device: must be auto, cpu, cuda, cuda:N, N or mps, got 'bogus'")]
    if not torch.backends.mps.is_available():
        cases.append(("mps", "--device: mps asked for; this machine has no Apple GPU (MPS)"))
    for device, said in cases:
        assert main(["eval", "detector", "--weights", "no-such.pt", "--data", "no-such-data", "--device", device]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"percept: eval: {said}"), line


def test_a_json_output_naming_an_input_is_refused_before_any_work(tmp_path, capsys):
    """`eval classifier … --labels lab.csv --json lab.csv` replaced the labels with the result;
    `models export w.pt --json w.pt` the weights."""
    (tmp_path / "data").mkdir()
    spec, labels, weights = tmp_path / "data" / "data.yaml", tmp_path / "lab.csv", tmp_path / "w.pt"
    for path in (spec, labels, weights):
        path.write_text("kept\n")
    for argv, named in ((["eval", "detector", "--weights", str(weights), "--data", str(tmp_path / "data"), "--json",
                          str(spec)], "--data"),
                        (["eval", "classifier", "--weights", "x.pt", "--data", str(tmp_path), "--labels", str(labels),
                          "--json", str(labels)], "--labels"),
                        (["models", "export", str(weights), "--to", "onnx", "--json", str(weights)], "--weights"),
                        (["models", "compare", str(weights), "--data", str(tmp_path), "--labels", str(labels),
                          "--json", str(labels)], "--labels")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"--json: {argv[-1]!r} is the {named} given" in err, (argv, err)
    assert all(path.read_text() == "kept\n" for path in (spec, labels, weights))
