"""The camera set at runtime: a Redis hash shared by the API and every decoder replica.

``<prefix>:cameras`` maps camera id → camera JSON tagged with where it came from (``config`` or
``api``). The config file's cameras are written when the config changes (its digest differs from
the stored one), replacing the previous config's cameras and keeping those added through the API;
a decoder replica restarting with the same config leaves runtime changes alone.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis

from .config import CameraConfig
from .publish import StreamKeys, parse_entry_id


class CameraRegistry:
    def __init__(self, client: redis.Redis, keys: StreamKeys):
        self.client = client
        self.keys = keys
        self.key = f"{keys.prefix}:cameras"
        self.digest_key = f"{keys.prefix}:cameras:config-digest"

    @staticmethod
    def digest(cameras: list[CameraConfig]) -> str:
        text = json.dumps([c.model_dump(mode="json") for c in cameras], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def seed(self, cameras: list[CameraConfig]) -> bool:
        """Write the config's cameras if this config was not seeded yet; True if it wrote."""
        digest = self.digest(cameras)
        if self.client.get(self.digest_key) == digest.encode():
            return False
        current = self._raw()
        pipe = self.client.pipeline(transaction=True)
        for cid, entry in current.items():
            if entry.get("source") == "config" and cid not in {c.id for c in cameras}:
                pipe.hdel(self.key, cid)
        for cam in cameras:
            pipe.hset(self.key, cam.id, json.dumps({"source": "config", "camera": cam.model_dump(mode="json")}))
        pipe.set(self.digest_key, digest)
        pipe.execute()
        return True

    def _raw(self) -> dict[str, dict[str, Any]]:
        return {k.decode(): json.loads(v) for k, v in self.client.hgetall(self.key).items()}

    def cameras(self) -> list[CameraConfig]:
        return [CameraConfig.model_validate(e["camera"]) for _, e in sorted(self._raw().items())]

    def add(self, camera: CameraConfig) -> bool:
        """False if a camera with this id exists."""
        entry = json.dumps({"source": "api", "camera": camera.model_dump(mode="json")})
        return bool(self.client.hsetnx(self.key, camera.id, entry))

    def remove(self, camera_id: str) -> bool:
        return bool(self.client.hdel(self.key, camera_id))

    def lag_s(self, camera_id: str, now: float) -> float | None:
        """Seconds since the capture time of the newest published frame (None before any)."""
        last = self.client.xrevrange(self.keys.detections(camera_id), count=1)
        if not last:
            return None
        return max(0.0, now - parse_entry_id(last[0][0])[0] / 1000)
