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


def _ray_list(cluster: LocalCluster, what: str, *filters: str) -> list[dict]:
    args = [str(BIN / "ray"), "list", what, "--format", "json", "--detail", "--limit", "1000",
            "--address", cluster.dashboard]
    for f in filters:
        args += ["--filter", f]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, env=cluster_env())
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def _replicas(cluster: LocalCluster, deployment: str) -> list[dict]:
    return _ray_list(cluster, "actors", f"class_name=ServeReplica:percept:{deployment}", "state=ALIVE")


def _http(method: str, url: str, body: dict | None = None) -> int:
    import urllib.request

    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status


def test_two_nodes_placement_by_resources_and_detector_scales_on_lag(tmp_path, videos, rtsp_server_cls):
    """Decoders on one node, detector replicas on the other (custom resources); more cameras
    raise frame lag and the detector scales up; removing them scales it back down."""
    mounts = {f"c{i}": str(videos / ("traffic.mp4" if i % 2 == 0 else "vtest.avi")) for i in range(5)}
    with EmbeddedRedis(tmp_path / "redis") as redis, rtsp_server_cls(mounts) as rtsp:
        http_port = free_port()
        cfg = tmp_path / "percept.yaml"
        cfg.write_text(yaml.safe_dump({
            "redis": {"url": redis.url, "stream_prefix": "multi"},
            "http": {"port": http_port, "proxy_location": "HeadOnly"},
            "cameras": [{"id": "c0", "url": rtsp.url("c0"), "fps": 2}],
            "detector": {"weights": DETECTOR, "num_cpus": 1, "threads": 1, "num_gpus": 0,
                         "resources": {"model_node": 1},
                         "replicas": {"min": 1, "max": 2, "target_lag_s": 0.4,
                                      "upscale_delay_s": 2, "downscale_delay_s": 6}},
            "decoder": {"num_cpus": 0.5, "resources": {"decode_node": 1}},
        }))
        cluster = LocalCluster(tmp_path)
        run = None
        try:
            cluster.start_head(num_cpus=1, resources={"decode_node": 2})
            cluster.add_worker(num_cpus=2, resources={"model_node": 2})
            log = open(tmp_path / "percept-run.log", "w")
            run = subprocess.Popen([sys.executable, "-m", "deployments.cli", "run", "-c", str(cfg), "--quiet",
                                    "--address", cluster.address], stdout=log, stderr=subprocess.STDOUT,
                                   env=cluster_env(), cwd=REPO)
            client = redis.client()

            def wait(pred, timeout, what):
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if run.poll() is not None:
                        pytest.fail(f"percept run exited: {(tmp_path / 'percept-run.log').read_text()[-3000:]}")
                    if pred():
                        return
                    time.sleep(1)
                pytest.fail(f"timed out: {what}; log: {(tmp_path / 'percept-run.log').read_text()[-2000:]}")

            wait(lambda: client.xlen("multi:detections:c0") >= 3, 180, "first detections on the cluster")
            nodes = {n["node_id"]: n["resources_total"] for n in _ray_list(cluster, "nodes")}
            (decoder,) = _replicas(cluster, "decoder")
            (detector,) = _replicas(cluster, "detector")
            assert "decode_node" in nodes[decoder["node_id"]] and "model_node" in nodes[detector["node_id"]]
            assert decoder["node_id"] != detector["node_id"]

            api = f"http://127.0.0.1:{http_port}/cameras"
            for i in range(1, 5):  # uncapped cameras: more frames than one replica can take
                assert _http("POST", api, {"id": f"c{i}", "url": rtsp.url(f"c{i}"), "fps": 0}) == 201
            wait(lambda: len(_replicas(cluster, "detector")) == 2, 120, "detector scaled up to 2 replicas")
            assert all("model_node" in nodes[r["node_id"]] for r in _replicas(cluster, "detector"))
            before = client.xlen("multi:detections:c3")
            wait(lambda: client.xlen("multi:detections:c3") > before + 5, 60, "detections flow after scale-up")

            for i in range(1, 5):
                assert _http("DELETE", f"{api}/c{i}") == 200
            wait(lambda: len(_replicas(cluster, "detector")) == 1, 120, "detector scaled back down to 1")
            before = client.xlen("multi:detections:c0")
            wait(lambda: client.xlen("multi:detections:c0") > before + 2, 60, "c0 still flowing")
        finally:
            if run is not None and run.poll() is None:
                run.send_signal(signal.SIGTERM)
                try:
                    run.wait(60)
                except subprocess.TimeoutExpired:
                    run.kill()
            cluster.stop()
