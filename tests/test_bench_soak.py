"""`percept bench soak`'s and the decode phase's own logic, without a run (each takes minutes):
what the soak counts and keeps over a day, what it stops when terminated, the decode totals, and
the RTSP server interrupted while it starts. No timing assertions."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from contextlib import ExitStack

import psutil
import pytest

from tests.waiting import wait_for


class _Leaked(BaseException):
    """The test's own SIGTERM handler ran: the code under test had none of its own (a
    BaseException: `wait_for` takes no Exception for an answer)."""


@pytest.fixture
def sigterm_guard():
    """A SIGTERM handler that raises `_Leaked` (never the default action, which ends pytest),
    and the original put back after the test."""
    def leaked(*_):
        raise _Leaked("SIGTERM reached the test's handler")

    before = signal.signal(signal.SIGTERM, leaked)
    yield leaked
    signal.signal(signal.SIGTERM, before)


def test_a_sigterm_while_the_soak_starts_its_services_unwinds_them(monkeypatch, tmp_path, sigterm_guard):
    """A SIGTERM while the RTSP cameras were encoded ended the soak on the default action: its
    redis-server and RTSP server stayed behind. It exits 143 and what it started is stopped."""
    from benchmarks import soak

    stopped = []

    def start_services(stack, *_a):
        stack.callback(stopped.append, "services")  # what the RTSP server's and redis-server's __exit__ are
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for(lambda: False, 10, "the SIGTERM handler to end the start-up", interval=0.05)

    monkeypatch.setattr(soak, "_clips", lambda args: [])
    monkeypatch.setattr(soak, "_base_config", lambda *a: object())
    monkeypatch.setattr("pipeline.backends.checks.check_models", lambda base: None)
    monkeypatch.setattr(soak, "start_services", start_services)
    with pytest.raises(SystemExit) as done:
        soak.run_soak(argparse.Namespace())
    assert done.value.code == 143 and stopped == ["services"]
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard, "the handler before the soak is put back"


def test_the_soak_runs_the_graph_on_the_gpu_and_keeps_its_sigterm_handler_after_ray_starts(monkeypatch):
    """The soak built the app without ``gpu_available`` (the detector on the CPU of a GPU host),
    and ray.init's own SIGTERM handler replaced the soak's."""
    from ray import serve

    from benchmarks import soak
    from benchmarks.bench_run import _interrupt

    built = {}

    class FakeGraph:  # ray.init puts its own SIGTERM handler; the cluster has a GPU
        def __init__(self, stack, client, *, num_cpus=None):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self.gpu = True

    monkeypatch.setattr(soak, "Graph", FakeGraph)
    monkeypatch.setattr(soak, "ray_cpus_for", lambda cfg: 2)
    monkeypatch.setattr("deployments.graph.build_app", lambda cfg, **kw: built.update(kw) or "app")
    monkeypatch.setattr(serve, "run", lambda app, **kw: built.setdefault("app", app))
    before = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with ExitStack() as stack:
            monkeypatch.setattr(serve, "delete", lambda name: built.setdefault("deleted", name))
            soak._start_graph(stack, client=None, cfg=object())
            assert signal.getsignal(signal.SIGTERM) is _interrupt
        assert built == {"gpu_available": True, "app": "app", "deleted": soak.APP}, built
    finally:
        signal.signal(signal.SIGTERM, before)


def test_the_soak_counts_entries_added_not_the_length_capped_at_maxlen(redis_server):
    """``published`` was the streams' length, which stops at ``redis.maxlen`` (XADD MAXLEN ~):
    a 24 h soak reported a fraction of its rate."""
    from benchmarks import soak

    client = redis_server.client()
    streams = ["soak:detections:a", "soak:detections:b"]
    assert soak._published(client, streams) == 0  # not made yet
    for _ in range(1500):
        client.xadd(streams[0], {"json": b"{}"}, maxlen=100, approximate=True)
    before = soak._published(client, streams)
    pipe = client.pipeline(transaction=False)
    for _ in range(3000):
        pipe.xadd(streams[0], {"json": b"{}"}, maxlen=100, approximate=True)
        pipe.xadd(streams[1], {"json": b"{}"}, maxlen=100, approximate=True)
    pipe.execute()
    assert client.xlen(streams[0]) < 300  # the stream is full: its length no longer grows
    assert soak._published(client, streams) - before == 6000


def _entry(i: int):
    from benchmarks.measure import TapEntry

    return TapEntry("s", f"{i}-0", float(i), json.dumps({"frame_ts": i - 0.5, "latency_ms": {"total": 10}}).encode())


def test_the_soaks_tap_keeps_a_bounded_uniform_sample_and_counts_every_entry():
    """The tap kept every payload of the soak (~2.4 KB each: GBs a day)."""
    from benchmarks import soak

    tap = soak._tap(None, ["s"])
    n = 5 * soak.TAP_KEEP
    for i in range(n):
        tap._record(_entry(i))
    assert tap.seen == n and len(tap.entries) == soak.TAP_KEEP
    kept = sorted(int(e.entry_id.split("-")[0]) for e in tap.entries)
    # uniform over the run: each fifth of it holds about a fifth of the sample
    fifths = [sum(1 for k in kept if q * n // 5 <= k < (q + 1) * n // 5) for q in range(5)]
    assert all(abs(f - soak.TAP_KEEP / 5) < soak.TAP_KEEP / 20 for f in fifths), fifths
    summary = soak.M.StreamTap.summarize(tap.entries, 0, n)
    assert summary["entries"] == soak.TAP_KEEP and summary["lag_s"]["p99"] == pytest.approx(0.5)


def test_the_benchs_tap_keeps_every_entry_in_order():
    from benchmarks.measure import StreamTap

    tap = StreamTap(None, ["s"])
    for i in range(3000):
        tap._record(_entry(i))
    assert tap.seen == 3000 and [e.entry_id for e in tap.entries] == [f"{i}-0" for i in range(3000)]


def test_the_soaks_worst_rss_growth_is_the_graphs_not_redis_or_the_bench():
    """redis-server grows with the streams by design, and the bench harness is no part of the
    graph: the overload phase leaves them out (`is_graph_process`), the soak took them."""
    from benchmarks import soak

    def sample(rss):
        return {"t": 0.0, "published": 0, "processes": {n: {"rss_mb": v, "fds": 10, "threads": 1} for n, v in rss.items()}}

    first = {"redis-server[10]": 15.0, "bench[11]": 300.0, "rtsp_server.py[12]": 50.0, "raylet[13]": 40.0,
             "replica:detector[14]": 500.0, "ray::ServeController[15]": 100.0, "ray::IDLE[16]": 80.0}
    last = {"redis-server[10]": 47.0, "bench[11]": 450.0, "rtsp_server.py[12]": 90.0, "raylet[13]": 42.0,
            "replica:detector[14]": 520.0, "ray::ServeController[15]": 101.0, "ray::IDLE[16]": 160.0}
    worst = soak._worst_rss_growth(soak._rss_growth([sample(first), sample(last)]))
    assert worst["process"] == "raylet[13]" and worst["rss_growth_pct"] == 5.0, worst
    assert soak._worst_rss_growth(soak._rss_growth([sample({"redis-server[1]": 1.0})] * 2)) == {"process": None}


class _FakeDecode:
    """`decode.py`'s subprocess: every camera's keyframes cost 0.6 of ``all``; cam3's keyframes run fails."""

    failing = ("rtsp://cam3", "keyframes")

    def __init__(self, cmd, **_kw):
        url, mode = cmd[cmd.index("--url") + 1], cmd[cmd.index("--mode") + 1]
        self.returncode = 1 if (url, mode) == self.failing else 0
        ms = {"all": 25.0, "keyframes": 15.0, "reference": 20.0}[mode]
        self.out = "" if self.returncode else "RESULT " + json.dumps({"cpu_ms_per_s": ms})
        self.err = "RuntimeError: keyframes: no frame" if self.returncode else ""

    def communicate(self, timeout=None):
        return self.out, self.err


