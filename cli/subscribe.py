"""`percept subscribe`: detection payloads as JSON lines, from XREAD or a consumer group.
A Redis outage prints one line and reading resumes after the last entry seen when it is back."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from pipeline.config import CONFIG_ERROR_EXIT_CODE, load_config
from pipeline.config_urls import redis_url_problem
from pipeline.redact import redact, redact_url

from .common import (EXIT_INTERRUPTED, EXIT_UNAVAILABLE, POSITIVE_INT, RedisOutage, camera_id_arg, fail, name_arg,
                     number_arg, prefix_arg, redis_url_arg)
from .held import signals_held


def register(sub: Any) -> None:
    s = sub.add_parser("subscribe", help="print detection (or event) payloads as JSON lines")
    s.add_argument("cameras", nargs="+", type=camera_id_arg, help="camera ids (as cameras[].id)")
    s.add_argument("--events", action="store_true",
                   help="the cameras' track, zone and line events (<prefix>:events:<camera>) instead of detections")
    s.add_argument("-c", "--config", help="read redis url/prefix from this config")
    s.add_argument("--redis", type=redis_url_arg, help="redis URL (default: config, PERCEPT_REDIS_URL, localhost)")
    s.add_argument("--prefix", type=prefix_arg, help="stream prefix (default: config or 'percept')")
    s.add_argument("--group", type=name_arg, help="consumer group (XREADGROUP + XACK)")
    s.add_argument("--consumer", type=name_arg,
                   help="consumer name within the group (default: <host>-<pid>, this process's own)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--from-start", action="store_true", help="from the oldest entry kept")
    g.add_argument("--from", dest="from_id", type=_entry_id, help="from after this entry id MS-SEQ; a bare MS: from that millisecond on, its frames included")
    s.add_argument("--count", type=POSITIVE_INT, help="stop after N messages")
    s.add_argument("--timeout", type=number_arg(float, 0.0), help="stop after S seconds without messages")
    s.add_argument("--claim-idle-ms", type=number_arg(int, 0, 30 * 86_400_000), default=None,
                   help="with --group: reclaim entries pending this long on dead consumers (default 30000, at most 30 days)")
    s.set_defaults(func=_subscribe)


def _entry_id(value: str) -> str:
    """argparse type of ``--from``: a stream entry id, ``<ms>`` or ``<ms>-<seq>``."""
    if not re.fullmatch(r"\d+(-\d+)?", value) or any(int(part) >= 2**64 for part in value.split("-")):
        raise argparse.ArgumentTypeError(f"must be an entry id like 1733000000000-5 (or its ms part), got {value!r}")
    return value


def _not_streams(client: Any, keys: Any, cameras: list[str], events: bool) -> list[str]:
    """The cameras whose stream key holds another type (one read covers every camera: Redis's
    WRONGTYPE stopped them all, naming none), said as ``<key> (camera c) is a string``; none
    where the user may not ask a key's type."""
    import redis

    wrong = []
    for camera in dict.fromkeys(cameras):
        key = keys.events(camera) if events else keys.detections(camera)
        try:
            kind = client.type(key)
        except redis.ResponseError:  # (NOPERM: a user allowed the stream commands only)
            return []
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind not in ("none", "stream"):
            wrong.append(f"{key} (camera {camera}) is a {kind}, not a stream")
    return wrong


def _turned(client: Any, prefix: str | None, args: argparse.Namespace) -> list[str]:
    """`_not_streams` after a read's WRONGTYPE (a camera's stream deleted and its key written as
    another type while reading: the error named none); none when Redis cannot say."""
    import redis

    from pipeline.streams import StreamKeys

    if client is None:
        return []
    try:
        return _not_streams(client, StreamKeys(prefix or "percept"), args.cameras, args.events)
    except redis.RedisError:
        return []


def _read_after(from_id: str) -> str:
    """The id Redis reads after (XREAD and a new group's start exclude it) for ``--from``: an id
    as given; a bare MS is read by Redis as MS-0, which excluded that millisecond's first entry
    (a frame of seq 0, an event numbered 0): the last id of the millisecond before."""
    if "-" in from_id:
        return from_id
    ms = int(from_id)
    return f"{ms - 1}-{2**64 - 1}" if ms > 0 else "0-0"


