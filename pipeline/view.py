"""The live view's images: what the decoder that owns a camera draws and encodes while someone
watches it (Ray-free; `deployments/live.py` serves them).

Flow (keys in `StreamKeys`): the HTTP ingress marks a camera watched by setting
``<prefix>:view:want:<camera>`` with a short TTL (``view.watch_ttl_s``) on every snapshot or MJPEG
poll. The conductor offers each published frame to its `CameraView` (`offer`: a few comparisons on
the event loop). Once a second the view looks whether the camera is watched (``EXISTS``, on the
replica's view thread); only while it is, at most ``view.fps`` times a second, a view thread blurs
(`pipeline/privacy.py`), scales to ``view.width``, draws (`annotate`) and encodes (`encode_jpeg`)
the frame and ``SET``s it to ``<prefix>:view:jpeg:<camera>`` with a short TTL. Nobody watching:
nothing is drawn or encoded. A frame offered while the camera's previous one is still being drawn
is skipped (counted in ``skipped``), and the view's threads run at a lower CPU priority (10 nice values
below the rest of the replica, at most 19): the view never queues and yields the CPU to the cameras. Frames reach
the view only from the decoder's memory, never through Redis streams.

Each JPEG carries a comment segment ``percept camera=<id> seq=<seq> ts=<capture time>`` naming
the frame it shows (`jpeg_comment`).
"""

from __future__ import annotations

import logging
import math
import struct
import time
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .config import CameraConfig
from .config_view import ViewConfig
from .geometry import Geometry, GeometryError, resolve_geometry
from .lease import FENCED_SET
from .priority import lower_thread_priority
from .privacy import PrivacyUnavailable
from .schema import FrameResult
from .streams import StreamKeys

log = logging.getLogger("percept.view")

CHECK_EVERY_S = 1.0  # how often a camera's view looks whether someone watches
VIEW_NICE = 10  # the view's threads run this many nice values below the replica (at most 19): the cameras come first
PALETTE = {  # BGR per category; other categories get a colour from their name
    "vehicle": (0, 170, 255),
    "pedestrian": (60, 220, 60),
    "sign": (255, 110, 30),
    "face": (200, 80, 255),
}
ZONE_COLOUR = (255, 220, 0)
LINE_COLOUR = (40, 40, 255)
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


def colour_of(category: str) -> tuple[int, int, int]:
    if category in PALETTE:
        return PALETTE[category]
    h = zlib.crc32(category.encode())
    return (64 + h % 192, 64 + (h >> 8) % 192, 64 + (h >> 16) % 192)


def attribute_words(attributes: Mapping[str, Any]) -> list[str]:
    """Classifier answers, compactly: a label (``white``, ``van``) or the name of a yes/no
    attribute that holds (``has_bag``); colours first, as one says them (``white van``)."""
    words = []
    for name, value in sorted(attributes.items(), key=lambda kv: kv[0] not in ("color", "colour")):
        if not isinstance(value, Mapping):
            continue
        if "label" in value:
            words.append(str(value["label"]).replace("_", " "))
        elif value.get("value") is True:
            words.append(name)
    return words


def object_label(label: str, track_id: int | None, score: float, attributes: Mapping[str, Any]) -> str:
    """``car #12 0.87 white van``"""
    parts = [label] + ([f"#{track_id}"] if track_id is not None else []) + [f"{score:.2f}"]
    return " ".join(parts + attribute_words(attributes)[:4])


def fit_width(image: np.ndarray, width: int) -> np.ndarray:
    """``image`` scaled down to ``width`` (aspect kept); narrower images are returned as they are."""
    import cv2

    h, w = image.shape[:2]
    if w <= width:
        return image
    return cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def _text(image: np.ndarray, text: str, org: tuple[int, int], colour: tuple[int, int, int], scale: float) -> None:
    """Text on a filled box of ``colour`` (dark or light text, whichever reads), bottom-left at ``org``."""
    import cv2

    thick = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
    x = int(min(max(org[0], 0), max(0, image.shape[1] - tw - 2)))
    y = int(min(max(org[1], th + base + 2), image.shape[0] - 1))
    cv2.rectangle(image, (x, y - th - base - 2), (x + tw + 2, y), colour, -1)
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    cv2.putText(image, text, (x + 1, y - base - 1), FONT, scale, ink, thick, cv2.LINE_AA)


