"""Ray-free measurements for `percept bench` (the graph-running part is benchmarks/bench.py).

- `measure_bare`: the detector alone, in this process, on pre-decoded, pre-letterboxed frames at
  the configured batch size (the upper bound of the graph), and `measure_single_infer` (one frame,
  batch 1: the latency floor).
- `StreamTap`: reads the detection streams while a phase runs (XREAD BLOCK) and records when
  each entry became visible, so capture→XADD lag is measured from outside the graph.
- the publisher against `redis-benchmark`: benchmarks/publishing.py.
- `run_ultralytics`: `YOLO(model).predict(source=<.streams file>, stream=True)`; run it as
  ``python -m benchmarks.measure ultralytics …`` in a subprocess (a stream that hangs cannot block
  the bench), it prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .report import percentiles

CLIPS = ("traffic.mp4", "vtest.avi", "people.mp4")
# What percept's decoder sets for RTSP (pipeline/sources.py); the Ultralytics run gets the same.
RTSP_CAPTURE_OPTIONS = "rtsp_transport;tcp|analyzeduration;0|probesize;32"


# --- the bare model ------------------------------------------------------------------------------

def frame_shape(path: str | Path) -> tuple[int, int]:
    """(height, width) of a clip's frames."""
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        ok, image = cap.read()
    finally:
        cap.release()
    if not ok or image is None:
        raise RuntimeError(f"{path}: no frame could be read")
    return int(image.shape[0]), int(image.shape[1])


def load_frames(paths: Sequence[str | Path], *, per_clip: int = 8, stride: int = 7) -> list[np.ndarray]:
    """Decoded BGR frames from each clip (every ``stride``-th frame), in round-robin order."""
    import cv2

    per: list[list[np.ndarray]] = []
    for path in paths:
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        frames: list[np.ndarray] = []
        index = 0
        try:
            while len(frames) < per_clip:
                ok, image = cap.read()
                if not ok or image is None:
                    break
                if index % stride == 0:
                    frames.append(image)
                index += 1
        finally:
            cap.release()
        if frames:
            per.append(frames)
    out = [clip[i] for i in range(per_clip) for clip in per if i < len(clip)]
    if not out:
        raise RuntimeError(f"no frames could be decoded from {[str(p) for p in paths]}")
    return out


def measure_bare(detect_batch: Callable[[list[Any]], list[Any]], inputs: Sequence[Any], *, batch: int,
                 duration: float, warmup_batches: int = 2, what: str = "bare detector") -> dict[str, Any]:
    """Items per second of ``detect_batch`` (a detector's or a classifier's) on full batches of
    ``inputs`` (cycled) for ``duration``."""
    if not inputs:
        raise ValueError("no inputs")
    batch = max(1, batch)

    def take(i: int) -> list[Any]:
        return [inputs[(i * batch + k) % len(inputs)] for k in range(batch)]

    for i in range(warmup_batches):
        detect_batch(take(i))
    times: list[float] = []
    frames, i = 0, 0
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        out = detect_batch(take(i))
        times.append(time.perf_counter() - t0)
        errors = [o for o in out if isinstance(o, Exception)]
        if errors:
            raise RuntimeError(f"{what} failed: {errors[0]}")
        frames += batch
        i += 1
        if time.perf_counter() - start >= duration:
            break
    elapsed = time.perf_counter() - start
    return {"fps": frames / elapsed, "batch": batch, "frames": frames, "seconds": elapsed,
            "batch_ms": percentiles([t * 1000 for t in times])}


def measure_single_infer(detect_batch: Callable[[list[Any]], list[Any]], inputs: Sequence[Any], *,
                         duration: float) -> dict[str, Any]:
    """One frame at a time (batch 1): the time one inference takes, the floor of any latency."""
    r = measure_bare(detect_batch, inputs, batch=1, duration=duration)
    return {"ms_p50": r["batch_ms"]["p50"], "ms": r["batch_ms"], "fps": r["fps"], "frames": r["frames"]}


PAUSE_MS = (20.0, 80.0)  # frames 50 ms apart on average: the latency phase's ~20 fps into one detector


