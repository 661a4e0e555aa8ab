"""`percept` fails early and clearly on bad input, before starting anything."""

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from pipeline.redis_server import free_port

REPO = Path(__file__).resolve().parents[1]


def percept(*args, timeout=60, env=None):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def test_invalid_config_exits_2_naming_the_path(tmp_path):
    """The path as in the YAML, and the camera's id beside it (a ``${VAR}`` id or an invalid
    one is not quoted); the same in ``percept build``."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("cameras:\n  - {id: a, url: x.mp4}\n  - {id: gate-2, url: y.mp4, fps: -2}\n"
                   "  - {id: 'rtsp://u:Pw9x@h', url: z.mp4}\n  - {id: '${CAM_ID}', url: w.mp4, fps: -1}\n")
    env = dict(os.environ, CAM_ID="dock")
    out = percept("run", "-c", str(cfg), env=env)
    assert out.returncode == 2
    lines = [line.strip() for line in out.stderr.splitlines()]
    assert "cameras[1].fps: must be >= 0, got -2  (camera 'gate-2')" in lines, out.stderr
    assert any(line.startswith("cameras[2].id: must match") and line.endswith("got 'rtsp://***@h'") for line in lines)
    assert any(line == "cameras[3].fps: must be >= 0, got -1" for line in lines)
    assert "Pw9x" not in out.stderr
    built = percept("build", "-c", str(cfg), env=env)
    assert built.returncode == 2 and "cameras[1].fps: must be >= 0, got -2  (camera 'gate-2')" in built.stderr


def test_missing_config_file_exits_2(tmp_path):
    out = percept("run", "-c", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "cannot read" in out.stderr


def test_missing_model_exits_2_naming_field_and_variable(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"redis: {{url: 'redis://127.0.0.1:{free_port()}/0'}}\ndetector: {{weights: ./models/none.pt}}\n")
    out = percept("run", "-c", str(cfg))
    assert out.returncode == 2
    assert out.stderr.startswith(f"percept: invalid config {cfg}:"), out.stderr  # which file, too
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


def test_an_http_port_in_use_exits_3_naming_the_field_before_anything_starts(tmp_path, models_dir):
    """Serve's proxy could not bind: `percept run` said so after starting Redis and Ray, as a
    Ray traceback in colour codes (``RuntimeError: Failed to bind to address``)."""
    import socket

    from cli.run import ingress_line
    from pipeline.config import parse_config

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"models_dir: {models_dir}\ndetector: {{weights: yolo11n_int8_openvino_model}}\n"
                       f"http: {{host: 127.0.0.1, port: {port}}}\nstate_dir: {tmp_path / 'state'}\n")
        out = percept("run", "-c", str(cfg))
        demo = percept("demo", "--http-port", str(port), "--duration", "5", "--state-dir", str(tmp_path / "demo"))
    assert out.returncode == 3, out.stderr
    assert f"http.port: 127.0.0.1:{port} is in use" in out.stderr and "\x1b[" not in out.stderr, out.stderr
    assert "private redis-server at" not in out.stdout + out.stderr  # (refused before it started anything)
    # the demo has no config file: it names its own option (it said "set http.port", which it had none of)
    assert demo.returncode == 3 and f"--http-port: 127.0.0.1:{port} is in use" in demo.stderr, demo.stderr
    assert "set --http-port to a free one" in demo.stderr, demo.stderr
    off = ingress_line(parse_config({"http": {"proxy_location": "Disabled"}}, env={}))
    assert "http://" not in off and "Disabled" in off, off  # (no proxy: no URL where nothing listens)


def test_no_redis_server_installed_exits_3_saying_what_to_do(tmp_path, models_dir):
    """No ``redis.url`` and no redis-server on PATH (a first run): one line, exit 3 (it was a
    traceback ending in RedisServerError)."""
    import os

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models_dir: {models_dir}\ndetector: {{weights: yolo11n_int8_openvino_model}}\n"
                   f"state_dir: {tmp_path / 'state'}\n")
    out = subprocess.run([sys.executable, "-m", "cli", "run", "-c", str(cfg)], capture_output=True, text=True,
                         timeout=60, cwd=REPO, env={**os.environ, "PATH": str(tmp_path / "empty")})
    assert out.returncode == 3, out.stderr
    assert out.stderr.startswith("percept: redis.url is not set and the private redis-server did not start: "
                                 "redis-server is not installed"), out.stderr
    assert "Traceback" not in out.stderr


def test_run_against_a_ray_address_nobody_answers_at_exits_3_at_once(tmp_path, models_dir, redis_server):
    """`--address` naming no cluster: one line, exit 3 (Ray retried it for minutes, then a traceback)."""
    from pipeline.redis_server import free_port

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models_dir: {models_dir}\ndetector: {{weights: yolo11n_int8_openvino_model}}\n"
                   f"state_dir: {tmp_path / 'state'}\nredis: {{url: '{redis_server.url}'}}\n")
    port = free_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        out = percept("run", "-c", str(cfg), "--address", address, "--duration", "2")
        assert out.returncode == 3, out.stderr
        assert out.stderr.startswith(f"percept: --address: cannot reach the Ray cluster at {address}: "), out.stderr
        assert "Traceback" not in out.stderr
    out = percept("run", "-c", str(cfg), "--address", f"http://admin:S3cret@127.0.0.1:{port}", "--duration", "2")
    assert out.returncode == 3 and "cluster at http://***@127.0.0.1" in out.stderr, out.stderr
    assert "S3cret" not in out.stderr  # (the address was printed as given)


def test_a_private_redis_that_cannot_start_exits_3_with_its_reason(tmp_path, models_dir):
    """The private redis-server's AOF damaged (a crash, a full disk): its own fatal line, exit 3
    (it was a traceback ending in "exited with 1: ", the reason in its stdout, discarded)."""
    from pipeline.redis_server import EmbeddedRedis

    with EmbeddedRedis(tmp_path / "state" / "redis") as server:
        server.client().set("k", "v")
    (tmp_path / "state" / "redis" / "appendonlydir" / "appendonly.aof.manifest").write_text("garbage\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models_dir: {models_dir}\ndetector: {{weights: yolo11n_int8_openvino_model}}\n"
                   f"state_dir: {tmp_path / 'state'}\n")
    out = percept("run", "-c", str(cfg))
    assert out.returncode == 3, out.stderr
    assert out.stderr.startswith("percept: redis.url is not set and the private redis-server did not start: "
                                 "redis-server exited with 1: "), out.stderr
    assert "Invalid AOF manifest file format" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_pipeline_package_does_not_import_ray():
    paths = list((REPO / "pipeline").rglob("*.py"))  # its subpackages (backends, lifecycle) too
    assert REPO / "pipeline" / "lifecycle" / "swap.py" in paths
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "ray" or n.startswith("ray.") for n in names), f"{path} imports ray"


def test_percept_runs_private_redis_is_started_again_when_killed(tmp_path, capsys):
    """The private redis-server killed while the graph runs (the OOM killer): the run's loop
    starts it again on the same port with its data (it stayed down for good: the decoders'
    buffers filled and then dropped results)."""
    from cli.common import EXIT_INTERRUPTED, RedisOutage
    from cli.run import PrivateRedis
    from cli.run_console import monitor_cameras
    from pipeline.redis_server import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        client = server.client()
        client.config_set("appendfsync", "always")
        client.set("kept", "1")
        first = server.proc
        first.kill()
        keeper = PrivateRedis(server)

        def keep_up() -> None:  # the loop's own step, then: back? (Ctrl-C ends the loop; 60 s is the deadline)
            keeper.keep_up()
            if server.proc is not first and server.proc is not None and server.proc.poll() is None:
                raise KeyboardInterrupt

        assert monitor_cameras(client, None, [], duration=60, show=False, outage=RedisOutage(server.url),
                               keep_up=keep_up) == EXIT_INTERRUPTED
        assert server.client().get("kept") == b"1"  # same port, same data
        assert "private redis-server killed by signal 9: started again on redis://127.0.0.1:" in capsys.readouterr().out
    finally:
        server.stop()


def each_second(script: dict) -> Callable[[], None]:
    """`monitor_cameras`' ``keep_up`` (called once a second): on its n-th call, ``script[n]``;
    None there is Ctrl-C."""
    calls = {"n": 0}

    def step() -> None:
        calls["n"] += 1
        if calls["n"] in script:
            if script[calls["n"]] is None:
                raise KeyboardInterrupt
            script[calls["n"]]()

    return step


def test_percept_run_quiet_still_says_when_redis_goes_and_comes_back(redis_server, capsys):
    """`percept run --quiet` (systemd, a cluster's driver) said nothing of an outage: the check
    rode on the status lines it does not print."""
    from cli.common import EXIT_INTERRUPTED, RedisOutage
    from cli.run_console import monitor_cameras

    client = redis_server.client()
    # each second, before the loop's check: Redis killed, back two seconds later
    fault_then_back = each_second({1: redis_server.kill, 3: redis_server.start, 4: None})
    assert monitor_cameras(client, None, [], duration=60, show=False, outage=RedisOutage(redis_server.url),
                           keep_up=fault_then_back) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "percept: redis unreachable at" in err and err.index("unreachable") < err.index("is back"), err


def test_percept_run_says_when_redis_comes_back_refusing_our_credentials(redis_server, tmp_path, capsys):
    """Redis gone, then back on its port with another password: the console had said
    "unreachable" and then nothing more, as if it never came back."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from cli.common import EXIT_INTERRUPTED, RedisOutage
    from cli.run_console import monitor_cameras
    from pipeline.redis_server import EmbeddedRedis
    from pipeline.streams import connect_redis

    client = connect_redis(redis_server.url, retry=Retry(NoBackoff(), 0))  # (one try a second: redis-py's
    # own retries of a refused AUTH took ~4 s a step)
    other = EmbeddedRedis(tmp_path / "other", port=redis_server.port, password="N3w-Pw-other")
    # each second: Redis killed, another one with a password, then Ctrl-C
    fault_then_other = each_second({1: redis_server.kill, 3: other.start, 5: None})
    try:
        assert monitor_cameras(client, None, [], duration=60, show=False, outage=RedisOutage(redis_server.url,
                               carry_on_refused=True), keep_up=fault_then_other) == EXIT_INTERRUPTED
    finally:
        other.stop()
    err = capsys.readouterr().err
    assert "redis unreachable at" in err and "redis refuses our credentials at" in err, err
    assert err.index("unreachable") < err.index("refuses our credentials") and "is back" not in err, err


@pytest.mark.parametrize("when", ["redis up", "serve starting"])
def test_sigterm_while_run_starts_stops_its_private_redis(tmp_path, models_dir, when):
    """SIGTERM while the graph still starts: once the private redis-server is up, or once Ray
    runs and Serve starts (its log folder made). The server stops, its ``redis.url`` marker goes
    (it was left running, its parent gone, and a later run would have started a second server on
    the same data folder) and the exit is 143 (under ``ray.get`` Ray made it 1; Ray's own
    handlers, in place after ``ray.init``, printed a C++ stack trace: cli/terminate.py)."""
    import signal

    import redis

    from .waiting import wait_for

    state = tmp_path / "state"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models_dir: {models_dir}\ndetector: {{weights: yolo11n_int8_openvino_model}}\n"
                   f"state_dir: {state}\ncameras: [{{id: a, url: '{tmp_path / 'none.mp4'}'}}]\n")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "run", "-c", str(cfg)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sign = state / ("redis.url" if when == "redis up" else "logs")
    try:
        wait_for(lambda: sign.exists() or proc.poll() is not None, 120, f"{when}: {sign} there")
        url = (state / "redis.url").read_text().strip()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout, stderr = proc.communicate()
    assert "running 1 camera(s)" not in stdout, f"SIGTERM came too late to test the start: {stdout}"
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, stderr[-3000:])  # 143 (README's exit codes)
    assert "SIGTERM received" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert not (state / "redis.url").exists(), stderr
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        reachable = True
    except redis.RedisError:
        reachable = False
    assert not reachable, f"the private redis-server at {url} outlived percept run"


