"""Privacy: faces and licence plates blurred in every image the service emits (the live view and
its snapshots), before anything is drawn on it.

`Blurrer` is loaded once per decoder replica: faces with YuNet through OpenCV's
``cv2.FaceDetectorYN`` (the whole frame, scaled down to ``privacy.detect_width`` when wider,
searched at that size and at 0.7 and 0.5 of it: close, large faces are often found only at the
smaller sizes), and plates with the OpenVINO ``vehicle-license-plate-detection-barrier-0106``
SSD (the frame and the tiles of two grids over it, each resized to its 300×300 input: `plate_tiles`;
output rows image_id, label, conf, x1, y1, x2, y2 in 0..1, label 2 = plate).
Both networks are found through ``models_dir`` like any other weights (`resolve_weights`).

``privacy.blur`` unset means "faces, when the face model is there" (otherwise, silently, only the
faces the frame's own detections report);
a kind that is asked for explicitly and whose model is missing or does not load is logged once as
a warning, and every image is then refused (`PrivacyUnavailable`: no view image, explain 503), never
shown unblurred. A region (grown to the head) is pixelated, then smoothed:
YuNet does not find a face in it again (`tests/test_view.py` checks that on people.mp4, `tests/test_live_view.py`
on a snapshot of the running graph).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config_view import FACES_MODEL, PrivacyConfig
from .models import resolve_weights
from .openvino_quiet import quiet_openvino
from .yunet_open import create_yunet
from .signal_stack import own_signal_stack

log = logging.getLogger("percept.privacy")

# the labels (or categories) under which the service's own detectors report what each kind blurs,
# matched whole on the name in lower case with camel case, spaces, "_", "-" and "." run together
# (`_compact`: License_Plate, LicensePlate, number-plates, plate_number, Faces, human face)
PRIVATE_LABELS = {"faces": re.compile(r"(human)?faces?"),
                  "plates": re.compile(r"(licen[cs]e|number|car|vehicle|registration)?plates?(numbers?)?")}
PLATE_LABEL = 2  # the SSD's label ids: 1 vehicle, 2 plate
MIN_DETECT_WIDTH = 160  # no face search on images narrower than this (the smaller passes)
SCALES = (1.0, 0.7, 0.5)  # face search sizes: large, close faces are often found only at the smaller ones
_warned: set[str] = set()  # what was warned about once in this process


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


class FaceFinder:
    """YuNet on a BGR frame: (N, 4) xyxy boxes in the frame's pixels.

    One OpenCV detector per input size: changing a detector's input size reshapes its network
    (~100 ms and more), so alternating the two scales on one detector costs 10× the detection."""

    MAX_SIZES = 32  # input sizes kept (a replica's 8 cameras × the 3 scales, and then some), least recently used out

    def __init__(self, path: str, *, score: float, detect_width: int):
        self.path = path
        self.score = score
        self.detect_width = detect_width
        self._nets: dict[tuple[int, int], tuple[Any, threading.Lock]] = {}
        self._lock = threading.Lock()
        self._net_for((320, 320))  # reads the model: a bad file fails here

    def _net_for(self, size: tuple[int, int]) -> tuple[Any, threading.Lock]:
        with self._lock:
            net = self._nets.pop(size, None)  # (re-inserted: the dict's order is the order of use)
            if net is None:
                if len(self._nets) >= self.MAX_SIZES:
                    del self._nets[next(iter(self._nets))]  # the least recently used
                # one OpenCV detector is not safe to share between threads: each has its lock
                net = (create_yunet(self.path, size, self.score, 0.3, 5000), threading.Lock())
            self._nets[size] = net
            return net

    def __call__(self, image: np.ndarray, shown_width: int | None = None) -> np.ndarray:
        """Faces found at the frame's size (capped at ``detect_width``, or at ``shown_width`` when
        the image is shown wider: a face too small to find at 1280 px is readable in a 4K image)
        and at `SCALES` of it."""
        w = image.shape[1]
        first = min(1.0, max(self.detect_width, shown_width or 0) / w)
        found = [self._at(image, first * s) for s in SCALES if w * first * s >= MIN_DETECT_WIDTH or s == 1.0]
        return np.concatenate(found).astype(np.float32)

    def _at(self, image: np.ndarray, scale: float) -> np.ndarray:
        import cv2

        h, w = image.shape[:2]
        small = image if scale == 1.0 else cv2.resize(image, (round(w * scale), round(h * scale)),
                                                       interpolation=cv2.INTER_AREA)
        net, lock = self._net_for((small.shape[1], small.shape[0]))
        with lock:
            _, faces = net.detect(small)
        if faces is None or len(faces) == 0:
            return np.zeros((0, 4), np.float32)
        xywh = faces[:, :4] / scale
        return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:4]], axis=1)


class PlateFinder:
    """The OpenVINO plate SSD on a BGR frame: (N, 4) xyxy boxes in the frame's pixels."""

    def __init__(self, path: str, *, score: float):
        quiet_openvino()
        import openvino as ov

        core = ov.Core()
        model = core.read_model(path)
        try:
            self._compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1})
        finally:  # (OpenVINO left a signal stack of its own on this thread, compiled or not: `pipeline.signal_stack`)
            own_signal_stack()
        self._input = model.inputs[0]
        shape = list(self._input.get_shape())  # [1, 300, 300, 3] NHWC
        self._size = (int(shape[2]), int(shape[1]))  # (width, height)
        self._request = self._compiled.create_infer_request()
        self.score = score
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Plates in the whole frame and in the tiles of two grids (`plate_tiles`): the SSD takes
        any picture squashed to 300×300, so a plate 40 px wide on a road scene 1360 px wide came to
        8 px there and was never found (0 of 42 plates on the GTSDB sample's scenes; 38 with the
        tiles); its boxes each in the frame's pixels (overlapping tiles may find one plate twice)."""
        found = [self._in(image, x, y, tw, th) for x, y, tw, th in plate_tiles(*image.shape[:2])]
        return np.concatenate(found).astype(np.float32)

    def _in(self, image: np.ndarray, x: int, y: int, tw: int, th: int) -> np.ndarray:
        import cv2

        blob = cv2.resize(image[y:y + th, x:x + tw], self._size, interpolation=cv2.INTER_AREA)[None].astype(np.float32)
        with self._lock:
            self._request.infer({self._input.get_any_name(): blob})
            raw = np.array(self._request.get_output_tensor(0).data).reshape(-1, 7)
        rows = raw[(raw[:, 1] == PLATE_LABEL) & (raw[:, 2] >= self.score)]
        return rows[:, 3:7] * np.array([tw, th, tw, th], np.float32) + np.array([x, y, x, y], np.float32)


