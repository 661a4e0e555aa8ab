"""The bench phases that run without Ray (the graph's live in benchmarks/bench.py):

- `phase_limit` — OpenVINO's own ``benchmark_app`` on the detector's IR (throughput hint, then a
  short latency-hint run): what this model file can do on these cores, the ceiling of everything.
- `phase_bare` — the detector in this process on pre-letterboxed clip frames, plus the size of the
  `DetectorInput` that crosses Ray's object store (``frame_bytes``).
- `phase_classifiers` — each classifier deployment on real crops cut from the clips at its own
  crop size: ms per crop at batch 1 and at its batch size, crops per frame, ms per frame.
- `phase_ultralytics` — Ultralytics' multi-stream predict, in a subprocess with a timeout.
- `phase_publish` — the `Publisher` against ``redis-benchmark``.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.config import PerceptConfig
from pipeline.openvino_quiet import quiet_openvino

from . import measure as M
from . import publishing as P

REPO = Path(__file__).resolve().parents[1]


# --- limit: OpenVINO's benchmark_app ------------------------------------------------------------

def openvino_xml(weights: str) -> Path | None:
    """The IR of an OpenVINO model: the .xml itself, or the one .xml in an export folder."""
    p = Path(str(weights).rstrip("/")).expanduser()
    if p.suffix == ".xml" and p.is_file():
        return p
    if p.is_dir():
        xmls = sorted(p.glob("*.xml"))
        return xmls[0] if len(xmls) == 1 else None
    return None


def _static_shape(xml: Path, imgsz: int) -> str | None:
    """``-shape`` for a network with dynamic dimensions (batch → 1, the others → imgsz), else None."""
    quiet_openvino()
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    if not model.inputs or not model.inputs[0].partial_shape.is_dynamic:
        return None
    dims = [str(d.get_length()) if d.is_static else ("1" if i == 0 else str(imgsz))
            for i, d in enumerate(model.inputs[0].partial_shape)]
    return "[" + ",".join(dims) + "]"


_BENCHMARK_APP = ("import sys; from pipeline.openvino_quiet import quiet_openvino; quiet_openvino(); "
                  "from openvino.tools.benchmark.main import main; sys.argv[0] = 'benchmark_app'; sys.exit(main())")


def benchmark_app(xml: Path, *, hint: str, seconds: float, shape: str | None = None,
                  timeout: float | None = None) -> dict[str, Any]:
    """One ``benchmark_app -d CPU -hint <hint>`` run: throughput (fps), latency percentiles (ms)."""
    exe = Path(sys.executable).parent / "benchmark_app"
    if not exe.exists():
        raise RuntimeError(f"{exe} is missing (it ships with the openvino package)")
    cmd = [str(exe), "-m", str(xml), "-d", "CPU", "-hint", hint, "-t", str(max(1, round(seconds)))]
    if shape:
        cmd += ["-shape", shape]
    timeout = timeout or seconds + 90
    try:  # (its own entry point, after OpenVINO's usage statistics are declined: `quiet_openvino`)
        out = subprocess.run([sys.executable, "-c", _BENCHMARK_APP, *cmd[1:]], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"benchmark_app did not finish within {timeout:.0f} s (killed)") from None
    text = out.stdout + "\n" + out.stderr
    fps = re.search(r"Throughput:\s*([0-9.]+)\s*FPS", text)
    if out.returncode != 0 or fps is None:
        raise RuntimeError(f"benchmark_app failed (rc={out.returncode}): {text.strip()[-800:]}")

    def number(pattern: str) -> float | None:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else None

    requests = re.search(r"(\d+) inference requests?", text)
    return {"command": " ".join(cmd), "hint": hint, "fps": float(fps.group(1)),
            "latency_median_ms": number(r"Median:\s*([0-9.]+)\s*ms"),
            "latency_average_ms": number(r"Average:\s*([0-9.]+)\s*ms"),
            "iterations": number(r"Count:\s*([0-9]+)\s*iterations"),
            "infer_requests": int(requests.group(1)) if requests else None}


def phase_limit(weights: str, *, imgsz: int, seconds: float) -> dict[str, Any]:
    """OpenVINO's throughput-mode fps for the detector's model file (and a short latency-hint run
    for its median latency); a model that is not OpenVINO IR is skipped (fps None)."""
    xml = openvino_xml(weights)
    if xml is None:
        return {"skipped": "not an OpenVINO model", "model": weights, "fps": None}
    shape = _static_shape(xml, imgsz)
    throughput = benchmark_app(xml, hint="throughput", seconds=seconds, shape=shape)
    latency = benchmark_app(xml, hint="latency", seconds=max(2.0, seconds / 2), shape=shape)
    return {"model": str(xml), "command": throughput["command"], "fps": throughput["fps"],
            "throughput": throughput, "latency": latency,
            "latency_median_ms": latency["latency_median_ms"], "latency_fps": latency["fps"]}


def phase_limit_rect(weights: str, *, imgsz: int, clips: list[Path], seconds: float) -> dict[str, Any]:
    """The same limit for what the detector runs with ``rect``: benchmark_app's throughput-mode fps
    on the same IR re-shaped to each camera's rectangle (`pipeline.backends.openvino_export`),
    combined over the cameras (each camera an equal share of the frames)."""
    import tempfile

    quiet_openvino()
    import openvino as ov

    from pipeline.backends.openvino_export import crop_window, reshape_export

    xml = openvino_xml(weights)
    if xml is None:
        return {"skipped": "not an OpenVINO model", "model": weights, "fps": None}
    sizes = [crop_window(M.frame_shape(clip), imgsz)[2:] for clip in clips]  # one clip per camera
    per_size: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="percept-limit-") as tmp:
        for h, w in sorted(set(sizes)):
            model = reshape_export(ov.Core().read_model(str(xml)), (h, w))
            path = Path(tmp) / f"rect_{h}x{w}.xml"
            ov.save_model(model, str(path), compress_to_fp16=False)
            per_size[f"{w}x{h}"] = benchmark_app(path, hint="throughput", seconds=seconds)["fps"]
    fps = len(sizes) / sum(1 / per_size[f"{w}x{h}"] for h, w in sizes)
    return {"model": str(xml), "fps": round(fps, 1), "fps_by_size": per_size,
            "cameras": [f"{w}x{h}" for h, w in sizes]}


# --- bare: the detector in this process ---------------------------------------------------------

def frame_bytes(inp: Any) -> dict[str, int]:
    """What one `DetectorInput` costs to ship: its image, the pickle (protocol 5, in-band as a
    plain ``pickle.dumps``) and, as Ray ships numpy arrays, the in-band part beside out-of-band buffers."""
    buffers: list[pickle.PickleBuffer] = []
    in_band = pickle.dumps(inp, protocol=5, buffer_callback=buffers.append)
    return {"image_nbytes": int(inp.image.nbytes), "pickled_bytes": len(pickle.dumps(inp, protocol=5)),
            "ray_in_band_bytes": len(in_band), "ray_out_of_band_buffers": len(buffers),
            "ray_out_of_band_bytes": int(sum(b.raw().nbytes for b in buffers))}


def phase_bare(cfg: PerceptConfig, clips: list[Path], duration: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The detector alone (same weights, imgsz, batch, threads) on pre-letterboxed clip frames.
    Returns the numbers and, for the later phases, the frames, their detections and payloads."""
    from pipeline.backends import load_detector
    from pipeline.models import prepare_frame
    from pipeline.schema import FrameMeta, FrameResult

    det = load_detector(cfg.detector, models_dir=cfg.models_dir)
    frames = M.load_frames(clips, per_clip=8)
    inputs = [prepare_frame(f, cfg.detector.imgsz) for f in frames]
    batch = cfg.detector.batch.max_size
    det.detect_batch(inputs)  # every frame size once: compiled (in the background) before anything is timed
    getattr(det, "wait_compiling", lambda: True)()
    single = M.measure_single_infer(det.detect_batch, inputs, duration=max(3.0, duration / 3))
    paused = M.measure_paused_infer(det.detect_batch, inputs)
    full = M.measure_bare(det.detect_batch, inputs, batch=batch, duration=duration)
    dets = [d for i in range(0, len(inputs), batch) for d in det.detect_batch(inputs[i: i + batch])]
    samples = []
    for i, (inp, d) in enumerate(zip(inputs, dets)):  # payloads for the publish phase if e2e is skipped
        if not isinstance(d, Exception):
            h, w = inp.orig_shape
            samples.append(FrameResult(FrameMeta("bare", i, time.time(), 0.0, w, h), d,
                                       {"detector": det.name, "classifiers": {}},
                                       {"decode": 1.0, "queue": 1.0, "detect": 10.0, "classify": 0.0, "total": 12.0}))
    out = {"fps": full["fps"], "batch": batch, "batch_ms": full["batch_ms"], "frames": full["frames"],
           "seconds": full["seconds"], "batch1_fps": single["fps"], "single_infer_ms": single["ms"],
           "single_infer_paused_ms": paused["ms"], "single_infer_pause_ms": paused["pause_ms"],
           "device": det.device, "half": det.half, "frame_bytes": frame_bytes(inputs[0]),
           "threads": cfg.detector.threads or max(1, round(cfg.detector.num_cpus))}
    del det
    gc.collect()
    return out, {"frames": frames, "detections": dets, "samples": samples}


