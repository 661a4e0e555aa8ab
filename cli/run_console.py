"""`percept run`'s console (cli/run.py): a line per camera every second from Redis, until the
run's duration ends or Ctrl-C / SIGTERM, riding out a Redis outage, and the private Ray's end
said as it happens (cli/ray_watch.py)."""

from __future__ import annotations

import json
import signal
import time
from typing import Any, Callable

from pipeline.redact import redact

from .common import EXIT_INTERRUPTED, RedisOutage
from .ray_watch import RayGone, ray_lost


def registered(client: Any, keys: Any, configured: list[str]) -> Callable[[], list[str]]:
    """The cameras to show, read each time: the registry's (cameras added or removed through the
    API included), the config's first in their order; the config's while the registry is empty."""
    from pipeline.registry import CameraRegistry

    registry = CameraRegistry(client, keys)

    def cameras() -> list[str]:
        ids = set(registry.ids())
        return [c for c in configured if c in ids] + sorted(ids - set(configured)) if ids else list(configured)

    return cameras


def monitor_cameras(client: Any, keys: Any, cameras: list[str] | Callable[[], list[str]], *, duration: float | None,
                    show: bool, outage: RedisOutage, keep_up: Callable[[], None] | None = None) -> int:
    """Until the duration ends or Ctrl-C / SIGTERM: one live line per camera every second
    (``cameras``: their ids, or a function giving them each time).
    A Redis outage prints one line and the loop carries on; ``keep_up`` (every second) starts a
    private Redis that ended again, and raises `RayGone` when the private Ray's daemons ended."""
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    deadline = time.monotonic() + duration if duration else None
    try:
        while not stop["flag"] and (deadline is None or time.monotonic() < deadline):
            time.sleep(1.0)
            if keep_up is not None and not stop["flag"]:  # (a SIGTERM to the whole group stops Redis too)
                try:
                    keep_up()
                except RayGone as exc:
                    if stop["flag"]:  # (a SIGTERM to the whole group while keep_up ran: the stop, not a fault)
                        break
                    return ray_lost(exc)
            if show:
                listed = (lambda: cameras) if isinstance(cameras, list) else cameras
                for line in outage.attempt(lambda: status_lines(client, keys, listed()), []):
                    print(line, flush=True)
            elif not stop["flag"]:
                outage.attempt(client.ping, None)  # --quiet: no status lines, still the outage's two
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


def status_lines(client: Any, keys: Any, cameras: list[str]) -> list[str]:
    import redis

    from pipeline.streams import number, redis_unavailable, states_as_seen

    states, refused = states_as_seen(client, keys, cameras)
    lines = [f"redis refuses writes ({refused}): every camera's results wait in its decoder's outage buffer"] if refused else []
    for cam in cameras:
        st = states.get(cam, {})
        counts: dict[str, int] = {}
        e2e = "-"
        try:
            last = client.xrevrange(keys.detections(cam), count=1)
        except redis.ResponseError as exc:  # a key not written by percept
            if redis_unavailable(exc):
                raise
            last = []
        try:
            if last:
                payload = json.loads(last[0][1][b"json"])
                for obj in payload["objects"]:
                    counts[obj["category"]] = counts.get(obj["category"], 0) + 1
                e2e = f"{payload['latency_ms'].get('total', 0):.0f} ms"
        except (KeyError, ValueError, TypeError, AttributeError, RecursionError):  # an entry not as percept writes them
            counts, e2e = {}, "-"
        objs = " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"
        err = f"  error: {redact(st['last_error'])}" if st.get("last_error") and st.get("state") != "online" else ""
        lines.append(
            f"{cam:<12} {st.get('state', 'pending'):<12} {number(st.get('fps')):5.1f} fps  "
            f"dropped {st.get('dropped', '0'):>4}  objects {objs:<28} e2e {e2e}{err}"
        )
    return lines