def _draw_geometry(out: np.ndarray, result: FrameResult, camera: CameraConfig, s: float, scale: float,
                   geo: Geometry | None) -> None:
    import cv2

    meta = result.meta
    try:
        if geo is None or (geo.width, geo.height) != (meta.width, meta.height):
            geo = resolve_geometry(camera.zones, camera.lines, camera.anchor, meta.width, meta.height)
    except GeometryError:
        return  # the conductor reports it; the view just leaves zones out
    thick = max(1, round(2 * scale))
    for name, poly in geo.zones.items():
        pts = np.round(poly * s).astype(np.int32)
        x, y, w, h = cv2.boundingRect(pts)
        roi = out[y:y + h, x:x + w]
        if roi.size:
            fill = roi.copy()
            cv2.fillPoly(fill, [pts - (x, y)], ZONE_COLOUR)
            cv2.addWeighted(fill, 0.18, roi, 0.82, 0, dst=roi)
        cv2.polylines(out, [pts], True, ZONE_COLOUR, thick, cv2.LINE_AA)
        _text(out, name, (int(pts[:, 0].min()) + 2, int(pts[:, 1].min()) + int(24 * scale)), ZONE_COLOUR, 0.5 * scale)
    for name, seg in geo.lines.items():
        (x1, y1), (x2, y2) = seg * s
        cv2.line(out, (round(x1), round(y1)), (round(x2), round(y2)), LINE_COLOUR, thick + 1, cv2.LINE_AA)
        dx, dy = x2 - x1, y2 - y1
        norm = math.hypot(dx, dy) or 1.0
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        tip = (round(mx + dy / norm * 28 * scale), round(my - dx / norm * 28 * scale))  # towards "in" (left of 1→2)
        cv2.arrowedLine(out, (round(mx), round(my)), tip, LINE_COLOUR, thick, cv2.LINE_AA, tipLength=0.35)
        _text(out, f"{name} in", tip, LINE_COLOUR, 0.45 * scale)


def annotate(image: np.ndarray, result: FrameResult, camera: CameraConfig, geometry: Geometry | None = None) -> np.ndarray:
    """A copy of ``image`` (the frame, possibly scaled) with zones, lines, boxes and their labels
    (label, track id, score, classifier answers) and a header (camera, seq, capture time).
    ``geometry``: the zones and lines the camera's events were judged by on this frame (pixel
    ones scaled after a change of resolution); else the camera's, resolved for the frame."""
    import cv2

    out = image.copy()
    s = out.shape[1] / max(1, result.meta.width)  # frame pixels → image pixels
    scale = max(1.0, out.shape[1] / 960)  # text and lines grow with large images, stay legible on small ones
    _draw_geometry(out, result, camera, s, scale, geometry)
    objects = result.objects
    thick = max(1, round(2 * scale))
    reach = 4.0 * max(out.shape[:2])  # (a box far beyond the frame, or not finite, is drawn at its edge: one lost the frame)
    boxes = np.clip(np.nan_to_num(np.asarray(objects.xyxy, np.float64) * s), -reach, reach)
    for i in range(len(objects)):
        colour = colour_of(objects.categories[i])
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        label = object_label(objects.labels[i], objects.track_ids[i], float(objects.scores[i]), objects.attributes[i])
        _text(out, label, (x1, y1 - 1 if y1 > 18 * scale else y2 + int(18 * scale)), colour, 0.45 * scale)
    stamp = time.strftime("%H:%M:%S", time.localtime(result.meta.frame_ts))
    _text(out, f"{result.meta.camera}  #{result.meta.seq}  {stamp}  {len(objects)} objects", (4, int(22 * scale)),
          (32, 32, 32), 0.5 * scale)
    return out


