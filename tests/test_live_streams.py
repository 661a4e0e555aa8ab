"""MJPEG responses of the live view (deployments/live.py) against a real redis-server, without
the graph: ``view.max_streams`` holds when viewers arrive together, a place is given back however
a response ends, and a stream ends when its camera stops or is removed."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from fastapi import HTTPException
from starlette.requests import ClientDisconnect

from deployments.live import LiveView
from pipeline.config import CameraConfig
from pipeline.config_view import ViewConfig
from pipeline.registry import CameraRegistry
from pipeline.schema import Detections, FrameMeta, FrameResult
from pipeline.streams import StreamKeys, connect_redis
from pipeline.view import ViewHub, encode_jpeg

from .waiting import hold, wait_for

KEYS = StreamKeys("lstream")


def online_camera(client, registry, cid: str) -> None:
    registry.add(CameraConfig(id=cid, url=f"rtsp://cam/{cid}"))
    client.hset(KEYS.camera(cid), mapping={"state": "online"})
    view_frame(client, cid, 1)


def view_frame(client, cid: str, seq: int) -> None:
    """The camera's live view JPEG of frame ``seq``, as its decoder writes it."""
    jpeg = encode_jpeg(np.zeros((48, 64, 3), np.uint8), comment=f"percept camera={cid} seq={seq} ts={seq}.000")
    client.set(KEYS.view_jpeg(cid), jpeg, px=60_000)


def test_viewers_arriving_together_stay_within_max_streams_and_give_their_place_back(redis_server):
    client = redis_server.client()
    registry = CameraRegistry(client, KEYS)
    online_camera(client, registry, "door")
    live = LiveView(ViewConfig(max_streams=2), client, KEYS, registry)

    async def main():
        answers = await asyncio.gather(*(live.live("door") for _ in range(5)), return_exceptions=True)
        accepted = [a for a in answers if not isinstance(a, Exception)]
        refused = [a for a in answers if isinstance(a, HTTPException)]
        assert len(accepted) == 2 and len(refused) == 3, answers
        assert all(r.status_code == 429 for r in refused)
        assert live.streams == 2
        parts = accepted[0].body_iterator
        assert b"X-Percept-Frame: percept camera=door seq=1" in await parts.__anext__()
        await parts.aclose()  # the viewer went away mid-stream
        assert live.streams == 1

        async def receive():
            return {"type": "http.disconnect"}

        async def gone(message):  # the client went away before the first part
            raise OSError("connection reset by peer")

        scope = {"type": "http", "asgi": {"spec_version": "2.4"}, "method": "GET", "headers": []}
        with pytest.raises((OSError, ClientDisconnect)):  # (Starlette's word for the OSError on ASGI 2.4)
            await accepted[1](scope, receive, gone)
        assert live.streams == 0
        with pytest.raises((OSError, ClientDisconnect)):
            await accepted[0](scope, receive, gone)  # given back once only
        assert live.streams == 0

    asyncio.run(main())


@pytest.mark.parametrize("how", ["stopped", "removed", "removed-while-online"])
def test_a_stream_ends_when_its_camera_stops_or_is_removed(redis_server, how):
    """``removed-while-online``: the stream looked at the registry only once the state said
    stopped or failed: a DELETE left it running, the camera watched, until the decoder's next
    round stopped it."""
    client = redis_server.client()
    registry = CameraRegistry(client, KEYS)
    online_camera(client, registry, "door")
    live = LiveView(ViewConfig(max_streams=1, watch_ttl_s=1), client, KEYS, registry)

    async def main():
        parts = (await live.live("door")).body_iterator
        await parts.__anext__()
        if how == "stopped":
            client.hset(KEYS.camera("door"), "state", "stopped")
        elif how == "removed":  # DELETE /cameras/door: the entry and, once the decoder let go, the camera's keys
            registry.remove("door")
            client.delete(KEYS.view_jpeg("door"), KEYS.view_want("door"), KEYS.camera("door"))
        else:
            registry.remove("door")  # state "online", its JPEG still there
        # well within stream_max_s (600 s); a removal at the next look at the registry
        rest = await asyncio.wait_for(_drain(parts), 5 if how == "removed-while-online" else 10)
        assert rest == []
        assert live.streams == 0
        if how == "removed":
            assert not client.exists(KEYS.view_want("door")), "a removed camera is marked watched again"

    asyncio.run(main())


