"""Every decoder replica's status in one answer (``GET /status``).

A Serve handle reaches one replica per call, so each decoder replica writes its own status
(`share_status_every`, every 2 s) to the hash ``<prefix>:decoders`` (field: its owner id), and the
API merges what it finds there with the answering replica's live status (`merged_status`). An
entry older than ``max_age_s`` (its replica is gone) is left out and removed. Ages are measured
on Redis's own clock (``TIME``), so replicas on hosts whose clocks disagree still agree on them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import orjson
import redis

from .streams import StreamKeys, redis_now, redis_unavailable

log = logging.getLogger("percept.status")

SHARE_EVERY_S = 2.0
MAX_AGE_S = 3 * SHARE_EVERY_S  # a replica that wrote nothing for this long is gone


def share_status(client: redis.Redis, keys: StreamKeys, status: dict[str, Any], now: float | None = None) -> None:
    """This replica's status, stamped ``now`` (default: `redis_now`)."""
    now = redis_now(client) if now is None else now
    client.hset(keys.decoders, status["owner"], orjson.dumps({**status, "written_at": now}, default=str))


async def share_status_every(status: Callable[[], Awaitable[dict[str, Any]]], client: redis.Redis,
                             keys: StreamKeys, interval_s: float = SHARE_EVERY_S) -> None:
    """A decoder replica's task: its status written every ``interval_s`` (a Redis outage skips
    a write, logged once)."""
    down = False
    while True:
        try:
            await asyncio.to_thread(share_status, client, keys, await status())
            down = False
        except redis.RedisError as exc:
            if not down:
                log.warning("decoder status not shared (%s); retrying", type(exc).__name__)
            down = True
        except Exception:  # anything else (a status entry nobody foresaw): this write only, never the task
            if not down:
                log.exception("decoder status not shared; retrying")
            down = True
        await asyncio.sleep(interval_s)


def read_shared(client: redis.Redis, keys: StreamKeys, now: float | None = None,
                max_age_s: float = MAX_AGE_S) -> list[dict[str, Any]]:
    """The statuses replicas wrote within ``max_age_s`` of ``now`` (default: `redis_now`; older
    ones are removed), with ``age_s``."""
    now = redis_now(client) if now is None else now
    fresh, stale = [], []
    for owner, raw in client.hgetall(keys.decoders).items():
        try:
            status = orjson.loads(raw)
            age = now - float(status.pop("written_at"))
        except (ValueError, KeyError, TypeError, AttributeError):  # (JSON, not an object: not a replica's)
            stale.append(owner)
            continue
        cameras = status.get("cameras", {})
        if not (isinstance(cameras, dict) and all(isinstance(c, dict) for c in cameras.values())):
            stale.append(owner)  # (another version's or a foreign writer's shape: /status answered 500 on it)
        elif age > max_age_s:
            stale.append(owner)
        else:
            fresh.append({**status, "age_s": round(max(0.0, age), 1)})
    if stale:
        client.hdel(keys.decoders, *stale)
    return fresh


def live_decoders(client: redis.Redis, keys: StreamKeys) -> int:
    """How many decoder replicas shared their status within the last two intervals
    (`CameraSupervisor`'s live count: a replica gone counts for at most that long)."""
    return sum(1 for s in read_shared(client, keys) if s["age_s"] <= 2 * SHARE_EVERY_S)


def owner_tries(client: redis.Redis, keys: StreamKeys, configured: int) -> int:
    """Calls to decoder replicas Serve picks at random until the one running a camera answers:
    10 a replica, for as many as are running (`live_decoders`; a Serve config may run more than
    the config says, ``num_replicas`` raised in it: 12 tries for 8 replicas missed the owner one
    time in five) or the config's ``configured``, whichever is more: missing the owner of R
    replicas has a chance of (1 - 1/R)^(10R) < 5e-5. Redis away: the config's."""
    try:
        running = live_decoders(client, keys)
    except redis.RedisError:
        running = 0
    return 10 * max(configured, running, 1) + 2


def forget_status(client: redis.Redis, keys: StreamKeys, owner: str) -> None:
    """A replica shutting down takes its status out (best effort: a killed one ages out)."""
    try:
        client.hdel(keys.decoders, owner)
    except redis.RedisError:
        pass


def merged_status(own: dict[str, Any], shared: list[dict[str, Any]], *, complete: bool = True) -> dict[str, Any]:
    """The answering replica's status (its own keys as before) with ``cameras`` holding every
    replica's cameras (each with its ``owner`` and ``pid``) and ``decoders`` a line per replica.
    ``complete``: False when the shared statuses could not be read (Redis unavailable)."""
    replicas = [{**own, "age_s": 0.0}] + [s for s in shared if s.get("owner") != own.get("owner")]
    cameras: dict[str, Any] = {}
    decoders = []
    # the freshest wins a camera, the answering replica's own on a tie (a shared status written
    # 40 ms ago reads age 0.0: it won, and a camera just handed over here showed its old owner's)
    for replica in sorted(replicas, key=lambda r: (r["age_s"], r is not replicas[0]), reverse=True):
        for cid, cam in (replica.get("cameras") or {}).items():
            cameras[cid] = {**cam, "owner": replica.get("owner"), "pid": replica.get("pid")}
    for replica in replicas:  # (a camera that cannot run: failed, unless a replica runs it)
        for cid, error in (replica.get("cannot_run") or {}).items():
            cameras.setdefault(cid, {"camera": cid, "state": "failed", "last_error": error, "owner": None, "pid": None})
        line = {k: v for k, v in replica.items() if k not in ("cameras", "cannot_run")}
        decoders.append({**line, "cameras": sorted(replica.get("cameras") or {})})
    return {**own, "cameras": dict(sorted(cameras.items())), "decoders": decoders, "complete": complete}


def read_shared_or_none(client: redis.Redis, keys: StreamKeys) -> list[dict[str, Any]] | None:
    """`read_shared`, or None while Redis is unavailable (the answering replica's view stands)."""
    try:
        return read_shared(client, keys)
    except redis.RedisError as exc:
        if not redis_unavailable(exc):
            raise
        return None
