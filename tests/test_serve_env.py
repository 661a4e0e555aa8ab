"""The replicas' environment (deployments/graph.py `replica_env`): Serve runs our code on each
replica's own event loop and routes handle calls on the caller's loop (`SERVE_ENV`)."""

import threading

from ray import serve

from deployments.build import serve_config
from deployments.graph import SERVE_ENV, replica_env
from pipeline.config import PerceptConfig

# the threads Serve starts for those loops with its defaults (named "Thread-N (<target>)")
SEPARATE_LOOPS = ("(_run_user_code_event_loop)", "(_run_router_event_loop)")


def test_replica_env_forwards_settings_and_credentials_only():
    environ = {"PERCEPT_MODELS_DIR": "/m", "YOLO_OFFLINE": "1", "CAM_PASS": "s3cret", "HOME": "/root",
               "AWS_SECRET_ACCESS_KEY": "x", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}
    env = replica_env(environ, {"CAM_PASS"})
    assert env == {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                   "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",  # set by the user: theirs wins
                   "PERCEPT_MODELS_DIR": "/m", "YOLO_OFFLINE": "1", "CAM_PASS": "s3cret"}
    assert replica_env({}) == SERVE_ENV


def test_built_serve_config_sets_the_replica_loops():
    cfg = PerceptConfig.model_validate({"redis": {"url": "redis://redis:6379/0"}, "cameras": []})
    app = serve_config({"redis": {"url": "redis://redis:6379/0"}}, cfg)["applications"][0]
    assert app["runtime_env"] == {"env_vars": SERVE_ENV}


@serve.deployment
class _Inner:
    async def where(self) -> str:
        return threading.current_thread().name


@serve.deployment
class _Outer:
    def __init__(self, inner):
        self.inner = inner

    async def where(self) -> dict:
        inner = await self.inner.where.remote()  # a handle call from a replica, as decoder → detector
        return {"inner": inner, "outer": threading.current_thread().name,
                "threads": sorted(t.name for t in threading.enumerate())}


def test_replicas_run_our_code_on_their_own_loop(ray_session):
    """Under Ray as `percept run` starts it: no thread of Serve's separate loops in a replica that
    served a request and made a handle call (both exist with Serve's defaults)."""
    handle = serve.run(_Outer.bind(_Inner.bind()), name="serve-env-probe", route_prefix=None)
    try:
        seen = handle.where.remote().result(timeout_s=60)
    finally:
        serve.delete("serve-env-probe")
    for name in [seen["inner"], seen["outer"], *seen["threads"]]:
        assert not any(loop in name for loop in SEPARATE_LOOPS), seen

