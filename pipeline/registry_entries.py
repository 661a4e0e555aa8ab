"""A registry entry (``<prefix>:cameras``'s hash field: camera JSON tagged with its source)
parsed into a camera or why it cannot run, the latest version of each kept parsed."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .config import CameraConfig, format_validation_error
from .redact import redact


@dataclass(frozen=True)
class InvalidCamera:
    """A registry entry that cannot run: its id (the hash field), why, and its URL if it has one."""

    id: str
    error: str  # path-precise and redacted, e.g. ``cameras[x].fps: must be >= 0, got -2``
    url: str = ""


def _parse_entry(cid: str, raw: bytes) -> tuple[dict[str, Any] | None, CameraConfig | InvalidCamera]:
    """One hash field → (the decoded entry or None, the camera or why it is invalid). The same
    field as read before gives the same (frozen) camera: `GET /cameras`, the live view and every
    lease round read the whole registry, and a camera with many zones of many points took a
    third of a second to validate (ten such: 4 s a listing, the page asks every second)."""
    return _decoded(raw), _parsed(cid, raw)


def _decoded(raw: bytes) -> dict[str, Any] | None:
    """The entry as a new dict (the caller's own), or None when it is not one."""
    try:
        entry = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("camera"), dict) else None


_PARSED_MAX = 512  # camera ids whose parsed entry is kept (`_parsed`)
_latest: "OrderedDict[str, tuple[bytes, CameraConfig | InvalidCamera]]" = OrderedDict()
_latest_lock = threading.Lock()


def _parsed(cid: str, raw: bytes) -> CameraConfig | InvalidCamera:
    """The camera of a registry entry, kept for the entry's latest version only (of `_PARSED_MAX`
    cameras): every version read was kept (512 of them), 3.4 MiB each for a camera of 64 zones of
    256 points changed by PUT after PUT, in the API and in every decoder."""
    with _latest_lock:
        kept = _latest.get(cid)
        if kept is not None and kept[0] == raw:
            _latest.move_to_end(cid)
            return kept[1]
    camera = _parse(cid, raw)
    with _latest_lock:
        _latest[cid] = (raw, camera)
        _latest.move_to_end(cid)
        while len(_latest) > _PARSED_MAX:
            _latest.popitem(last=False)
    return camera


_parsed.cache_clear = _latest.clear  # type: ignore[attr-defined]


def _parse(cid: str, raw: bytes) -> CameraConfig | InvalidCamera:
    where = f"cameras[{cid}]"
    try:
        entry = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # (RecursionError: nested too deep)
        return InvalidCamera(cid, redact(f"{where}: not valid JSON ({type(exc).__name__}: {exc})"))
    if not isinstance(entry, dict) or not isinstance(entry.get("camera"), dict):
        return InvalidCamera(cid, f'{where}: not a registry entry (expected {{"source": ..., "camera": {{...}}}})')
    data = entry["camera"]
    url = data.get("url") if isinstance(data.get("url"), str) else ""
    try:
        camera = CameraConfig.model_validate(data)
    except ValidationError as exc:
        lines = format_validation_error(exc)
        return InvalidCamera(cid, redact("; ".join(f"{where}.{line}" for line in lines)), url)
    if camera.id != cid:
        return InvalidCamera(cid, f"{where}.id: must equal the registry key {cid!r}, got {camera.id!r}", url)
    camera._added_ms = entry.get("added_ms") if isinstance(entry.get("added_ms"), int) else None
    return camera
