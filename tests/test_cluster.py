"""`percept build` → `serve deploy` on a real local Ray cluster started with `ray start`.

The cluster runs in its own processes (`ray start --head --block`), so it never touches the
test session's Ray; stopping the blocking process takes its daemons down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.redis_server import EmbeddedRedis, free_port

from .conftest import DETECTOR

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def cluster_env() -> dict[str, str]:
    from .conftest import MODELS

    env = dict(os.environ)
    env.setdefault("PERCEPT_MODELS_DIR", str(MODELS))  # the cluster's own environment resolves ${...}
    env["RAY_AUTH_MODE"] = "disabled"  # loopback-only test cluster
    env.pop("RAY_ADDRESS", None)
    return env


class LocalCluster:
    """A head node (plus optional workers) on loopback, each `ray start --block` in a subprocess."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port()
        self.dashboard_port = free_port()
        self.procs: list[subprocess.Popen] = []

    def _start(self, args: list[str]) -> None:
        log = open(self.tmp / f"ray-{len(self.procs)}.log", "w")
        self.procs.append(subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
                                           stdout=log, stderr=subprocess.STDOUT, env=cluster_env(),
                                           start_new_session=True))

    def start_head(self, *, num_cpus: float, resources: dict[str, float] | None = None) -> "LocalCluster":
        self._start(["--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
                     f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                     f"--metrics-export-port={free_port()}", f"--num-cpus={num_cpus}",
                     f"--resources={json.dumps(resources or {})}"])
        self.wait_nodes(1)
        return self

    def add_worker(self, *, num_cpus: float, resources: dict[str, float]) -> None:
        self._start([f"--address=127.0.0.1:{self.port}", "--node-ip-address=127.0.0.1",
                     f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
                     f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}"])
        self.wait_nodes(len(self.procs))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def wait_nodes(self, n: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run([str(BIN / "ray"), "status", f"--address={self.address}"], capture_output=True,
                                 text=True, env=cluster_env(), timeout=60)
            if out.returncode == 0 and out.stdout.count("node_") >= n:
                return
            time.sleep(2)
        logs = "\n".join(p.read_text()[-2000:] for p in self.tmp.glob("ray-*.log"))
        pytest.fail(f"ray cluster did not reach {n} node(s):\n{logs}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def test_percept_build_output_deploys_with_serve_deploy(tmp_path, videos, models_dir, rtsp_server_cls):
    with EmbeddedRedis(tmp_path / "redis") as redis, rtsp_server_cls({"cam": str(videos / "traffic.mp4")}) as rtsp:
        cfg = tmp_path / "percept.yaml"
        cfg.write_text(yaml.safe_dump({
            "redis": {"url": redis.url, "stream_prefix": "built"},
            "cameras": [{"id": "traffic", "url": rtsp.url("cam"), "fps": 2}],
            "detector": {"weights": DETECTOR, "num_cpus": 0.5, "num_gpus": 0},
            "models_dir": "${PERCEPT_MODELS_DIR}",
        }))
        serve_yaml = tmp_path / "serve.yaml"
        built = subprocess.run([sys.executable, "-m", "deployments.cli", "build", "-c", str(cfg), "-o", str(serve_yaml)],
                               capture_output=True, text=True, timeout=60, cwd=REPO)
        assert built.returncode == 0, built.stderr
        doc = yaml.safe_load(serve_yaml.read_text())
        from ray.serve.schema import ServeDeploySchema

        ServeDeploySchema.model_validate(doc)
        assert doc["applications"][0]["args"]["config"]["models_dir"] == "${PERCEPT_MODELS_DIR}"
        assert {d["name"] for d in doc["applications"][0]["deployments"]} == {"api", "decoder", "detector"}

        cluster = LocalCluster(tmp_path)
        try:
            env = cluster_env()
            cluster.start_head(num_cpus=2)
            deployed = subprocess.run([str(BIN / "serve"), "deploy", str(serve_yaml), "--address", cluster.dashboard],
                                      capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
            assert deployed.returncode == 0, deployed.stderr[-3000:]
            client = redis.client()
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline and client.xlen("built:detections:traffic") < 5:
                time.sleep(1)
            entries = client.xrange("built:detections:traffic")
            if len(entries) < 5:
                status = subprocess.run([str(BIN / "serve"), "status", "--address", cluster.dashboard],
                                        capture_output=True, text=True, timeout=60, env=env)
                pytest.fail(f"no detections from the serve-deployed graph; serve status:\n{status.stdout[-3000:]}")
            payload = json.loads(entries[-1][1][b"json"])
            assert payload["camera"] == "traffic" and payload["model"]["detector"] == DETECTOR
        finally:
            cluster.stop()
