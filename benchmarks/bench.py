"""`percept bench`: the graph against its own limit and against Ultralytics, in one invocation.

Phases, in this order, on one machine (the Ray-free ones live in `benchmarks/phases.py`, their
helpers in `benchmarks/measure.py`):

0. ``limit`` — first, with nothing else running: OpenVINO's ``benchmark_app`` (throughput hint,
   then a short latency-hint run) on the detector's IR: the model file's ceiling on these cores
   (``limit_fps``; skipped for a model that is not OpenVINO IR).
1. ``bare`` — the detector in this process on pre-decoded, pre-letterboxed frames of the clips at
   the configured batch size (``bare_fps``) and at batch 1 (one inference: ``single_infer_ms``);
   also the bytes of one `DetectorInput` (``frame_bytes``).
2. ``classifiers`` — each classifier deployment in this process on crops of the bare phase's
   detections: ms per crop (batch 1 and its batch size), crops per frame, ms per frame.
   ``tracking`` — the tracker and the event engine (a line, a zone) on 4 fps detections of
   traffic.mp4 and vtest.avi: CPU ms per frame against the detector's (`benchmarks/costs.py`).
3. ``ultralytics`` — ``YOLO(model).predict(source=<.streams>, stream=True)`` on the same RTSP
   URLs, in a subprocess with a timeout, before Ray starts (the machine is otherwise idle).
   ``decode`` — each camera's decoder CPU in both ``decode`` modes (every frame, keyframes only)
   at a sampled rate below its keyframe rate, the clips as files with and without their
   non-reference frames (``decode: reference``), and one frame's copies and bytes from the
   decoder to the detector (``frame_copies``; `benchmarks/decode.py`).
4. Ray and Serve start once; each of the following is a ``serve.run`` of the graph with its own
   cameras and its own stream prefix (fresh streams, leases and camera hashes), deleted after:
   ``e2e`` for every N in ``--cameras`` with cameras uncapped (``fps: 0``), counting XLEN growth
   over a window after a warm-up; ``detect-only``, the same without classifiers (what they cost);
   ``e2e-vehicle``, with the vehicle classifier only; ``view``, detector only with the live view
   off, then on with one MJPEG client (against detect-only: on, nobody watching); ``latency`` at ~50 % of the measured
   capacity; ``overload`` at ~3× capacity (RSS of every Ray process at the start and end of the
   window, lag, drops). Every window also records the CPU each process used and how much other
   processes on the machine took (noise).
5. ``publish`` — after Ray stops: `Publisher` on real payloads vs ``redis-benchmark`` XADD.

Ratios (`report.add_ratios`): p0 detector-only e2e / limit, p1 e2e / bare, p2 detector-only e2e /
Ultralytics (``p2_e2e_over_ultralytics`` keeps its first meaning, e2e with every classifier),
p2 vehicle, p3 latency / one inference, p5 publisher / redis-benchmark, classifiers' e2e cost.

Cameras are the shared clips (PERCEPT_SAMPLE_VIDEOS) served as live RTSP cameras on loopback by
benchmarks/rtsp.py at ``--rtsp-fps`` (like real cameras, every frame is decoded; ``fps`` only
samples), each clip encoded once before the phases and its H.264 looped (``--rtsp-encode live``:
encoded as it plays, on the service's cores), or the files themselves with ``--source file``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import threading
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pipeline.config import PerceptConfig

from . import costs as C
from . import decode as D
from . import phases as X
from . import processes as P
from . import report as R
from .harness import MAX_CAMERAS, Graph, _phase_config, _say, logical_cpus, ray_cpus_for, start_services

log = logging.getLogger("percept.bench")

PHASES = ("limit", "bare", "classifiers", "tracking", "ultralytics", "decode", "e2e", "detect-only", "e2e-vehicle", "view",
          "latency", "overload", "publish")
VEHICLE = "vehicle"  # the category of the e2e-vehicle phase


def _capacity(result: dict[str, Any], n_max: int) -> float | None:
    e2e = (result.get("e2e") or {}).get(str(n_max))
    if e2e and e2e.get("fps"):
        return float(e2e["fps"])
    return result.get("bare_fps")


class Bench:
    """One `percept bench` run: the phases in order, each into ``result`` (a failing phase is
    recorded in ``result["errors"]`` and the others go on)."""

    def __init__(self, args: argparse.Namespace, base: PerceptConfig, counts: list[int], skip: set[str],
                 clips: list[Path], workdir: Path):
        self.args, self.base, self.counts, self.skip, self.clips, self.workdir = args, base, counts, skip, clips, workdir
        self.n_max = counts[-1]
        self.duration = args.duration if args.duration is not None else 30.0
        self.overload_s = args.overload_duration if args.overload_duration is not None else (
            args.duration if args.duration is not None else 60.0)
        self.warmup = args.warmup if args.warmup is not None else min(8.0, max(3.0, self.duration / 3))
        self.limit_s = args.limit_duration if args.limit_duration is not None else min(15.0, max(3.0, self.duration / 2))
        self.samples: list[Any] = []
        self.bare_out: dict[str, Any] | None = None  # frames and detections for the classifiers phase
        self.redis_server: Any = None
        self.cams: Any = None
        from pipeline.models import resolve_weights

        self.weights = resolve_weights(base.detector.weights, base.models_dir)
        self.result: dict[str, Any] = self._header()
        # the SIGTERM handler of the run (`bench_run`), put back after Ray's start and end put theirs
        self._sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None

    def _our_sigterm(self) -> None:
        if callable(self._sigterm):
            signal.signal(signal.SIGTERM, self._sigterm)

    def _header(self) -> dict[str, Any]:
        from pipeline.models import choose_device, model_name

        base = self.base
        device, _ = choose_device(base.detector.device, base.detector.half)
        return {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": self.args.source,
            "cameras": self.counts,
            "duration_s": self.duration,
            "overload_duration_s": self.overload_s,
            "rtsp_fps": self.args.rtsp_fps if self.args.source == "rtsp" else None,
            "rtsp_encode": self.args.rtsp_encode if self.args.source == "rtsp" else None,
            "machine": R.machine_info(model=model_name(base.detector), imgsz=base.detector.imgsz,
                                      batch=base.detector.batch.max_size, device=device),
            "config": {"detector": base.detector.model_dump(mode="json"),
                       "classifiers": {k: [c.model_dump(mode="json") for c in v] for k, v in base.classifiers.items()},
                       "decoder": base.decoder.model_dump(mode="json")},
            "skipped": sorted(self.skip, key=PHASES.index),
            "errors": {},
        }

    def attempt(self, name: str, fn: Callable[[], None]) -> None:
        if name in self.skip:
            return
        _say(f"{name} …")
        t = time.monotonic()
        try:
            fn()
        except Exception as exc:  # one failing phase must not lose the others' numbers
            log.debug("phase %s failed", name, exc_info=True)
            self.result["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
            _say(f"{name} FAILED: {exc}")
        else:
            _say(f"{name} done in {time.monotonic() - t:.0f} s")

    # --- phases without Ray --------------------------------------------------------------------

    def limit(self) -> None:
        cpu = P.CpuMeter().start()
        out = X.phase_limit(self.weights, imgsz=self.base.detector.imgsz, seconds=self.limit_s)
        out["cpu"] = cpu.stop()
        self.result["limit"] = out
        self.result["limit_fps"] = out["fps"]
        if self.base.detector.rect and out["fps"] is not None:  # the limit at the sizes the detector runs
            clips = [self.clips[i % len(self.clips)] for i in range(max(self.counts))]  # as the cameras cycle
            rect = X.phase_limit_rect(self.weights, imgsz=self.base.detector.imgsz, clips=clips, seconds=self.limit_s)
            out["rect"] = rect
            self.result["limit_rect_fps"] = rect["fps"]

    def limit_again(self) -> None:
        """The limit measured again after the graph's phases: ``limit_fps`` is the mean of the two,
        so that the graph's phases, minutes after the first, are compared with the model's limit
        over the same stretch of time (this VM's speed drifts within a run: one run's limit was
        measured 10 % slower than the bare model's phase right after it)."""
        before = self.result.get("limit") or {}
        if before.get("fps") is None:
            return
        out = X.phase_limit(self.weights, imgsz=self.base.detector.imgsz, seconds=self.limit_s)
        before["after"] = {k: out.get(k) for k in ("fps", "latency_median_ms", "latency_fps")}
        before["fps_runs"] = [before["fps"], out["fps"]]
        if out.get("fps") is not None:
            self.result["limit_fps"] = (before["fps"] + out["fps"]) / 2

    def bare(self) -> None:
        cpu = P.CpuMeter().start()
        out, self.bare_out = X.phase_bare(self.base, self.clips, self.duration)
        out["cpu"] = cpu.stop()
        self.samples.extend(self.bare_out["samples"])
        self.result["bare"] = out
        self.result["bare_fps"] = out["fps"]
        self.result["single_infer_ms"] = out["single_infer_ms"]["p50"]
        self.result["single_infer_paused_ms"] = out["single_infer_paused_ms"]["p50"]
        self.result["frame_bytes"] = out["frame_bytes"]["pickled_bytes"]

    def classifiers(self) -> None:
        if self.bare_out is None:
            raise RuntimeError("no detections to cut crops from (the bare phase was skipped or failed)")
        seconds = max(1.0, min(3.0, self.duration / 10))
        self.result["classifiers_cost"] = X.phase_classifiers(
            self.base, self.bare_out["frames"], self.bare_out["detections"], seconds=seconds)
        self.bare_out = None  # the frames are not needed any more

    def tracking(self) -> None:
        self.result["tracking_cost"] = C.phase_tracking(self.base, self.clips, duration=self.duration)

    def ultralytics(self) -> None:
        urls = [self.cams.url(i) for i in range(self.n_max)]
        cpu = P.CpuMeter().start()
        res = X.phase_ultralytics(self.weights, urls, self.base, duration=self.duration, warmup=self.warmup,
                                  workdir=self.workdir)
        res["cpu"] = cpu.stop()
        self.result["ultralytics"] = res
        self.result["ultralytics_fps"] = res["fps"]

    def decode(self) -> None:
        n = self.n_max
        urls = [self.cams.url(i) for i in range(n)]
        names = [c["id"] for c in self.cams.entries(n, fps=D.SAMPLED_FPS)]
        out = D.phase_decode(urls, names, [str(c) for c in self.clips], imgsz=self.base.detector.imgsz,
                             seconds=min(10.0, max(2.0, self.duration / 4)), errors=self.result["errors"])
        self.result["decode"] = out
        self.result["frame_copies"] = out["frame_path"]["copies"]
        self.result["frame_shipped_bytes"] = out["frame_path"]["shipped_bytes"]  # pickled, pixels shared
        self.result["decoder_cpu_ms_per_s"] = out["decoder_cpu"]["total_cpu_ms_per_s"]
        self.result["decode_keyframes_over_all"] = out["decoder_cpu"]["keyframes_over_all"]
        self.result["decoder_cpu_files_ms_per_s"] = out["decoder_cpu_files"]["total_cpu_ms_per_s"]
        self.result["decode_reference_over_all"] = out["decoder_cpu_files"]["reference_over_all"]

    def publish(self) -> None:
        if not self.samples:
            raise RuntimeError("no payloads to publish (bare and e2e both skipped or failed)")
        self.result["publish"] = X.phase_publish(self.redis_server, self.samples[:200], n=20_000)

    # --- the graph ----------------------------------------------------------------------------

    def _config(self, prefix: str, n: int, *, fps: float = 0, realtime: bool = False,
                classifiers: bool | list[str] = True, view: bool | None = None) -> PerceptConfig:
        return _phase_config(self.base, redis_url=self.redis_server.url, prefix=prefix, classifiers=classifiers,
                             cameras=self.cams.entries(n, fps=fps, realtime=realtime), view=view)

    def graph_phases(self) -> None:
        ray_phases = [p for p in ("e2e", "detect-only", "e2e-vehicle", "view", "latency", "overload") if p not in self.skip]
        if not ray_phases:
            return
        with ExitStack() as ray_stack:
            try:
                _say("starting Ray and Serve …")
                g = Graph(ray_stack, self.redis_server.client(), num_cpus=self._ray_cpus())
                self._our_sigterm()  # (ray.init installs its own: a SIGTERM then lost the JSON and left redis running)
                self.result["ray_startup_s"] = g.startup_s
            except Exception as exc:
                for p in ray_phases:
                    self.result["errors"][p] = f"Ray/Serve did not start: {exc}"
                return
            self.attempt("e2e", lambda: self.e2e(g))
            if self.base.classifiers:
                self.attempt("detect-only", lambda: self.detect_only(g))
            self.attempt("e2e-vehicle", lambda: self.e2e_vehicle(g))
            self.attempt("view", lambda: self.view(g))
            self.attempt("latency", lambda: self.latency(g))
            self.attempt("overload", lambda: self.overload(g))
            _say("stopping Ray …")
        self._our_sigterm()

    def _ray_cpus(self) -> int | None:
        """Enough logical CPUs for the largest graph of the bench (`ray_cpus_for`)."""
        cfg = self._config("size", MAX_CAMERAS)
        ray_cpus = ray_cpus_for(cfg)
        cores = os.cpu_count() or 1
        self.result["ray_cpus"] = {"machine_cores": cores, "graph_reserves": logical_cpus(cfg),
                                   "ray_logical": ray_cpus or cores}
        if ray_cpus:
            _say(f"the graph reserves {logical_cpus(cfg):g} Ray CPUs, the machine has {cores}: "
                 f"Ray gets {ray_cpus} logical CPUs")
        return ray_cpus

    def e2e(self, g: Graph) -> None:
        from pipeline.schema import FrameResult

        self.result["e2e"] = {}
        for n in self.counts:
            prof = Path(self.args.profile) if self.args.profile and n == self.n_max else None
            ph = g.phase(self._config(f"e2e{n}", n), duration=self.duration, warmup=self.warmup, profile_dir=prof)
            self.samples[:0] = [FrameResult.from_json(s) for s in ph.pop("payload_samples")]
            self.result["e2e"][str(n)] = ph
            _say(f"  {n} camera(s): {ph['fps']:.1f} fps published, {ph['offered_fps']:.1f} offered")
        self.result["e2e_fps"] = self.result["e2e"][str(self.n_max)]["fps"]

    def detect_only(self, g: Graph) -> None:
        # The same graph without classifiers: separates their cost from Serve's.
        cfg = self._config(f"det{self.n_max}", self.n_max, classifiers=False)
        ph = g.phase(cfg, duration=self.duration, warmup=self.warmup)
        ph.pop("payload_samples")
        self.result["e2e_detect_only"] = {str(self.n_max): ph}
        self.result["e2e_detect_only_fps"] = ph["fps"]

    def e2e_vehicle(self, g: Graph) -> None:
        # The detector and the vehicle classifier alone: Ultralytics' job plus one classifier.
        if not self.base.classifiers.get(VEHICLE):
            self.result["e2e_vehicle_skipped"] = f"the config has no {VEHICLE} classifier"
            return
        cfg = self._config(f"veh{self.n_max}", self.n_max, classifiers=[VEHICLE])
        ph = g.phase(cfg, duration=self.duration, warmup=self.warmup)
        ph.pop("payload_samples")
        self.result["e2e_vehicle"] = {str(self.n_max): ph}
        self.result["e2e_vehicle_fps"] = ph["fps"]

    def view(self, g: Graph) -> None:
        # the live view's cost: off, and one watcher, against detect-only (on, nobody watching)
        idle = (self.result.get("e2e_detect_only") or {}).get(str(self.n_max))
        if idle is None and not self.base.classifiers:
            idle = (self.result.get("e2e") or {}).get(str(self.n_max))
        self.result["view_cost"] = C.view_phases(
            g, lambda prefix, on: self._config(prefix, self.n_max, classifiers=False, view=on),
            duration=self.duration, warmup=self.warmup, idle=idle)

    def latency(self, g: Graph) -> None:
        cap = _capacity(self.result, self.n_max)
        if not cap:
            raise RuntimeError("no capacity measured (e2e and bare both missing)")
        fps = min(0.5 * cap / self.n_max, self.cams.rate)
        ph = g.phase(self._config("latency", self.n_max, fps=fps, realtime=True), duration=self.duration,
                     warmup=self.warmup)
        ph.pop("payload_samples")
        ph["capacity_fps"] = cap
        self.result["latency"] = ph
        self.result["latency_ms"] = ph["latency_ms"]

    def overload(self, g: Graph) -> None:
        cap = _capacity(self.result, self.n_max)
        if not cap:
            raise RuntimeError("no capacity measured (e2e and bare both missing)")
        target = 3 * cap
        n = min(MAX_CAMERAS, max(self.n_max, math.ceil(target / (0.9 * self.cams.rate))))
        fps = target / n
        fps = 0 if fps >= 0.95 * self.cams.rate else fps
        ph = g.phase(self._config("overload", n, fps=fps, realtime=True), duration=self.overload_s, warmup=self.warmup)
        ph.pop("payload_samples")
        self.result["overload"] = P.overload_summary(ph, cap, n, fps)

    # --- all of it ----------------------------------------------------------------------------

    def run(self, stack: ExitStack) -> None:
        self.attempt("limit", self.limit)  # first: nothing else runs yet (no RTSP server, no redis)
        try:
            self.redis_server, self.cams = start_services(stack, self.args, self.clips, self.workdir)
        except Exception as exc:  # (a port taken meanwhile, a mount the RTSP server refuses): the limit is kept
            self.result["errors"]["services"] = f"{type(exc).__name__}: {exc}"[:2000]
            _say(f"redis-server or the RTSP server did not start: {exc}")
            return
        self.attempt("bare", self.bare)
        self.attempt("classifiers", self.classifiers)
        self.bare_out = None
        self.attempt("tracking", self.tracking)
        self.attempt("ultralytics", self.ultralytics)
        self.attempt("decode", self.decode)
        self.graph_phases()
        self.attempt("limit", self.limit_again)  # Ray stopped: nothing else runs again
        self.attempt("publish", self.publish)
