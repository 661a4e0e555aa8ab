"""The HTTP ingress: runtime camera management and status (`/cameras`), and the live view
(`/`, `/cameras/{id}/live`, `/cameras/{id}/snapshot.jpg`: `deployments/live.py`) and the heat maps
of `/cameras/{id}/explain` (`deployments/explain.py`), on Serve's proxy.

Cameras live in the Redis registry (`pipeline/registry.py`); decoder replicas pick changes up
on their next lease round, so adding or removing one camera never restarts the others. Camera
URLs are stored as given, ``${VAR}`` unexpanded (decoders expand them); a password typed inline is
refused unless ``security.allow_inline_credentials``. A registry entry that does not validate is
listed as ``failed`` with its error, never a 500."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Mapping

import redis
from fastapi import Body, FastAPI, HTTPException, Query
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.config import (
    RUNTIME_FIELDS,
    CameraConfig,
    PerceptConfig,
    format_validation_error,
    inline_password_error,
)
from pipeline.config_env import foreign_variable_error, variables_named
from pipeline.config_urls import api_source_problem
from pipeline.api_hosts import host_refused
from pipeline.lifecycle.swap import SwapError
from pipeline.lifecycle.swap_service import ModelSwaps
from pipeline.decoder_status import merged_status, read_shared_or_none
from pipeline.events import EventEngine
from pipeline.geometry import GeometryError
from pipeline.redact import redact, redact_text_given, redact_url
from pipeline.registry import CameraRegistry, TooManyCameras
from pipeline.streams import StreamKeys, number, redis_from_config, redis_unavailable, states_as_seen
from pipeline.track_state import stored_pixel_frames
from pipeline.config_errors import quoted_id

from .explain import ExplainApi
from .live import LiveView, last_frames
from .logs import route_percept_logs
from .transport import DECODER_ANSWER_S, answer_within

MAX_BODY_BYTES = 1 << 20
MAX_PROBLEMS = 50  # a 422 lists this many problems at most (100 000 unknown keys made a 12.5 MB answer)
app = FastAPI(title="percept", description="Runtime camera management")


@app.exception_handler(redis.RedisError)
async def _redis_unreachable(request: Any, exc: Exception) -> JSONResponse:
    """A Redis outage (or Redis refusing writes for now: read-only, out of memory) is a 503 the
    client can retry (``percept cameras`` does), not a 500; any other Redis error is a 500."""
    if not redis_unavailable(exc):
        return JSONResponse(status_code=500, content={"detail": f"redis error: {redact(str(exc))}"})
    return JSONResponse(status_code=503, content={"detail": f"redis unavailable ({type(exc).__name__})", "retry": True},
                        headers={"Retry-After": "1"})


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Any, exc: RequestValidationError) -> JSONResponse:
    """422 naming where the request is wrong, without quoting it (FastAPI's own answer echoes
    the input: a camera URL sent alone, its password in it)."""
    lines = [_invalid_line(err) for err in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": [redact(line) for line in lines]})


def _invalid_line(err: Mapping[str, Any]) -> str:
    """One of FastAPI's errors as ``where: what``; a body that is no JSON says where it breaks
    and why (FastAPI names the character offset as if it were a field: ``body.11``)."""
    loc = tuple(err.get("loc", ()))
    if err.get("type") == "json_invalid" and len(loc) == 2:
        why = (err.get("ctx") or {}).get("error", "")
        return f"{loc[0]}: not valid JSON at character {loc[1]}" + (f": {why}" if why else "")
    return f"{'.'.join(str(p) for p in loc) or 'request'}: {err.get('msg', 'invalid')}"


@app.exception_handler(StarletteHTTPException)
async def _unreadable_body(request: Any, exc: StarletteHTTPException) -> Response:
    """FastAPI's 400 for a body its JSON reading raised on, said as what is wrong with the body
    (it answered "There was an error parsing the body"); any other HTTP error as FastAPI does."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None or isinstance(cause, json.JSONDecodeError):
        return await http_exception_handler(request, exc)
    if isinstance(cause, UnicodeDecodeError):
        why = f"not UTF-8 (byte {cause.start})"
    elif isinstance(cause, RecursionError):
        why = "nested too deeply"
    else:  # ValueError: "Exceeds the limit (4300 digits) for integer string conversion …"
        why = f"cannot be read: {redact(str(cause))[:200]}"
    return JSONResponse(status_code=400, content={"detail": f"body: {why}"})


