"""Camera leases and fencing.

A lease is redis-py's `Lock` on ``<prefix>:lease:<camera>`` (``SET NX PX`` with the replica's
owner token). Two things keep a replica that lost its lease (paused, partitioned from Redis)
from ingesting alongside the new owner:

- the supervisor stops a camera as soon as ``TTL - margin`` has passed since the lease was last
  acquired or renewed (measured from before the command was sent, so never later than Redis
  expires it), whatever the reason it could not renew;
- every write of a camera's results and state goes through a Lua script that checks the lease
  token in the same round-trip (`FENCED_PUBLISH`, `FENCED_HSET`; the live view's JPEG: `FENCED_SET`): a write from a replica that no
  longer holds the lease is refused by Redis itself.

A script answers 1 (written), 0 (the lease is held by someone else: refused) or -1 (nobody holds
it: the publisher keeps the result a while, so that results buffered through a Redis outage are
still published when the same owner takes the lease back); `FENCED_PUBLISH` writes a run of one
camera's results in one call and answers 0 / -1 for all of them, or one reply per result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import LockError

from .streams import UNAVAILABLE_REPLIES

LEASE_MARGIN = 0.1  # stop a camera this fraction of the TTL before its lease would expire

# Frames' results of one camera in one round-trip, checked once against the lease token: for each
# frame its XADD (explicit id: Redis refuses a second copy, and then nothing else of that frame is
# written), its events on the events stream and its counter increments; the camera hash keeps
# the highest track id written, the highest seq written (``seq_published``: a restart continues
# above it though the stream was emptied meanwhile) and counts the frames written (``processed``:
# exact across a change of owner, which continues from it).
# KEYS: lease, detections stream, camera hash, events stream, counts hash.
# ARGV: token ('' = no check), maxlen, camera, schema version, then per frame: entry id ('' =
# events only), seq, json, highest track id (0 = none), ne, ne × (entry id, kind, json), nc,
# nc × (counter, increment).
# Answers 0 / -1 (refused / nobody holds the lease: nothing written), else one reply per frame:
# 1 (written) or the error text of the write that failed (after a refusal, every frame after it
# answers the same, unwritten); a frame written whose events the events stream refused for good
# (a key of another type, not written by percept) answers {1, the error, its events not written},
# and the frames after it go on.
FENCED_PUBLISH = """
if ARGV[1] ~= '' then
  local holder = redis.call('GET', KEYS[1])
  if holder ~= ARGV[1] then
    if holder then return 0 end
    return -1
  end