def test_decode_totals_and_ratio_leave_out_a_camera_that_failed_in_one_mode(monkeypatch):
    """A camera whose keyframes subprocess failed counted 0 there and in full in ``all``: the
    ratio compared two sets (0.45 for a true 0.60) and the run passed."""
    from benchmarks import decode as D

    monkeypatch.setattr(D.subprocess, "Popen", _FakeDecode)
    out = D.decoder_cpu([f"rtsp://cam{i}" for i in range(4)], [f"c{i}" for i in range(4)], seconds=1)
    assert out["total_cpu_ms_per_s"] == {"all": 75.0, "keyframes": 45.0} and out["cameras_in_totals"] == 3, out
    assert out["keyframes_over_all"] == pytest.approx(0.6)
    assert list(out["errors"]) == ["c3 keyframes"] and "no frame" in out["errors"]["c3 keyframes"], out["errors"]


def test_the_decode_phase_says_a_camera_that_failed_in_the_benchs_errors(monkeypatch):
    from benchmarks import decode as D

    monkeypatch.setattr(D.subprocess, "Popen", _FakeDecode)
    monkeypatch.setattr(D, "frame_path", lambda clip, imgsz: {
        "copies": 3.0, "bytes_written": 1.0, "shipped_bytes": 1, "shipped_bytes_pixels": 1,
        "ultralytics_letterbox": {"copies": 1.0}})
    urls, names = [f"rtsp://cam{i}" for i in range(4)], [f"c{i}" for i in range(4)]
    errors: dict[str, str] = {}
    out = D.phase_decode(urls, names, ["a.mp4"], imgsz=640, seconds=1, errors=errors)
    assert "decoder_cpu: c3 keyframes" in errors["decode"] and out["decoder_cpu"]["keyframes_over_all"] == pytest.approx(0.6)
    with pytest.raises(RuntimeError, match="c3 keyframes"):  # no errors to say it in: the phase fails
        D.phase_decode(urls, names, ["a.mp4"], imgsz=640, seconds=1)
    monkeypatch.setattr(_FakeDecode, "failing", None)  # every camera measured in both modes
    errors.clear()
    D.phase_decode(urls, names, ["a.mp4"], imgsz=640, seconds=1, errors=errors)
    assert errors == {}


