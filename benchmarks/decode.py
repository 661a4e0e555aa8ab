"""The bench's ``decode`` phase (Ray-free): what one camera's frames cost before the detector.

- `decoder_cpu` — each camera decoded for a few seconds in both ``decode`` modes (``all``:
  OpenCV decodes every frame; ``keyframes``: PyAV decodes the keyframes only), sampled at
  ``fps`` (below the RTSP cameras' keyframe rate, where ``keyframes`` is meant to be used). One
  subprocess per camera and mode, all cameras of a mode at once, each measuring its own CPU
  time after opening: CPU ms per second of video, frames yielded, keyframe rate.
- `decoder_cpu_files` — the same for ``all`` and ``reference`` (PyAV skips the frames no other
  frame depends on) on the clips as files at their own pace, sampled at `FILE_FPS`: the bench's
  RTSP cameras have no B-frames (x264 ``zerolatency``), two of the clips do.
- `frame_path` — one frame's way from the decoder to the detector on a clip: the bytes each
  step writes (tracemalloc's peak of new allocations), the copies of the frame they amount to,
  and the bytes that cross the object store (pickle protocol 5 with out-of-band buffers, as
  Ray ships numpy arrays: one copy into the store, read in place by the detector). Ultralytics'
  LetterBox is measured beside it (the path before issue 8).

``python -m benchmarks.decode cpu --url URL --mode all|reference|keyframes --fps F --seconds S`` is the
subprocess (prints one ``RESULT {json}`` line).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
MODES = ("all", "keyframes")  # on the RTSP cameras
FILE_MODES = ("all", "reference")  # on the clips
SAMPLED_FPS = 2.0  # below the bench cameras' keyframe rate (a keyframe every 10 frames at --rtsp-fps 30)
FILE_FPS = 5.0  # below the reference frames' rate of the B-frame clips (every other frame of 24-30 fps)


# --- decoder CPU per camera ---------------------------------------------------------------------

def measure_one(url: str, mode: str, *, fps: float, seconds: float) -> dict[str, Any]:
    """Decode one camera for ``seconds`` (after it opened) in this process: CPU, frames."""
    from pipeline.capture import open_capture
    from pipeline.source_types import is_file_url
    from pipeline.sources import VideoSource

    is_file = is_file_url(url)
    source = VideoSource("bench", lambda: open_capture("bench", url, decode=mode, fps=fps), fps=fps,
                         is_file=is_file, loop=is_file, realtime=True)
    frames = 0
    t0 = c0 = None
    timer = threading.Timer(seconds, source.stop)  # stops it between frames too (a file's keyframes are far apart)
    for _ in source.frames():
        if t0 is None:  # opened, first frame in: measure from here
            t0, c0 = time.monotonic(), time.process_time()
            timer.start()
            continue
        frames += 1
    timer.cancel()
    if t0 is None:
        raise RuntimeError(f"{mode}: no frame from {url}: {source.last_error}")
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    return {"mode": mode, "seconds": wall, "cpu_s": cpu, "cpu_ms_per_s": 1000 * cpu / wall,
            "cpu_pct_of_core": 100 * cpu / wall, "frames": frames, "fps": frames / wall,
            "decoded_per_s": source.frames_read / wall}


def decoder_cpu(urls: Sequence[str], names: Sequence[str], *, fps: float = SAMPLED_FPS, seconds: float = 6.0,
                timeout: float | None = None, modes: Sequence[str] = MODES) -> dict[str, Any]:
    """Per camera, ``all`` and each other mode (one subprocess each, a mode's cameras at once);
    totals and each mode's ratio to ``all`` (``<mode>_over_all``)."""
    per_camera: dict[str, dict[str, Any]] = {name: {"url_index": i} for i, name in enumerate(names)}
    timeout = timeout or seconds + 60
    for mode in modes:
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.decode", "cpu", "--url", url, "--mode", mode,
                                   "--fps", str(fps), "--seconds", str(seconds)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                  env=dict(os.environ, PYTHONPATH=str(REPO)))
                 for url in urls]
        for name, proc in zip(names, procs):
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                per_camera[name][mode] = {"error": f"no result within {timeout:.0f} s (killed)"}
                continue
            line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
            per_camera[name][mode] = (json.loads(line[len("RESULT "):]) if line else
                                      {"error": f"rc={proc.returncode}: {err.strip()[-500:]}"})
    # totals and ratios over the cameras measured in every mode: a camera whose subprocess failed
    # in one mode counted 0 there and in full in the other, and the ratio compared two sets
    complete = [c for c in per_camera.values() if all("cpu_ms_per_s" in c[m] for m in modes)]
    totals = {mode: sum(c[mode]["cpu_ms_per_s"] for c in complete) if complete else None for mode in modes}
    out: dict[str, Any] = {"sampled_fps": fps, "seconds": seconds, "cameras": per_camera, "total_cpu_ms_per_s": totals,
                           "cameras_in_totals": len(complete), "errors": failures(per_camera, modes)}
    for mode in modes[1:]:
        for cam in per_camera.values():
            a, k = cam["all"].get("cpu_ms_per_s"), cam[mode].get("cpu_ms_per_s")
            cam[f"{mode}_over_all"] = k / a if a and k is not None else None
        out[f"{mode}_over_all"] = totals[mode] / totals["all"] if totals["all"] else None
    return out