# --- classifiers: ms per crop, crops per frame --------------------------------------------------

def _chosen(route: Any, dets: Any, category: str) -> tuple[list[int], list[int]]:
    """(objects of the category it is on, those it classifies: big enough, top max_per_frame by
    score), as `pipeline.classify.CropClassification` picks them."""
    cfg = route.cfg
    on = [i for i in dets.indices_of(category)
          if (cfg.on is None or dets.labels[i] in cfg.on) and dets.labels[i] not in (cfg.not_on or ())]
    fit = [i for i in on if route.too_small(dets.xyxy[i]) is None]
    return on, sorted(fit, key=lambda i: -dets.scores[i])[: cfg.max_per_frame]


def _crops(route: Any, frames: Sequence[np.ndarray], dets: Sequence[Any], category: str) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Crops it would get from these frames, and per-frame counts; when the clips hold none of
    its objects, crops of the frames' centres stand in (for timing only)."""
    from pipeline.models import prepare_crop

    def cut(image: np.ndarray, box: Any) -> np.ndarray:  # as the decoder cuts them (its card's fit too)
        return prepare_crop(image, box, route.size, context=route.crop_context, fit=route.crop_fit)

    chosen, fallback, n_on = [], [], 0
    for image, d in zip(frames, dets):
        if isinstance(d, Exception):
            continue
        on, picked = _chosen(route, d, category)
        n_on += len(on)
        chosen += [cut(image, d.xyxy[i]) for i in picked]
        fallback += [cut(image, d.xyxy[i]) for i in on[:4]]
    n = max(1, sum(not isinstance(d, Exception) for d in dets))
    counts = {"frames": n, "objects_per_frame": n_on / n, "crops_per_frame": len(chosen) / n}
    crops, source = chosen, "objects it classifies"
    if not crops and fallback:
        crops, source = fallback, "objects of its labels below its minimum size"
    if not crops:
        h, w = frames[0].shape[:2]
        centre = (w * 0.4, h * 0.35, w * 0.6, h * 0.65)
        crops = [cut(f, centre) for f in frames[:8]]
        source = "frame centres (no objects of its labels in the clips)"
    return crops, {**counts, "crops_source": source, "crops_measured": len(crops)}


