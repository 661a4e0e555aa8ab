"""What every bench phase and the soak share: the configuration they start from, the RTSP
cameras and private redis-server they run against, and `Graph`, one `serve.run` of the percept
graph with its own cameras and stream prefix."""


from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Sequence

from pipeline.config import ConfigError, PerceptConfig, load_config, parse_config
from pipeline.samples import ENV_SAMPLE_VIDEOS, demo_config

from . import measure as M
from . import processes as P

log = logging.getLogger("percept.bench")

APP = "percept-bench"
MAX_CAMERAS = 16


# --- configuration ---------------------------------------------------------------------------

def _base_config(args: argparse.Namespace, state_dir: str) -> PerceptConfig:
    models_dir = os.environ.get("PERCEPT_MODELS_DIR")
    if args.config:
        cfg = load_config(args.config)
    else:
        cfg = demo_config(args.videos or os.environ.get(ENV_SAMPLE_VIDEOS), models_dir, state_dir,
                          videos_from="--videos" if args.videos else ENV_SAMPLE_VIDEOS)
    data = cfg.model_dump(mode="json")
    data["detectors"] = None  # the bench measures the first detector (the COCO model) alone
    if args.model:
        data["detector"]["weights"] = args.model
    data["cameras"] = []
    data["state_dir"] = state_dir
    if data.get("models_dir") is None:
        data["models_dir"] = models_dir
    return parse_config(data, env={})


def _clips(args: argparse.Namespace) -> list[Path]:
    folder = args.videos or os.environ.get(ENV_SAMPLE_VIDEOS)
    if not folder:
        raise ConfigError([f"--videos: no clips folder (set {ENV_SAMPLE_VIDEOS} or pass --videos)"])
    clips = [Path(folder) / name for name in M.CLIPS if (Path(folder) / name).exists()]
    if not clips:
        raise ConfigError([f"--videos: none of {', '.join(M.CLIPS)} in {folder}"])
    return clips


def _parse_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError([f"--cameras: expected comma-separated integers, got {text!r}"]) from None
    if not counts or counts[0] < 1 or counts[-1] > MAX_CAMERAS:
        raise ConfigError([f"--cameras: counts must be between 1 and {MAX_CAMERAS}, got {text!r}"])
    return counts


class Cameras:
    """Camera entries for N cameras cycling over the clips (RTSP mounts or files)."""

    def __init__(self, clips: list[Path], source: str, rtsp: Any | None, rtsp_fps: int):
        self.clips = clips
        self.source = source
        self.rtsp = rtsp
        self.rtsp_fps = rtsp_fps
        if source == "file":
            from pipeline.capture import probe_fps

            self.native = [probe_fps(str(c)) or 25.0 for c in clips]
        else:
            self.native = [float(rtsp_fps)] * len(clips)

    @property
    def rate(self) -> float:
        """Frames per second one camera can deliver (at most)."""
        return float(sum(self.native) / len(self.native))

    def url(self, i: int) -> str:
        clip = self.clips[i % len(self.clips)]
        return self.rtsp.url(clip.stem) if self.source == "rtsp" else str(clip)

    def entries(self, n: int, *, fps: float, realtime: bool = True) -> list[dict[str, Any]]:
        out = []
        for i in range(n):
            stem = self.clips[i % len(self.clips)].stem
            cam_id = stem if i < len(self.clips) else f"{stem}-{i // len(self.clips) + 1}"
            cam: dict[str, Any] = {"id": cam_id, "url": self.url(i), "fps": round(fps, 3)}
            if self.source == "file":
                cam.update(loop=True, realtime=realtime)
            out.append(cam)
        return out


# the loopback RTSP server's niceness in the bench: below Ray's replicas and Ultralytics' loop (both
# at nice 15, `phases.REPLICA_NICE`), so that it yields to either (at 10 it ranked above the replicas
# and below Ultralytics, then at nice 0)
RTSP_NICE = 19


def add_rtsp_encode(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rtsp-encode", choices=("once", "live"), default="once",
                   help="the RTSP cameras' H.264: each clip encoded once at start and looped (default: the cameras "
                   "cost this machine next to no CPU, as cameras on the network) or encoded live as it plays")


def start_services(stack: ExitStack, args: argparse.Namespace, clips: list[Path], workdir: Path) -> tuple[Any, Cameras]:
    """A private redis-server and, for ``--source rtsp``, the clips as live RTSP cameras."""
    from pipeline.redis_server import EmbeddedRedis

    redis_server = stack.enter_context(EmbeddedRedis(workdir / "redis"))
    rtsp = None
    if args.source == "rtsp":
        from benchmarks.rtsp import RtspServer

        # the cameras stand for devices on the network: each clip is encoded once, before any
        # phase, and its H.264 looped (``--rtsp-encode live``: encoded as it plays, ~0.2 of a core
        # at 4 × 30 fps); what is left yields the cores to the service under test (and to
        # Ultralytics) rather than competing with it as an equal
        rtsp = stack.enter_context(RtspServer({c.stem: f"{c}@{args.rtsp_fps}" for c in clips}, nice=RTSP_NICE,
                                              encode_once=args.rtsp_encode == "once"))
    return redis_server, Cameras(clips, args.source, rtsp, args.rtsp_fps)