def failures(per_camera: dict[str, dict[str, Any]], modes: Sequence[str]) -> dict[str, str]:
    """``"camera mode"`` → why that subprocess gave no result."""
    return {f"{name} {mode}": str(cam[mode].get("error", "no result"))
            for name, cam in per_camera.items() for mode in modes if "cpu_ms_per_s" not in cam[mode]}


# --- one frame's copies and bytes ---------------------------------------------------------------

def _allocated(fn: Callable[[], Any]) -> tuple[Any, int, float]:
    """(result, peak bytes newly allocated while it ran, ms)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        out = fn()
        ms = (time.perf_counter() - t0) * 1000
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return out, peak, ms


def frame_path(clip: str, imgsz: int, *, frames: int = 20) -> dict[str, Any]:
    """Bytes written and copies of the frame per step, averaged over ``frames`` frames of ``clip``."""
    from dataclasses import replace

    from ultralytics.data.augment import LetterBox

    from pipeline.capture import open_capture
    from pipeline.frame_share import FrameLender
    from pipeline.models import prepare_frame

    cap = open_capture("bench", clip)
    names = ("decode_bgr", "letterbox", "object_store", "shared_memory", "ultralytics_letterbox")
    steps: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
    shipped = shipped_pixels = 0
    square = imgsz * imgsz * 3
    lender = FrameLender(max_slots=1)
    try:
        for _ in range(frames):
            if not cap.grab():
                break
            (_, image), b, ms = _allocated(cap.retrieve)
            steps["decode_bgr"].append((b, ms))
            inp, b, ms = _allocated(lambda image=image: prepare_frame(image, imgsz))
            steps["letterbox"].append((b, ms))
            buffers: list[pickle.PickleBuffer] = []
            t0 = time.perf_counter()
            in_band = pickle.dumps(inp, protocol=5, buffer_callback=buffers.append)
            oob = sum(buf.raw().nbytes for buf in buffers)  # what Ray copies into the object store
            steps["object_store"].append((oob, (time.perf_counter() - t0) * 1000))
            shipped_pixels = len(in_band) + oob
            t0 = time.perf_counter()  # the default (decoder.shared_memory): a copy into a slot, a handle pickled
            with lender.lend(inp.image) as handle:
                shipped = len(pickle.dumps(replace(inp, image=handle), protocol=5))
                steps["shared_memory"].append((inp.image.nbytes if handle is not inp.image else 0,
                                               (time.perf_counter() - t0) * 1000))
            _, b, ms = _allocated(lambda image=image: LetterBox(new_shape=(imgsz, imgsz), auto=False)(image=image))
            steps["ultralytics_letterbox"].append((b, ms))
    finally:
        cap.release()
        lender.close()
    if not steps["decode_bgr"]:
        raise RuntimeError(f"no frame decoded from {clip}")
    n = len(steps["decode_bgr"])
    frame_bytes = image.nbytes

    def summary(name: str, unit: int) -> dict[str, Any]:
        b = sum(x for x, _ in steps[name]) / n
        return {"bytes": b, "copies": round(b / unit, 2), "ms": sum(ms for _, ms in steps[name]) / n}

    out = {"clip": Path(clip).name, "frames": n, "frame_shape": list(image.shape), "imgsz": imgsz,
           **{name: summary(name, frame_bytes if name == "decode_bgr" else square) for name in names},
           "shipped_bytes": shipped, "shipped_bytes_pixels": shipped_pixels}
    # the path as the graph runs it by default: the frame is copied into shared memory, not
    # into the object store (``object_store``: what sharing off would cost instead)
    out["copies"] = sum(out[k]["copies"] for k in ("decode_bgr", "letterbox", "shared_memory"))
    out["bytes_written"] = sum(out[k]["bytes"] for k in ("decode_bgr", "letterbox", "shared_memory"))
    return out


def phase_decode(urls: Sequence[str], names: Sequence[str], clips: Sequence[str], *, imgsz: int,
                 seconds: float, errors: dict[str, str] | None = None) -> dict[str, Any]:
    """Decoder CPU per camera in both modes, on the clips as files with and without the
    non-reference frames, and the frame path on every clip (``copies`` and ``bytes_written``:
    their mean). A camera or clip that failed in a mode is left out of the totals and said in
    ``errors["decode"]`` (the bench's errors: the run fails), its numbers kept; without
    ``errors``, a RuntimeError saying it (the phase fails)."""
    paths = [frame_path(str(c), imgsz) for c in clips]
    out = {"decoder_cpu": decoder_cpu(urls, names, seconds=seconds),
          "decoder_cpu_files": decoder_cpu([str(c) for c in clips], [Path(c).name for c in clips], fps=FILE_FPS,
                                           seconds=seconds, modes=FILE_MODES),
          "frame_path": {"clips": paths, "copies": sum(p["copies"] for p in paths) / len(paths),
                         "bytes_written": sum(p["bytes_written"] for p in paths) / len(paths),
                         "shipped_bytes": max(p["shipped_bytes"] for p in paths),
                         "shipped_bytes_pixels": max(p["shipped_bytes_pixels"] for p in paths),
                         "ultralytics_letterbox_copies": sum(p["ultralytics_letterbox"]["copies"] for p in paths) / len(paths)}}
    failed = "; ".join(f"{part}: {cam}: {why[:300]}" for part in ("decoder_cpu", "decoder_cpu_files")
                       for cam, why in out[part]["errors"].items())
    if failed:
        if errors is None:
            raise RuntimeError(f"left out of the totals: {failed}")
        errors["decode"] = f"left out of the totals: {failed}"[:2000]
    return out


# --- the subprocess -----------------------------------------------------------------------------

def _main(argv: Sequence[str] | None = None) -> int:
    from pipeline.capture_av import SKIP_FRAME

    p = argparse.ArgumentParser(prog="python -m benchmarks.decode")
    sub = p.add_subparsers(dest="cmd", required=True)
    cpu = sub.add_parser("cpu", help="decode one camera for a while; print its CPU")
    cpu.add_argument("--url", required=True)
    cpu.add_argument("--mode", choices=("all", *SKIP_FRAME), required=True)
    cpu.add_argument("--fps", type=float, default=SAMPLED_FPS)
    cpu.add_argument("--seconds", type=float, default=6.0)
    path = sub.add_parser("frame-path", help="one frame's copies and bytes on a clip")
    path.add_argument("--clip", required=True)
    path.add_argument("--imgsz", type=int, default=640)
    args = p.parse_args(argv)
    if args.cmd == "cpu":
        out = measure_one(args.url, args.mode, fps=args.fps, seconds=args.seconds)
    else:
        out = frame_path(args.clip, args.imgsz)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