def test_an_rtsp_server_interrupted_while_it_starts_is_killed(monkeypatch, tmp_path):
    """A SystemExit (a SIGTERM's, in the bench) while `RtspServer.start` waited for "ready" left
    the server running: the ExitStack never got its __exit__."""
    from benchmarks import rtsp

    script = tmp_path / "never_ready.py"
    script.write_text("import time\ntime.sleep(600)\n")
    monkeypatch.setattr(rtsp, "SYSTEM_PYTHON", sys.executable)
    monkeypatch.setattr(rtsp, "SERVER_SCRIPT", script)

    def child():
        found = []
        for p in psutil.Process().children():  # (the suite's own Ray has children here too: one ended
            try:  # and not yet reaped raised ZombieProcess at each look, and the interrupt never came)
                if str(script) in " ".join(p.cmdline()):
                    found.append(p)
            except psutil.Error:
                continue
        return found

    def interrupt():  # (once it waits for "ready": a signal inside Popen itself is another matter)
        wait_for(lambda: srv.proc is not None and child(), 30, "the RTSP server's process", interval=0.05)
        os.kill(os.getpid(), signal.SIGUSR1)

    def terminated(*_):
        raise SystemExit(143)

    before = signal.signal(signal.SIGUSR1, terminated)
    srv = rtsp.RtspServer({"cam": "testsrc"})
    try:
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(SystemExit):
            srv.start(timeout=60)
        assert srv.proc.poll() is not None, "the server still runs"
    finally:
        signal.signal(signal.SIGUSR1, before)
        if srv.proc is not None and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