def encode_jpeg(image: np.ndarray, quality: int = 80, comment: str | None = None) -> bytes:
    """JPEG bytes; ``comment`` goes into a COM segment right after the start marker."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    data = buf.tobytes()
    if comment:
        text = comment.encode()[:65000]
        data = data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
    return data


def jpeg_comment(data: bytes) -> str | None:
    """The COM segment `encode_jpeg` wrote (None when the JPEG starts without one)."""
    if len(data) < 6 or data[2:4] != b"\xff\xfe":
        return None
    (length,) = struct.unpack(">H", data[4:6])
    return data[6:4 + length].decode(errors="replace")


def _lower_priority() -> None:
    """A view thread yields the CPU to the cameras: `VIEW_NICE` below its replica."""
    lower_thread_priority(VIEW_NICE, what="a live view thread")


class ViewHub:
    """A decoder replica's view: its threads, its blurrer, one `CameraView` per camera."""

    def __init__(self, cfg: ViewConfig, client: Any, keys: StreamKeys, *, blurrer: Any = None, workers: int = 2,
                 fence_of: Callable[[str], Any] | None = None):
        self.cfg = cfg
        self.client = client
        self.keys = keys
        self.blurrer = blurrer  # pipeline.privacy.Blurrer, or None
        # camera → its lease's Fence (Publisher.fence_of): a replica that lost a camera's lease
        # writes no more of its JPEGs (checked by Redis in the write, like the camera's results)
        self.fence_of = fence_of
        self._fenced_set = client.register_script(FENCED_SET)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="view", initializer=_lower_priority)

    @classmethod
    def from_config(cls, config: Any, client: Any, keys: StreamKeys, *,
                    fence_of: Callable[[str], Any] | None = None) -> ViewHub | None:
        """The hub a decoder replica runs for ``config`` (a PerceptConfig): None when ``view`` is
        off; with the blurrer ``privacy`` asks for (its models load here: call it off the loop)."""
        from .privacy import Blurrer

        if not config.view.enabled:
            return None
        blurrer = Blurrer.from_config(config.privacy, config.models_dir)
        return cls(config.view, client, keys, blurrer=blurrer or None, fence_of=fence_of)

    def camera(self, camera_id: str) -> CameraView:
        return CameraView(self, camera_id)

    def write_jpeg(self, camera_id: str, jpeg: bytes, ttl_s: float) -> bool:
        """SET the camera's view JPEG; False when its lease is not ours (nothing written)."""
        key, px = self.keys.view_jpeg(camera_id), int(ttl_s * 1000)
        fence = self.fence_of(camera_id) if self.fence_of is not None else None
        if fence is None:
            self.client.set(key, jpeg, px=px)
            return True
        if fence.released:
            return False
        return bool(self._fenced_set(keys=[fence.key, key], args=[fence.token, jpeg, px]))

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class CameraView:
    """One camera's view. `offer` is called for every published frame, on the event loop."""

    def __init__(self, hub: ViewHub, camera_id: str):
        self.hub = hub
        self.camera_id = camera_id
        self.watched = False
        self.rendered = 0  # JPEGs written
        self.skipped = 0  # frames offered while the previous one was still being drawn
        self.fenced = 0  # JPEGs refused: the camera's lease is not ours
        self.render_ms: float | None = None  # moving average
        self._period = 1.0 / hub.cfg.fps
        self._checked_at = -math.inf
        self._checking = False
        self._busy = False
        self._refused = False  # a frame refused by the blurrer (`PrivacyUnavailable`) said so once
        self._due = -math.inf
        self._last_offer: float | None = None
        self._interval: float | None = None  # moving average of the time between offered frames

    def offer(self, image: np.ndarray, result: FrameResult, camera: CameraConfig,
              geometry: Geometry | None = None) -> None:
        """Hands the frame to a view thread when someone watches and one is due; never blocks,
        never raises. ``image`` (the full-resolution frame) is only read, never changed;
        ``geometry``: what the frame's events were judged by (`annotate`)."""
        try:
            now = time.monotonic()
            if self._last_offer is not None:
                gap = now - self._last_offer
                self._interval = gap if self._interval is None else 0.8 * self._interval + 0.2 * gap
            self._last_offer = now
            drawn = self._busy or self.watched  # else this frame is drawn if its check finds a viewer
            if not self._checking and now - self._checked_at >= CHECK_EVERY_S:
                self._checking, self._checked_at = True, now
                if not drawn:  # a slow camera's first image is the frame that found it watched
                    self._busy = True
                    self._due = now + self._period / 2
                    self.hub.submit(self._check, image, result, camera, geometry)
                    return
                self.hub.submit(self._check)
            if not self.watched or now < self._due - self._period / 4:
                return
            if self._busy:
                self.skipped += 1
                return
            self._busy = True
            self._due = max(self._due + self._period, now + self._period / 2)
            self.hub.submit(self._render, image, result, camera, geometry)
        except Exception:
            self._busy = False
            log.exception("camera %s: view offer failed", self.camera_id)

    def _check(self, *frame: Any) -> None:
        """Whether someone watches; ``frame`` (image, result, camera): offered while nobody did,
        drawn now if someone does."""
        try:
            self.watched = bool(self.hub.client.exists(self.hub.keys.view_want(self.camera_id)))
        except Exception as exc:  # noqa: BLE001 - Redis away: nobody is served anyway
            self.watched = False
            log.debug("camera %s: view check failed: %s", self.camera_id, exc)
        finally:
            self._checking = False
        if frame and self.watched:
            self._render(*frame)  # (frees `_busy` when done)
        elif frame:
            self._busy = False

    def _render(self, image: np.ndarray, result: FrameResult, camera: CameraConfig,
                geometry: Geometry | None = None) -> None:
        try:
            t0 = time.perf_counter()
            jpeg = render_jpeg(image, result, camera, self.hub.cfg, self.hub.blurrer, geometry)
            # the image outlives a few frame intervals of a slow camera, then goes with it
            ttl_s = max(self.hub.cfg.watch_ttl_s, 3 * (self._interval or 0.0))
            if not self.hub.write_jpeg(self.camera_id, jpeg, ttl_s):
                self.fenced += 1  # the camera's lease is another replica's now
                return
            ms = (time.perf_counter() - t0) * 1000
            self.render_ms = ms if self.render_ms is None else 0.8 * self.render_ms + 0.2 * ms
            self.rendered += 1
        except PrivacyUnavailable as exc:  # fails closed: no image (said when the blurrer was made, and once here)
            if not self._refused:
                self._refused = True
                log.warning("camera %s: no view image: %s", self.camera_id, exc)
        except Exception as exc:  # noqa: BLE001 - a view frame lost, never the camera
            log.warning("camera %s: view frame %d not written: %s: %s", self.camera_id, result.meta.seq,
                        type(exc).__name__, exc)
        finally:
            self._busy = False


def render_jpeg(image: np.ndarray, result: FrameResult, camera: CameraConfig, cfg: ViewConfig,
                blurrer: Any = None, geometry: Geometry | None = None) -> bytes:
    """The view's JPEG of one frame: blurred at full resolution (when a blurrer is given), scaled
    to ``cfg.width``, annotated, encoded with its frame named in the comment."""
    if blurrer is not None:  # (faces searched at least as wide as the image is shown)
        image = blurrer.blur(image, result.objects, shown_width=min(cfg.width, image.shape[1]))
    out = annotate(fit_width(image, cfg.width), result, camera, geometry)
    m = result.meta
    return encode_jpeg(out, cfg.quality, comment=f"percept camera={m.camera} seq={m.seq} ts={m.frame_ts:.3f}")