def classifier_cost(section: Any, frames: Sequence[np.ndarray], dets: Sequence[Any], *, models_dir: str | None,
                    seconds: float) -> dict[str, Any]:
    """One classifier deployment in this process: ms per crop at batch 1 and at its batch size,
    crops per frame of its category on the clips, and so ms per frame (at its batch size)."""
    from pipeline.backends import load_classifier
    from pipeline.classify import ClassifierRoute

    clf = load_classifier(section.cfg, models_dir=models_dir, field=section.field)
    try:
        route = ClassifierRoute(classify=None, cfg=section.cfg, name=section.deployment,  # type: ignore[arg-type]
                                crop_size=tuple(clf.crop_size), crop_context=clf.crop_context, min_size=clf.min_size,
                                crop_fit=getattr(clf, "crop_fit", "context"))
        crops, counts = _crops(route, frames, dets, section.category)
        batch = section.cfg.batch.max_size
        b1 = M.measure_bare(clf.classify_batch, crops, batch=1, duration=seconds, what=section.deployment)
        bn = M.measure_bare(clf.classify_batch, crops, batch=batch, duration=seconds, what=section.deployment)
    finally:
        del clf
        gc.collect()
    per_crop_b1, per_crop = 1000 / b1["fps"], 1000 / bn["fps"]
    return {"category": section.category, "weights": section.cfg.weights, "crop_size": list(route.size),
            "batch": batch, "ms_per_crop_b1": per_crop_b1, "ms_per_crop_batch": per_crop,
            **counts, "ms_per_frame": per_crop * counts["crops_per_frame"],
            "ms_per_frame_b1": per_crop_b1 * counts["crops_per_frame"]}