end
local function refusal(e)  -- refused for now (OOM, READONLY, ...): the run's tail is tried again
  for _, p in ipairs({REFUSALS}) do
    if string.sub(e, 1, #p) == p then return true end
  end
  return false
end
local out, top, i, failed, written, top_seq = {}, 0, 5, nil, 0, -1
while i <= #ARGV do
  local ev = i + 5
  local nc_at = ev + 3 * tonumber(ARGV[i + 4])
  local after = nc_at + 1 + 2 * tonumber(ARGV[nc_at])
  local err, lost, unwritten = failed, nil, 0
  if not err and ARGV[i] ~= '' then
    local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], ARGV[i],
                              'v', ARGV[4], 'camera', ARGV[3], 'seq', ARGV[i + 1], 'json', ARGV[i + 2])
    if type(added) == 'table' and added.err then err = added.err end
  end
  local k = ev
  while not err and not lost and k < nc_at do
    local added = redis.pcall('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], ARGV[k],
                              'v', ARGV[4], 'camera', ARGV[3], 'kind', ARGV[k + 1], 'json', ARGV[k + 2])
    if type(added) == 'table' and added.err then
      -- an events stream that refuses them for good (a key of another type) loses them, said;
      -- the frame stands and the frames after it go on (a refusal for now, or an id written
      -- before, as the frame's: the frame is not written again, nor are its events)
      if not refusal(added.err) and not string.find(added.err, 'equal or smaller', 1, true) then
        lost, unwritten = added.err, (nc_at - k) / 3
      else
        err = added.err
      end
    end
    k = k + 3
  end
  if err then
    out[#out + 1] = err
    -- a write refused for now (OOM, READONLY, ...): the frames after it are not written either, so
    -- what is retried is the run's tail, in order; an id already written (a retry) is no refusal
    if not string.find(err, 'equal or smaller', 1, true) then failed = err end
  else
    for c = nc_at + 1, after - 1, 2 do  -- (pcall: a counts key of another type costs the counts, not the frames)
      redis.pcall('HINCRBY', KEYS[5], ARGV[c], ARGV[c + 1])
    end
    top = math.max(top, tonumber(ARGV[i + 3]))
    if ARGV[i] ~= '' then
      written = written + 1
      top_seq = math.max(top_seq, tonumber(ARGV[i + 1]) or -1)
    end
    out[#out + 1] = lost and {1, lost, unwritten} or 1
  end
  i = after
end
-- the camera hash's numbers: pcall, so that a key of another type (not written by percept) costs
-- them, not frames already written (a script's writes are not rolled back: they were reported failed)
local function field(name, default)
  local v = redis.pcall('HGET', KEYS[3], name)
  if type(v) == 'table' then return nil end
  return tonumber(v or default)
end
if written > 0 then redis.pcall('HINCRBY', KEYS[3], 'processed', written) end
local had = field('track_id_max', '0')
if top > 0 and had and top > had then redis.pcall('HSET', KEYS[3], 'track_id_max', top) end
had = field('seq_published', '-1')
if top_seq >= 0 and had and top_seq > had then redis.pcall('HSET', KEYS[3], 'seq_published', top_seq) end
return out
""".replace("{REFUSALS}", "{" + ", ".join(f"'{reply}'" for reply in UNAVAILABLE_REPLIES) + "}")

# KEYS: lease, camera hash, status stream. ARGV: token ('' = no check), strict ('1': also
# refused while nobody holds the lease), number of hash arguments n, status maxlen, n hash
# field/value arguments, then the status entry's (if any). A state change's entry starts with
# ('change', its id: `<publisher>-<n>`), which the hash keeps as `state_change`: sent again after
# its answer was lost, it is not written twice, nor over a later change of the same publisher.
FENCED_HSET = """
if ARGV[1] ~= '' then
  local holder = redis.call('GET', KEYS[1])
  if holder ~= ARGV[1] then
    if holder then return 0 end
    if ARGV[2] == '1' then return -1 end
  end
end
local n = tonumber(ARGV[3])
if ARGV[5 + n] == 'change' then
  local had = redis.call('HGET', KEYS[2], 'state_change')
  if had then
    local hp, hn = string.match(had, '^(.*)-(%d+)$')
    local cp, cn = string.match(ARGV[6 + n], '^(.*)-(%d+)$')
    if hp and hp == cp and tonumber(hn) >= tonumber(cn) then return 1 end
  end
end
redis.call('HSET', KEYS[2], unpack(ARGV, 5, 4 + n))
if #ARGV > 4 + n then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5 + n))
end
return 1
"""

# A droppable side value of a camera (its live view JPEG): KEYS: lease, key. ARGV: token, value,
# px. Written only while the lease holds our token; nothing is kept for later.
FENCED_SET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""

WRITTEN, REFUSED, UNHELD = 1, 0, -1


@dataclass(frozen=True)
class Fence:
    """What a camera's writes are checked against: its lease key and our token. ``hold_s``: how
    long a result is kept while nobody holds the lease (after an outage longer than the TTL)."""

    key: str
    token: str
    hold_s: float
    released: bool = False  # we released the lease: our frames are refused here


@dataclass
class Lease:
    camera: str
    lock: Any  # redis.lock.Lock
    ttl: float
    renewed_at: float  # time.monotonic() just before the last successful acquire/renew was sent
    released: bool = False  # `release`d: a renewal in flight must not take it back

    @property
    def deadline(self) -> float:
        """Monotonic time at which the camera must be stopped: a margin before Redis expires it."""
        return self.renewed_at + self.ttl * (1 - LEASE_MARGIN)

    def overdue(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.deadline


def acquire(client: redis.Redis, key: str, camera: str, *, ttl: float, token: str) -> Lease | None:
    """Take a free lease, or one that is already ours (left over from a camera stopped while its
    renewal was still in flight); None when another owner holds it."""
    lock = client.lock(key, timeout=ttl, blocking=False, thread_local=False)
    sent = time.monotonic()
    if lock.acquire(token=token):
        return Lease(camera, lock, ttl, sent)
    lock.local.token = client.get_encoder().encode(token)
    try:
        lock.reacquire()  # atomic: extends it only if it holds our token
    except LockError:
        lock.local.token = None
        return None
    return Lease(camera, lock, ttl, sent)


def renew(lease: Lease, token: str) -> bool:
    """Extend our lease. If it expired meanwhile and nobody took it, take it back."""
    sent = time.monotonic()
    try:
        lease.lock.reacquire()
    except LockError:
        if lease.released or not lease.lock.acquire(blocking=False, token=token):
            return False
        if lease.released:  # released as it was taken back: let it go again
            release(lease)
            return False
    lease.renewed_at = sent
    return True


def release(lease: Lease) -> None:
    lease.released = True
    try:
        lease.lock.release()
    except (LockError, redis.RedisError):
        pass


class OutageClaims:
    """Which free cameras a replica claims right after Redis was out of its reach for as long as
    a lease lasts. Every replica's leases ran out then, and each one's publisher holds the results
    of the cameras it had: for a TTL after Redis answers, a replica claims only the cameras whose
    leases ran out here, so each camera goes back to the replica that holds its results; after
    it, anyone claims any free camera (an owner that died meanwhile). A shorter outage leaves
    the leases as they were."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self.unreachable_since: float | None = None  # monotonic; None while Redis answers
        self.last_answer: float | None = None  # monotonic: Redis's last answer before that
        self.expired_here: set[str] = set()  # cameras stopped here because their lease ran out
        self.own_only_until = 0.0  # monotonic

    def reached(self, now: float) -> None:
        """Redis answered a round or a renewal (leases run out counted from then, not from the
        first call that failed: up to a round earlier)."""
        if self.unreachable_since is None:
            self.last_answer = now

    def unreachable(self, now: float) -> None:
        if self.unreachable_since is None:
            self.unreachable_since = self.last_answer if self.last_answer is not None else now

    def answered(self, now: float) -> float | None:
        """Redis answered again: the outage's length, when it was as long as a lease or a lease
        ran out here (the window opens)."""
        since, self.unreachable_since = self.unreachable_since, None
        self.last_answer = now
        if since is None or (now - since < self.ttl * (1 - LEASE_MARGIN) and not self.expired_here):
            return None
        self.own_only_until = now + self.ttl
        return now - since

    def others_wait(self, camera: str, now: float) -> bool:
        """True: not claimed here now (another replica's camera, in the window after an outage)."""
        if now < self.own_only_until:
            return camera not in self.expired_here
        self.expired_here.clear()
        return False
