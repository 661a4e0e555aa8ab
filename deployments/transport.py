"""How a decoder calls its detectors and classifiers (``decoder.transport``).

``grpc``: Serve's direct channel to the replica (a handle with ``_by_reference=False``): the
call goes over the replica's own inter-deployment gRPC server, its arguments and answer pickled,
instead of a Ray actor task through each side's core worker. Measured on the bench's latency
phase (4 cameras at 50 % load, three same-minute A/B pairs): capture → publish p50 34.4 / 26.3 /
27.1 ms against 39.7 / 32.7 / 28.9 ms; CPU per published frame 2–3 ms less in the decoder and
~2 ms less in the detector. ``actor``: Ray actor calls (Serve's default; an argument may then be
an ``ObjectRef``, which Ray resolves before the call runs).

A Serve without the by-value options (older than the one this was measured with) gets
``actor``, said once in the log. The channel takes messages up to `MAX_MESSAGE_BYTES` (Serve's
default is gRPC's 4 MB; a frame sent as pixels, not through shared memory, is imgsz² × 3 bytes:
4.9 MB at 1280).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from typing import Any

from ray.serve.handle import DeploymentHandle

log = logging.getLogger("percept.transport")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Serve reads it in the caller (its channel) and in the replica (its server): graph.SERVE_ENV
MESSAGE_ENV = {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(MAX_MESSAGE_BYTES)}
_BY_VALUE = {"_by_reference": False, "request_serialization": "pickle", "response_serialization": "pickle"}


@functools.cache
def by_value_supported() -> bool:
    """Whether this Serve's handles take the by-value (gRPC) options (looked up, and a missing
    one logged, once per process)."""
    params = inspect.signature(DeploymentHandle.options).parameters
    supported = all(name in params for name in _BY_VALUE)
    if not supported:
        log.warning("decoder.transport grpc: this Ray Serve has no by-value handles; using actor calls")
    return supported


def with_transport(handle: DeploymentHandle, transport: str) -> DeploymentHandle:
    """``handle`` set up for ``transport`` (``grpc`` or ``actor``)."""
    if transport == "actor":
        return handle
    if transport != "grpc":
        raise ValueError(f"decoder.transport: unknown transport {transport!r} (grpc or actor)")
    return handle.options(**_BY_VALUE) if by_value_supported() else handle


def transport_of(handle: Any) -> str:
    """The transport a handle's calls take (what `with_transport` set, read back from it)."""
    options = getattr(handle, "handle_options", None)
    return "actor" if getattr(options, "_by_reference", True) else "grpc"


# How long the API waits for a decoder replica's answer: with none running (starting, restarting
# after a crash) Serve's router waits for one without end, and the client with it.
DECODER_ANSWER_S = 10.0


async def answer_within(response: Any, seconds: float) -> Any:
    """A handle call's answer, or `asyncio.TimeoutError` after ``seconds`` (the call cancelled)."""
    async def answer() -> Any:
        return await response

    try:
        return await asyncio.wait_for(answer(), seconds)
    except asyncio.TimeoutError:
        cancel = getattr(response, "cancel", None)
        if callable(cancel):
            cancel()
        raise
