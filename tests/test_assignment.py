"""Camera leases on a real redis-server."""

import asyncio

from pipeline.assignment import CameraSupervisor
from pipeline.config import CameraConfig
from pipeline.publish import StreamKeys

KEYS = StreamKeys("lease")


def supervisor(client, owner, cameras=("a", "b")):
    async def never(cam):
        raise AssertionError("not started in this test")

    return CameraSupervisor([CameraConfig(id=c, url="x.mp4") for c in cameras], client=client, keys=KEYS,
                            start_camera=never, replicas=2, lease_ttl_s=5, owner=owner)


def test_expired_lease_is_taken_back_when_free_but_not_from_another_owner(redis_server):
    client = redis_server.client()
    sup = supervisor(client, "me")
    lock = client.lock(KEYS.lease("a"), timeout=5, blocking=False, thread_local=False)
    assert lock.acquire(token="me")
    client.delete(KEYS.lease("a"))  # expired while Redis was down
    assert sup._renew(lock) and client.get(KEYS.lease("a")) == b"me"
    client.set(KEYS.lease("a"), "other")  # someone else took it meanwhile
    assert not sup._renew(lock)
    assert client.get(KEYS.lease("a")) == b"other"


def test_fair_share_with_two_replicas(redis_server):
    client = redis_server.client()
    sup = supervisor(client, "me", cameras=("a", "b", "c"))
    asyncio.run(asyncio.wait_for(_load(sup), 5))
    assert sup.fair_share == 2


async def _load(sup):
    sup.cameras = {c.id: c for c in await asyncio.to_thread(sup._load)}