PLATE_TILE_WIDTH = 450  # px of the frame a tile of the finer grid spans about (the SSD's sweet spot)
PLATE_TILE_OVERLAP = 0.15  # of a tile: a plate on a seam is whole in one of them


def plate_tiles(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(x, y, width, height) of the pictures a frame's plates are searched in: the frame, and the
    tiles of an n × n and an (n − 1) × (n − 1) grid overlapping by `PLATE_TILE_OVERLAP`, each of
    the frame's shape (the network was trained on whole frames squashed to its input), n =
    width / `PLATE_TILE_WIDTH` rounded, at least 2: 5 pictures at 640×480, 14 at 1360×800 and
    at 1280×720, 26 at 1920×1080."""
    n = max(2, round(width / PLATE_TILE_WIDTH))
    out = [(0, 0, width, height)]
    for g in (n - 1, n) if n > 2 else (n,):
        tw = int(width / (g - (g - 1) * PLATE_TILE_OVERLAP))
        th = int(height / (g - (g - 1) * PLATE_TILE_OVERLAP))
        xs, ys = np.linspace(0, width - tw, g).astype(int), np.linspace(0, height - th, g).astype(int)
        out += [(int(x), int(y), tw, th) for y in ys for x in xs]
    return out


def pixelate(image: np.ndarray, boxes: np.ndarray, *, grow: float = 0.45) -> None:
    """Blurs each xyxy box of ``image`` in place, grown by ``grow`` on every side (the head and
    hair, not only the face): pixelated to 3×3 blocks, then smoothed. Lighter blurs leave a head
    that YuNet still finds (scores up to 0.8 after a 6-block pixelation of the face box alone;
    up to 0.68 with 3 blocks grown by 0.3, none above 0.56 at 0.45 on people.mp4)."""
    import cv2

    h, w = image.shape[:2]
    for x1, y1, x2, y2 in np.asarray(boxes, np.float32).reshape(-1, 4):
        gx, gy = (x2 - x1) * grow, (y2 - y1) * grow
        l, t = max(0, int(x1 - gx)), max(0, int(y1 - gy))
        r, b = min(w, int(np.ceil(x2 + gx))), min(h, int(np.ceil(y2 + gy)))
        if r - l < 2 or b - t < 2:
            continue
        roi = image[t:b, l:r]
        coarse = cv2.resize(roi, (3, 3), interpolation=cv2.INTER_AREA)
        # the blocks smoothed at 24×24 and scaled up: the look of a blur over the whole region,
        # at a fixed small cost (a Gaussian at the region's own size costs ~0.5 s on a big face)
        block = cv2.GaussianBlur(cv2.resize(coarse, (24, 24), interpolation=cv2.INTER_NEAREST), (0, 0), 6)
        roi[:] = cv2.resize(block, (roi.shape[1], roi.shape[0]), interpolation=cv2.INTER_LINEAR)


def _compact(name: Any) -> str:
    """A label as `PRIVATE_LABELS` matches it: lower case, its words run together."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


class PrivacyUnavailable(RuntimeError):
    """A blur asked for cannot be done (its model is missing or does not load): no image is shown."""


class Blurrer:
    """Finds faces and/or plates on a full-resolution frame and blurs them (on a copy)."""

    def __init__(self, faces: FaceFinder | None = None, plates: PlateFinder | None = None,
                 missing: Sequence[str] = (), covers: Sequence[str] | None = None):
        self.faces = faces
        self.plates = plates
        # kinds asked for that cannot be blurred: every image refused (`blur` raises), never shown unblurred
        self.missing = tuple(missing)
        # kinds whose regions the frame's own detections name are blurred (`blur`'s ``detected``):
        # those asked for, searched or not (the default's faces without the face model: the
        # detector's own faces were drawn unblurred); None: those searched
        self.covers = tuple(self.kinds if covers is None else covers)

    @property
    def kinds(self) -> list[str]:
        return [k for k, f in (("faces", self.faces), ("plates", self.plates)) if f is not None]

    def __bool__(self) -> bool:
        return bool(self.kinds or self.missing or self.covers)

    def regions(self, image: np.ndarray, shown_width: int | None = None) -> np.ndarray:
        """(N, 4) xyxy boxes to blur in ``image`` (shown ``shown_width`` wide: its own width if None)."""
        found = [self.faces(image, image.shape[1] if shown_width is None else shown_width)] if self.faces else []
        found += [self.plates(image)] if self.plates is not None else []
        return np.concatenate(found) if found else np.zeros((0, 4), np.float32)

    def _private(self, name: Any) -> bool:
        """Whether a label or category names what one of the kinds blurred covers."""
        compact = _compact(name)
        return any(PRIVATE_LABELS[kind].fullmatch(compact) for kind in self.covers)

    def refuse_if_unavailable(self) -> None:
        """`PrivacyUnavailable` when a kind asked for cannot be blurred (before work whose image
        could not be shown: an explanation's minutes)."""
        if self.missing:
            raise PrivacyUnavailable(f"privacy asks for {' and '.join(self.missing)}, whose model is missing or "
                                     "does not load: no image is shown")

    def blur(self, image: np.ndarray, detected: Any = None, *, shown_width: int | None = None) -> np.ndarray:
        """A copy of ``image`` with every face and plate found blurred (``image`` itself when
        there is nothing to blur: it is never changed); ``detected``: the frame's own objects
        (`Detections`), whose faces and plates (by label or category) are blurred too, found or
        not by the blurrer's own search (another scale, another score). ``shown_width``: the width
        the image is shown at (the view scales it down; None: as it is, faces searched at that
        width when wider than ``detect_width``)."""
        self.refuse_if_unavailable()
        if not self:
            return image
        boxes = self.regions(image, shown_width)
        names, categories = getattr(detected, "labels", ()), getattr(detected, "categories", ())
        own = [i for i, name in enumerate(names)
               if self._private(name) or (i < len(categories) and self._private(categories[i]))]
        if own:
            boxes = np.concatenate([boxes.reshape(-1, 4), np.asarray(detected.xyxy, np.float32)[own]])
        if len(boxes) == 0:
            return image
        out = image.copy()
        pixelate(out, boxes)
        return out

    @classmethod
    def from_config(cls, cfg: PrivacyConfig, models_dir: str | None) -> Blurrer:
        """The blurrer ``privacy`` asks for. Unset ``blur``: faces when the face model is there.
        A kind asked for whose model is missing, or a model there that fails to load, is warned
        about once and fails closed: the blurrer refuses every image (`PrivacyUnavailable`), so the
        live view and explanations show none, rather than show it unblurred."""
        wanted = ["faces"] if cfg.blur is None else list(dict.fromkeys(cfg.blur))
        # a face model named (not the default) asks for faces as ``blur`` does: a typo in its path
        # turned the blur off without a word
        explicit = {kind: cfg.blur is not None or (kind == "faces" and cfg.faces_model != FACES_MODEL)
                    for kind in wanted}
        defaults = PrivacyConfig.model_fields
        for kind, fields in (("plates", ("plates_model", "plate_score")), ("faces", ("faces_model", "face_score",
                                                                                      "detect_width"))):
            if kind not in wanted and any(getattr(cfg, k) != defaults[k].default for k in fields):
                _warn_once(f"{kind}-unasked", "privacy.%s are set but privacy.blur does not list %s: %s are not "
                           "blurred (add %s to privacy.blur)", " / ".join(fields), kind, kind, kind)
        faces = plates = None
        missing: list[str] = []
        for kind in wanted:
            spec = cfg.faces_model if kind == "faces" else cfg.plates_model
            path = resolve_weights(spec, models_dir)
            if not Path(path).is_file():
                if explicit[kind]:
                    where = f" (models_dir {models_dir})" if models_dir else " (models_dir is not set)"
                    _warn_once(f"missing:{kind}:{path}", "privacy asks for %s but the model %r is missing%s: "
                               "no image is shown (live view, explanations)", kind, spec, where)
                    missing.append(kind)
                continue
            try:
                if kind == "faces":
                    faces = FaceFinder(path, score=cfg.face_score, detect_width=cfg.detect_width)
                else:
                    plates = PlateFinder(path, score=cfg.plate_score)
            except Exception as exc:  # noqa: BLE001 - a model that does not load: said once, fails closed
                _warn_once(f"load:{kind}:{path}", "privacy: cannot load the %s model %r (%s: %s): no image is "
                           "shown (live view, explanations)", kind, path, type(exc).__name__, exc)
                missing.append(kind)
        blurrer = cls(faces, plates, missing, covers=wanted)
        if blurrer.kinds and not missing:
            log.info("privacy: blurring %s in every image the view emits", " and ".join(blurrer.kinds))
        return blurrer
