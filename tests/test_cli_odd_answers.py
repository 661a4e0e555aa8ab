"""What the console commands read that percept did not write: a stream entry of another shape,
a key of another type, another HTTP service behind ``--api``: one line and an exit code, never a
traceback (real redis-server; the other service is a plain HTTP server)."""

from __future__ import annotations

import json

import pytest

from cli.main import main
from cli.run_console import status_lines
from pipeline.config import CameraConfig
from pipeline.registry import CameraRegistry
from pipeline.streams import StreamKeys

from .http import answering

KEYS = StreamKeys("odd")


def test_an_entry_of_another_shape_is_skipped_by_top_and_the_run_console(redis_server, capsys):
    client = redis_server.client()
    CameraRegistry(client, KEYS).add(CameraConfig(id="a", url="a.mp4"))
    # (the last two: a number no float holds, JSON nested deeper than Python's stack: top exited 1, a traceback)
    for raw in ("not json", "[1, 2]", '{"objects": 3, "latency_ms": []}', '{"objects": [], "latency_ms": {"total": "nan"}}',
                '{"objects": [], "latency_ms": {"total": 1%s}}' % ("0" * 400), "[" * 100_000 + "]" * 100_000):
        client.xadd(KEYS.detections("a"), {"v": "1", "camera": "a", "seq": "1", "json": raw})
    assert main(["top", "--once", "--redis", redis_server.url, "--prefix", "odd"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("a ") for line in out.splitlines()) and "nan" not in out, out
    [line] = status_lines(client, KEYS, ["a"])
    assert line.startswith("a ") and "objects none" in line and "e2e -" in line, line


def test_a_key_of_another_type_costs_its_camera_row_only(redis_server, capsys):
    """One camera's stream or hash key holding another type, or a hash field that is no number,
    made `top` exit 3 (or fail with a traceback) for every camera: now that row says why."""
    client = redis_server.client()
    for cid in ("a", "b", "c"):
        CameraRegistry(client, KEYS).add(CameraConfig(id=cid, url=f"{cid}.mp4"))
    client.set(KEYS.detections("a"), "a string, not a stream")
    client.set(KEYS.camera("b"), "a string, not a hash")
    client.hset(KEYS.camera("c"), mapping={"state": "online", "fps": "x", "dropped": "nan"})
    assert main(["top", "--once", "--redis", redis_server.url, "--prefix", "odd"]) == 0
    out = capsys.readouterr()
    rows = {line.split()[0]: line for line in out.out.splitlines() if line[:2] in ("a ", "b ", "c ")}
    assert set(rows) == {"a", "b", "c"} and "Traceback" not in out.err, out
    assert "unreadable" in rows["a"] and "WRONGTYPE" in rows["a"] and "WRONGTYPE" in rows["b"], rows
    assert rows["c"].split()[1:3] == ["online", "0.0"], rows["c"]
    lines = status_lines(client, KEYS, ["a", "b", "c"])
    assert [line.split()[:2] for line in lines] == [["a", "pending"], ["b", "unreadable"], ["c", "online"]], lines


def test_a_camera_error_holding_a_password_is_shown_redacted(redis_server, capsys):
    """`top` (and `run`'s console) printed a camera hash's last_error as it was written."""
    client = redis_server.client()
    CameraRegistry(client, KEYS).add(CameraConfig(id="leaky", url="leaky.mp4"))
    client.hset(KEYS.camera("leaky"), mapping={"state": "reconnecting",
                                                "last_error": "cannot open rtsp://viewer:S3cretPW@10.0.0.9/s1"})
    assert main(["top", "--once", "--redis", redis_server.url, "--prefix", "odd"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("leaky ")]
    assert "error: cannot open rtsp://***@10.0.0.9/s1" in row and "S3cretPW" not in row, row
    (line,) = status_lines(client, KEYS, ["leaky"])
    assert "error: cannot open rtsp://***@10.0.0.9/s1" in line and "S3cretPW" not in line, line


def test_cameras_ls_against_another_http_service_says_so(capsys):
    with answering(200, b'{"hello": "world"}') as api:
        assert main(["cameras", "--api", api, "ls"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"percept: ls: {api} did not answer with percept's camera list"), err


@pytest.mark.parametrize("body", [b"<html>hi</html>", b"[1, 2]", b'{"id": "another", "removed": true}'])
def test_cameras_add_rm_zones_against_another_http_service_say_nothing_is_known_done(body, capsys):
    """A 200 from another service behind ``--api`` was printed as the answer, exit 0: the camera
    said added, removed or changed while nothing was."""
    with answering(200, body) as api:
        for command in (["add", "c1", "rtsp://cam/s"], ["rm", "c1"], ["zones", "c1", "--anchor", "center"]):
            assert main(["cameras", "--api", api, *command]) == 3, command
            err = capsys.readouterr().err
            assert err.startswith(f"percept: {command[0]} c1: {api} did not answer as percept's API does"), err


def test_a_validation_error_of_the_api_is_said_field_by_field(capsys):
    """FastAPI's 422 items were printed as Python dicts ({'loc': ['body', 'url'], 'msg': …})."""
    body = b'{"detail": [{"loc": ["body", "url"], "msg": "Field required", "type": "missing"}]}'
    with answering(422, body) as api:
        assert main(["cameras", "--api", api, "add", "c1", "rtsp://cam/s"]) == 2
    assert capsys.readouterr().err == "percept: add c1: HTTP 422: body.url: Field required\n"


def test_explain_against_another_http_service_writes_no_png(tmp_path, capsys):
    """Its 200 HTML page was written to x.png, exit 0."""
    out = tmp_path / "x.png"
    with answering(200, b"<html>hi</html>") as api:
        assert main(["explain", "c1", "--object", "0", "--api", api, "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"percept: explain c1: {api} did not answer with a PNG"), err
    assert not out.exists()


def test_models_served_and_swap_against_another_http_service_say_so(capsys):
    """`models served` and `models swap` read percept's answers' fields: a traceback (TypeError,
    KeyError) from another service behind ``--api``."""
    for body in (b'{"status": "ok"}', b'[{"deployment": "detector"}]'):
        with answering(200, body) as api:
            assert main(["models", "served", "--api", api]) == 3
            assert main(["models", "swap", "detector", "w.pt", "--api", api]) == 3
        err = capsys.readouterr().err
        assert f"percept: models served: {api} did not answer with percept's model list" in err, err
        assert f"percept: models swap detector: {api} did not answer as percept's API" in err, err
        assert "Traceback" not in err


def test_an_api_error_quoting_a_password_is_shown_redacted_by_every_command(capsys):
    """`models served` and `models swap` printed an API error's detail as it came (`cameras` and
    `explain` scrub it)."""
    body = b'{"detail": "redis redis://:Hunter2Secret@10.0.0.5:6379 unavailable; password=Hunter2Secret"}'
    with answering(500, body) as api:
        for command in (["models", "served", "--api", api], ["models", "swap", "detector", "w.pt", "--api", api],
                        ["cameras", "--api", api, "ls"]):
            assert main(command) == 1, command
            err = capsys.readouterr().err
            assert "redis redis://***@10.0.0.5:6379 unavailable" in err and "Hunter2Secret" not in err, (command, err)


def test_an_api_address_that_redirects_is_an_error_not_a_success(capsys):
    """urllib hands back a PUT's or DELETE's redirect (and a POST's 307/308) unfollowed, which the
    commands took for an answer: `cameras rm` printed ``{}`` and exited 0 with nothing removed,
    and a POST's 301 was followed as a GET (`cameras add` printed ``[]``, exit 0, no camera)."""
    commands = [["cameras", "--api", "API", "--wait", "0", "add", "dock", "rtsp://h/s"],
                ["cameras", "--api", "API", "--wait", "0", "rm", "dock"],
                ["cameras", "--api", "API", "--wait", "0", "zones", "dock", "--anchor", "center"],
                ["models", "served", "--api", "API"], ["models", "swap", "detector", "w.pt", "--api", "API"]]
    for code in (301, 308):
        with answering(code, b"", {"Location": "https://u:Hunter2@h/cameras"}) as api:
            for command in commands:
                assert main([api if a == "API" else a for a in command]) == 3, command
                out, err = capsys.readouterr()
                assert not out and f"it answered HTTP {code}, a redirect to https://***@h/cameras: nothing was done; " \
                                    "give the address of percept's API itself as --api" in err, (command, err)
    for command in (["cameras", "rm", ""], ["cameras", "zones", "", "--anchor", "center"]):
        with pytest.raises(SystemExit) as exited:
            main(command)
        assert exited.value.code == 2 and "a camera id cannot be empty" in capsys.readouterr().err


def test_a_stream_reader_needs_no_camera_secrets(redis_server, tmp_path, capsys, monkeypatch):
    """`subscribe -c` and `top -c` read only the config's Redis settings: the variables its camera
    URLs name (the cameras' passwords) need not be set on a consumer's machine."""
    monkeypatch.delenv("CAM_PASS", raising=False)
    cfg = tmp_path / "percept.yaml"
    cfg.write_text(f"redis: {{url: '{redis_server.url}', stream_prefix: odd}}\n"
                   "cameras: [{id: a, url: 'rtsp://viewer:${CAM_PASS}@192.0.2.10/s'}]\n")
    client = redis_server.client()
    client.xadd(KEYS.detections("a"), {"v": "1", "camera": "a", "seq": "1", "json": '{"seq": 1}'})
    assert main(["subscribe", "-c", str(cfg), "a", "--from-start", "--count", "1"]) == 0
    assert main(["top", "-c", str(cfg), "--once"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith('{"seq":1}') and "CAM_PASS" not in err, (out, err)


def test_subscribe_to_a_camera_without_a_stream_says_which_cameras_there_are(redis_server, capsys):
    """A mistyped camera id was waited for without a word."""
    client = redis_server.client()
    CameraRegistry(client, KEYS).add(CameraConfig(id="gate", url="a.mp4"))
    client.xadd(KEYS.detections("gate"), {"json": "{}"})
    assert main(["subscribe", "gaet", "gate", "--redis", redis_server.url, "--prefix", "odd", "--timeout", "0.2"]) == 0
    err = capsys.readouterr().err
    assert "percept: subscribe: no stream yet for gaet (cameras registered: gate); waiting for them" in err, err
    assert main(["subscribe", "gate", "--redis", redis_server.url, "--prefix", "odd", "--timeout", "0.2"]) == 0
    assert "no stream yet" not in capsys.readouterr().err
    for _ in range(2):  # a group reader's first run makes an empty stream for the typo: said again on the next
        assert main(["subscribe", "gaet", "--group", "g", "--redis", redis_server.url, "--prefix", "odd",
                     "--timeout", "0.2"]) == 0
        assert "no stream yet for gaet" in capsys.readouterr().err


def test_subscribe_needs_no_more_than_the_streams_when_it_looks_for_missing_cameras(redis_server, capsys):
    """The notice above asks XLEN and HKEYS: a consumer whose Redis user may read the
    streams only gets NOPERM for them, and must still subscribe (it did before the notice)."""
    client = redis_server.client()
    client.acl_setuser("reader", enabled=True, passwords=["+Rd3r"], keys=["*"], commands=["+@all", "-xlen", "-hkeys"])
    url = redis_server.url.replace("redis://", "redis://reader:Rd3r@")
    assert main(["subscribe", "gaet", "--redis", url, "--prefix", "odd", "--timeout", "0.2"]) == 0
    err = capsys.readouterr().err
    assert "NOPERM" not in err and "Traceback" not in err, err


def test_bench_soak_losing_its_redis_is_one_line_exit_3(monkeypatch, capsys):
    """``percept bench soak`` was dispatched before `main`'s handlers: its private redis-server
    going away mid-run (or Ctrl-C) printed a traceback."""
    import redis

    import benchmarks.soak

    def lost(args):
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")

    monkeypatch.setattr(benchmarks.soak, "run_soak", lost)
    assert main(["bench", "soak"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ConnectionError" in err, err


def test_an_unreadable_private_server_marker_is_one_line_naming_it(tmp_path, capsys):
    """`subscribe`/`top -c` without redis.url read the private server's URL from
    `<state_dir>/redis.url`: a bad one (or a directory there) was a traceback, exit 1."""
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "c.yaml"
    config.write_text(f"state_dir: {state}\n")
    marker = state / "redis.url"
    marker.write_text("redis://:leakyPW@127.0.0.1:notaport/0\n")
    for argv in (["subscribe", "cam", "-c", str(config), "--timeout", "1"], ["top", "--once", "-c", str(config)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"percept: {marker}: not a Redis URL") and "leaky" not in err and "Traceback" not in err, err
    marker.unlink()
    marker.mkdir()
    assert main(["subscribe", "cam", "-c", str(config), "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"percept: {marker}: cannot read the private server's URL") and "Traceback" not in err, err


def test_a_start_given_for_a_group_that_exists_already_is_said_to_be_passed_over(redis_server, capsys):
    """``--group g --from-start`` on a group made by an earlier run printed nothing and exited 0:
    the group reads on from where it is, the start was dropped without a word."""
    client = redis_server.client()
    client.xadd(KEYS.detections("yard"), {"json": '{"seq": 1}'})
    base = ["subscribe", "yard", "--redis", redis_server.url, "--prefix", "odd", "--timeout", "0.2", "--group", "late"]
    assert main(base) == 0  # the group made at the stream's end
    assert capsys.readouterr().out == ""
    assert main([*base, "--from-start"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and (f"percept: subscribe: group late exists already on {KEYS.detections('yard')}: it reads on from "
                          "where the group is; --from-start sets where a new group starts (to start over: another "
                          "group name, or XGROUP SETID <stream> late 0)") in err, err
    assert main([*base[:-1], "early", "--from-start"]) == 0  # a new group: from the start, nothing said
    out, err = capsys.readouterr()
    assert out.strip() == '{"seq":1}' and "exists already" not in err, (out, err)
    # the camera named twice: read once, and its new group not said to exist already
    assert main([*base[:1], "yard", *base[1:-1], "twice", "--from-start"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == '{"seq":1}' and "exists already" not in err, (out, err)


def test_from_a_bare_millisecond_includes_that_milliseconds_first_entry(redis_server, capsys):
    """``--from MS`` went to Redis as MS-0, which XREAD and a new group's start exclude: the
    millisecond's first entry (an event numbered 0, a frame of seq 0) was never printed."""
    client = redis_server.client()
    stream = KEYS.detections("gate")
    for entry_id, seq in (("1796500000000-0", 0), ("1796500000000-1", 1), ("1796500000500-0", 2)):
        client.xadd(stream, {"json": f'{{"seq": {seq}}}'}, id=entry_id)
    base = ["subscribe", "gate", "--redis", redis_server.url, "--prefix", "odd", "--timeout", "0.5"]
    for extra in ([], ["--group", "fromms"]):
        for start, seqs in (("1796500000500", [2]), ("1796500000000", [0, 1, 2]), ("1796500000000-0", [1, 2])):
            assert main([*base, *extra, "--from", start]) == 0
            printed = [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()]
            assert printed == seqs, (extra, start, printed)
            if extra:
                client.xgroup_destroy(stream, "fromms")  # (each start: a new group)


def test_a_camera_whose_stream_key_holds_another_type_is_named_and_the_reader_does_not_start(redis_server, capsys):
    """One read covers every camera: a key of another type stopped them all with Redis's
    ``WRONGTYPE …`` and exit 3 ("unreachable"), naming no camera. Named now, exit 2."""
    client = redis_server.client()
    client.xadd(KEYS.detections("north"), {"json": '{"seq": 1}'})
    client.set(KEYS.detections("south"), "oops")
    assert main(["subscribe", "north", "south", "--redis", redis_server.url, "--prefix", "odd", "--from-start",
                 "--timeout", "0.5"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == (f"percept: subscribe: {KEYS.detections('south')} (camera south) is a string, "
                                         "not a stream: percept did not write it (another prefix?)"), err


def test_a_stream_key_written_as_another_type_while_reading_is_named(redis_server, capsys):
    """Deleted and written as a string while `subscribe` read it: Redis's ``WRONGTYPE …`` was
    said as an outage of the whole server (exit 3), naming no camera. Named now, exit 2."""
    import threading
    import time

    client = redis_server.client()
    client.xadd(KEYS.detections("east"), {"json": '{"seq": 1}'})
    client.xadd(KEYS.detections("west"), {"json": '{"seq": 1}'})
    rc = []
    reader = threading.Thread(target=lambda: rc.append(main(["subscribe", "east", "west", "--redis", redis_server.url,
                                                             "--prefix", "odd", "--timeout", "20"])))
    reader.start()
    deadline = time.monotonic() + 20
    while not any(c.get("cmd") == "xread" for c in client.client_list()):  # blocked on the two streams
        assert time.monotonic() < deadline and reader.is_alive(), "subscribe never blocked reading"
        time.sleep(0.05)  # polling
    client.delete(KEYS.detections("west"))
    client.set(KEYS.detections("west"), "oops")
    reader.join(30)
    assert rc == [2], rc
    err = capsys.readouterr().err
    assert f"{KEYS.detections('west')} (camera west) is a string, not a stream now" in err, err


def test_a_database_number_the_server_lacks_is_a_config_error_naming_the_url(redis_server, tmp_path, capsys, models_dir):
    """`redis://…/99` on a server of 16 databases: Redis answers SELECT with "DB index is out of
    range". It was said as an outage (exit 3; `run`: "cannot reach"); it is the URL's mistake:
    exit 2, the URL named, its password not."""
    url = redis_server.url.rsplit("/", 1)[0].replace("redis://", "redis://:hunter2@") + "/99"
    redis_server.client().config_set("requirepass", "hunter2")  # (this test's own server)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"redis: {{url: '{url}'}}\nmodels_dir: {models_dir}\n"
                   "detector: {weights: yolo11n_int8_openvino_model}\n")
    for argv in (["top", "--once", "--redis", url], ["top", "--once", "-c", str(cfg)], ["subscribe", "--redis", url, "--count", "1", "a"],
                 ["run", "-c", str(cfg)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "no database of that number" in err and "redis://***@" in err, (argv, err)
        assert "hunter2" not in err and "cannot reach" not in err, (argv, err)


def test_what_an_api_answers_is_shown_bounded_escaped_and_an_empty_answer_is_none(capsys):
    """A 3 MB error detail went to stderr whole, and a deployment name holding terminal escapes
    (clear screen, set title) or a ``\\r`` was printed raw; an empty 200 body was read as ``{}``:
    `models served` printed a blank line and exited 0."""
    with answering(422, json.dumps({"detail": "x" * 3_000_000}).encode()) as api:
        for command in (["models", "swap", "detector", "w.pt", "--api", api], ["cameras", "--api", api, "ls"],
                        ["explain", "c1", "--object", "0", "--api", api]):
            assert main(command) == 2, command
            err = capsys.readouterr().err
            assert len(err) < 2200 and err.rstrip().endswith("(cut at 2000 characters)"), (command, len(err), err[-200:])
    odd = [{"deployment": "detector\x1b[2J\x1b]0;pwn\x07", "model": "m\rM", "generation": 1, "rolled_out": True,
            "replicas": [{"replica": "r1", "model": "m", "generation": 1, "loading": None, "error": "e\x1b[31m"}]}]
    with answering(200, json.dumps(odd).encode()) as api:
        assert main(["models", "served", "--api", api]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out and "detector\\x1b[2J" in out, repr(out)
    for body, code, said in ((b"", 3, "did not answer with percept's model list"), (b"[]", 0, "no model deployments")):
        with answering(200, body) as api:
            assert main(["models", "served", "--api", api]) == code, body
        err = capsys.readouterr().err
        assert said in err, (body, err)


@pytest.mark.parametrize("argv", [["detector", "w.pt", "--name", ""], ["classifier", "", "w.pt"],
                                  ["detector", ""], ["classifier", "vehicle", "w.pt", "--card", " "]])
def test_an_empty_swap_target_is_refused_not_another_deployment_swapped(argv, capsys):
    """``--name "$NAME"`` with NAME unset sent ``PUT /models/detector``: the main detector swapped."""
    with answering(200, b"{}") as api, pytest.raises(SystemExit) as exited:
        main(["models", "swap", *argv, "--api", api])
    assert exited.value.code == 2 and "must not be empty" in capsys.readouterr().err