@app.middleware("http")
async def _known_host(request: Any, call_next: Any) -> Any:
    """A request naming a host the API does not answer to (`pipeline/api_hosts.py`: DNS
    rebinding) is refused (400) before anything else, the live view's routes too."""
    try:
        listed = serve.get_replica_context().servable_object.api_hosts
    except (RayServeException, AttributeError):  # (the app outside a replica: IP addresses and localhost)
        listed = []
    refused = host_refused(request.headers.get("host"), listed)
    if refused:
        return JSONResponse(status_code=400, content={"detail": refused})
    return await call_next(request)


@app.middleware("http")
async def _bounded_body(request: Any, call_next: Any) -> Any:
    """A request body above `MAX_BODY_BYTES` is refused (413) before it is read: a camera with
    its zones is a few kilobytes. One without a length (chunked) is refused too (411): its size
    is known only once it has all been read."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return JSONResponse(status_code=413, content={"detail": f"request body above {MAX_BODY_BYTES} bytes"})
    if length is None and "chunked" in request.headers.get("transfer-encoding", "").lower():
        return JSONResponse(status_code=411, content={"detail": "a request body needs a Content-Length "
                                                                f"(at most {MAX_BODY_BYTES} bytes)"})
    return await call_next(request)


def _capped(problems: list[str], total: int) -> list[str]:
    """At most `MAX_PROBLEMS` of ``total`` problems, and how many more there are."""
    return problems[:MAX_PROBLEMS] + ([f"… and {total - MAX_PROBLEMS} more"] if total > MAX_PROBLEMS else [])


def _problems(exc: ValidationError) -> list[str]:
    """A body's problems as the config says them (`format_validation_error`), `_capped`."""
    lines = format_validation_error(exc)
    return _capped(lines, len(lines))


