"""Background threads (the live view's, the explanation's) run below their replica's priority,
relative to it: Ray starts replicas at nice 15, where an absolute nice 10 would put them, as root,
above the cameras (or, not as root, be refused and leave them equal)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")

PROBE = r"""
import json, os, threading
from pipeline.config_view import ViewConfig
from pipeline.priority import lower_thread_priority
from pipeline.streams import StreamKeys
from pipeline.view import ViewHub
from deployments import explain

def nice():
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

out = {"process": nice()}
import redis
hub = ViewHub(ViewConfig(), redis.Redis(port=1), StreamKeys("prio"))  # never connects
out["view"] = hub._pool.submit(nice).result(30)
pool = explain.ThreadPoolExecutor(max_workers=1, initializer=explain._lower_priority)
out["explain"] = pool.submit(nice).result(30)

def helper(box):
    box["returned"] = lower_thread_priority(3)
    box["after"] = nice()
    box["again"] = lower_thread_priority(30)
box = {}
t = threading.Thread(target=helper, args=(box,))
t.start(); t.join(30)
out.update(box, main=nice())
print("NICE " + json.dumps(out))
"""


def probe(start_nice: int) -> dict[str, int]:
    """The nice values seen in a fresh process started ``start_nice`` below normal (a Ray replica: 15)."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env=env,
                         preexec_fn=lambda: os.nice(start_nice))
    lines = [line for line in out.stdout.splitlines() if line.startswith("NICE ")]
    assert out.returncode == 0 and lines, out.stderr[-2000:]
    return json.loads(lines[0][len("NICE "):])


@pytest.mark.parametrize("start", [15, 0])
def test_background_threads_run_below_their_process(start):
    base = os.getpriority(os.PRIO_PROCESS, 0) + start  # this test may itself run niced
    seen = probe(start)
    assert seen["process"] == min(19, base)
    lowered = min(19, seen["process"] + 10)
    assert seen["view"] == lowered and seen["explain"] == lowered, seen
    assert seen["returned"] == seen["after"] == min(19, seen["process"] + 3), seen
    assert seen["again"] == 19  # clamped at Linux's lowest priority
    assert seen["main"] == seen["process"]  # only the calling thread changed