def _phase_config(base: PerceptConfig, *, redis_url: str, prefix: str, cameras: list[dict[str, Any]],
                  classifiers: bool | Sequence[str] = True, view: bool | None = None) -> PerceptConfig:
    """The base config on its own streams with these cameras; ``classifiers`` False drops them
    all, a list of categories keeps only the first classifier of each of those categories."""
    data = base.model_dump(mode="json")
    if not classifiers:
        data["classifiers"] = {}
    elif not isinstance(classifiers, bool):
        data["classifiers"] = {c: data["classifiers"][c][:1] for c in classifiers if data["classifiers"].get(c)}
    data["redis"]["url"] = redis_url
    data["redis"]["stream_prefix"] = prefix
    data["cameras"] = cameras
    if view is not None:  # the live view on or off (default: as the base config)
        data["view"]["enabled"] = view
    return parse_config(data, env={})


# --- phases ----------------------------------------------------------------------------------

def fail(message: str, code: int) -> int:
    print(f"percept: {message}", file=sys.stderr)
    return code


def py_spy() -> str | None:
    """py-spy on PATH or beside this Python (a virtual environment's), if installed."""
    import shutil

    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.is_file() else None)


def _say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def logical_cpus(cfg: PerceptConfig) -> float:
    from deployments.graph import logical_cpus as reserved  # Ray imported only when measuring

    return reserved(cfg)


def ray_cpus_for(cfg: PerceptConfig) -> int | None:
    from deployments.graph import ray_cpus_for as needed

    return needed(cfg)