def _redis_source(args: argparse.Namespace) -> tuple[str | None, str | None, Any]:
    """(url, prefix, redis config section) from the options, the config and its state dir."""
    url, prefix, redis_cfg = args.redis, args.prefix, None
    if args.config:
        cfg = load_config(args.config, camera_env=False)  # no camera secrets to read the streams
        redis_cfg = cfg.redis
        prefix = prefix or cfg.redis.stream_prefix
        if not url:
            url = cfg.redis.url
            if not url:
                marker = Path(cfg.state_dir) / "redis.url"
                if not marker.exists():
                    raise FileNotFoundError(f"{args.config}: no redis.url and no running private server ({marker} missing)")
                try:
                    url = marker.read_text().strip()
                except (OSError, UnicodeDecodeError) as exc:
                    raise ValueError(f"{marker}: cannot read the private server's URL: {exc}") from None
                if (problem := redis_url_problem(url)) is not None:
                    raise ValueError(f"{marker}: {problem} (written by `percept run`? remove it)")
    if not url and os.environ.get("PERCEPT_REDIS_URL"):
        url = os.environ["PERCEPT_REDIS_URL"]
        problem = redis_url_problem(url)
        if problem:
            raise ValueError(f"PERCEPT_REDIS_URL: {problem}, got {redact_url(url)!r}")
    return url or "redis://127.0.0.1:6379/0", prefix, redis_cfg


def _say_missing(client: Any, keys: Any, cameras: list[str], events: bool) -> None:
    """One line for the cameras that have no stream yet (or an empty one), naming those
    registered: a mistyped id was waited for without a word."""
    from pipeline.registry import CameraRegistry

    # empty, not absent: a --group reader's first run made the stream (XGROUP CREATE MKSTREAM)
    missing = [c for c in cameras if not client.xlen(keys.events(c) if events else keys.detections(c))]
    if missing:
        known = ", ".join(sorted(CameraRegistry(client, keys).ids())) or "none"
        print(f"percept: subscribe: no {'events' if events else 'stream'} yet for {', '.join(missing)} (cameras "
              f"registered: {known}); waiting for them", file=sys.stderr, flush=True)


def _open_subscriber(client: Any, keys: Any, args: argparse.Namespace, start: str) -> Any:
    """The reader of ``args.cameras`` (their streams checked first, a group joined or made); None
    when a key is not percept's stream (said)."""
    import redis

    from pipeline.subscribe import Subscriber

    try:
        _say_missing(client, keys, args.cameras, args.events)
    except redis.ResponseError:  # a user allowed the streams only (NOPERM): the notice is a courtesy
        pass
    if wrong := _not_streams(client, keys, args.cameras, args.events):
        fail(f"subscribe: {'; '.join(wrong)}: percept did not write it (another prefix?)", CONFIG_ERROR_EXIT_CODE)
        return None
    sub = Subscriber(client, keys, args.cameras, group=args.group, consumer=args.consumer, start=start,
                     claim_idle_ms=30_000 if args.claim_idle_ms is None else args.claim_idle_ms, events=args.events)
    if sub.joined and (args.from_start or args.from_id):
        where = "--from-start" if args.from_start else f"--from {args.from_id}"
        print(f"percept: subscribe: group {args.group} exists already on {', '.join(sub.joined)}: it reads on "
              f"from where the group is; {where} sets where a new group starts (to start over: another group "
              f"name, or XGROUP SETID <stream> {args.group} 0)", file=sys.stderr, flush=True)
    return sub


