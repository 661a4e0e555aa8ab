"""`percept build` → `serve deploy` on a real local Ray cluster started with `ray start`.

The cluster runs in its own processes (`ray start --head --block`), so it never touches the
test session's Ray; stopping the blocking process takes its daemons down."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import pytest
import yaml

from pipeline.redis_server import EmbeddedRedis, free_port

from .conftest import CLASSIFIER, DETECTOR
from .waiting import wait_for

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


def listen_port() -> int:
    """A free port below the kernel's ephemeral range, for `ray start` to listen on: the many
    outgoing connections of a running suite take their ports from that range, and one took a
    port picked there before `ray start` bound it (the head then exits: address in use)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return free_port()
    for _ in range(200):
        port = random.randint(min(20000, low - 1000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port()


class LocalCluster:
    """A head node (plus optional workers) on loopback, each `ray start --block` in a subprocess."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = listen_port()
        self.dashboard_port = listen_port()
        self.procs: list[subprocess.Popen] = []

    def _start(self, args: list[str]) -> None:
        log = open(self.tmp / f"ray-{len(self.procs)}.log", "w")
        self.procs.append(subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
                                           stdout=log, stderr=subprocess.STDOUT, env=cluster_env(),
                                           start_new_session=True))

    def start_head(self, *, num_cpus: float, resources: dict[str, float] | None = None,
                   num_gpus: int | None = None) -> LocalCluster:
        gpus = [] if num_gpus is None else [f"--num-gpus={num_gpus}"]  # declared: no CUDA needed
        self._start([*gpus, "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
                     f"--ray-client-server-port={listen_port()}", f"--dashboard-agent-listen-port={listen_port()}",
                     f"--metrics-export-port={listen_port()}", f"--num-cpus={num_cpus}",
                     f"--resources={json.dumps(resources or {})}"])
        self.wait_nodes(1)
        return self

    def add_worker(self, *, num_cpus: float, resources: dict[str, float]) -> None:
        self._start([f"--address=127.0.0.1:{self.port}", "--node-ip-address=127.0.0.1",
                     f"--dashboard-agent-listen-port={listen_port()}", f"--metrics-export-port={listen_port()}",
                     f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}"])
        self.wait_nodes(len(self.procs))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def wait_nodes(self, n: int, timeout: float = 90) -> None:
        def up() -> bool:
            out = subprocess.run([str(BIN / "ray"), "status", f"--address={self.address}"], capture_output=True,
                                 text=True, env=cluster_env(), timeout=60)
            return out.returncode == 0 and out.stdout.count("node_") >= n

        wait_until(up, timeout, f"ray cluster with {n} node(s)", interval=2,
                   diagnose=lambda: "\n".join(p.read_text()[-2000:] for p in self.tmp.glob("ray-*.log")))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def wait_until(pred: Callable[[], Any], timeout: float, what: str, *, diagnose: Callable[[], str],
               interval: float = 1.0) -> Any:
    """`wait_for`, with what ``diagnose()`` returns (logs, serve status) in the failure."""
    try:
        return wait_for(pred, timeout, what, interval=interval)
    except pytest.fail.Exception as exc:
        failure = str(exc)
    pytest.fail(f"{failure}\n{_safely(diagnose)}", pytrace=False)


def observe(sample: Callable[[], Any], ok: Callable[[Any], bool], seconds: float, what: str, *,
            diagnose: Callable[[], str]) -> list[Any]:
    """A deliberate observation window, not a wait for readiness: ``sample()`` about every second
    for ``seconds``, failing on the first sample that is not ``ok``; returns the samples."""
    end = time.monotonic() + seconds
    seen: list[Any] = []

    def window_over() -> bool:
        value = sample()
        seen.append(value)
        if not ok(value):
            pytest.fail(f"{what}: observed {value!r} ({len(seen)} samples: {seen})\n{_safely(diagnose)}",
                        pytrace=False)
        return time.monotonic() >= end

    wait_for(window_over, seconds + 120, f"{seconds:.0f} s of samples: {what}", interval=1)
    return seen


def _safely(diagnose: Callable[[], str]) -> str:
    try:
        return diagnose()
    except Exception as exc:  # noqa: BLE001 - diagnostics of a failure must not hide it
        return f"(diagnostics failed: {type(exc).__name__}: {exc})"


def serve_status_text(cluster: LocalCluster) -> str:
    out = subprocess.run([str(BIN / "serve"), "status", "--address", cluster.dashboard],
                         capture_output=True, text=True, timeout=60, env=cluster_env())
    return f"serve status:\n{out.stdout[-4000:]}{out.stderr[-1000:]}"


def app_status(cluster: LocalCluster, app: str = "percept") -> dict:
    out = subprocess.run([str(BIN / "serve"), "status", "--address", cluster.dashboard],
                         capture_output=True, text=True, timeout=60, env=cluster_env())
    assert out.returncode == 0, out.stderr[-2000:]
    return ((yaml.safe_load(out.stdout) or {}).get("applications") or {}).get(app) or {}


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
        built = subprocess.run([sys.executable, "-m", "cli", "build", "-c", str(cfg), "-o", str(serve_yaml)],
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
            wait_until(lambda: client.xlen("built:detections:traffic") >= 5, 150,
                       "detections from the serve-deployed graph", diagnose=lambda: serve_status_text(cluster))
            entries = client.xrange("built:detections:traffic")
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


class PerceptRun:
    """`percept run -c CONFIG --address CLUSTER` in a subprocess (the graph lives as long as it),
    with waits that fail at once when it exits and show its log and `serve status` on timeout."""

    def __init__(self, config: Path, cluster: LocalCluster, tmp: Path):
        self.config, self.cluster, self.log_path = config, cluster, tmp / "percept-run.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", "run", "-c", str(self.config), "--quiet",
                                      "--address", self.cluster.address], stdout=log, stderr=subprocess.STDOUT,
                                     env=cluster_env(), cwd=REPO)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def diagnose(self) -> str:
        return f"percept run log:\n{self.log_path.read_text()[-3000:]}\n{serve_status_text(self.cluster)}"

    def _alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"percept run exited ({self.proc.returncode}): {self.log_path.read_text()[-3000:]}")

    def wait(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        def check() -> Any:
            self._alive()
            return pred()

        return wait_until(check, timeout, what, diagnose=self.diagnose)

    def observe(self, sample: Callable[[], Any], ok: Callable[[Any], bool], seconds: float, what: str) -> list[Any]:
        def checked() -> Any:
            self._alive()
            return sample()

        return observe(checked, ok, seconds, what, diagnose=self.diagnose)


# Long enough for Serve to act on a lag it saw: the replica's warm-up (pipeline.autoscale.WARMUP_S,
# 5 s) + the metrics look-back (5 s) + upscale_delay_s (2 s in the test) + margin.
LIGHT_LOAD_WINDOW_S = 25.0


def test_two_nodes_placement_by_resources_and_detector_scales_on_lag(tmp_path, videos, rtsp_server_cls):
    """Decoders on one node, detector replicas on the other (custom resources); a light load
    keeps one detector replica (its warm-up is not lag), more cameras raise frame lag and the
    detector scales up; removing them scales it back down."""
    mounts = {f"c{i}": str(videos / ("traffic.mp4" if i % 2 == 0 else "vtest.avi")) for i in range(5)}
    with EmbeddedRedis(tmp_path / "redis") as redis, rtsp_server_cls(mounts) as rtsp:
        http_port = listen_port()
        cfg = tmp_path / "percept.yaml"
        cfg.write_text(yaml.safe_dump({
            "redis": {"url": redis.url, "stream_prefix": "multi"},
            "http": {"port": http_port, "proxy_location": "HeadOnly"},
            "cameras": [{"id": "c0", "url": rtsp.url("c0"), "fps": 2}],
            "detector": {"weights": DETECTOR, "num_cpus": 1, "threads": 1, "num_gpus": 0,
                         "resources": {"model_node": 1},
                         # Lag target above what a loaded 2-core machine adds to a 2 fps camera
                         # (the warm-up backlog this guards against was ~7 s of lag); the four
                         # uncapped cameras scale it up on frames waiting (≤ 2 with one camera).
                         "replicas": {"min": 1, "max": 2, "target_lag_s": 1.5, "target_waiting": 4,
                                      "upscale_delay_s": 2, "downscale_delay_s": 6}},
            "decoder": {"num_cpus": 0.5, "resources": {"decode_node": 1}},
            "state_dir": str(tmp_path / "state"),
        }))
        cluster = LocalCluster(tmp_path)
        try:
            cluster.start_head(num_cpus=1, resources={"decode_node": 2})
            cluster.add_worker(num_cpus=2, resources={"model_node": 2})
            with PerceptRun(cfg, cluster, tmp_path) as run:
                _scale_on_lag(run, redis.client(), rtsp, http_port)
            _another_port_is_refused(cfg, cluster, http_port)
        finally:
            cluster.stop()


def _another_port_is_refused(cfg: Path, cluster: LocalCluster, http_port: int) -> None:
    """Serve stays on the cluster after a run; a next run with another `http.port` joined it and
    said an address nobody listened on (a narrower `http.host` left the API open wide): exit 2."""
    other = yaml.safe_load(cfg.read_text())
    other["http"]["port"] = http_port + 1
    moved = cfg.with_name("moved.yaml")
    moved.write_text(yaml.safe_dump(other))
    out = subprocess.run([sys.executable, "-m", "cli", "run", "-c", str(moved), "--quiet", "--duration", "5",
                          "--address", cluster.address], capture_output=True, text=True, env=cluster_env(), cwd=REPO,
                         timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    assert f"already listens on 127.0.0.1:{http_port}" in out.stderr and "http.port" in out.stderr, out.stderr[-3000:]


def _scale_on_lag(run: PerceptRun, client: Any, rtsp: Any, http_port: int) -> None:
    cluster = run.cluster
    run.wait(lambda: client.xlen("multi:detections:c0") >= 3, 180, "first detections on the cluster")
    # Light load (one camera at 2 fps): the detector stays at one replica; the first sample
    # of a second one fails (the frames that queued while the model loaded used to count as lag).
    counts = run.observe(lambda: len(_replicas(cluster, "detector")), lambda n: n == 1, LIGHT_LOAD_WINDOW_S,
                         "one camera at 2 fps keeps the detector at 1 replica")
    print(f"light load: detector replicas sampled {counts}")
    nodes = {n["node_id"]: n["resources_total"] for n in _ray_list(cluster, "nodes")}
    (decoder,) = _replicas(cluster, "decoder")
    (detector,) = _replicas(cluster, "detector")
    assert "decode_node" in nodes[decoder["node_id"]] and "model_node" in nodes[detector["node_id"]]
    assert decoder["node_id"] != detector["node_id"]

    api = f"http://127.0.0.1:{http_port}/cameras"
    for i in range(1, 5):  # uncapped cameras: more frames than one replica can take
        assert _http("POST", api, {"id": f"c{i}", "url": rtsp.url(f"c{i}"), "fps": 0}) == 201
    run.wait(lambda: len(_replicas(cluster, "detector")) == 2, 120, "detector scaled up to 2 replicas")
    assert all("model_node" in nodes[r["node_id"]] for r in _replicas(cluster, "detector"))
    before = client.xlen("multi:detections:c3")
    run.wait(lambda: client.xlen("multi:detections:c3") > before + 5, 60, "detections flow after scale-up")

    for i in range(1, 5):
        assert _http("DELETE", f"{api}/c{i}") == 200
    run.wait(lambda: len(_replicas(cluster, "detector")) == 1, 120, "detector scaled back down to 1")
    before = client.xlen("multi:detections:c0")
    run.wait(lambda: client.xlen("multi:detections:c0") > before + 2, 60, "c0 still flowing")


def _running(status: dict) -> dict | None:
    """The app's status when it and every deployment are up (RUNNING / HEALTHY), else None;
    fails at once when Serve says a replica cannot be scheduled (resources the cluster lacks)."""
    deployments = status.get("deployments") or {}
    pending = {name: d["message"] for name, d in deployments.items() if "to be scheduled" in (d.get("message") or "")}
    if pending:
        pytest.fail(f"replicas pending on the one-GPU cluster: {yaml.safe_dump(pending, width=200)}", pytrace=False)
    healthy = deployments and all(d.get("status") == "HEALTHY" for d in deployments.values())
    return status if status.get("status") == "RUNNING" and healthy else None


def test_one_gpu_cluster_runs_the_default_graph_on_a_shared_gpu(tmp_path, videos, models_dir, rtsp_server_cls):
    """`num_gpus: auto` (the default) on a cluster that declares one GPU (`ray start --num-gpus 1`,
    no CUDA needed): the detector and three classifiers share the GPU, every replica is placed
    and the application becomes RUNNING. A whole GPU per model left the classifiers pending.
    (A PyTorch detector: the shared OpenVINO export runs on the CPU anyway and takes no share.)"""
    categories = ["vehicle", "pedestrian", "sign"]  # the detector's default categories
    with EmbeddedRedis(tmp_path / "redis") as redis, rtsp_server_cls({"cam": str(videos / "traffic.mp4")}) as rtsp:
        cfg = tmp_path / "percept.yaml"
        cfg.write_text(yaml.safe_dump({
            "redis": {"url": redis.url, "stream_prefix": "gpu"},
            "http": {"port": listen_port(), "proxy_location": "HeadOnly"},
            "cameras": [{"id": "traffic", "url": rtsp.url("cam"), "fps": 2}],
            "detector": {"weights": "yolo11n-coco.pt", "threads": 1},
            "classifiers": {c: {"weights": CLASSIFIER, "threads": 1} for c in categories},
            "models_dir": models_dir,
            "state_dir": str(tmp_path / "state"),
        }))
        cluster = LocalCluster(tmp_path)
        try:
            cluster.start_head(num_cpus=4, num_gpus=1)
            started = time.monotonic()
            with PerceptRun(cfg, cluster, tmp_path) as run:
                status = run.wait(lambda: _running(app_status(cluster)), 300,
                                  "percept RUNNING, every deployment HEALTHY, on a one-GPU cluster")
                print(f"one GPU: RUNNING after {time.monotonic() - started:.1f} s: "
                      f"{ {k: v.get('replica_states') for k, v in status['deployments'].items()} }")
                models = ["detector", *(f"classifier-{c}" for c in categories)]
                assert set(models) <= set(status["deployments"])
                gpus = {}
                for name in models:
                    (replica,) = _replicas(cluster, name)
                    gpus[name] = (replica.get("required_resources") or {}).get("GPU", 0)
                print(f"GPU per replica: {gpus}")
                assert gpus["detector"] == 0.5 and all(g > 0 for g in gpus.values()), gpus
                assert sum(gpus.values()) <= 1.0, gpus
                # the replicas compute (on CPU: the declared GPU has no CUDA), classifiers included
                client = redis.client()
                run.wait(lambda: any(o["attributes"] for _, e in client.xrange("gpu:detections:traffic")
                                     for o in json.loads(e[b"json"])["objects"]), 180,
                         "a classified object from the one-GPU graph")
        finally:
            cluster.stop()