def test_percept_run_shows_cameras_added_through_the_api_and_not_those_removed(redis_server, capsys):
    """`percept run`'s status lines were the config's cameras, fixed at its start: a camera added
    with `percept cameras add` never got a line (nor its error), a removed one kept its last."""
    from cli.common import RedisOutage
    from cli.run_console import monitor_cameras, registered
    from pipeline.config import CameraConfig
    from pipeline.registry import CameraRegistry
    from pipeline.streams import StreamKeys

    client, keys = redis_server.client(), StreamKeys("runlines")
    registry = CameraRegistry(client, keys)
    cameras = registered(client, keys, ["gate", "yard"])
    assert cameras() == ["gate", "yard"]  # nothing registered yet: the config's
    registry.seed([CameraConfig(id="gate", url="rtsp://h/1"), CameraConfig(id="yard", url="rtsp://h/2")])
    assert registry.add(CameraConfig(id="dock", url="rtsp://h/3")) and registry.remove("yard")
    assert cameras() == ["gate", "dock"]
    client.hset(keys.camera("dock"), mapping={"state": "reconnecting", "last_error": "cannot open rtsp://h/3"})
    monitor_cameras(client, keys, cameras, duration=1.5, show=True, outage=RedisOutage(redis_server.url))
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("dock ") and "error: cannot open rtsp://h/3" in line for line in lines), lines
    assert not any(line.startswith("yard ") for line in lines), lines


def test_build_says_which_variable_left_as_written_failed_a_check(tmp_path):
    """`percept build` keeps an unset ``${VAR}`` for the cluster to set; where a pattern then
    refused it, the error read as if the value were wrong: it now says the variable is unset here."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text('redis: {url: "redis://r:6379/0", stream_prefix: "${PREFIX_NOPE}"}\ncameras: []\n')
    env = {k: v for k, v in os.environ.items() if k != "PREFIX_NOPE"}
    out = percept("build", "-c", str(cfg), env=env)
    assert out.returncode == 2 and "redis.stream_prefix: must match" in out.stderr, out.stderr
    assert "(not set here: PREFIX_NOPE; `percept build` leaves an unset variable as written" in out.stderr, out.stderr
    assert percept("build", "-c", str(cfg), env=dict(env, PREFIX_NOPE="site-a")).returncode == 0