def gpus_on_cluster() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def last_frame_size(client: Any, keys: StreamKeys, camera_id: str, since_ms: int | None = None) -> tuple[int, int] | None:
    """(width, height) of the camera's newest published frame (since ``since_ms``: when it was
    added, the frames of a camera its id had before not counted); None when it has none (or it
    cannot be read)."""
    try:
        newest = client.xrevrange(keys.detections(camera_id), min="-" if since_ms is None else f"({since_ms}", count=1)
    except redis.ResponseError:  # (a key of another type: WRONGTYPE was a 500 on PUT)
        return None
    try:
        payload = json.loads(newest[0][1][b"json"])
        return int(payload["width"]), int(payload["height"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


@serve.deployment(name="api")
@serve.ingress(app)
class CameraApi:
    def __init__(self, config: dict[str, Any], decoder: DeploymentHandle):
        route_percept_logs()
        cfg = PerceptConfig.model_validate(config)
        self.keys = StreamKeys(cfg.redis.stream_prefix)
        self.client = redis_from_config(cfg.redis)
        self.registry = CameraRegistry(self.client, self.keys)
        self.allow_inline_credentials = cfg.security.allow_inline_credentials
        self.api_local_sources = cfg.security.api_local_sources
        self.api_max_cameras = cfg.security.api_max_cameras
        self.api_hosts = cfg.security.api_hosts  # (with IP addresses and localhost: `_known_host`)
        self.tracking = cfg.tracker.enabled  # zones and lines need it
        self.decoder = decoder
        self.live = LiveView(cfg.view, self.client, self.keys, self.registry)
        self.explainer = ExplainApi(cfg, self.client, self.keys, self.registry, decoder)
        # hot swap of weights (pipeline/lifecycle/swap.py)
        self.swaps = ModelSwaps(cfg, self.client, gpus_on_cluster=gpus_on_cluster)

    def _list(self) -> list[dict[str, Any]]:
        cameras, invalid = self.registry.read()
        states, refused = states_as_seen(self.client, self.keys, [c.id for c in cameras])
        frames = last_frames(self.client, self.keys, [c.id for c in cameras], time.time(),
                             {c.id: c._added_ms for c in cameras})
        out = []
        for cam in cameras:
            st = states.get(cam.id, {})
            last = frames.get(cam.id, {})
            out.append({
                "id": cam.id,
                "url": redact_url(cam.url),
                "fps_target": cam.fps,
                "state": st.get("state", "pending"),
                "fps": number(st.get("fps")),  # (a field that is no number, not written by percept: 0)
                "dropped": int(number(st.get("dropped"))),
                "publish_dropped": int(number(st.get("publish_dropped"))),  # (by the outage buffer)
                "lag_s": last.get("lag_s"),
                "last_error": st.get("last_error") or None,
                "objects": last.get("objects", {}),  # per category, in the newest frame
                "e2e_ms": last.get("e2e_ms"),
                "writes_refused": refused,
            })
        for bad in invalid:  # listed, so that it can be seen and deleted
            out.append({
                "id": bad.id, "url": redact_url(bad.url), "fps_target": None, "state": "failed",
                "fps": 0.0, "dropped": 0, "publish_dropped": 0, "lag_s": None, "last_error": bad.error, "objects": {}, "e2e_ms": None,
                "writes_refused": refused,
            })
        return sorted(out, key=lambda c: c["id"])

    async def _unknown(self, camera_id: str) -> str:
        """The 404 of a camera that is not registered, naming the ones that are (failed ones too:
        `GET /cameras` lists them, and they are removed by their ids)."""
        ids = sorted(await asyncio.to_thread(self.registry.ids))
        return f"no camera {quoted_id(camera_id)}; cameras: {', '.join(ids) or 'none'}"

    def _need_tracking(self, fields: dict[str, Any]) -> None:
        """422 for zones or lines while the tracker is off: their events follow tracks."""
        given = [k for k in ("zones", "lines") if fields.get(k)]
        if given and not self.tracking:
            raise HTTPException(422, detail=[f"{k}: zones and lines need the tracker (tracker.enabled is false)"
                                             for k in given])

    @app.get("/cameras")
    async def list_cameras(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._list)

    @app.post("/cameras", status_code=201)
    async def add_camera(self, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        try:  # off the event loop (the checks and their messages too): the live view's streams go on meanwhile
            camera = await asyncio.to_thread(CameraConfig.model_validate, body)
        except ValidationError as exc:
            raise HTTPException(422, detail=await asyncio.to_thread(_problems, exc)) from None
        field = f"cameras[{camera.id}].url"
        there = await asyncio.to_thread(self.registry.ids)
        named = variables_named(await asyncio.to_thread(self.registry.cameras))
        inline = None if self.allow_inline_credentials else await asyncio.to_thread(inline_password_error, camera, field)
        local = None if self.api_local_sources else api_source_problem(camera.url)
        refused = (f"{field}: {local}" if local else None) or inline or foreign_variable_error(camera, field, there, named)
        if refused:
            raise HTTPException(422, detail=[refused])
        self._need_tracking({"zones": camera.zones, "lines": camera.lines})
        try:
            added = await asyncio.to_thread(self.registry.add, camera, self.api_max_cameras)
        except TooManyCameras as exc:
            raise HTTPException(409, detail=str(exc)) from None
        if not added:
            if await asyncio.to_thread(self.registry.source, camera.id) == "config":  # (201 here: then gone with the file)
                raise HTTPException(409, detail=f"camera {camera.id!r} exists, from the config file (it goes when "
                                                "the file drops it): change it there, or PUT its zones and lines")
            raise HTTPException(409, detail=f"camera {camera.id!r} exists; DELETE it first to change it")
        if camera.id not in there:  # a live image a camera of this id left (removed a moment ago) is not
            # this one's; the same camera again (a POST retried) keeps its own
            await asyncio.to_thread(self.client.delete, self.keys.view_jpeg(camera.id))
        return {"id": camera.id, "url": await asyncio.to_thread(redact_url, camera.url)}

    @app.put("/cameras/{camera_id}")
    async def change_geometry(self, camera_id: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        """Zones, lines, anchor, line and zone margins change at runtime, without restarting the camera."""
        other = sorted(set(body) - set(RUNTIME_FIELDS))
        if other:
            said = await asyncio.to_thread(lambda: [redact_text_given(k, 200) for k in other[:MAX_PROBLEMS]])
            raise HTTPException(422, detail=_capped([f"{k}: only {', '.join(RUNTIME_FIELDS)} change at runtime; DELETE "
                                                     "and POST the camera to change the rest" for k in said], len(other)))
        if not body:  # (answered 200 with nothing changed: a client that sent the wrong body learnt nothing)
            raise HTTPException(422, detail=[f"nothing to change: give one or more of {', '.join(RUNTIME_FIELDS)}"])
        self._need_tracking(body)
        added_ms = await asyncio.to_thread(self.registry.added_ms, camera_id)
        size = await asyncio.to_thread(last_frame_size, self.client, self.keys, camera_id, added_ms)
        drawn = await asyncio.to_thread(stored_pixel_frames, self.client, self.keys, camera_id)

        def fits(camera: CameraConfig) -> None:
            """Pixel zones and lines inside the frames it sends now, checked by an event engine as
            the camera's takes them: those it has seen in another frame size, unchanged, scaled from
            it (after a change of resolution they may lie outside the new frame's pixels as written)."""
            if size is not None:
                engine = EventEngine.for_camera(camera, track_buffer=1)
                engine.seed_pixel_sizes(drawn)
                engine.geometry(*size)

        try:
            camera = await asyncio.to_thread(self.registry.set_geometry, camera_id, body, fits)
        except ValidationError as exc:
            raise HTTPException(422, detail=await asyncio.to_thread(_problems, exc)) from None
        except GeometryError as exc:  # accepted, it would stop the camera at its next frame
            raise HTTPException(422, detail=[str(exc)]) from None
        except LookupError as exc:
            raise HTTPException(409, detail=str(exc)) from None
        if camera is None:
            raise HTTPException(404, detail=await self._unknown(camera_id))
        return {"id": camera.id, **{name: getattr(camera, name) for name in RUNTIME_FIELDS}}

    @app.delete("/cameras/{camera_id}")
    async def remove_camera(self, camera_id: str) -> dict[str, Any]:
        if not await asyncio.to_thread(self.registry.remove, camera_id):
            raise HTTPException(404, detail=await self._unknown(camera_id))
        await asyncio.to_thread(self.client.delete, self.keys.view_jpeg(camera_id))  # its live image goes with it
        return {"id": camera_id, "removed": True}

    # --- the live view (deployments/live.py) ---------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    async def page(self) -> HTMLResponse:
        """Every camera with its state, fps, lag, drops, objects and live annotated image."""
        return self.live.page()

    @app.get("/view")
    async def view_status(self) -> dict[str, Any]:
        return self.live.status()

    @app.api_route("/cameras/{camera_id}/snapshot.jpg", methods=["GET", "HEAD"])
    async def snapshot(self, camera_id: str) -> Response:
        """(HEAD too: a monitor's ``curl -I`` gets the answer GET would, without the image.)"""
        return await self.live.snapshot(camera_id)

    @app.get("/cameras/{camera_id}/live")
    async def live_stream(self, camera_id: str) -> StreamingResponse:
        return await self.live.live(camera_id)

    @app.get("/cameras/{camera_id}/explain", response_class=Response)
    async def explain(self, camera_id: str, object_index: int = Query(..., alias="object", ge=0),
                      seq: int | None = Query(None, ge=0), method: str = "auto",
                      masks: int = Query(400, ge=16, le=4000)) -> Response:
        """A PNG: the heat map of what drove object ``object`` of the newest kept frame (or ``seq``);
        ``deployments/explain.py``."""
        return await self.explainer.explain(camera_id, object_index, seq=seq, method=method, masks=masks)

    @app.get("/status")
    async def status(self) -> dict[str, Any]:
        """The answering decoder replica's status, with every replica's cameras and a line per
        replica from what they share in Redis (`pipeline/decoder_status.py`)."""
        try:  # (no decoder replica running, restarting: Serve's router waits for one without end)
            own = await answer_within(self.decoder.status.remote(), DECODER_ANSWER_S)
        except asyncio.TimeoutError:
            raise HTTPException(503, detail=f"no decoder replica answered within {DECODER_ANSWER_S:g} s "
                                            "(starting or restarting)", headers={"Retry-After": "2"}) from None
        except Exception as exc:  # its replica died during the call, a full queue, a redeploy
            raise HTTPException(503, detail=f"the decoder replica did not answer ({type(exc).__name__}: "
                                            "starting, restarting or overloaded)",
                                headers={"Retry-After": "2"}) from None
        shared = await asyncio.to_thread(read_shared_or_none, self.client, self.keys)
        return merged_status(own, shared or [], complete=shared is not None)

    # --- hot swap of model weights (pipeline/lifecycle/swap.py) ---------------------------------

    @app.get("/models")
    async def list_models(self) -> list[dict[str, Any]]:
        """Each model deployment: the weights it should serve, and what each replica serves."""
        return await self.swaps.listing()

    @app.put("/models/{deployment}")
    async def swap_model(self, deployment: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        """``{"weights": PATH, "card": CARD?, "timeout_s": S?}``: validated here first (422 and
        nothing changes when the file is bad), then rolled out replica by replica; answers when
        every replica serves it (404 unknown deployment, 409 a swap in progress, 504 still rolling)."""
        try:
            return await self.swaps.swap(deployment, body)
        except SwapError as exc:
            raise HTTPException(exc.status, detail=exc.errors) from None
