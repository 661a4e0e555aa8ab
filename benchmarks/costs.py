"""What the service adds around its models, measured by `percept bench`:

- `phase_tracking` (no Ray) — the tracker and the event engine (a counting line and a zone, as a
  user would draw them) on the detections of consecutive frames of traffic.mp4 and vtest.avi
  sampled at the demo's 4 fps: CPU ms per frame of each (the calling thread's CPU: both are
  single-threaded), against the detector's CPU ms per frame (every thread of this process) on the
  same frames. Issue 11's bound: tracker + events ≤ 10 % of the detector.
- `MjpegWatcher` — one client reading a camera's ``/cameras/{id}/live`` for the bench's view
  phases (`view_summary`): the detector-only graph with the view off, and with one watcher.
  With nobody watching the view must cost nothing measurable (its fps within noise of the view
  off); with one watcher its CPU is reported, per process.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

from pipeline.config import PerceptConfig

CLIPS = {"traffic.mp4": "vehicle", "vtest.avi": "pedestrian"}
SAMPLED_FPS = 4.0  # the demo's cameras
# Relative geometry, the same on both clips: a counting line across the lower half, a central zone.
LINES = {"count": [[0.02, 0.65], [0.98, 0.65]]}
ZONES = {"middle": [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]}


# --- tracker and events ------------------------------------------------------------------------

def sampled_frames(path: Path, *, fps: float, limit: int) -> tuple[list[Any], list[float]]:
    """Up to ``limit`` frames of ``path`` from its start, sampled at ``fps`` by their timestamps
    (every frame is decoded, as a camera's would be), with those timestamps in seconds."""
    import cv2

    from pipeline.sampling import FpsSampler

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    sampler = FpsSampler(fps)
    images, pts = [], []
    try:
        while len(images) < limit:
            ok, image = cap.read()
            if not ok or image is None:
                break
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000
            if sampler.accept(t):
                images.append(image)
                pts.append(t)
    finally:
        cap.release()
    return images, pts


def _detect_all(det: Any, images: list[Any], imgsz: int, batch: int) -> tuple[list[Any], float]:
    """Detections of every image, and the detector's CPU ms per frame (all threads)."""
    from pipeline.models import prepare_frame

    inputs = [prepare_frame(im, imgsz) for im in images]
    det.detect_batch(inputs[:batch])  # warm-up
    cpu = time.process_time()
    dets = [d for i in range(0, len(inputs), batch) for d in det.detect_batch(inputs[i: i + batch])]
    return dets, (time.process_time() - cpu) * 1000 / max(1, len(inputs))


def track_and_count(clip: str, dets: Sequence[Any], pts: Sequence[float], shape: tuple[int, int],
                    *, fps: float) -> dict[str, Any]:
    """One pass of the tracker and the event engine over a clip's detections: thread CPU ms of
    each, and what they produced (so a pass that did nothing is visible)."""
    from pipeline.config import TrackerConfig
    from pipeline.events import EventEngine
    from pipeline.schema import FrameMeta, FrameResult
    from pipeline.tracking import ObjectTracker

    tracker = ObjectTracker(TrackerConfig(), fps=fps)
    engine = EventEngine(clip, zones=ZONES, lines=LINES)
    h, w = shape
    t_track = t_events = 0.0
    events = tracked = 0
    for n, (d, t) in enumerate(zip(dets, pts)):
        c0 = time.thread_time()
        out = tracker.update(d, shape, ts=t)
        c1 = time.thread_time()
        events += len(engine.update(FrameResult(FrameMeta(clip, n, t, t, w, h), out, {}, {}), tracker.alive_ids()))
        engine.take_counts()
        c2 = time.thread_time()
        t_track, t_events = t_track + c1 - c0, t_events + c2 - c1
        tracked += sum(1 for i in out.track_ids if i is not None)
    return {"tracker_s": t_track, "events_s": t_events, "events": events, "tracked_objects": tracked}


def phase_tracking(cfg: PerceptConfig, clips: Sequence[Path], *, duration: float) -> dict[str, Any]:
    """Tracker + events vs the detector, CPU ms per frame, on the clips named in `CLIPS`."""
    from pipeline.backends import load_detector

    det = load_detector(cfg.detector, models_dir=cfg.models_dir)
    limit = int(min(160, max(24, duration * 4)))  # 6 to 40 s of each clip at 4 fps
    out: dict[str, Any] = {"fps": SAMPLED_FPS, "lines": LINES, "zones": ZONES, "clips": {}}
    totals = {"frames": 0, "detector_ms": 0.0, "tracker_s": 0.0, "events_s": 0.0}
    for path in clips:
        if path.name not in CLIPS:
            continue
        images, pts = sampled_frames(path, fps=SAMPLED_FPS, limit=limit)
        if not images:
            continue
        dets, det_ms = _detect_all(det, images, cfg.detector.imgsz, cfg.detector.batch.max_size)
        shape = images[0].shape[:2]
        passes, runs = [], 0
        cpu_end = time.thread_time() + 1.0  # repeat the passes for at least a second of CPU
        while runs < 3 or time.thread_time() < cpu_end:
            passes.append(track_and_count(path.stem, dets, pts, shape, fps=SAMPLED_FPS))
            runs += 1
        best = min(passes, key=lambda p: p["tracker_s"] + p["events_s"])  # least disturbed pass
        n = len(images)
        out["clips"][path.stem] = {
            "frames": n, "detector_cpu_ms_per_frame": det_ms, "passes": runs,
            "tracker_ms_per_frame": best["tracker_s"] * 1000 / n, "events_ms_per_frame": best["events_s"] * 1000 / n,
            "events": best["events"], "tracked_objects": best["tracked_objects"],
        }
        totals["frames"] += n
        totals["detector_ms"] += det_ms * n
        totals["tracker_s"] += best["tracker_s"]
        totals["events_s"] += best["events_s"]
    if not totals["frames"]:
        raise RuntimeError(f"none of {', '.join(CLIPS)} among the clips")
    n = totals["frames"]
    tracker_ms, events_ms = totals["tracker_s"] * 1000 / n, totals["events_s"] * 1000 / n
    out.update(frames=n, tracker_ms_per_frame=tracker_ms, events_ms_per_frame=events_ms,
               total_ms_per_frame=tracker_ms + events_ms, detector_cpu_ms_per_frame=totals["detector_ms"] / n,
               over_detector=(tracker_ms + events_ms) / (totals["detector_ms"] / n))
    return out


# --- the live view -----------------------------------------------------------------------------

class MjpegWatcher:
    """One client on ``/cameras/{camera}/live``: reads it as a browser would and counts the JPEG
    parts received (a view that sends nothing shows as 0 parts)."""

    def __init__(self, base_url: str, camera: str):
        self.url = urllib.parse.urlsplit(f"{base_url}/cameras/{urllib.parse.quote(camera)}/live")
        self.parts = 0
        self.bytes = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-mjpeg", daemon=True)
        self._t0 = self._t1 = 0.0

    def __enter__(self) -> "MjpegWatcher":
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._t1 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=10)
            try:
                conn.request("GET", self.url.path)
                resp = conn.getresponse()
                if resp.status != 200:
                    self.error = f"HTTP {resp.status}"
                    self._stop.wait(1.0)  # the camera is not up yet: ask again, as the page does
                    continue
                tail = b""
                while not self._stop.is_set():
                    chunk = resp.read1(65536)
                    if not chunk:
                        break
                    data = tail + chunk
                    self.parts += data.count(b"Content-Type: image/jpeg")
                    self.bytes += len(chunk)
                    tail = data[-32:]
                    tail = tail[tail.rfind(b"\n") + 1:] if b"\n" in tail else tail
            except OSError as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                self._stop.wait(1.0)
            finally:
                conn.close()

    def summary(self) -> dict[str, Any]:
        seconds = max(1e-9, (self._t1 or time.monotonic()) - self._t0)
        return {"parts": self.parts, "parts_per_s": self.parts / seconds, "kb_per_s": self.bytes / 1024 / seconds,
                "seconds": seconds, "error": self.error if not self.parts else None}


