"""`percept bench` given bad options, missing tools, an interruption: said before any phase runs,
and what was measured kept (`benchmarks/bench.py`). No timing assertions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from cli.main import main
from tests.conftest import SHARED
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]
ALL_BUT = lambda *kept: ",".join(p for p in __import__("benchmarks.bench", fromlist=["PHASES"]).PHASES  # noqa: E731
                                 if p not in kept)

BAD = [
    (["--duration", "nan"], "argument --duration: must be from 1 to 86400, got 'nan'"),  # (looped for ever)
    (["--duration", "0"], "argument --duration: must be from 1 to 86400, got '0'"),  # (fps of a few XADDs)
    (["--rtsp-fps", "0"], "argument --rtsp-fps: must be from 1 to 240, got '0'"),  # (a ZeroDivisionError)
    (["--warmup", "-1"], "argument --warmup: must be from 0 to 86400, got '-1'"),  # (failed every graph phase)
    (["--overload-duration", "0"], "argument --overload-duration: must be from 1 to 86400"),  # (0 meant the default)
    (["--limit-duration", "inf"], "argument --limit-duration: must be from 1 to 86400"),
]


@pytest.mark.parametrize(("argv", "expected"), BAD, ids=[a[0] + " " + a[1] for a, _ in BAD])
def test_bad_numbers_exit_2_naming_the_option(argv, expected, capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", *argv])
    err = capsys.readouterr().err
    assert done.value.code == 2 and expected in err and "Traceback" not in err, err


def test_outputs_that_cannot_be_written_are_refused_before_the_run(tmp_path, capsys):
    """A ``--json`` folder was found out after the 20–40 minutes of the run (a traceback, nothing
    saved); ``--json`` naming the ``-c`` config overwrote it with the results; a ``--profile``
    that is a file failed the largest e2e window."""
    with pytest.raises(SystemExit) as done:
        main(["bench", "--json", str(tmp_path)])
    assert done.value.code == 2 and "argument --json: " in capsys.readouterr().err
    a_file = tmp_path / "profile"
    a_file.write_text("x")
    with pytest.raises(SystemExit) as done:
        main(["bench", "--profile", str(a_file)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "argument --profile: " in err, err
    cfg = tmp_path / "site.yaml"
    cfg.write_text("cameras: []\n")
    assert main(["bench", "-c", str(cfg), "--json", str(cfg), "--videos", str(SHARED / "data" / "videos")]) == 2
    err = capsys.readouterr().err
    assert f"percept: bench: --json: {str(cfg)!r} is the --config given" in err, err
    assert cfg.read_text() == "cameras: []\n"


def test_option_errors_are_not_called_an_invalid_config(capsys):
    assert main(["bench", "--cameras", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("percept: bench: --cameras: counts must be between 1 and ") and "invalid config" not in err, err


def test_a_tool_the_run_needs_missing_is_said_before_any_phase(tmp_path, monkeypatch, capsys):
    """No redis-server on PATH: a RedisServerError traceback after the limit phase, whose result
    was lost."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["bench", "--source", "file", "--videos", str(SHARED / "data" / "videos")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("percept: bench: redis-server is not installed"), err


def test_when_ray_cannot_start_every_graph_phase_says_so_the_view_too(monkeypatch):
    """With the other graph phases skipped, ``view`` was neither run nor said skipped nor failed."""
    import argparse

    from benchmarks import bench as B

    def no_ray(*_a, **_k):
        raise RuntimeError("no Ray here")

    monkeypatch.setattr(B, "Graph", no_ray)
    fake = B.Bench.__new__(B.Bench)
    fake.skip = {"e2e", "detect-only", "e2e-vehicle", "latency", "overload"}
    fake.result = {"errors": {}}
    fake.redis_server = argparse.Namespace(client=lambda: None)
    fake._ray_cpus = lambda: 1
    fake.graph_phases()
    assert fake.result["errors"] == {"view": "Ray/Serve did not start: no Ray here"}


@pytest.mark.integration
def test_sigterm_during_a_phase_keeps_what_was_measured_and_stops_what_it_started(tmp_path, models_dir, videos):
    """SIGTERM (systemd, docker stop, a CI timeout) killed the bench where it stood: its
    redis-server (a session of its own) stayed running and no JSON was written."""
    out = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "cli", "bench", "--source", "file", "--duration", "600",
                             "--skip", ALL_BUT("bare"), "--json", str(out), "--state-dir", str(tmp_path / "s"),
                             "--videos", str(videos)],
                            cwd=REPO, env=dict(os.environ, PERCEPT_MODELS_DIR=models_dir, YOLO_OFFLINE="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    me = psutil.Process(proc.pid)

    def redis_started() -> list[psutil.Process]:
        try:
            return [p for p in me.children(recursive=True) if p.name() == "redis-server"]
        except psutil.NoSuchProcess:  # (the bench ended: said by the assertion below)
            return []

    try:
        wait_for(lambda: redis_started() or proc.poll() is not None, 180, "the bench's redis-server")
        servers = redis_started()
        assert servers, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    assert "interrupted; the phases measured so far are in the results" in stderr, stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["interrupted"] is True and result["skipped"] == ALL_BUT("bare").split(","), result.keys()
    wait_for(lambda: not any(s.is_running() and s.status() != psutil.STATUS_ZOMBIE for s in servers), 30,
             "the bench's redis-server stopped")


@pytest.mark.integration
def test_sigterm_while_ray_runs_a_phase_keeps_what_was_measured_too(tmp_path, models_dir, videos):
    """``ray.init`` put Ray's own SIGTERM handlers in place of the bench's: a SIGTERM during the
    graph's phases (most of a run) could end it without its JSON and leave its redis-server."""
    out, err = tmp_path / "r.json", tmp_path / "err.txt"
    with err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "bench", "--source", "file", "--duration", "600",
                                 "--cameras", "1", "--skip", ALL_BUT("e2e"), "--json", str(out),
                                 "--state-dir", str(tmp_path / "s"), "--videos", str(videos)],
                                cwd=REPO, env=dict(os.environ, PERCEPT_MODELS_DIR=models_dir, YOLO_OFFLINE="1"),
                                stdout=subprocess.DEVNULL, stderr=stderr)
    me = psutil.Process(proc.pid)
    try:
        wait_for(lambda: "bench: e2e …" in err.read_text() or proc.poll() is not None, 300, "the e2e phase under Ray")
        assert proc.poll() is None, err.read_text()[-3000:]
        servers = [p for p in me.children(recursive=True) if p.name() == "redis-server"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err.read_text()[-3000:]
    assert json.loads(out.read_text())["interrupted"] is True
    wait_for(lambda: not any(s.is_running() and s.status() != psutil.STATUS_ZOMBIE for s in servers), 30,
             "the bench's redis-server stopped")