def test_with_the_view_off_the_page_and_every_image_route_answer_404_saying_so(redis_server):
    """``view.enabled: false`` is "no view routes": the page too (it was served, and every tile
    on it then waited for images that 404)."""
    client = redis_server.client()
    registry = CameraRegistry(client, KEYS)
    online_camera(client, registry, "gate")
    live = LiveView(ViewConfig(enabled=False), client, KEYS, registry)
    with pytest.raises(HTTPException) as page:
        live.page()
    assert page.value.status_code == 404 and page.value.detail == "the live view is off (view.enabled: false)"

    async def main():
        for route in (live.snapshot, live.live):
            with pytest.raises(HTTPException) as caught:
                await route("gate")
            assert caught.value.status_code == 404, route
            assert caught.value.detail["message"] == "the live view is off (view.enabled: false)"

    asyncio.run(main())
    assert LiveView(ViewConfig(), client, KEYS, registry).page().status_code == 200


def test_a_stream_goes_on_through_its_camera_moving_to_another_decoder(redis_server):
    """A scale-up or a redeploy moves the camera: the old owner says `stopped`, the next one
    `connecting` and `online` a few seconds later. The stream ended at `stopped` (an <img> does
    not reconnect); it goes on, and ends only when the camera stays stopped."""
    client = redis_server.client()
    registry = CameraRegistry(client, KEYS)
    online_camera(client, registry, "door")
    live = LiveView(ViewConfig(max_streams=1, watch_ttl_s=1, fps=10), client, KEYS, registry)

    async def main():
        parts = (await live.live("door")).body_iterator
        await parts.__anext__()
        client.hset(KEYS.camera("door"), "state", "stopped")  # the old owner let go
        nxt = asyncio.ensure_future(parts.__anext__())  # the stream runs on, checking the state meanwhile
        await asyncio.to_thread(hold, 1.0, "the camera's move lasting a second (the stream checks every watch_ttl_s / 3)")
        client.hset(KEYS.camera("door"), "state", "online")  # the next owner runs it
        view_frame(client, "door", 2)
        part = await asyncio.wait_for(nxt, 10)
        assert b"seq=2" in part
        client.hset(KEYS.camera("door"), "state", "stopped")  # for good (a file read to its end)
        rest = await asyncio.wait_for(_drain(parts), 15)
        assert rest == [] and live.streams == 0

    asyncio.run(main())


async def _drain(parts):
    return [p async for p in parts]


def test_a_stream_rides_out_a_short_redis_outage(redis_server):
    """One Redis error inside the stream's loop ended the response mid-body."""
    client = connect_redis(redis_server.url)  # as the API's (redis_from_config)
    client.config_set("appendfsync", "always")  # the camera's keys survive the restart
    registry = CameraRegistry(client, KEYS)
    online_camera(client, registry, "door")
    live = LiveView(ViewConfig(max_streams=1, watch_ttl_s=2, fps=10), client, KEYS, registry)

    async def main():
        parts = (await live.live("door")).body_iterator
        await parts.__anext__()
        nxt = asyncio.ensure_future(parts.__anext__())
        redis_server.kill()
        await asyncio.to_thread(hold, 1.0, "Redis down for a second under a running stream")
        redis_server.start()
        fresh = redis_server.client()
        view_frame(fresh, "door", 3)
        assert b"seq=3" in await asyncio.wait_for(nxt, 15)
        await parts.aclose()
        assert live.streams == 0

    asyncio.run(main())


def test_a_camera_removed_a_moment_ago_is_404_not_503(redis_server):
    """The id list is kept for 2 s (read again on a miss at most every 0.25 s): a camera deleted
    within them answered 503 "pending" (its state gone) or "stopped" (its decoder stopping it),
    as if it were still there. The registry is asked, for that camera, with its state."""
    client = redis_server.client()
    registry = CameraRegistry(client, KEYS)
    registry.add(CameraConfig(id="gate", url="rtsp://cam/gate"))
    live = LiveView(ViewConfig(), client, KEYS, registry)

    async def main():
        with pytest.raises(HTTPException) as first:
            await live.snapshot("gate")  # listed, no state yet: 503
        assert first.value.status_code == 503
        registry.remove("gate")  # (the list read a moment ago names it)
        with pytest.raises(HTTPException) as gone:
            await live.snapshot("gate")
        assert gone.value.status_code == 404, gone.value.detail
        # its decoder stops it and says so before the hash goes: 503 "stopped" while the list held it
        registry.add(CameraConfig(id="dock", url="rtsp://cam/dock"))
        client.hset(KEYS.camera("dock"), mapping={"state": "stopped"})
        with pytest.raises(HTTPException) as listed:
            await live.snapshot("dock")  # listed (the list read again), stopped: 503
        assert listed.value.status_code == 503 and "stopped" in str(listed.value.detail), listed.value.detail
        registry.remove("dock")
        with pytest.raises(HTTPException) as stopped:
            await live.snapshot("dock")
        assert stopped.value.status_code == 404, stopped.value.detail

    asyncio.run(main())


