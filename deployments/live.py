"""The live view on the HTTP ingress: the page (``GET /``), snapshots and MJPEG streams of the
annotated frames the owning decoder writes to Redis while someone watches (`pipeline/view.py`).

Every request marks its camera watched (``<prefix>:view:want:<camera>``, TTL ``view.watch_ttl_s``)
and reads ``<prefix>:view:jpeg:<camera>``; no request ever reaches a decoder, so any number of
decoder replicas and viewers work the same, and a slow viewer only slows its own response.
Serve's proxy gives a streaming response no backpressure (a client that stops reading leaves its
parts queued in the proxy), so an MJPEG response ends after ``view.stream_max_s``: that bounds
what a stalled client can pile up, and it keeps the camera watched no longer than that."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Mapping

import redis
from fastapi import HTTPException
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from pipeline.config_view import ViewConfig
from pipeline.registry import CameraRegistry
from pipeline.streams import StreamKeys, parse_entry_id, per_key
from pipeline.view import jpeg_comment
from pipeline.config_errors import quoted_id

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
BOUNDARY = "percept-frame"
FIRST_FRAME_S = 6.0  # how long a snapshot waits for the first frame of a camera nobody watched
SLOW_CAMERA_S = 30.0  # ... at most this much longer for a camera sampled every few seconds
IDS_FRESH_S = 2.0  # the camera list is read again after this long (and on a miss)
IDS_MISS_S = 0.25  # ... on a miss at most this often
VIEW_OFF = "the live view is off (view.enabled: false)"
# an MJPEG response ends when its camera reaches one of these ("pending": its state is gone,
# the camera was removed; "stopped" and "failed" only when they last, `LiveView._watch_again`);
# it goes on through "connecting" and "reconnecting"
ENDED_STATES = ("stopped", "failed", "pending")
UNREADABLE = "unreadable"  # a camera whose hash or image key holds another type (not written by percept): a 503
REMOVED = "removed"  # `LiveView._watch`'s state of a camera the registry has no more: a 404


def last_frames(client: Any, keys: StreamKeys, ids: list[str], now: float,
                since_ms: Mapping[str, int | None] | None = None) -> dict[str, dict[str, Any]]:
    """Per camera, from its newest stream entry (after ``since_ms[id]``: when it was added, what
    a camera its id had before published not counted): lag (s since its capture), objects per
    category and end-to-end latency; {} for a camera that has published nothing (since)."""
    import orjson

    pipe = client.pipeline(transaction=False)
    for cid in ids:
        since = (since_ms or {}).get(cid)
        pipe.xrevrange(keys.detections(cid), min="-" if since is None else f"({since}", count=1)
    out: dict[str, dict[str, Any]] = {}
    for cid, last in zip(ids, per_key(pipe)):
        if not last or isinstance(last, Exception):  # (a key of another type, not written by percept)
            out[cid] = {}
            continue
        entry_id, fields = last[0]
        info: dict[str, Any] = {"lag_s": round(max(0.0, now - parse_entry_id(entry_id)[0] / 1000), 3)}
        try:
            payload = orjson.loads(fields[b"json"])
            counts: dict[str, int] = {}
            for obj in payload.get("objects", []):
                counts[obj["category"]] = counts.get(obj["category"], 0) + 1
            info["objects"] = dict(sorted(counts.items()))
            info["e2e_ms"] = round(float(payload.get("latency_ms", {}).get("total", 0.0)), 1)
        except (KeyError, ValueError, TypeError, AttributeError):  # an entry not as published: its info only
            pass
        out[cid] = info
    return out


class LiveView:
    def __init__(self, cfg: ViewConfig, client: Any, keys: StreamKeys, registry: CameraRegistry):
        self.cfg = cfg
        self.client = client
        self.keys = keys
        self.registry = registry
        self.streams = 0  # MJPEG responses running now
        self._ids: list[str] = []
        self._ids_at = -1e9

    # --- the page -------------------------------------------------------------------------------

    def page(self) -> HTMLResponse:
        if not self.cfg.enabled:  # as the view's other routes: a page whose every image would 404
            raise HTTPException(404, detail=VIEW_OFF)
        try:
            html = PAGE.read_text(encoding="utf-8")
        except OSError:  # an install without the package data (pyproject's package-data names it)
            raise HTTPException(500, detail=f"the live view page is missing from this install: {PAGE}") from None
        html = html.replace("{{fps}}", f"{self.cfg.fps:g}").replace("{{width}}", str(self.cfg.width))
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    def status(self) -> dict[str, Any]:
        return {"enabled": self.cfg.enabled, "fps": self.cfg.fps, "width": self.cfg.width,
                "streams": self.streams, "stream_max_s": self.cfg.stream_max_s}

    # --- lookups ------------------------------------------------------------------------------

    def _camera_ids(self, fresh: bool = False) -> list[str]:
        """The registry's camera ids, read again after `IDS_FRESH_S`, or when ``fresh`` (a miss:
        added a moment ago?) at most every `IDS_MISS_S` (requests for unknown ids in a loop do
        not read and validate the whole registry each)."""
        age = time.monotonic() - self._ids_at
        if age > IDS_FRESH_S or (fresh and age > IDS_MISS_S):
            cameras, invalid = self.registry.read()
            self._ids = sorted([c.id for c in cameras] + [b.id for b in invalid])
            self._ids_at = time.monotonic()
        return self._ids

    async def _known(self, camera_id: str) -> None:
        """404 naming the cameras there are, unless ``camera_id`` is one: in the list read up to
        `IDS_FRESH_S` ago, or else in the registry now (added a moment ago)."""
        if not self.cfg.enabled:
            raise HTTPException(404, detail={"message": VIEW_OFF, "cameras": []})
        if camera_id in await asyncio.to_thread(self._camera_ids):
            return
        if await asyncio.to_thread(self.client.hexists, self.registry.key, camera_id):
            return
        raise await self._no_camera(camera_id)

    async def _no_camera(self, camera_id: str) -> HTTPException:
        """The 404 of a camera the registry has not (naming those it has)."""
        ids = await asyncio.to_thread(self._camera_ids, True)
        return HTTPException(404, detail={"message": f"no camera {quoted_id(camera_id)}",
                                          "cameras": [i for i in ids if i != camera_id]})

    async def _not_running(self, camera_id: str, state: str, error: str | None) -> HTTPException:
        """The 503 of a camera that is not online, or the 404 of one removed (`REMOVED`: the
        registry has it no more, though the list read before, or its state, still named it)."""
        if state == REMOVED:
            return await self._no_camera(camera_id)
        return self._unavailable(camera_id, state, error)

    def _watch(self, camera_id: str, with_state: bool = False) -> tuple[bytes | None, str, str | None]:
        """Marks the camera watched and reads its latest JPEG (and its state: `REMOVED` when the
        registry has it no more, whatever its decoder still says), in one round-trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.keys.view_want(camera_id), b"1", px=int(self.cfg.watch_ttl_s * 1000))
        pipe.get(self.keys.view_jpeg(camera_id))
        if with_state:
            pipe.hmget(self.keys.camera(camera_id), "state", "last_error")
            pipe.hexists(self.registry.key, camera_id)
        out = per_key(pipe)  # (a key of another type, not written by percept: said, a 503 naming it)
        bad = [(key, answer) for key, answer in zip((self.keys.view_jpeg(camera_id), self.keys.camera(camera_id)),
                                                    out[1:3]) if isinstance(answer, Exception)]
        if with_state and isinstance(out[3], Exception):
            raise out[3]  # (the registry's hash: the camera list cannot be read either)
        if bad:
            key, exc = bad[0]
            return None, UNREADABLE if not with_state or out[3] else REMOVED, f"{key}: {exc}"
        if not with_state:
            return out[1], "online", None
        state, error = (v.decode(errors="replace") if v else None for v in out[2])
        return out[1], (state or "pending") if out[3] else REMOVED, error

    def _watch_again(self, camera_id: str, ended_since: float | None) -> float | None:
        """The camera marked watched again, unless it was removed, or stopped or failed longer
        than a camera's move between decoders takes (3 × ``watch_ttl_s``: the old owner says
        ``stopped`` until the next one opens it): then -1, the stream ends. Else when its state
        first said stopped or failed (``ended_since`` carried on; None: it runs)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.keys.camera(camera_id), "state")
        pipe.hexists(self.registry.key, camera_id)
        state, registered = per_key(pipe)
        if isinstance(registered, Exception):
            raise registered
        # (a camera hash of another type, not written by percept: as a failed camera's)
        state_s = "failed" if isinstance(state, Exception) else state.decode() if state else "pending"
        now = time.monotonic()
        if not registered:  # removed: its decoder may say online until it lets go
            return -1.0
        if state_s in ENDED_STATES:
            if state_s == "pending":
                return -1.0
            ended_since = now if ended_since is None else ended_since
            if now - ended_since >= 3 * self.cfg.watch_ttl_s:
                return -1.0
        else:
            ended_since = None
        self.client.set(self.keys.view_want(camera_id), b"1", px=int(self.cfg.watch_ttl_s * 1000))
        return ended_since

    def _first_frame_s(self, camera_id: str) -> float:
        """How long a snapshot waits for the first view frame: `FIRST_FRAME_S`, and two of the
        camera's frame intervals more, up to `SLOW_CAMERA_S` more: one over its published
        ``fps`` (the frames of the last 5 s), or, when that says 0 (a camera with a frame every
        12 s, most of the time), the gap between its last two published frames."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.keys.camera(camera_id), "fps")
        pipe.xrevrange(self.keys.detections(camera_id), count=2)
        raw_fps, last_two = (None if isinstance(v, Exception) else v for v in per_key(pipe))
        last_two = last_two or []
        try:
            fps = float(raw_fps or 0.0)
        except ValueError:
            fps = 0.0
        interval = 1.0 / fps if fps > 0 else 0.0
        if fps <= 0 and len(last_two) == 2:  # (with frames in the last 5 s, a gap may be a restart's)
            interval = (parse_entry_id(last_two[0][0])[0] - parse_entry_id(last_two[1][0])[0]) / 1000
        return FIRST_FRAME_S + min(2.0 * interval, SLOW_CAMERA_S)

    def _unavailable(self, camera_id: str, state: str, error: str | None) -> HTTPException:
        retry = "1" if state in ("connecting", "pending", "online") else "5" if state in ("failed", "stopped") else "2"
        detail = {"message": f"camera {camera_id!r} is {state}: no live image", "camera": camera_id,
                  "state": state, "last_error": error}
        return HTTPException(503, detail=detail, headers={"Retry-After": retry})

    # --- snapshot and MJPEG ------------------------------------------------------------------------

    async def snapshot(self, camera_id: str) -> Response:
        """The latest annotated frame; 503 + Retry-After while the camera is not online (or its
        first view frame is not there yet)."""
        await self._known(camera_id)
        jpeg, state, error = await asyncio.to_thread(self._watch, camera_id, True)
        if state != "online":
            raise await self._not_running(camera_id, state, error)
        if jpeg is None:
            jpeg = await self._first_jpeg(camera_id)
        return Response(jpeg, media_type="image/jpeg", headers=_frame_headers(jpeg))

    async def _first_jpeg(self, camera_id: str) -> bytes:
        """The first view frame of an online camera that has none yet (nobody watched it): waited
        for `_first_frame_s`, the camera kept watched meanwhile; 503 when none comes, and the
        camera's 503 or 404 as soon as it leaves ``online`` or is removed."""
        deadline = time.monotonic() + await asyncio.to_thread(self._first_frame_s, camera_id)
        state, error = "online", None
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            jpeg, state, error = await asyncio.to_thread(self._watch, camera_id, True)
            if state != "online":
                raise await self._not_running(camera_id, state, error)
            if jpeg is not None:
                return jpeg
        raise self._unavailable(camera_id, state, "no view frame yet")

    async def live(self, camera_id: str) -> StreamingResponse:
        """``multipart/x-mixed-replace``: a part per new frame. Its place among
        ``view.max_streams`` is taken here, before the response starts (so viewers arriving
        together cannot all pass the check), and given back when the response ends, whether or
        not its parts were ever asked for."""
        await self._known(camera_id)
        if self.streams >= self.cfg.max_streams:  # what stalled clients can pile up stays bounded
            raise HTTPException(429, detail={"message": f"{self.streams} live streams already (view.max_streams); "
                                             f"poll /cameras/{camera_id}/snapshot.jpg instead", "camera": camera_id},
                                headers={"Retry-After": "10"})
        self.streams += 1
        place = _Place(self)
        try:
            jpeg, state, error = await asyncio.to_thread(self._watch, camera_id, True)
            if state != "online":
                raise await self._not_running(camera_id, state, error)
            if jpeg is None:  # a response with no part for minutes holds a place: as a snapshot, 503
                await self._first_jpeg(camera_id)
        except BaseException:
            place.release()
            raise
        return _LiveResponse(self._parts(camera_id, place), place=place,
                             media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                             headers={"Cache-Control": "no-store"})

    async def _parts(self, camera_id: str, place: "_Place") -> AsyncIterator[bytes]:
        """Polls at twice ``view.fps`` (a frame is never missed through aliasing; at least thrice a
        ``view.watch_ttl_s``, within which a JPEG drawn expires) the first bytes
        of the JPEG (its comment names the frame) and fetches a frame only when it is new. Ends
        after ``view.stream_max_s``, or when the camera is removed, or stopped or failed for
        longer than a move between decoders takes (its state is read each time the camera is
        marked watched again): a viewer of a camera gone must not keep it watched nor hold a
        place other cameras' viewers need."""
        try:
            # (and at least 3 times a `watch_ttl_s`: slower, the mark and each JPEG expired between polls)
            poll = min(0.5 / self.cfg.fps, self.cfg.watch_ttl_s / 3)
            end = time.monotonic() + self.cfg.stream_max_s
            watched_at, last, ended_since, unreachable_since = -1e9, None, None, None
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    if started - watched_at >= self.cfg.watch_ttl_s / 3:
                        ended_since = await asyncio.to_thread(self._watch_again, camera_id, ended_since)
                        if ended_since is not None and ended_since < 0:
                            return
                        watched_at = started
                    jpeg = await asyncio.to_thread(self._new_frame, camera_id, last)
                    unreachable_since = None
                except redis.RedisError:  # a blip rides through; an outage as long as a move ends the stream
                    unreachable_since = started if unreachable_since is None else unreachable_since
                    if started - unreachable_since >= 3 * self.cfg.watch_ttl_s:
                        return
                    jpeg = None
                if jpeg is not None:
                    last = jpeg_comment(jpeg) or jpeg[:128]
                    yield _part(jpeg)
                await asyncio.sleep(max(0.0, poll - (time.monotonic() - started)))
        finally:
            place.release()

    def _new_frame(self, camera_id: str, last: bytes | None) -> bytes | None:
        """The camera's view JPEG if its first bytes (the comment naming the frame) are not
        ``last``'s, else None."""
        head = self.client.getrange(self.keys.view_jpeg(camera_id), 0, 127)
        if head and (jpeg_comment(head) or head) != last:
            return self.client.get(self.keys.view_jpeg(camera_id))
        return None


class _LiveResponse(StreamingResponse):
    """A streaming response that gives its place back however the call ends: a client gone or
    a request cancelled before the first part skips a background task, and the parts' own
    ``finally`` never runs when they were never asked for."""

    def __init__(self, *args: Any, place: "_Place", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._place = place

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._place.release()


class _Place:
    """One MJPEG response's place among ``view.max_streams``, given back once."""

    def __init__(self, view: LiveView):
        self._view: LiveView | None = view

    def release(self) -> None:
        if self._view is not None:
            self._view.streams -= 1
            self._view = None


def _part(jpeg: bytes) -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
    frame = jpeg_comment(jpeg)
    head += f"X-Percept-Frame: {frame}\r\n" if frame else ""
    return head.encode() + b"\r\n" + jpeg + b"\r\n"


def _frame_headers(jpeg: bytes) -> dict[str, str]:
    headers = {"Cache-Control": "no-store"}
    frame = jpeg_comment(jpeg)
    if frame:
        headers["X-Percept-Frame"] = frame
    return headers