def phase_classifiers(cfg: PerceptConfig, frames: Sequence[np.ndarray], dets: Sequence[Any], *,
                      seconds: float) -> dict[str, dict[str, Any]]:
    """`classifier_cost` of every classifier deployment of the config, by deployment name."""
    return {s.deployment: classifier_cost(s, frames, dets, models_dir=cfg.models_dir, seconds=seconds)
            for s in cfg.classifier_sections()}


# --- Ultralytics and the publisher --------------------------------------------------------------

# Ray starts every replica at this niceness (RAY_worker_niceness): Ultralytics' loop runs at it
# too, so both stand in the same order against the loopback cameras and Redis
REPLICA_NICE = int(os.environ.get("RAY_worker_niceness", "15"))


def phase_ultralytics(model: str, urls: list[str], cfg: PerceptConfig, *, duration: float, warmup: float,
                      workdir: Path) -> dict[str, Any]:
    from pipeline.models import choose_device

    streams = workdir / "bench.streams"
    streams.write_text("\n".join(urls) + "\n")
    cmd = [sys.executable, "-m", "benchmarks.measure", "ultralytics", "--model", model, "--streams", str(streams),
           "--imgsz", str(cfg.detector.imgsz), "--duration", str(duration), "--warmup", str(warmup),
           "--conf", str(cfg.detector.conf)]
    if cfg.detector.device != "auto":
        cmd += ["--device", cfg.detector.device]
    _, half = choose_device(cfg.detector.device, cfg.detector.half)
    if half:
        cmd += ["--half"]
    env = dict(os.environ, OPENCV_FFMPEG_CAPTURE_OPTIONS=M.RTSP_CAPTURE_OPTIONS)
    timeout = warmup + duration + 120
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
                             preexec_fn=lambda: os.nice(REPLICA_NICE))
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"ultralytics predict did not finish within {timeout:.0f} s (killed)") from None
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            res.update(cameras=len(urls), nice=REPLICA_NICE)
            return res
    raise RuntimeError(f"ultralytics predict failed (rc={out.returncode}): {out.stderr.strip()[-800:]}")


def median_index(values: list[float | None]) -> int:
    """The index of the median of the values that are not None (the lower one of two); 0 if
    all are None. A round that did not flush counts neither as the worst nor as the best."""
    measured = sorted((v, i) for i, v in enumerate(values) if v is not None)
    return measured[(len(measured) - 1) // 2][1] if measured else 0


def phase_publish(redis_server: Any, samples: list[Any], *, n: int, rounds: int = 3) -> dict[str, Any]:
    """The publisher and redis-benchmark sending the same XADD on the same server, one after the
    other, ``rounds`` times: ``publisher`` and ``redis_benchmark`` are the round whose ratio is the
    median (p5: on this shared VM one run moves by ±15 %, while a pair seconds apart shares most of
    its noise)."""
    client = redis_server.client()
    pairs = []
    for _ in range(rounds):
        pub = P.measure_publisher(client, samples, n=n)
        size = int(round(pub["payload_bytes_mean"]))
        rb = P.redis_benchmark_xadd(redis_server.port, payload_bytes=size, n=n, clients=1, pipeline=pub["batch"],
                                    password=redis_server.password)
        pairs.append((pub, rb))
    ratios = [pub["entries_per_s"] / rb["rps"] if pub["entries_per_s"] and rb["rps"] else None for pub, rb in pairs]
    pub, rb = pairs[median_index(ratios)]
    rb_default = P.redis_benchmark_xadd(redis_server.port, payload_bytes=size, n=n, clients=50, pipeline=16,
                                        password=redis_server.password, key="benchrb50")
    return {"publisher": pub, "redis_benchmark": rb, "redis_benchmark_50_clients": rb_default,
            "rounds": [{"publisher_entries_per_s": p["entries_per_s"], "redis_benchmark_rps": r["rps"], "ratio": x}
                       for (p, r), x in zip(pairs, ratios)]}