def test_an_online_camera_with_no_view_frame_answers_503_not_a_stream_of_nothing(redis_server, monkeypatch):
    """Privacy failing closed (or a decoder whose view never draws): the camera is online, no JPEG
    ever comes. The MJPEG answer was a 200 with no part for `view.stream_max_s` (600 s), holding
    one of `view.max_streams` places and keeping the camera watched; a snapshot answered 503."""
    import deployments.live as live_module

    monkeypatch.setattr(live_module, "FIRST_FRAME_S", 1.0)
    client = redis_server.client()
    registry = CameraRegistry(client, KEYS)
    online_camera(client, registry, "dark")
    client.delete(KEYS.view_jpeg("dark"))
    live = LiveView(ViewConfig(max_streams=1), client, KEYS, registry)

    async def main():
        for route in (live.live, live.snapshot):
            with pytest.raises(HTTPException) as caught:
                await asyncio.wait_for(route("dark"), 10)
            assert caught.value.status_code == 503, route
            assert caught.value.detail["last_error"] == "no view frame yet", caught.value.detail
            assert live.streams == 0
        view_frame(client, "dark", 4)  # drawn at last: a stream starts with it
        parts = (await live.live("dark")).body_iterator
        assert b"seq=4" in await asyncio.wait_for(parts.__anext__(), 10)
        await parts.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("route", ["snapshot", "live"])
def test_a_camera_removed_while_its_first_frame_is_awaited_is_404_at_once(redis_server, route):
    """A snapshot waiting for the first frame (6 s and more) never looked at the camera again: a
    DELETE meanwhile got a 503 "online" at the deadline, the camera marked watched all along (its
    old owner drawing it again until it let go)."""
    client = redis_server.client()
    registry = CameraRegistry(client, KEYS)
    online_camera(client, registry, "gate")
    client.delete(KEYS.view_jpeg("gate"))
    live = LiveView(ViewConfig(), client, KEYS, registry)

    async def main():
        waiting = asyncio.ensure_future(getattr(live, route)("gate"))
        await asyncio.to_thread(wait_for, lambda: client.exists(KEYS.view_want("gate")), 10, "the request watching")
        registry.remove("gate")  # the decoder says online until it lets go
        with pytest.raises(HTTPException) as caught:
            await asyncio.wait_for(waiting, 3)  # (its first-frame deadline: 6 s)
        assert caught.value.status_code == 404, caught.value.detail
        assert live.streams == 0

    asyncio.run(main())


def test_a_stream_slower_than_its_watch_ttl_keeps_delivering_frames(redis_server):
    """The stream polled at twice ``view.fps`` and marked the camera watched only then: at
    ``fps: 0.2`` with ``watch_ttl_s: 1`` (both allowed) the mark and each drawn JPEG expired
    between polls, and the decoder's frames went to nobody (1 part in 21 s)."""
    client = redis_server.client()
    registry = CameraRegistry(client, KEYS)
    camera = CameraConfig(id="lobby", url="rtsp://cam/lobby")
    registry.add(camera)
    client.hset(KEYS.camera("lobby"), mapping={"state": "online"})
    cfg = ViewConfig(fps=0.2, watch_ttl_s=1)
    hub = ViewHub(cfg, client, KEYS)
    view, stop = hub.camera("lobby"), threading.Event()

    def decoder() -> None:  # a 10 fps camera offering each frame to the view, as a decoder does
        seq = 0
        while not stop.is_set():
            seq += 1
            meta = FrameMeta("lobby", seq, time.time(), None, 64, 48)
            view.offer(np.zeros((48, 64, 3), np.uint8), FrameResult(meta, Detections(), {}, {}), camera)
            stop.wait(0.1)  # (the camera's pace, not a wait for anything)

    feeder = threading.Thread(target=decoder, daemon=True)
    feeder.start()
    live = LiveView(cfg, client, KEYS, registry)

    async def main() -> set[bytes]:
        parts = (await live.live("lobby")).body_iterator
        frames: set[bytes] = set()
        deadline = time.monotonic() + 30  # (a frame each 5 s: 3 in ~10 s, on a loaded machine more)
        while len(frames) < 3 and time.monotonic() < deadline:
            try:
                part = await asyncio.wait_for(parts.__anext__(), max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            frames.add(part.split(b"X-Percept-Frame: ")[1].split(b"\r\n")[0])
        await parts.aclose()
        return frames

    try:
        frames = asyncio.run(main())
    finally:
        stop.set()
        feeder.join(5)
        hub.close()
    assert len(frames) >= 3, frames