def _subscribe(args: argparse.Namespace) -> int:
    import redis

    from pipeline.streams import CREDENTIALS_REFUSED, StreamKeys, connect_redis, database_missing, redis_from_config

    if args.consumer and not args.group:
        return fail("subscribe: --consumer needs --group (a consumer is a member of a group)", CONFIG_ERROR_EXIT_CODE)
    if args.claim_idle_ms is not None and not args.group:  # (it was ignored without a word)
        return fail("subscribe: --claim-idle-ms needs --group (it reclaims a group's pending entries)",
                    CONFIG_ERROR_EXIT_CODE)
    try:
        url, prefix, redis_cfg = _redis_source(args)
    except FileNotFoundError as exc:
        return fail(str(exc), EXIT_UNAVAILABLE)
    except ValueError as exc:  # PERCEPT_REDIS_URL
        return fail(str(exc), CONFIG_ERROR_EXIT_CODE)
    start = "0" if args.from_start else (_read_after(args.from_id) if args.from_id else "$")
    outage = RedisOutage(url)
    sub = reading = printing = client = None
    printed: list[Any] = [None]  # the entry last printed whole
    terminated = []  # SIGTERM (systemd, docker stop): as Ctrl-C, the consumer leaves its group, exit 0
    main_thread = threading.current_thread() is threading.main_thread()  # (signals: the main thread's only)
    previous = signal.signal(signal.SIGTERM, lambda *_: terminated.append(1) or _interrupt()) if main_thread else None
    try:
        client = redis_from_config(redis_cfg.model_copy(update={"url": url})) if redis_cfg else connect_redis(url)
        outage.client = client
        client.ping()
        sub = _open_subscriber(client, StreamKeys(prefix or "percept"), args, start)
        if sub is None:
            return CONFIG_ERROR_EXIT_CODE
        reading = sub.messages(limit=args.count, idle_timeout_s=args.timeout, on_unreachable=outage.notice)
        for msg in reading:
            printing = msg
            # out whole (`printed` says so before a held Ctrl-C or SIGTERM takes effect)
            _print_whole(json.dumps(msg.payload, separators=(",", ":")), then=lambda m=msg: printed.__setitem__(0, m))
            # an outage between printing and acking: waited out up to --timeout (then exit 3);
            # the entry stays pending: printed again by this consumer (same --consumer) or claimed by another
            try:
                outage.until_back(lambda: sub.ack(msg), timeout_s=args.timeout)
                printing = None
            except redis.RedisError:
                if not outage.down:
                    raise
                break  # --timeout ended while Redis was away
        if not outage.down:
            _leave(sub)  # (best effort: a user allowed to read only, a group deleted meanwhile)
    except CREDENTIALS_REFUSED:
        raise  # (said as the other commands say it: `cli.main`)
    except redis.RedisError as exc:
        if missing := database_missing(exc):
            return fail(f"redis {redact_url(url)}: {missing}", CONFIG_ERROR_EXIT_CODE)
        if "WRONGTYPE" in str(exc) and (wrong := _turned(client, prefix, args)):  # a stream replaced mid-read
            return fail(f"subscribe: {'; '.join(wrong)} now: percept did not write it (another prefix?)",
                        CONFIG_ERROR_EXIT_CODE)
        return fail(f"redis {redact_url(url)}: {redact(str(exc))}", EXIT_UNAVAILABLE)
    except (KeyboardInterrupt, BrokenPipeError) as exc:  # Ctrl-C, SIGTERM; the reader of stdout went away
        if reading is not None:  # what it read and never printed (or not all): for the group's next reader at once
            reading.close()
            if printing is not None and not outage.down:  # (printed whole: acked, not printed again by the next)
                _ack_quietly(sub, printing) if printed[0] is printing else sub.release([printing])
        _leave(None if outage.down else sub)
        if isinstance(exc, BrokenPipeError):
            raise  # (`cli.main`: exit 0, nothing said)
        return 0 if terminated else EXIT_INTERRUPTED
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if outage.down:  # --timeout ended while Redis was away: no "nothing new", a failure
        return fail(f"redis still unreachable at {outage.where} when --timeout ended", EXIT_UNAVAILABLE)
    return 0


def _interrupt() -> None:
    raise KeyboardInterrupt


def _print_whole(line: str, then: Callable[[], Any] | None = None) -> None:
    """One JSON line on stdout, whole: Ctrl-C or SIGTERM during a long line's write to a slow
    pipe cut it (no newline, no JSON) for whoever reads on; they wait until it is out, then
    take effect (Ctrl-C at a shell stops the pipe's reader too: the write ends at once).
    ``then`` runs once it is out, before they do (the line they waited for was printed: given
    back to the group, it was printed twice)."""
    with signals_held(signal.SIGINT, signal.SIGTERM):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if then is not None:
            then()


def _ack_quietly(sub: Any, msg: Any) -> None:
    """The entry printed whole as Ctrl-C or SIGTERM came, acked if Redis answers (else it stays
    pending, for this consumer's next run or a claim)."""
    import redis

    try:
        sub.ack(msg)
    except (redis.RedisError, KeyboardInterrupt):
        pass


def _leave(sub: Any) -> None:
    """Done or stopped with Ctrl-C: a consumer of this process's own leaves its group if it can."""
    import redis

    try:
        if sub is not None:
            sub.close()
    except (redis.RedisError, KeyboardInterrupt):
        pass
