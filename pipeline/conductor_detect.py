"""How a camera's frame asks the detector (pipeline/conductor.py): under a deadline, with one
retry, and a cancel of the request told apart from a cancel of the frame."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .models import DetectorInput
from .schema import Detections

RETRY_PAUSE_S = 0.2  # before the one retry: a replica restarting, a request lost


async def detect_with_retry(detect: Callable[[DetectorInput], Awaitable[Detections | Exception]],
                            inp: DetectorInput, timeout_s: float) -> Detections:
    """The frame's detections; after a failure, one retry (a replica restart or a lost request),
    then the failure raised. A cancel of the request (Ray Serve: a replica draining, a model
    swap) is a failure like another; only a cancel of the calling task (the camera's ``stop()``)
    is re-raised as it is."""
    for attempt in (1, 2):
        try:
            # (not wait_for: on 3.11 an answer in the loop turn of stop()'s cancel dropped the
            # cancel, and the frame cut off at stop was published as well as counted failed)
            async with asyncio.timeout(timeout_s):
                result = await detect(inp)
            if isinstance(result, Exception):
                raise result
            return result
        except (Exception, asyncio.CancelledError) as exc:
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and (task is None or task.cancelling()):
                raise
            if attempt == 2:
                raise RuntimeError("the detector cancelled the request") if isinstance(
                    exc, asyncio.CancelledError) else exc
            await asyncio.sleep(RETRY_PAUSE_S)
    raise AssertionError("unreachable")