def measure_paused_infer(detect_batch: Callable[[list[Any]], list[Any]], inputs: Sequence[Any], *,
                         frames: int = 60, pause_ms: tuple[float, float] = PAUSE_MS, seed: int = 0) -> dict[str, Any]:
    """Batch 1 after an idle pause (uniform in ``pause_ms``, the same pauses every run), as frames
    reach the detector at half load: the network starts cold. On the bench's 2-core VMs an
    OpenVINO inference after a pause takes longer than back to back (Xeon VM, 640x384, 2 threads:
    9.1 ms back to back, 10.5 after 30 ms, 12 after 50-100, 14.8 after 200; one thread 14.6 → 21.8;
    a numpy matrix product of the same length +4-7 %)."""
    rng = random.Random(seed)
    for inp in inputs[:2]:
        detect_batch([inp])
    times: list[float] = []
    for i in range(frames):
        time.sleep(rng.uniform(*pause_ms) / 1000)  # the pause is the measure: the network idle before the frame
        t0 = time.perf_counter()
        out = detect_batch([inputs[i % len(inputs)]])
        times.append(time.perf_counter() - t0)
        if isinstance(out[0], Exception):
            raise RuntimeError(f"bare detector failed: {out[0]}")
    ms = percentiles([t * 1000 for t in times])
    return {"ms_p50": ms["p50"], "ms": ms, "frames": frames, "pause_ms": list(pause_ms)}


# --- reading the streams from outside ------------------------------------------------------------

@dataclass
class TapEntry:
    stream: str
    entry_id: str
    seen: float  # wall time when XREAD returned it
    raw: bytes  # the json field, parsed later (keeps the reader cheap)


class StreamTap:
    """A thread doing ``XREAD BLOCK`` on the given streams from "now" on, recording each entry
    with the time it became visible (≈ its XADD time on loopback); ``seen`` counts them. ``keep``:
    at most this many, a uniform sample of all seen (reservoir, unordered; the soak: ~2.4 KB an
    entry for hours); None (the bench's windows): every entry, in order."""

    def __init__(self, client: Any, streams: Sequence[str], *, block_ms: int = 200, keep: int | None = None,
                 seed: int = 0):
        self.client = client
        self.streams = list(streams)
        self.block_ms = block_ms
        self.keep = keep
        self.entries: list[TapEntry] = []
        self.seen = 0
        self._rng = random.Random(seed)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-tap", daemon=True)

    def start(self) -> "StreamTap":
        self._ids = {s: "$" for s in self.streams}
        # Resolve "$" to the current last ids now, so entries added before the first XREAD count.
        for s in self.streams:
            last = self.client.xrevrange(s, count=1)
            if last:
                self._ids[s] = last[0][0].decode() if isinstance(last[0][0], bytes) else last[0][0]
            else:
                self._ids[s] = "0-0"
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                resp = self.client.xread(self._ids, count=1000, block=self.block_ms)
            except Exception:
                self.errors += 1
                time.sleep(0.1)
                continue
            now = time.time()
            for stream, entries in resp or []:
                name = stream.decode() if isinstance(stream, bytes) else stream
                for entry_id, fields in entries:
                    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    self._ids[name] = eid
                    self._record(TapEntry(name, eid, now, fields.get(b"json", b"{}")))

    def _record(self, entry: TapEntry) -> None:
        self.seen += 1
        if self.keep is None or len(self.entries) < self.keep:
            self.entries.append(entry)
        elif (slot := self._rng.randrange(self.seen)) < self.keep:  # (each of the ``seen`` kept with p = keep/seen)
            self.entries[slot] = entry

    def stop(self) -> list[TapEntry]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.entries

    @staticmethod
    def summarize(entries: Sequence[TapEntry], t0: float, t1: float) -> dict[str, Any]:
        """Latency (payload ``latency_ms.total``: capture → publish), lag (seen − frame_ts, s) and
        the per-stage breakdown of the entries seen in [t0, t1]."""
        totals, lags = [], []
        stages: dict[str, list[float]] = {}
        n = objects = classified = 0
        for e in entries:
            if not t0 <= e.seen <= t1:
                continue
            n += 1
            p = json.loads(e.raw)
            lat = p.get("latency_ms", {})
            if "total" in lat:
                totals.append(float(lat["total"]))
            for k, v in lat.items():
                stages.setdefault(k, []).append(float(v))
            if "total" in lat:  # after the stages: waiting for the frame before, the event loop, publishing
                known = sum(float(lat.get(k, 0.0)) for k in ("queue", "detect", "track", "classify"))
                stages.setdefault("other", []).append(float(lat["total"]) - known)
            lags.append(e.seen - float(p["frame_ts"]))
            objs = p.get("objects", [])
            objects += len(objs)
            classified += sum(1 for o in objs if o.get("attributes"))
        return {
            "entries": n,
            "objects_per_frame": objects / n if n else None,
            "classified_per_frame": classified / n if n else None,
            "latency_ms": percentiles(totals),
            "lag_s": percentiles(lags),
            "lag_max_s": max(lags) if lags else None,
            "stages_ms_p50": {k: percentiles(v, (50,))["p50"] for k, v in stages.items()},
            "stages_ms_p95": {k: percentiles(v, (95,))["p95"] for k, v in stages.items()},
        }