class Graph:
    """Ray + Serve started once; `phase` deploys the graph for one camera set and measures it.
    ``num_cpus``: Ray's logical CPUs (default: the machine's cores)."""

    def __init__(self, stack: ExitStack, client: Any, *, num_cpus: int | None = None):
        import ray
        from ray import serve

        from pipeline.redis_server import free_port

        t = time.monotonic()
        from deployments.graph import replica_env

        # Local only: RSS and CPU are read from this process tree. Replica logs stay in Ray's log
        # folder (a deployment that fails still fails serve.run, with its error).
        ray.init(address="local", runtime_env={"env_vars": replica_env(os.environ)}, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False, num_cpus=num_cpus)
        stack.callback(ray.shutdown)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        self.gpu = ray.cluster_resources().get("GPU", 0) > 0
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        stack.callback(serve.shutdown)
        self.http_url = f"http://127.0.0.1:{port}"  # the graph's ingress (camera API, live view)
        self.client = client
        self.startup_s = time.monotonic() - t

    def phase(self, cfg: PerceptConfig, *, duration: float, warmup: float, ready_timeout: float = 120.0,
              profile_dir: Path | None = None, watcher: Any = None) -> dict[str, Any]:
        """``watcher``: a context manager entered once every camera publishes, before the warm-up,
        and left after the window (a view watcher: `benchmarks.costs.MjpegWatcher`)."""
        import ray
        from ray import serve

        from deployments.graph import build_app
        from pipeline.streams import StreamKeys

        need, have = logical_cpus(cfg), ray.cluster_resources().get("CPU", 0)
        if need > have + 1e-6:  # serve.run would wait for resources forever
            raise RuntimeError(f"the graph reserves {need:g} Ray CPUs (num_cpus x replicas), Ray has {have:g}")
        keys = StreamKeys(cfg.redis.stream_prefix)
        cams = [c.id for c in cfg.cameras]
        streams = [keys.detections(c) for c in cams]
        t_deploy = time.monotonic()
        stack = ExitStack()  # the watcher's
        serve.run(build_app(cfg, gpu_available=self.gpu), name=APP, route_prefix="/",
                  logging_config={"enable_access_log": False})
        try:
            self._wait_ready(keys, cams, streams, ready_timeout)
            ready_s = time.monotonic() - t_deploy
            if watcher is not None:
                stack.enter_context(watcher)
            time.sleep(warmup)
            window = self._window(keys, cams, streams, duration, profile_dir)
            stack.close()  # the watcher stops with the window
            for p in window.pop("profilers"):
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        finally:
            stack.close()
            serve.delete(APP)
        return {"camera_fps": cfg.cameras[0].fps if cfg.cameras else None, **_window_result(window, cams, streams),
                "warmup_s": warmup, "ready_s": ready_s}

    def _window(self, keys: Any, cams: list[str], streams: list[str], duration: float,
                profile_dir: Path | None) -> dict[str, Any]:
        """What the cameras published, their states and every process's CPU and RSS over
        ``duration`` seconds (RSS every 5 s: growth against the start)."""
        from pipeline.streams import camera_states

        tap = M.StreamTap(self.client, streams).start()
        cpu = P.CpuMeter().start()
        profilers: list[subprocess.Popen] = []
        try:
            procs0 = P.process_stats()
            t0, len0, st0 = time.time(), self._lengths(streams), camera_states(self.client, keys, cams)
            profilers = self._start_profilers(profile_dir, procs0, duration) if profile_dir else []
            samples = []
            end_at = time.monotonic() + duration
            while (left := end_at - time.monotonic()) > 0:
                time.sleep(min(5.0, left))
                if end_at - time.monotonic() > 1:
                    samples.append(P.process_stats())
            t1, len1, st1 = time.time(), self._lengths(streams), camera_states(self.client, keys, cams)
            procs1 = P.process_stats()
        except BaseException:  # (the tap's thread read Redis for the rest of the run)
            tap.stop(), cpu.stop(), [p.kill() for p in profilers]
            raise
        return {"t": (t0, t1), "lengths": (len0, len1), "states": (st0, st1), "cpu": cpu.stop(),
                "processes": P.compare_processes(procs0, procs1, samples), "entries": tap.stop(),
                "profilers": profilers}

    def _wait_ready(self, keys: Any, cams: list[str], streams: list[str], timeout: float) -> None:
        """Until every camera has published once (else the cameras' states in the error)."""
        from pipeline.streams import camera_states

        deadline = time.monotonic() + timeout
        while any(self.client.xlen(s) == 0 for s in streams):
            if time.monotonic() > deadline:
                states = camera_states(self.client, keys, cams)
                raise RuntimeError(f"cameras did not publish within {timeout:.0f} s: "
                                   + "; ".join(f"{c}={s.get('state')} {s.get('last_error', '')}" for c, s in states.items()))
            time.sleep(0.2)

    def _lengths(self, streams: list[str]) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for s in streams:
            pipe.xlen(s)
        return dict(zip(streams, pipe.execute()))

    @staticmethod
    def _start_profilers(folder: Path, procs: dict[int, dict[str, Any]], duration: float) -> list[subprocess.Popen]:
        exe = py_spy()
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for pid, p in procs.items():
            if not p["name"].startswith("ray::ServeReplica"):
                continue
            name = p["name"].split(":")[-1]
            out.append(subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--duration", str(int(duration)), "--rate", "50", "--format", "raw",
                 "--nonblocking", "--output", str(folder / f"{name}-{pid}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return out


def dropped_between(st0: dict[str, Any], st1: dict[str, Any], cams: list[str]) -> float:
    """Frames the cameras dropped between two readings of their states (`camera_states`)."""
    return _between(st0, st1, cams, "dropped")


def _between(st0: dict[str, Any], st1: dict[str, Any], cams: list[str], field: str) -> float:
    """A camera hash counter's growth between two readings, summed over the cameras."""
    return sum(float(st1.get(c, {}).get(field, 0) or 0) - float(st0.get(c, {}).get(field, 0) or 0) for c in cams)


def _window_result(window: dict[str, Any], cams: list[str], streams: list[str]) -> dict[str, Any]:
    """A phase's numbers from its window (`Graph._window`): fps, per camera, offered, dropped."""
    (t0, t1), (len0, len1), (st0, st1) = window["t"], window["lengths"], window["states"]
    dt = t1 - t0
    dropped = dropped_between(st0, st1, cams)
    published = sum(len1.values()) - sum(len0.values())
    entries, processes = window["entries"], window["processes"]
    fps = published / dt
    return {
        "cameras": len(cams),
        "fps": fps,
        "per_camera_fps": {c: (len1[s] - len0[s]) / dt for c, s in zip(cams, streams)},
        "cpu_ms_per_frame": _cpu_ms_per_frame(processes, fps),
        # every sampled frame is published or counted as dropped (skipped, replaced or failed)
        "offered_fps": (published + dropped) / dt,
        "dropped_per_s": dropped / dt,
        # frames colour-converted and letterboxed per frame published (keep-latest's replaced ones: above 1)
        "converted_per_published": _between(st0, st1, cams, "converted") / published if published else None,
        "seconds": dt,
        "payload_samples": [e.raw.decode() for e in entries[-200:]],
        "processes": processes,
        "cpu": window["cpu"],
        **M.StreamTap.summarize(entries, t0, t1),
    }


def _cpu_ms_per_frame(processes: list[dict[str, Any]], fps: float) -> dict[str, float]:
    """CPU each process spent per published frame: where a frame's cost goes (every process that
    used any: those under 1 % of a core were left out, the raylet and Serve's proxy among them)."""
    out: dict[str, float] = {}
    for p in processes:
        if (p["cpu_pct"] or 0) > 0 and fps > 0:
            name = p["name"].replace(f"ray::ServeReplica:{APP}:", "")
            out[name] = out.get(name, 0.0) + p["cpu_pct"] * 10 / fps
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
