"""`percept run`'s private Ray watched (`cli/ray_watch.py`): its raylet or GCS ending (killed,
the OOM killer) stops the run saying which and how. A raylet killed left the console printing
healthy lines (its replicas orphaned); a GCS killed ended the run 60 s later in Ray's words."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import pytest

from cli.ray_watch import RayDaemons, RayGone

from .conftest import REPO
from .waiting import wait_for


@pytest.fixture
def daemon_named(tmp_path):
    """A child process of this one whose name is a Ray daemon's (``sleep`` copied under it)."""
    started = []

    def start(name: str) -> subprocess.Popen:
        exe = tmp_path / name
        shutil.copy(shutil.which("sleep"), exe)
        started.append(subprocess.Popen([str(exe), "600"]))
        return started[-1]

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def ours(*procs: subprocess.Popen) -> RayDaemons:
    """The daemons found among this process's children that these are (the tests' session Ray,
    started in this process too, has its own raylet and GCS here)."""
    pids = {p.pid for p in procs}
    return RayDaemons([(p, name) for p, name in RayDaemons.started_here().procs if p.pid in pids])


def test_a_daemon_killed_is_said_by_name_pid_and_signal(daemon_named):
    raylet, gcs = daemon_named("raylet"), daemon_named("gcs_server")
    daemons = ours(raylet, gcs)
    assert sorted(name for _, name in daemons.procs) == ["gcs_server", "raylet"]
    daemons.check()  # (both run)
    raylet.send_signal(signal.SIGKILL)

    def ended() -> RayGone | None:
        try:
            daemons.check()
        except RayGone as exc:
            return exc
        return None

    gone = wait_for(ended, 30, "the raylet's end seen")
    assert str(gone).startswith(f"the private Ray's raylet (pid {raylet.pid}) killed by SIGKILL: the graph's "
                                "replicas are lost with it"), gone
    assert gcs.poll() is None


def test_the_run_loop_stops_with_exit_3_when_a_daemon_ends(daemon_named, redis_server, capsys):
    from cli.common import EXIT_UNAVAILABLE, RedisOutage
    from cli.run_console import monitor_cameras

    gcs = daemon_named("gcs_server")
    daemons = ours(gcs)
    gcs.terminate()
    assert monitor_cameras(redis_server.client(), None, [], duration=60, show=False,
                           outage=RedisOutage(redis_server.url), keep_up=daemons.check) == EXIT_UNAVAILABLE
    assert f"percept: the private Ray's GCS (gcs_server) (pid {gcs.pid}) killed by SIGTERM" in capsys.readouterr().err


def test_a_private_rays_daemons_are_found_as_this_process_children():
    """Against a real private Ray (`ray.init(address="local")`, as `percept run` starts it)."""
    code = ("import ray\nfrom cli.ray_watch import RayDaemons\n"
            "ray.init(address='local', include_dashboard=False, num_cpus=1, logging_level=40)\n"
            "print(sorted(n for _, n in RayDaemons.started_here().procs))\nray.shutdown()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "['gcs_server', 'raylet']" in done.stdout, (done.stdout, done.stderr[-2000:])


LOST_GCS = """
import os, signal, sys, time
import psutil, ray
from cli.run import start_ray
from cli.ray_watch import RayDaemons, RayGone, ray_lost
from cli.terminate import while_ray_lives

start_ray(None, verbose=False, num_cpus=1)
daemons = RayDaemons.started_here()
print("pids", *[p.pid for p in psutil.Process().children(recursive=True)], flush=True)
os.kill(next(p.pid for p, name in daemons.procs if name == "gcs_server"), signal.SIGKILL)
t0 = time.monotonic()
while time.monotonic() < t0 + 120:  # (a deadline: no end seen is said by the test, no "out" line)
    try:
        daemons.check()
    except RayGone as exc:
        code = ray_lost(exc)
        break
    time.sleep(0.2)  # (polling: the daemons checked each turn, as the run loop does each second)
else:
    sys.exit("the GCS's end was not seen within 120 s")
while_ray_lives(ray.shutdown)
print("out", code, round(time.monotonic() - t0, 1), flush=True)
"""


def test_a_real_private_rays_gcs_killed_ends_the_run_at_once_leaving_nothing():
    """With its GCS killed, Ray's own exit waited 60 s on it (exit 1, in Ray's words) and left
    its agents running; now the rest of that Ray is stopped at once and the run says why."""
    env = {**__import__("os").environ, "RAY_ADDRESS": ""}
    done = subprocess.run([sys.executable, "-c", LOST_GCS], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    out = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("pids", "out")))
    assert done.returncode == 0 and "out" in out, (done.stdout, done.stderr[-3000:])
    code, seconds = out["out"].split()
    assert code == "3" and float(seconds) < 30, out["out"]
    assert "percept: the private Ray's GCS (gcs_server) (pid" in done.stderr and "whole process group" not in done.stderr
    import psutil

    left = [int(p) for p in out["pids"].split() if psutil.pid_exists(int(p))
            and psutil.Process(int(p)).status() != psutil.STATUS_ZOMBIE]
    assert left == [], [(p, psutil.Process(p).name()) for p in left]


