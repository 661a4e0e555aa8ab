"""`percept cameras` / `percept models swap` against a stand-in HTTP server (pure client logic:
what is asked, how answers become exit codes) and against a port that does not speak HTTP."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cli.main import main


class Recorder(BaseHTTPRequestHandler):
    """Answers every request with ``status`` and ``body``; keeps the paths asked."""

    status, body, paths = 200, {}, []
    first: list = []  # (status, body) answers given before those, one each

    def _answer(self) -> None:
        Recorder.paths.append((self.command, self.path))
        status, body = Recorder.first.pop(0) if Recorder.first else (Recorder.status, Recorder.body)
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_PUT = do_DELETE = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    Recorder.status, Recorder.body, Recorder.paths, Recorder.first = 200, {}, [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_camera_ids_and_deployment_names_are_escaped_in_the_path(api, capsys):
    Recorder.body = {"id": "dock#2", "removed": True}
    assert main(["cameras", "--api", api, "rm", "dock#2"]) == 0
    Recorder.body = {"id": "a b?", "anchor": "center"}  # (each answer names its camera, as percept's API does)
    assert main(["cameras", "--api", api, "zones", "a b?", "--anchor", "center"]) == 0
    Recorder.body = {"id": "x/../y", "removed": True}
    assert main(["cameras", "--api", api, "rm", "x/../y"]) == 0
    assert Recorder.paths == [("DELETE", "/cameras/dock%232"), ("PUT", "/cameras/a%20b%3F"),
                              ("DELETE", "/cameras/x%2F..%2Fy")]
    Recorder.status, Recorder.body = 404, {"detail": "no deployment"}
    assert main(["models", "swap", "classifier", "traffic light", "w.pt", "--api", api, "--wait", "0"]) == 2
    assert Recorder.paths[-1] == ("PUT", "/models/classifier-traffic%20light")
    assert "Traceback" not in capsys.readouterr().err


def test_a_refused_camera_exits_2_and_an_unavailable_graph_3(api, capsys):
    # (a bad --fps or an inline password is refused before sending: `test_cli_input`)
    Recorder.status, Recorder.body = 422, {"detail": ["cameras[bad].url: ${CAM_DOCK_PASSWORD} is camera dock's"]}
    assert main(["cameras", "--api", api, "add", "bad", "rtsp://u:${CAM_DOCK_PASSWORD}@h/s"]) == 2
    assert "HTTP 422: cameras[bad].url: ${CAM_DOCK_PASSWORD} is camera dock's" in capsys.readouterr().err
    Recorder.status, Recorder.body = 503, {"detail": "redis unavailable (ConnectionError)"}
    assert main(["cameras", "--api", api, "--wait", "0", "ls"]) == 3
    assert "percept: ls: HTTP 503: redis unavailable" in capsys.readouterr().err


def test_a_removal_retried_after_a_503_that_finds_no_camera_is_done(api, capsys):
    """Redis slow past its timeout: the API answered 503 though the removal landed; the retry
    finds no such camera. That is the removal done (exit 0, said so), not "HTTP 404" (exit 2);
    a 404 at the first try stays an error (a mistyped id)."""
    Recorder.first = [(503, {"detail": "redis unavailable (TimeoutError)"})]
    Recorder.status, Recorder.body = 404, {"detail": "no camera 'dock'"}
    assert main(["cameras", "--api", api, "--wait", "30", "rm", "dock"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["removed"] is True and "an earlier try removed it" in out["note"]
    assert Recorder.paths == [("DELETE", "/cameras/dock")] * 2
    assert main(["cameras", "--api", api, "--wait", "30", "rm", "dock"]) == 2
    assert "HTTP 404: no camera 'dock'" in capsys.readouterr().err
    Recorder.first = [(503, {"detail": "redis unavailable (ConnectionError)"})]  # down: nothing was done
    assert main(["cameras", "--api", api, "--wait", "30", "rm", "dock"]) == 2


def test_an_api_address_that_does_not_speak_http_exits_3_in_one_line(capsys):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def banner() -> None:  # as sshd or Redis would answer
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            conn.recv(4096)

    threading.Thread(target=banner, daemon=True).start()
    try:
        assert main(["cameras", "--api", f"http://127.0.0.1:{port}", "--wait", "0", "ls"]) == 3
    finally:
        listener.close()
    err = capsys.readouterr().err
    assert f"cannot reach http://127.0.0.1:{port}" in err and "not an HTTP answer" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["cameras", "--api", "API", "--wait", "0", "ls"],
                                  ["explain", "traffic", "--object", "0", "--api", "API", "--wait", "0"],
                                  ["models", "served", "--api", "API", "--wait", "0"]])
def test_every_api_command_exits_1_on_a_500_3_on_a_502_503_504_and_2_on_a_404(api, argv, capsys, tmp_path,
                                                                             monkeypatch):
    """The exit codes the README's table gives, the same for each command that talks to the graph
    (a proxy's 502/504 in front of it: unavailable, as its own 503), whatever JSON the error's body
    is (another service: `explain` raised AttributeError on a list)."""
    monkeypatch.chdir(tmp_path)
    for status, code in ((500, 1), (502, 3), (503, 3), (504, 3), (404, 2)):
        for body in ({"detail": "boom"}, [], None, {"detail": {"message": "boom", "objects": 3}}):
            Recorder.status, Recorder.body = status, body
            assert main([api if a == "API" else a for a in argv]) == code, (status, body, capsys.readouterr().err)
            err = capsys.readouterr().err
            assert f"HTTP {status}" in err and "Traceback" not in err, (body, err)


def test_a_busy_answer_is_asked_again_and_exits_3_when_it_stays(api, capsys):
    """429 (explain's places all taken) counted as bad input: exit 2 at once. It is asked again
    like a 503 until --wait, and exit 3 when it stays."""
    Recorder.first = [(429, {"detail": "4 explanations already queued; ask again later"})]
    Recorder.body = []
    assert main(["cameras", "--api", api, "--wait", "5", "ls"]) == 0
    assert "answered 429 (4 explanations already queued" in capsys.readouterr().err
    Recorder.status, Recorder.body = 429, {"detail": "busy"}
    assert main(["cameras", "--api", api, "--wait", "0", "ls"]) == 3


def test_an_ipv6_bind_address_is_printed_as_a_url():
    from cli.run import ingress_line
    from pipeline.config import parse_config

    line = ingress_line(parse_config({"http": {"host": "::1", "port": 8123}}, env={}))
    assert "http://[::1]:8123/" in line, line


def test_models_served_lists_a_replica_loading_the_configs_weights_as_it_starts(api, capsys):
    """A replica loading its first model reports ``loading: 0``, which read as false: it was listed
    as serving generation 0, with nothing said of the load."""
    replica = {"replica": "r1", "model": "yolo11n", "generation": 0, "error": None}
    Recorder.body = [{"deployment": "detector", "model": "yolo11n", "generation": 0, "rolled_out": True, "state": "done",
                      "replicas": [{**replica, "loading": 0}, {**replica, "replica": "r2", "loading": None}]}]
    assert main(["models", "served", "--api", api]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["replica", "r1", "yolo11n", "generation", "0", "loading", "generation", "0"], lines
    assert lines[2].split() == ["replica", "r2", "yolo11n", "generation", "0"], lines


def test_cameras_ls_says_why_a_camera_is_not_online_keeps_its_columns_and_says_when_there_are_none(api, capsys):
    """`cameras ls` dropped ``last_error`` (a camera `failed` with no word why, where `top` says it),
    a long id pushed the columns apart, and no cameras printed nothing at all."""
    long_id = "a-very-long-camera-id-name-here"
    row = {"fps": 0.0, "dropped": 0, "lag_s": None, "url": "rtsp://h/x"}
    Recorder.body = [{**row, "id": long_id, "state": "failed", "last_error": "cannot open rtsp://u:S3cret@h/x: 401"},
                     {**row, "id": "gate", "state": "online", "last_error": "an earlier one", "dropped": 2,
                      "publish_dropped": 5}]  # (frames dropped for load, and by the outage buffer)
    assert main(["cameras", "--api", api, "ls"]) == 0
    failed, online = capsys.readouterr().out.splitlines()
    assert " dropped     7  " in online and " dropped     0  " in failed, (online, failed)
    assert failed.endswith("rtsp://h/x  error: cannot open rtsp://***@h/x: 401") and "S3cret" not in failed, failed
    assert online.endswith("rtsp://h/x") and online.index("online") == failed.index("failed") == len(long_id) + 1
    Recorder.body = []
    assert main(["cameras", "--api", api, "ls"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "percept: cameras ls: no cameras (add one: percept cameras add ID URL)" in err


def test_another_services_error_page_is_not_printed_as_the_answer(tmp_path, capsys, monkeypatch):
    """``--api`` naming a plain web server: its HTML 404 / 501 page was printed as percept's
    answer; now a line saying so (the exit codes as for any 4xx / 5xx answer)."""
    from functools import partial
    from http.server import SimpleHTTPRequestHandler

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.chdir(tmp_path)
    try:
        for argv, code, status in ((["cameras", "--api", api, "ls"], 2, 404), (["models", "served", "--api", api], 2, 404),
                                   (["explain", "cam", "--object", "0", "--api", api], 2, 404),
                                   (["cameras", "--api", api, "rm", "cam"], 1, 501)):
            assert main(argv) == code, (argv, capsys.readouterr().err)
            err = capsys.readouterr().err
            assert f"HTTP {status}: not an answer of percept's API (a page of another service?)" in err, (argv, err)
            assert "<" not in err and "Traceback" not in err, err
    finally:
        server.shutdown()
        server.server_close()
