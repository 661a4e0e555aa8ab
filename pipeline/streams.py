"""Where percept's data lives in Redis and how to reach it: the key names (`StreamKeys`), the
one client factory (`connect_redis`, `redis_from_config`), stream entry ids, camera hashes.

Keys (a public contract, schema v1):
- ``<prefix>:detections:<camera>`` — one entry per processed frame;
- ``<prefix>:events:<camera>`` — track, zone and line events (schema percept.events/v1);
- ``<prefix>:counts:<camera>`` — hash of zone/line/track counters;
- ``<prefix>:camera:<camera>`` — the camera's state hash (its ``ended`` field: a file read to its
  end, `ended_mark`); ``<prefix>:status`` — state changes;
- ``<prefix>:lease:<camera>`` — which decoder replica ingests the camera;
- ``<prefix>:cameras`` — the runtime camera registry;
- ``<prefix>:decoders`` — hash of each decoder replica's latest status (`pipeline/decoder_status.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, TypeVar

import redis

from .config import CameraConfig, ConfigError, RedisConfig
from .config_redis import TLS_ONLY
from .backoff import Backoff
from .redact import redact
from .source_types import is_file_url

log = logging.getLogger("percept.streams")
T = TypeVar("T")

ENDED_FIELD = "ended"  # the camera hash's field a file camera read to its end leaves (`ended_mark`)


def ended_mark(camera: CameraConfig) -> str | None:
    """What a file camera read to its end leaves in its hash (a digest of its URL, credentials
    scrubbed): while it is there, no replica reads that file again for the camera (a lease taken
    again after an outage, a handover). Adding the camera again, or `percept run`, clears it.
    None for a camera whose source has no end (a live one, a looping file)."""
    if not is_file_url(camera.url) or camera.loop:
        return None
    return hashlib.sha256(camera.shown_url.encode()).hexdigest()[:16]


def clear_ended(client: redis.Redis, keys: "StreamKeys", camera_ids: list[str]) -> None:
    """The file cameras named may be read again (`ended_mark`)."""
    if camera_ids:
        pipe = client.pipeline(transaction=False)
        for cid in camera_ids:
            pipe.hdel(keys.camera(cid), ENDED_FIELD)
        pipe.execute()


@dataclass(frozen=True)
class StreamKeys:
    prefix: str = "percept"

    def detections(self, camera: str) -> str:
        return f"{self.prefix}:detections:{camera}"

    def camera(self, camera: str) -> str:
        return f"{self.prefix}:camera:{camera}"

    @property
    def status(self) -> str:
        return f"{self.prefix}:status"

    @property
    def decoders(self) -> str:
        return f"{self.prefix}:decoders"

    def lease(self, camera: str) -> str:
        return f"{self.prefix}:lease:{camera}"

    def events(self, camera: str) -> str:
        return f"{self.prefix}:events:{camera}"

    def counts(self, camera: str) -> str:
        return f"{self.prefix}:counts:{camera}"

    def trackstate(self, camera: str) -> str:
        """Hash: the camera's last snapshot of open tracks (`pipeline/track_state.py`)."""
        return f"{self.prefix}:trackstate:{camera}"

    def view_want(self, camera: str) -> str:
        """Set (short TTL) while someone watches the camera's live view (`pipeline/view.py`)."""
        return f"{self.prefix}:view:want:{camera}"

    def view_jpeg(self, camera: str) -> str:
        """The camera's latest annotated JPEG, written only while it is watched (short TTL)."""
        return f"{self.prefix}:view:jpeg:{camera}"


def camera_data_keys(keys: StreamKeys, camera: str) -> tuple[str, ...]:
    """A camera's own keys that outlive its run: its streams, counters, track snapshot and hash
    (its lease and live view keys go by themselves)."""
    return (keys.detections(camera), keys.events(camera), keys.counts(camera), keys.trackstate(camera),
            keys.camera(camera))