# --- Ultralytics' own multi-stream predict ------------------------------------------------------

def run_ultralytics(model: str, streams_file: str, *, imgsz: int, duration: float, warmup: float,
                    device: str | None = None, half: bool = False, conf: float = 0.25) -> dict[str, Any]:
    """What a user would otherwise write: ``YOLO(model).predict(source=<.streams>, stream=True)``.
    Counts results (one per stream per step) seen during [warmup, warmup + duration]."""
    from ultralytics import YOLO

    from pipeline.openvino_quiet import quiet_openvino

    quiet_openvino()  # (as the graph: no statistics sent from the OpenVINO it imports)
    t_load = time.perf_counter()
    yolo = YOLO(model, task="detect")
    kwargs: dict[str, Any] = {"imgsz": imgsz, "conf": conf, "verbose": False, "stream": True}
    if device:
        kwargs["device"] = device
    if half:
        kwargs["half"] = True
    n = max(1, sum(1 for line in Path(streams_file).read_text().splitlines() if line.strip()))
    start = time.perf_counter()
    out, first = steps_window(yolo.predict(source=streams_file, **kwargs), n, warmup=warmup, duration=duration)
    return {**out, "startup_s": (first or start) - t_load}


def steps_window(results: Any, n: int, *, warmup: float, duration: float,
                 clock: Callable[[], float] = time.perf_counter) -> tuple[dict[str, Any], float | None]:
    """Results/s of Ultralytics' multi-stream predict: one result per stream per step, in the
    streams' order. The window runs from the end of a step (``warmup`` after the first result)
    to the end of the first step ``duration`` later, and counts the results of the steps between
    (the step ending at its start ran before it; counted, one step too many each window); streams
    by their place (two cameras may share a URL). Also the first result's time."""
    per_stream: dict[str, int] = {}
    count = counted = 0
    t0 = t1 = first = None
    for k, res in enumerate(results):
        now = clock()
        if first is None:
            first = now
        step_end = k % n == n - 1
        if t0 is None:
            if step_end and now >= first + warmup:
                t0 = now
            continue
        count += 1
        key = f"{k % n}:{res.path}"
        per_stream[key] = per_stream.get(key, 0) + 1
        if step_end:
            t1, counted = now, count
            if now - t0 >= duration:
                break
    if t0 is None or t1 is None or t1 <= t0:
        raise RuntimeError("ultralytics produced no results in the window")
    return ({"fps": counted / (t1 - t0), "frames": counted, "seconds": t1 - t0, "streams": n,
             "per_stream_fps": {k: v / (t1 - t0) for k, v in per_stream.items()}}, first)


# --- subprocess entry point ----------------------------------------------------------------------

def _main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.measure")
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("ultralytics", help="YOLO.predict on a .streams file; prints one JSON line")
    u.add_argument("--model", required=True)
    u.add_argument("--streams", required=True)
    u.add_argument("--imgsz", type=int, default=640)
    u.add_argument("--duration", type=float, default=10)
    u.add_argument("--warmup", type=float, default=3)
    u.add_argument("--device")
    u.add_argument("--half", action="store_true")
    u.add_argument("--conf", type=float, default=0.25)
    args = p.parse_args(argv)
    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", RTSP_CAPTURE_OPTIONS)
    out = run_ultralytics(args.model, args.streams, imgsz=args.imgsz, duration=args.duration, warmup=args.warmup,
                          device=args.device, half=args.half, conf=args.conf)
    print("RESULT " + json.dumps(out), flush=True)
    os._exit(0)  # LoadStreams' reader threads may still sit in a blocking read


if __name__ == "__main__":
    sys.exit(_main())
