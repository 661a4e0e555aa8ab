"""The replicas' environment (deployments/graph.py `replica_env`): Serve runs our code on each
replica's own event loop and routes handle calls on the caller's loop (`SERVE_ENV`); handle
calls on the gRPC transport (deployments/transport.py) carry frames larger than gRPC's 4 MB."""

import os
import threading

import numpy as np
import pytest

from ray import serve

from deployments.build import serve_config
from deployments.graph import SERVE_ENV, replica_env
from deployments.transport import MAX_MESSAGE_BYTES, transport_of, with_transport
from pipeline.config import PerceptConfig

# the threads Serve starts for those loops with its defaults (named "Thread-N (<target>)")
SEPARATE_LOOPS = ("(_run_user_code_event_loop)", "(_run_router_event_loop)")


def test_replica_env_forwards_settings_but_no_credentials():
    """Ray writes a runtime env, values included, to its logs: a camera's password or a Redis URL
    must not be in it (a local Ray's replicas inherit them; a cluster's nodes have their own)."""
    environ = {"PERCEPT_MODELS_DIR": "/m", "YOLO_OFFLINE": "1", "CAM_PASS": "s3cret", "HOME": "/root",
               "PERCEPT_REDIS_URL": "redis://:pw@r:6379/0", "AWS_SECRET_ACCESS_KEY": "x",
               "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}
    env = replica_env(environ)
    assert env == {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                   "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",  # set by the user: theirs wins
                   "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
                   "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(MAX_MESSAGE_BYTES),
                   "YOLO_OFFLINE": "1"}
    assert replica_env({}) == SERVE_ENV


def test_built_serve_config_sets_the_replica_loops():
    cfg = PerceptConfig.model_validate({"redis": {"url": "redis://redis:6379/0"}, "cameras": []})
    app = serve_config({"redis": {"url": "redis://redis:6379/0"}}, cfg)["applications"][0]
    assert app["runtime_env"] == {"env_vars": SERVE_ENV}


@serve.deployment
class _Inner:
    async def where(self) -> str:
        return threading.current_thread().name

    async def env(self, name: str) -> str | None:
        return os.environ.get(name)

    async def checksum(self, image: np.ndarray) -> tuple[int, tuple[int, ...]]:
        return int(image.sum(dtype=np.int64)), image.shape


@serve.deployment
class _Outer:
    def __init__(self, inner):
        self.inner = inner

    async def where(self) -> dict:
        inner = await self.inner.where.remote()  # a handle call from a replica, as decoder → detector
        return {"inner": inner, "outer": threading.current_thread().name,
                "threads": sorted(t.name for t in threading.enumerate())}


def _threads_seen(app: str, env_vars: dict[str, str] | None = None) -> list[str]:
    """The thread names of a replica that served a request and made a handle call (its own, the
    inner replica's, every thread it has); ``env_vars`` set in both replicas."""
    options = {} if env_vars is None else {"ray_actor_options": {"runtime_env": {"env_vars": env_vars}}}
    graph = _Outer.options(**options).bind(_Inner.options(**options).bind())
    handle = serve.run(graph, name=app, route_prefix=None)
    try:
        seen = handle.where.remote().result(timeout_s=60)
    finally:
        serve.delete(app)
    return [seen["inner"], seen["outer"], *seen["threads"]]


def test_replicas_run_our_code_on_their_own_loop(ray_session):
    """Under Ray as `percept run` starts it: no thread of Serve's separate loops in a replica that
    served a request and made a handle call. The control: the same replicas with Serve's defaults
    (`SERVE_ENV` undone in their env) show both threads, so the names looked for are Serve's."""
    ours = _threads_seen("serve-env-probe")
    assert not [name for name in ours if any(loop in name for loop in SEPARATE_LOOPS)], ours
    defaults = _threads_seen("serve-env-defaults", {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1",
                                                    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"})
    assert all(any(loop in name for name in defaults) for loop in SEPARATE_LOOPS), defaults


@serve.deployment
class _Caller:
    def __init__(self, inner, transport: str):
        self.inner = with_transport(inner, transport)

    async def send(self, side: int) -> dict:
        # a letterboxed frame at imgsz 1280 sent as pixels (no shared memory): 4.9 MB
        image = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
        total, shape = await self.inner.checksum.remote(image)
        return {"transport": transport_of(self.inner), "ok": total == int(image.sum(dtype=np.int64)),
                "shape": list(shape), "bytes": image.nbytes}


@pytest.mark.parametrize("transport", ["grpc", "actor"])
def test_a_frame_over_4mb_crosses_either_transport(ray_session, transport):
    """The decoder's calls to detectors and classifiers (``decoder.transport``): over Serve's gRPC
    channel a frame beyond gRPC's default 4 MB message arrives whole (`SERVE_ENV` raises the
    limit in caller and replica); actor calls as before."""
    handle = serve.run(_Caller.bind(_Inner.bind(), transport), name="transport-probe", route_prefix=None)
    try:
        seen = handle.send.remote(1280).result(timeout_s=60)
    finally:
        serve.delete("transport-probe")
    assert seen == {"transport": transport, "ok": True, "shape": [1280, 1280, 3], "bytes": 1280 * 1280 * 3}, seen


def test_a_replica_given_no_gpu_sees_none(ray_session):
    """Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone in an actor with no GPU (every GPU of the node
    visible: a classifier on ``device: auto`` would take the detector's); `SERVE_ENV` makes it
    empty there."""
    handle = serve.run(_Inner.bind(), name="gpu-probe", route_prefix=None)
    try:
        seen = handle.env.remote("CUDA_VISIBLE_DEVICES").result(timeout_s=60)
    finally:
        serve.delete("gpu-probe")
    assert seen == "", seen


def test_an_unknown_transport_is_named():
    with pytest.raises(ValueError, match="decoder.transport"):
        with_transport(None, "udp")  # type: ignore[arg-type]