# A removed camera's data set to expire (`expire_removed_camera`; the lease's
# other scripts: pipeline/lease.py): KEYS: lease, its keys.
# ARGV: token, seconds. Only while the lease holds our token: a sweep that stalled past its lease
# set the expiry on the keys of the camera added again and running under its new owner.
FENCED_EXPIRE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
return 1
"""


def expire_removed_camera(client: redis.Redis, keys: StreamKeys, camera: str, seconds: float,
                          lease: tuple[str, str]) -> list[str] | None:
    """A removed camera's data (`camera_data_keys`) deleted by Redis in ``seconds`` (0: now), only
    while ``lease`` (its key, our token) is ours: None when it is not (nothing set). Returns what
    Redis refused (an ACL without EXPIRE: the data is kept, said by the caller); an outage raises."""
    data = camera_data_keys(keys, camera)
    try:
        done = client.eval(FENCED_EXPIRE, 1 + len(data), lease[0], *data, lease[1], math.ceil(seconds))
    except redis.ResponseError as exc:  # (a script's refusal: the ACL; unavailable: raised)
        if redis_unavailable(exc):
            raise
        return [f"{', '.join(data)}: {exc}"]
    return [] if done == 1 else None


def persist_camera_data(client: redis.Redis, keys: StreamKeys, camera: str) -> list[str]:
    """A camera's data kept for good again (``PERSIST``: one added again under an id removed less
    than ``redis.removed_keep_s`` ago). Returns what Redis refused, key by key (an ACL without
    PERSIST: no reason to stop a camera, said by the caller); an outage raises."""
    data = camera_data_keys(keys, camera)
    pipe = client.pipeline(transaction=False)
    for key in data:
        pipe.persist(key)
    return [f"{key}: {answer}" for key, answer in zip(data, per_key(pipe)) if isinstance(answer, Exception)]


# Redis there but not serving for now — read-only after a failover, over maxmemory, a stale
# replica, a blocked read cut by a failover, a busy script — ridden out like a lost connection
_UNAVAILABLE_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError,
                       redis.exceptions.OutOfMemoryError, redis.exceptions.TryAgainError,
                       redis.exceptions.ClusterDownError)
# the same answers as error replies (a script's pcall returns their text, prefix included)
UNAVAILABLE_REPLIES = ("READONLY", "OOM", "MISCONF", "MASTERDOWN", "NOREPLICAS", "LOADING", "BUSY ", "TRYAGAIN",
                       "CLUSTERDOWN", "UNBLOCKED")


def warn_if_evicting(client: redis.Redis) -> str | None:
    """Redis's ``maxmemory-policy``, with a warning when it is not ``noeviction``: a Redis that
    evicts keys (allkeys-lru, a cache's default) drops streams, counters and leases without a
    word — zone counts back to 0, seqs published again, cameras changing hands. None when it
    cannot be read (an ACL without CONFIG, a managed Redis that hides it)."""
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.RedisError:
        return None
    policy = policy.decode() if isinstance(policy, bytes) else policy
    if policy and policy != "noeviction":
        logging.getLogger("percept.publish").warning(
            "redis evicts keys when full (maxmemory-policy %s): percept's streams, counts and leases can vanish "
            "without a word; set maxmemory-policy noeviction (full, redis refuses writes: percept keeps them and "
            "says so)", policy)
    return policy


def redis_now(client: redis.Redis) -> float:
    """Redis's clock (``TIME``), seconds since the epoch: the one clock every host of a cluster
    shares (this host's, for a user whose ACL does not allow TIME)."""
    try:
        seconds, micros = client.time()
    except redis.exceptions.NoPermissionError:
        return time.time()
    return seconds + micros / 1e6


def reconnect_if_demoted(client: redis.Redis, error: BaseException | str) -> bool:
    """After a failover behind one address (a DNS name, a Kubernetes Service), connections made
    before it still reach the old primary, now a read-only replica, and redis-py keeps them:
    on a READONLY answer the client's idle connections are closed, so the next command connects
    again (to the new primary). True if it did."""
    text = error if isinstance(error, str) else str(error)
    if not (isinstance(error, redis.exceptions.ReadOnlyError) or text.startswith("READONLY")):
        return False
    client.connection_pool.disconnect(inuse_connections=False)
    return True


# credentials Redis refuses (a wrong password, an ACL user without the right): redis-py makes them
# connection errors, but retrying does not mend them
CREDENTIALS_REFUSED = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)


def database_missing(exc: BaseException) -> str | None:
    """What to say when the URL names a database number the server does not have (its answer
    to ``SELECT``: a config error, not an outage); None for any other error."""
    if isinstance(exc, redis.ResponseError) and "DB index is out of range" in str(exc):
        return ("the server has no database of that number (DB index is out of range: its `databases` "
                "setting, 16 by default, numbers them from 0)")
    return None


def redis_unavailable(exc: BaseException) -> bool:
    """Whether an error means "Redis cannot serve this now, try again" rather than a bad request
    (`CREDENTIALS_REFUSED` are not)."""
    if isinstance(exc, CREDENTIALS_REFUSED):
        return False
    return isinstance(exc, _UNAVAILABLE_ERRORS) or (
        isinstance(exc, redis.ResponseError) and str(exc).startswith(UNAVAILABLE_REPLIES))


def connect_redis(
    url: str, *, password: str | None = None, username: str | None = None, ca_file: str | None = None, **kwargs: Any
) -> redis.Redis:
    """The one factory for Redis clients (short timeouts: an outage is noticed quickly).
    ``rediss://`` URLs use TLS, verified against ``ca_file`` when given."""
    kwargs.setdefault("socket_timeout", 5)
    kwargs.setdefault("socket_connect_timeout", 3)
    kwargs.setdefault("health_check_interval", 10)
    if password is not None:
        kwargs["password"] = password
    if username is not None:
        kwargs["username"] = username
    if ca_file is not None and url.startswith("rediss://"):
        kwargs["ssl_ca_certs"] = ca_file
    return redis.Redis.from_url(url, **kwargs)


def redis_from_config(cfg: RedisConfig, **kwargs: Any) -> redis.Redis:
    """A client for the config's Redis; a ``tls_ca_file`` that is not there is a `ConfigError`
    naming it (redis-py said "Error 2 connecting … No such file or directory" on every try, an
    outage to wait out)."""
    if not cfg.url:
        raise ValueError("redis.url is not set")
    if cfg.tls_ca_file and not cfg.url.startswith("rediss://"):  # (a ${VAR} url, resolved here)
        raise ConfigError([f"redis.tls_ca_file: {TLS_ONLY}"])
    if cfg.tls_ca_file and not os.path.isfile(cfg.tls_ca_file):
        what = "not a file" if os.path.exists(cfg.tls_ca_file) else "no such file"
        raise ConfigError([f"redis.tls_ca_file: {what} {cfg.tls_ca_file!r} (the CA bundle that verifies the "
                           "rediss:// server, on the machine that connects)"])
    return connect_redis(cfg.url, password=cfg.password, username=cfg.username, ca_file=cfg.tls_ca_file, **kwargs)


def parse_entry_id(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms), int(seq or 0)


def pages_from(client: redis.Redis, key: str, start: str, page: int = 200) -> Iterator[list[Any]]:
    """The stream's entries from id ``start`` on, oldest first, ``page`` at a time."""
    while True:
        entries = client.xrange(key, min=start, count=page)
        yield entries
        if len(entries) < page:
            return
        ms, seq = parse_entry_id(entries[-1][0])
        start = f"{ms}-{seq + 1}"


def camera_states(client: redis.Redis, keys: StreamKeys, cameras: list[str]) -> dict[str, dict[str, str]]:
    """The camera hashes, decoded (for CLIs and tests). One that cannot be read (its key holds
    another type: not written by percept) is ``unreadable``, with why, not an error for all."""
    pipe = client.pipeline(transaction=False)
    for cam in cameras:
        pipe.hgetall(keys.camera(cam))
    return {cam: {"state": "unreadable", "last_error": f"{keys.camera(cam)}: {raw}"} if isinstance(raw, Exception)
            else _decode(raw) for cam, raw in zip(cameras, per_key(pipe))}


_ERROR_CODES = {redis.exceptions.ReadOnlyError: "READONLY", redis.exceptions.OutOfMemoryError: "OOM"}


def refusal_text(exc: redis.RedisError) -> str:
    """A refusal's text as a script's error reply reads ("READONLY …"): redis-py strips the
    reply's code from the errors it maps, put back here."""
    text = str(exc)
    if type(exc) not in _ERROR_CODES and text.startswith(UNAVAILABLE_REPLIES):  # (its code kept: MISCONF, …)
        return text
    return f"{_ERROR_CODES.get(type(exc), type(exc).__name__ + ':')} {text}"


def writes_refused(client: redis.Redis, keys: StreamKeys) -> str | None:
    """Why Redis refuses writes now (``OOM …`` over ``maxmemory``, ``READONLY`` after a failover,
    ``MISCONF``), or None: the camera hashes then still say what was last written (``online``) while
    every result waits in its publisher's buffer. Asked with a write that writes nothing (``SET``
    of a key that is not there, ``XX``): Redis refuses it before it runs, as it refuses the
    publisher's. Any other refusal of it (an ACL without ``SET``) says nothing: None. An outage
    raises, as any command."""
    try:
        client.set(f"{keys.prefix}:writes-probe", b"", xx=True)
    except redis.ResponseError as exc:  # (READONLY and OOM are ResponseErrors too)
        return refusal_text(exc).splitlines()[0][:200] if redis_unavailable(exc) else None
    return None


def per_key(pipe: Any) -> list[Any]:
    """A pipeline's answers, a key's own refusal (another type: not written by percept) kept in
    its place as the error, for the caller to say on that key's row alone; Redis unable to serve
    (an outage, LOADING, …) raised, as for any command."""
    answers = pipe.execute(raise_on_error=False)
    for answer in answers:
        if isinstance(answer, Exception) and not (isinstance(answer, redis.ResponseError) and not redis_unavailable(answer)):
            raise answer
    return answers


def number(value: Any, default: float = 0.0) -> float:
    """A camera hash's number as a float (``default`` when missing or not a finite number)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


LIVE_STATES = ("connecting", "online", "reconnecting")  # a decoder rewrites these every second
STALE_S = 30.0  # a live state not rewritten for longer: its decoder is gone


def as_seen(state: Mapping[str, str], now: float) -> Mapping[str, str]:
    """A camera hash as readers show it: a live state (`LIVE_STATES`) whose hash nobody wrote for
    `STALE_S` (``updated_at``) is ``stale``, its ``last_error`` saying for how long — the decoder
    or its Ray gone, or Redis refusing its writes; it said ``online`` for good after a crash."""
    age = now - number(state.get("updated_at"), default=math.nan)
    if state.get("state") not in LIVE_STATES or not age > STALE_S:  # (no updated_at: not stale)
        return state
    return {**state, "state": "stale", "last_error": f"no word from its decoder for {age:.0f} s (its last state: "
            f"{state['state']}): the decoder or its Ray is gone, or Redis refuses its writes"}


def states_as_seen(client: redis.Redis, keys: StreamKeys, cameras: list[str],
                   now: float | None = None) -> tuple[dict[str, Mapping[str, str]], str | None]:
    """The camera hashes as readers show them (`camera_states`, then `as_seen`) and why Redis
    refuses writes (`writes_refused`, or None). While it refuses them nobody can rewrite a hash:
    none is called stale then (what was written last stands, its results held by its decoder)."""
    states, refused = camera_states(client, keys, cameras), writes_refused(client, keys)
    if not refused:
        now = time.time() if now is None else now
        states = {cam: as_seen(st, now) for cam, st in states.items()}
    return states, refused


def _decode(mapping: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in mapping.items()}


async def once_redis_answers(call: Callable[[], T], what: str, *, stopping: Callable[[], bool] = lambda: False,
                             backoff: Backoff | None = None) -> T:
    """``call()`` (blocking, run in a thread) retried while Redis is unavailable (`redis_unavailable`;
    a refusal or another error raises at once), a warning naming ``what`` at the first try that
    fails and then every minute; ``stopping()`` true: the last error raises. A decoder replica
    started while Redis restarts (a `serve deploy`, a KubeRay rollout bringing both up) failed its
    constructor, and Serve gave up on the deployment after three such failures: DEPLOY_FAILED."""
    backoff = backoff or Backoff(0.5, 10.0)
    said_at = None
    while True:
        try:
            return await asyncio.to_thread(call)
        except redis.RedisError as exc:
            if not redis_unavailable(exc) or stopping():
                raise
            if said_at is None or time.monotonic() - said_at >= 60:
                said_at = time.monotonic()
                log.warning("redis unavailable while %s (%s); retrying until it answers", what,
                            redact(str(exc)) or type(exc).__name__)
        await asyncio.sleep(backoff.next())


def stream_top(client: redis.Redis, key: str) -> tuple[int, int] | None:
    """The stream's last generated id (``(ms, n)``; None: no stream): what a new entry must be
    above, whatever is left in it (XREVRANGE of a stream emptied by XTRIM finds nothing)."""
    try:
        top = client.xinfo_stream(key)["last-generated-id"]
    except redis.ResponseError:  # no such key
        return None
    ms_n = parse_entry_id(top)
    return None if ms_n == (0, 0) else ms_n