def test_a_sigterm_to_the_whole_group_while_the_loop_keeps_up_is_the_stop(redis_server, capsys):
    """A SIGTERM to the process group lands on Ray's daemons too: one seen ended right after it
    (a private redis-server's restart took the while) was said as a fault, exit 3."""
    import os

    from cli.common import RedisOutage
    from cli.run_console import monitor_cameras

    def keep_up() -> None:  # the signal comes, then the daemons are found ended
        os.kill(os.getpid(), signal.SIGTERM)
        raise RayGone("the private Ray's raylet (pid 1) killed by SIGTERM", RayDaemons([]))

    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert monitor_cameras(redis_server.client(), None, [], duration=60, show=False,
                               outage=RedisOutage(redis_server.url), keep_up=keep_up) == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "killed by SIGTERM" not in capsys.readouterr().err


@pytest.mark.parametrize("raylet_alive_first", [True, False], ids=["its-own-stop", "gone-before"])
def test_ray_shutdown_stopping_the_raylet_itself_is_not_said_as_a_group_signal(monkeypatch, capsys, raylet_alive_first):
    """`ray.shutdown` on the way out stops the raylet itself: seen gone meanwhile, it was said as
    "Ray's own processes were stopped too (a signal to the whole process group?)" after a
    SIGTERM to percept alone, and the shutdown given up half-way. A raylet gone before it
    started (the group's signal) is still said, and not waited on."""
    import threading

    import cli.terminate as T

    gone = threading.Event()
    if not raylet_alive_first:
        gone.set()
    monkeypatch.setattr(T, "local_ray_gone", gone.is_set)
    monkeypatch.setattr(T, "_said_gone", threading.Event())
    finished, rest_of_its_work = threading.Event(), threading.Event()

    def shutdown() -> None:  # stops the raylet first, then the rest of its work: 0.3 s of its own, or
        gone.set()           # (a group's signal) until the test lets it end
        rest_of_its_work.wait(0.3 if raylet_alive_first else 30)
        finished.set()

    T.while_ray_lives(shutdown, poll_s=0.01, stops_ray=True)
    ended_first = finished.is_set()
    rest_of_its_work.set()
    said = "whole process group" in capsys.readouterr().err
    assert said is not raylet_alive_first
    assert ended_first is raylet_alive_first, "its own stop waited for to its end, a group's not"


def test_a_clusters_gcs_that_stops_answering_is_said_at_once_and_again_when_back():
    """A cluster run's console printed healthy lines for the 60 s Ray waits on a GCS gone, then
    Ray ended the run in its own words: the silence is said when seen, and the return."""
    import socket

    from cli.ray_watch import ClusterGcs

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    now = [0.0]
    gcs = ClusterGcs(f"127.0.0.1:{port}", every_s=2.0, clock=lambda: now[0])
    try:
        assert gcs.check() is None  # answering: nothing to say
        listener.close()  # the GCS gone (its port closed: refused)
        assert gcs.check() is None, "asked again only after every_s"
        now[0] += 2.0
        line = gcs.check()
        assert line is not None and line.startswith(f"the Ray cluster's GCS at 127.0.0.1:{port} does not answer (") \
            and "within 60 s" in line, line
        now[0] += 2.0
        assert gcs.check() is None, "said once"
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(8)
        now[0] += 2.0
        assert gcs.check() == f"the Ray cluster's GCS at 127.0.0.1:{port} answers again (silent for 4 s)"
        assert ClusterGcs(None).check() is None  # a private Ray, or Ray Client: nothing watched
    finally:
        listener.close()


@pytest.mark.integration
def test_the_gcs_watched_is_the_one_this_driver_talks_to(ray_session):
    """`percept run --address`'s watcher asks the GCS this driver is connected to: it answers."""
    from cli.ray_watch import ClusterGcs

    gcs = ClusterGcs.of_this_driver()
    assert gcs.address and gcs.address.rpartition(":")[2].isdigit(), gcs.address
    assert gcs.check() is None and gcs.silent_since is None
