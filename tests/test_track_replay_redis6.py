"""`trimmed_after` on Redis 6.2 (the oldest the README supports), whose XINFO STREAM has no
``entries-added``: a KeyError left a snapshot's tracks without their ``track_end`` and kept a
crowd's camera from starting after a crash."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipeline.streams import StreamKeys
from pipeline.track_replay import trimmed_after


def publisher(info: dict, maxlen: int = 100) -> SimpleNamespace:
    client = SimpleNamespace(xinfo_stream=lambda key: info)
    return SimpleNamespace(client=client, keys=StreamKeys("t"), maxlen=maxlen)


@pytest.mark.parametrize("info,trimmed", [
    ({"length": 100, "first-entry": (b"5000-0", {})}, True),  # as long as maxlen, its first after: trimmed
    ({"length": 40, "first-entry": (b"5000-0", {})}, False),  # shorter than maxlen: never trimmed
    ({"length": 100, "first-entry": (b"500-0", {})}, False),  # its first before the snapshot: nothing lost
    ({"length": 100, "entries-added": 100, "first-entry": (b"5000-0", {})}, False),  # Redis 7: counted
    ({"length": 100, "entries-added": 130, "first-entry": (b"5000-0", {})}, True),
])
def test_a_stream_trimmed_past_the_snapshot_is_told_on_redis_6_and_7(info, trimmed):
    assert trimmed_after(publisher(info), "cam", 1000) is trimmed
