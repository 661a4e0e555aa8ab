"""Shared fixtures: real redis-server, real RTSP server, Ray started once per session.

Models and clips come from ``../shared`` (or PERCEPT_SHARED; the models from PERCEPT_MODELS_DIR and the
clips from PERCEPT_SAMPLE_VIDEOS when set); they are never copied here."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PERCEPT_SHARED") or REPO.parent / "shared")
# the README's overrides (an empty value, as the Makefile exports without ../shared: the default)
MODELS = Path(os.environ.get("PERCEPT_MODELS_DIR") or SHARED / "models")
VIDEOS = Path(os.environ.get("PERCEPT_SAMPLE_VIDEOS") or SHARED / "data" / "videos")
DETECTOR = "yolo11n_int8_openvino_model"
CLASSIFIER = "yolov8n-cls-imagenet.pt"

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
# Passwords of the test RTSP servers. Camera URLs name them as ${VAR} (an inline password is
# refused); decoders expand them from their environment, which ray_session forwards (PERCEPT_*)
# when it starts, so they are set here, before any fixture runs.
os.environ.setdefault("PERCEPT_TEST_CAM_PASSWORD", "s3cret-Pa55")  # test_graph.py
os.environ.setdefault("CAM_WALK2_PASSWORD", os.environ["PERCEPT_TEST_CAM_PASSWORD"])  # a camera added over the API
os.environ.pop("CAM_NOENV_PASSWORD", None)  # one whose variable is not set
os.environ.setdefault("PERCEPT_TEST_FAULTS_PASSWORD", "viewer-pw")  # test_faults.py, camera b
os.environ.setdefault("PERCEPT_TEST_WRONG_PASSWORD", "Wr0ngPw9")  # test_faults.py, camera bad-auth


def pytest_collection_modifyitems(config, items):
    if not MODELS.joinpath(DETECTOR).exists():
        skip = pytest.mark.skip(reason=f"models not found in {MODELS} (set PERCEPT_SHARED)")
        for item in items:
            if "needs_models" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def models_dir() -> str:
    if not MODELS.joinpath(DETECTOR).exists():
        pytest.fail(f"shared models missing: {MODELS} (CI must run with ../shared beside the repo)")
    return str(MODELS)


@pytest.fixture(scope="session")
def videos() -> Path:
    if not VIDEOS.joinpath("traffic.mp4").exists():
        pytest.fail(f"shared videos missing: {VIDEOS}")
    return VIDEOS


def _slowed_traffic(videos: Path, path: Path, *, shown: int) -> Path:
    """traffic.mp4 written at 3 fps with each frame ``shown`` times: 8 × ``shown`` slower."""
    import cv2

    cap = cv2.VideoCapture(str(videos / "traffic.mp4"))
    size = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 3, size)
    while True:
        ok, image = cap.read()
        if not ok:
            break
        for _ in range(shown):
            writer.write(image)
    writer.release()
    return path


@pytest.fixture
def slow_traffic(videos, tmp_path) -> Path:
    """traffic.mp4 at an eighth of its speed (each frame shown for 1/3 s): a car takes some 24 s
    to cross the road, so the cars on it when a decoder is killed are still there when another
    takes over."""
    return _slowed_traffic(videos, tmp_path / "traffic-slow.mp4", shown=1)


@pytest.fixture
def slower_traffic(videos, tmp_path) -> Path:
    """traffic.mp4 at a sixteenth of its speed (each frame shown for 2/3 s): a car takes some
    48 s to cross the road, longer than a redeploy that restarts the detector too takes on a
    loaded 2-core machine."""
    return _slowed_traffic(videos, tmp_path / "traffic-slower.mp4", shown=2)


@pytest.fixture()
def redis_server(tmp_path):
    """A private redis-server (AOF on, fsynced at every write: the tests that SIGKILL it expect what
    it answered to be there after its restart; with everysec a loaded machine lost up to ~2 s) per test."""
    from pipeline.redis_server import EmbeddedRedis

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (make test installs it)")
    with EmbeddedRedis(tmp_path / "redis", appendfsync="always") as server:
        yield server


@pytest.fixture(scope="session")
def session_redis(tmp_path_factory):
    from pipeline.redis_server import EmbeddedRedis

    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def rtsp_cameras(videos):
    """A real GStreamer RTSP server on loopback serving the shared clips as live cameras."""
    from tests.rtsp import RtspServer

    server = RtspServer({"traffic": str(videos / "traffic.mp4"), "walk": str(videos / "vtest.avi")})
    with server:
        yield server


@pytest.fixture(scope="session")
def ray_session():
    """Ray and Serve, started once per test session (ray.init ~6 s, Serve ~9 s)."""
    import ray
    from ray import serve

    from deployments.graph import replica_env

    env = replica_env(os.environ)  # as `percept run` and the bench start Ray
    ray.init(address="local", num_cpus=4, include_dashboard=False, runtime_env={"env_vars": env}, logging_level="WARNING")
    from pipeline.redis_server import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    ray.serve_http_url = f"http://127.0.0.1:{port}"  # handy for tests of the HTTP API
    yield ray
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_metrics_url(ray_session) -> str:
    """Ray's Prometheus endpoint of this (one-node) session: ``ray.init`` picked the port, which
    ``ray.nodes()`` reports as MetricsExportPort (``ray.init(_metrics_export_port=N)`` fixes it)."""
    node = next(n for n in ray_session.nodes() if n["Alive"])
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


@pytest.fixture(scope="session")
def rtsp_server_cls():
    """The GStreamer RTSP test server class (kept behind a fixture so tests don't import its module)."""
    from tests.rtsp import RtspServer

    return RtspServer
