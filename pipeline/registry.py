"""The camera set at runtime: a Redis hash shared by the API and every decoder replica.

``<prefix>:cameras`` maps camera id → camera JSON tagged with where it came from (``config`` or
``api``). The config file's cameras are written when the config changes (its digest differs from
the stored one), replacing the previous config's cameras and keeping those added through the API;
a decoder replica restarting with the same config leaves runtime changes alone.

Camera URLs are stored as written, ``${VAR}`` unexpanded (no passwords in Redis); decoders expand
them from their environment (`runnable`). An entry that no longer validates (hand-edited, written by
an older version, not JSON) or names a variable the decoder lacks is skipped and reported on its
camera hash (``state: failed``, ``last_error`` naming the field) once per change; the other
cameras run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import redis
from pydantic import ValidationError

from .config import CameraConfig, format_validation_error
from .config_env import CameraEnvError, foreign_variable_error, resolve_camera, variables_named
from .config_urls import api_source_problem
from .publish import Publisher
from .redact import redact, redact_url
from .registry_entries import InvalidCamera, _parse_entry
from .streams import ENDED_FIELD, StreamKeys, parse_entry_id, redis_now

log = logging.getLogger("percept.registry")


# added, and so its file read again (`ended` cleared) and shown without the numbers and state of
# the camera its id had before (what the listing, `top` and the page show), in one step; the
# counters that keep ids and seqs rising (track_id_max, seq_published, processed, state_change) stay
_ADD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
local most = tonumber(ARGV[3])
if most >= 0 then
  local api = 0
  for _, raw in ipairs(redis.call('HVALS', KEYS[1])) do
    if string.sub(raw, 1, #ARGV[4]) == ARGV[4] then api = api + 1 end
  end
  if api >= most then return -1 end
end
redis.call('HDEL', KEYS[2], unpack(ARGV, 5))
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""  # (the HDEL first: a camera hash of another type fails it before anything is written; Redis rolls no script back;
# API entries counted by the prefix `add` writes them with (ARGV[4]), not decoded: 250 of 400 kB each held Redis 2 s a POST)
SHOWN_FIELDS = ("state", "last_error", "fps", "dropped", "classify_failed", "publish_dropped", "url", "updated_at")


class TooManyCameras(Exception):
    """As many cameras as ``security.api_max_cameras`` were added through the API already."""

    def __init__(self, most: int):
        super().__init__(f"{most} cameras added through the API already (security.api_max_cameras); "
                         "DELETE one first, or raise the setting")
        self.most = most


@dataclass(frozen=True)
class RemovedCamera:
    """A removal noted by the registry: the camera as it was, and the note as stored."""

    camera: CameraConfig
    note: bytes


def _read_again(before: Any, camera: CameraConfig) -> bool:
    """Whether a new config's camera reads its file again (`streams.ended_mark` cleared): it is
    new, or changed beyond what changes at runtime (zones, lines: those apply to the camera as it
    is, which reads nothing again)."""
    try:
        return before is None or not camera.differs_at_runtime_only(CameraConfig.model_validate(before))
    except ValidationError:
        return True


class CameraRegistry:
    def __init__(self, client: redis.Redis, keys: StreamKeys):
        self.client = client
        self.keys = keys
        self.key = f"{keys.prefix}:cameras"
        self.digest_key = f"{keys.prefix}:cameras:config-digest"
        # removed cameras whose open tracks may still need their ends (`pipeline/track_orphans.py`)
        self.removed_key = f"{keys.prefix}:cameras:removed"
        self.invalid_now: dict[str, str] = {}  # `runnable`'s last: the entries it left out, and why

    @staticmethod
    def digest(cameras: list[CameraConfig]) -> str:
        text = json.dumps([c.model_dump(mode="json") for c in cameras], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def seed(self, cameras: list[CameraConfig]) -> bool:
        """Write the config's cameras if this config was not seeded yet; True if it wrote. A
        camera the file defines as the config before did keeps its entry (zones changed through
        the API stay: a change to another camera of the file rewrote them all); the previous
        config's cameras this one lacks are removed (and noted: `removed_cameras`). Under WATCH:
        a replica of another config seeding meanwhile makes this one read again, so that the
        cameras it wrote are not left behind as if they were this config's."""
        digest = self.digest(cameras)
        ids = {c.id for c in cameras}

        def write(pipe: Any) -> bool:
            if pipe.get(self.digest_key) == digest.encode():
                return False
            current = self._raw(pipe)
            pipe.multi()
            for cid, entry in current.items():
                if entry.get("source") == "config" and cid not in ids:
                    pipe.hdel(self.key, cid)
                    pipe.hset(self.removed_key, cid, json.dumps(entry))
            for cam in cameras:
                had, seeded = current.get(cam.id, {}), self.digest([cam])  # (the file's own definition)
                if had.get("source") == "config" and had.get("seeded") == seeded:
                    continue
                given = cam.model_dump(mode="json")
                pipe.hset(self.key, cam.id, json.dumps({"source": "config", "camera": given, "seeded": seeded}))
                if _read_again(had.get("camera"), cam):
                    pipe.hdel(self.keys.camera(cam.id), ENDED_FIELD)
            pipe.set(self.digest_key, digest)
            return True

        return self.client.transaction(write, self.key, self.digest_key, value_from_callable=True)

    def _raw(self, client: Any) -> dict[str, dict[str, Any]]:
        """The entries that decode (whether valid or not), read through ``client`` (the seed's
        watching pipeline); undecodable ones are left out."""
        out = {}
        for k, v in client.hgetall(self.key).items():
            entry, _ = _parse_entry(k.decode(errors="replace"), v)
            if entry is not None:
                out[k.decode(errors="replace")] = entry
        return out

    def read(self) -> tuple[list[CameraConfig], list[InvalidCamera]]:
        """The valid cameras and the invalid entries, each sorted by id; never raises on content."""
        valid, invalid, _ = self._read_with_sources()
        return valid, invalid

    def _read_with_sources(self) -> tuple[list[CameraConfig], list[InvalidCamera], dict[str, Any]]:
        """`read`, and each entry's ``source`` (``config``, ``api``) by id."""
        valid: list[CameraConfig] = []
        invalid: list[InvalidCamera] = []
        sources: dict[str, Any] = {}
        for cid, raw in sorted((k.decode(errors="replace"), v) for k, v in self.client.hgetall(self.key).items()):
            entry, parsed = _parse_entry(cid, raw)
            sources[cid] = entry.get("source") if entry is not None else None
            (valid if isinstance(parsed, CameraConfig) else invalid).append(parsed)
        return valid, invalid, sources

    def cameras(self) -> list[CameraConfig]:
        """The valid cameras (URLs as stored, ``${VAR}`` unexpanded)."""
        return self.read()[0]

    def seed_if_lost(self, cameras: list[CameraConfig]) -> bool:
        """`seed` again if Redis lost the registry (restarted without its data: the hash and its
        digest both gone): the config's cameras would otherwise stop everywhere until a decoder
        restarts. A registry seeded from another config (a rolling update), or one whose digest
        alone is gone (evicted), is left alone: its API changes stand. True if it wrote."""
        return not self.client.exists(self.digest_key, self.key) and self.seed(cameras)

    def runnable(self, env: Mapping[str, str], publisher: Publisher,
                 config: list[CameraConfig] | None = None, *, api_local_sources: bool = True) -> list[CameraConfig]:
        """What a decoder replica runs: the valid cameras with their URLs expanded from ``env``.
        Entries that do not validate or name a variable ``env`` lacks are left out and reported
        as ``failed`` on their camera hash, once per change (see `unleased`). ``config``: the
        config's cameras, written again first if Redis lost them (`seed_if_lost`).
        ``api_local_sources`` False (``security.api_local_sources``): an API camera reading a
        file, device or socket or listening (`api_source_problem`) is reported failed too."""
        if config is not None and self.seed_if_lost(config):
            log.warning("the camera registry was gone (redis restarted without its data?); the config's %d cameras "
                        "written again (cameras added through the API are lost)", len(config))
        valid, invalid, sources = self._read_with_sources()
        cameras = []
        named = variables_named(valid)
        for cam in valid:
            # checked again where the variables are expanded: a camera whose id's variable names
            # another camera took since (`dock` beside `Dock`, a config camera naming its variable), or two added at once
            foreign = foreign_variable_error(cam, f"cameras[{cam.id}].url", sources, named) \
                if sources.get(cam.id) == "api" else None
            if foreign is None and sources.get(cam.id) == "api" and not api_local_sources:
                # (an API camera added while the API took files, or before it checked: not read now)
                local = api_source_problem(cam.url)
                foreign = f"cameras[{cam.id}].url: {local}" if local else None
            if foreign is not None:
                invalid.append(InvalidCamera(cam.id, foreign, cam.url))
                continue
            try:
                cameras.append(resolve_camera(cam, env))
            except CameraEnvError as exc:
                invalid.append(InvalidCamera(cam.id, redact(str(exc)), cam.url))
            except ValueError as exc:  # anything else the expansion trips on: this camera only (its
                # words may quote a piece of the expanded URL: its type alone)
                invalid.append(InvalidCamera(cam.id, f"cameras[{cam.id}].url, its variables expanded: cannot be read "
                                             f"({type(exc).__name__})", cam.url))
        unleased, unreported = self.unleased(invalid)
        self.invalid_now = {bad.id: bad.error for bad in unleased}
        for bad in unreported:
            log.error("camera %s: not started: %s", bad.id, bad.error)
            publisher.camera_state(bad.id, "failed", error=bad.error, url=redact_url(bad.url))
        return cameras

    def unleased(self, invalid: list[InvalidCamera]) -> tuple[list[InvalidCamera], list[InvalidCamera]]:
        """The invalid cameras whose lease nobody holds, and of them those whose hash does not
        say ``failed`` with this error yet. A camera whose lease someone holds is left alone: it
        is running there (another replica's environment has its variable), or being stopped."""
        if not invalid:
            return [], []
        pipe = self.client.pipeline(transaction=False)
        for bad in invalid:
            pipe.hmget(self.keys.camera(bad.id), ["state", "last_error"])
            pipe.exists(self.keys.lease(bad.id))
        replies = pipe.execute()
        unleased, out = [], []
        for bad, (state, last_error), leased in zip(invalid, replies[0::2], replies[1::2]):
            if leased:
                continue
            unleased.append(bad)
            if not (state == b"failed" and last_error == redact(bad.error).encode()):
                out.append(bad)
        return unleased, out

    def ids(self) -> list[str]:
        """Every camera id the registry holds (valid or not)."""
        return [k.decode(errors="replace") for k in self.client.hkeys(self.key)]  # as `read` names them

    def add(self, camera: CameraConfig, most_api: int | None = None) -> bool:
        """False if a camera with this id exists with other settings, or from a config file; the
        same API camera again is added (nothing written: a POST retried after a timeout whose
        write landed). The URL is stored as given (``${VAR}`` kept). (A config camera's settings
        given again were "added", and the camera went when the file dropped it.) `TooManyCameras`
        when ``most_api`` API cameras are there already (counted in the same script as the add:
        POSTs at once cannot all pass)."""
        given = camera.model_dump(mode="json")
        added_ms = int(redis_now(self.client) * 1000)  # (what its id published before is another camera's)
        entry = json.dumps({"source": "api", "camera": given, "added_ms": added_ms})
        api_prefix = json.dumps({"source": "api"})[:-1] + ","  # (how every API entry starts: counted by it)
        for _ in range(3):  # (a DELETE between the two: added, not "exists")
            # (in one step: a POST retried after the entry landed alone found "the same camera
            # again" and left the `ended` mark for good)
            added = self.client.eval(_ADD, 2, self.key, self.keys.camera(camera.id), camera.id, entry,
                                     -1 if most_api is None else most_api, api_prefix, ENDED_FIELD, *SHOWN_FIELDS)
            if added == -1:
                raise TooManyCameras(most_api or 0)
            if added:
                return True
            raw = self.client.hget(self.key, camera.id)
            if raw is not None:
                break
        try:
            had = json.loads(raw) if raw is not None else None
            return isinstance(had, dict) and had.get("camera") == given and had.get("source") == "api"
        except (ValueError, AttributeError):
            return False

    def source(self, camera_id: str) -> str | None:
        """Where the camera came from: "api", "config", or None (not there, or not readable)."""
        try:
            source = json.loads(self.client.hget(self.key, camera_id) or b"{}").get("source")
        except (ValueError, AttributeError):
            return None
        return source if isinstance(source, str) else None

    def added_ms(self, camera_id: str) -> int | None:
        """When the camera was added over the API (Redis's clock, ms); None: in a config file, added
        before this was noted, or not there."""
        try:
            return int(json.loads(self.client.hget(self.key, camera_id) or b"{}")["added_ms"])
        except (ValueError, KeyError, TypeError, OverflowError):  # (not as percept writes it: 1e400)
            return None

    def set_geometry(self, camera_id: str, changes: Mapping[str, Any],
                     check: Callable[[CameraConfig], None] | None = None) -> CameraConfig | None:
        """Change a camera's zones, lines, anchor or line margin in place (decoders apply it without a
        restart); None if there is no such camera. Raises pydantic's ValidationError, with
        paths relative to the camera, for an invalid change, and what ``check(changed camera)``
        raises (nothing written then)."""
        def change(pipe: Any) -> CameraConfig | None:
            raw = pipe.hget(self.key, camera_id)
            if raw is None:
                return None
            try:
                entry = json.loads(raw)
                current = dict(entry["camera"])
            except (ValueError, KeyError, TypeError) as exc:
                raise LookupError(f"the stored entry of camera {camera_id!r} is unreadable ({exc}); "
                                  "DELETE it and POST it again") from None
            try:
                CameraConfig.model_validate(current)
            except ValidationError as exc:  # the stored entry, not the change: a conflict
                raise LookupError(f"the stored entry of camera {camera_id!r} no longer validates "
                                  f"({'; '.join(format_validation_error(exc))}); DELETE it and POST it "
                                  "again") from None
            camera = CameraConfig.model_validate({**current, **changes})
            if check is not None:
                check(camera)
            entry["camera"] = camera.model_dump(mode="json")
            pipe.multi()
            pipe.hset(self.key, camera_id, json.dumps(entry))
            return camera

        return self.client.transaction(change, self.key, value_from_callable=True)

    def remove(self, camera_id: str) -> bool:
        """Remove a camera (noted: `removed_cameras`); False if there is no such camera."""
        def move(pipe: Any) -> bool:
            raw = pipe.hget(self.key, camera_id)
            if raw is None:  # a field that is not UTF-8 (written by hand), by the name `read` gives it
                unreadable = [k for k in pipe.hkeys(self.key) if k.decode(errors="replace") == camera_id]
                if unreadable:  # (never a valid id: it never ran, nothing to note)
                    pipe.multi()
                    pipe.hdel(self.key, *unreadable)
                return bool(unreadable)
            pipe.multi()
            pipe.hdel(self.key, camera_id)
            pipe.hset(self.removed_key, camera_id, raw)
            return True

        return self.client.transaction(move, self.key, value_from_callable=True)

    def removed_cameras(self) -> list["RemovedCamera"]:
        """Cameras removed (from the config or through the API) whose open tracks are not known
        to have ended yet, by id. Unreadable notes are forgotten (they could not run either)."""
        out = []
        for cid, raw in sorted((k.decode(errors="replace"), v) for k, v in self.client.hgetall(self.removed_key).items()):
            _, camera = _parse_entry(cid, raw)
            if isinstance(camera, CameraConfig):
                out.append(RemovedCamera(camera, raw))
            else:
                self.forget_removed(cid, raw)
        return out

    def forget_removed(self, camera_id: str, note: bytes) -> bool:
        """A removed camera's tracks are ended (or it is back): its note goes, unless it was
        removed again since (a newer note). True if it went."""
        def drop(pipe: Any) -> bool:
            if pipe.hget(self.removed_key, camera_id) != note:
                return False
            pipe.multi()
            pipe.hdel(self.removed_key, camera_id)
            return True

        return self.client.transaction(drop, self.removed_key, value_from_callable=True)

    def runnable_ids(self) -> set[str]:
        """The ids of the cameras in the registry that validate now (others cannot run)."""
        return {c.id for c in self.read()[0]}

    def lag_s(self, camera_id: str, now: float) -> float | None:
        """Seconds since the capture time of the newest published frame (None before any)."""
        last = self.client.xrevrange(self.keys.detections(camera_id), count=1)
        if not last:
            return None
        return max(0.0, now - parse_entry_id(last[0][0])[0] / 1000)