def _replica_cpu(phase: dict[str, Any]) -> dict[str, float]:
    """CPU % (of one core) of each Serve replica in a graph phase, by deployment."""
    out: dict[str, float] = {}
    for p in phase.get("processes") or []:
        if "ServeReplica" in p["name"] and p.get("cpu_pct") is not None:
            name = p["name"].split(":")[-1]
            out[name] = out.get(name, 0.0) + float(p["cpu_pct"])
    return out


def view_summary(idle: dict[str, Any] | None, off: dict[str, Any], watched: dict[str, Any],
                 watcher: dict[str, Any], *, view_fps: float) -> dict[str, Any]:
    """The view's cost: fps with the view on and nobody watching (``idle``: the detect-only
    phase) over fps with it off, and the CPU one watcher adds, per replica and in total."""
    base = idle or off
    cpu_watch = _replica_cpu(watched)
    return {
        "view_fps": view_fps,
        "off_fps": off["fps"],
        "idle_fps": idle["fps"] if idle else None,
        "idle_over_off": idle["fps"] / off["fps"] if idle and off["fps"] else None,
        "watched_fps": watched["fps"],
        "watched_over_idle": watched["fps"] / base["fps"] if base["fps"] else None,
        "watcher": watcher,
        "replica_cpu_pct": {"off": _replica_cpu(off), "idle": _replica_cpu(idle) if idle else None,
                            "watched": cpu_watch},
        # what the decoder and the API spent beyond what they spend per frame unwatched, at the
        # watched phase's fps: the view's own CPU (drawing, blurring, JPEG, serving), % of a core
        "watch_cpu_pct": _beyond(base, watched, ("decoder", "api")),
        "watch_decoder_cpu_pct": _beyond(base, watched, ("decoder",)),
    }


def _beyond(base: dict[str, Any], watched: dict[str, Any], names: Sequence[str]) -> float:
    per_frame = sum(_replica_cpu(base).get(n, 0.0) for n in names) / max(base["fps"], 1e-9)  # % per fps
    return sum(_replica_cpu(watched).get(n, 0.0) for n in names) - per_frame * watched["fps"]


def view_phases(g: Any, config_of: Any, *, duration: float, warmup: float,
                idle: dict[str, Any] | None) -> dict[str, Any]:
    """Two windows of the detector-only graph: the view off, then on with one `MjpegWatcher` on
    the first camera. ``config_of(prefix, view_enabled)`` gives each its config; ``idle``: the
    detect-only phase (view on, nobody watching) measured before, for the comparison."""
    off = g.phase(config_of("viewoff", False), duration=duration, warmup=warmup)
    cfg = config_of("viewwatch", True)
    watcher = MjpegWatcher(g.http_url, cfg.cameras[0].id)
    watched = g.phase(cfg, duration=duration, warmup=warmup, watcher=watcher)
    for ph in (off, watched):
        ph.pop("payload_samples", None)
    return view_summary(idle, off, watched, watcher.summary(), view_fps=cfg.view.fps)
