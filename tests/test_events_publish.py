"""Events ride with their frame: one fenced round-trip writes the frame, its events and their
counters, all or nothing (a retried frame writes none of them again); on a real redis-server."""

import json

from .test_publish import KEYS, publisher, result


def _events(client, camera="cam"):
    return [(eid.decode(), f[b"kind"].decode(), json.loads(f[b"json"])) for eid, f in client.xrange(KEYS.events(camera))]


def test_events_and_counts_land_with_their_frame_once(redis_server):
    pub = publisher(redis_server)
    start = ("track_start", json.dumps({"id": "cam:7:track_start", "kind": "track_start"}))
    cross = ("line_cross", json.dumps({"id": "cam:7:line_cross:1", "kind": "line_cross"}))
    pub.publish(result(1), [start], {"tracks:vehicle": 1})
    pub.publish(result(2), [cross], {"line:stop:in:vehicle": 1})
    pub.publish(result(2), [cross], {"line:stop:in:vehicle": 1})  # the retry of a frame that landed
    assert pub.flush(5)
    client = redis_server.client()
    events = _events(client)
    assert [(k, e["id"]) for _, k, e in events] == [("track_start", "cam:7:track_start"),
                                                    ("line_cross", "cam:7:line_cross:1")]
    assert client.hgetall(KEYS.counts("cam")) == {b"tracks:vehicle": b"1", b"line:stop:in:vehicle": b"1"}
    assert pub.stats.duplicates["cam"] == 1
    pub.close()


def test_events_without_a_frame_and_ids_that_keep_increasing_across_publishers(redis_server):
    pub = publisher(redis_server)
    pub.publish(result(1), [("track_start", "{}"), ("zone_enter", "{}")], {"zone:a:enter:vehicle": 1})
    pub.publish_events("cam", 1_700_000_000.0, [("track_end", "{}")], {})
    assert pub.flush(5)
    pub.close()
    again = publisher(redis_server)  # a restarted decoder: ids continue above the stream's last
    again.resume_camera("cam")
    again.publish(result(2, ts=1_600_000_000.0), [("track_start", "{}")], {"tracks:vehicle": 1})
    assert again.flush(5)
    ids = [eid for eid, _, _ in _events(redis_server.client())]
    assert len(ids) == 4 and ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert [k for _, k, _ in _events(redis_server.client())] == ["track_start", "zone_enter", "track_end", "track_start"]
    again.close()


def test_subscribe_events_reads_the_event_stream_with_a_group(redis_server):
    import subprocess
    import sys

    from .conftest import REPO

    pub = publisher(redis_server)
    pub.publish(result(1), [("track_start", json.dumps({"id": "cam:1:track_start"}))], {"tracks:vehicle": 1})
    pub.publish(result(2), [("track_end", json.dumps({"id": "cam:1:track_end"}))], {})
    assert pub.flush(5)
    pub.close()
    args = [sys.executable, "-m", "cli", "subscribe", "cam", "--events", "--redis", redis_server.url, "--prefix",
            KEYS.prefix, "--from-start", "--group", "g", "--count", "2"]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["id"] for line in out.stdout.splitlines()] == ["cam:1:track_start", "cam:1:track_end"]
    assert redis_server.client().xpending(KEYS.events("cam"), "g")["pending"] == 0  # acked


def test_a_track_across_a_resolution_change_ends_with_its_path_in_the_new_frames_pixels():
    """A still object through a reconnect at a third of the size: its track_end path had its
    first point in the old pixels and its last in the new (a jump of 2/3 of the frame)."""
    from pipeline.events import EventEngine
    from tests.test_events import frame, obj, run

    engine = EventEngine("cam", track_buffer=1)
    frames = [frame(1, [obj(1, 500, x=1000)], width=1920, height=1080),
              frame(2, [obj(1, 170, x=333)], width=640, height=360)]
    ends = [e for e in run(engine, frames + [frame(s, width=640, height=360) for s in (3, 4)]) if e.kind == "track_end"]
    (path,) = [e.path for e in ends]
    points = [path["first"], path["last"], *path["points"]]
    assert all(abs(x - 333) < 1 and abs(y - 165) < 1 for x, y in points), path


def test_an_events_stream_of_another_type_loses_the_events_said_not_the_frames(redis_server, caplog):
    """A key of another type (not written by percept) where a camera's events go: the script's
    event XADD failed, and that error became the frame's, though its XADD had landed; counted
    an error, ``processed`` not raised, and every frame after it in the call left unwritten (3 of
    3 reported failed). The frames land and are counted; the events lost are counted one by one
    and logged; the counters still count."""
    client = redis_server.client()
    client.set(KEYS.events("cam"), "not a stream")
    pub = publisher(redis_server)
    with caplog.at_level("ERROR", logger="percept.publish"):
        pub.publish(result(0), [("zone_enter", "{}"), ("zone_exit", "{}")], {"zone:a:enter:vehicle": 1})
        pub.publish(result(1))
        pub.publish_events("cam", 1_700_000_001.0, [("track_end", "{}")], {"tracks:vehicle": 1})
        pub.publish(result(2))
        assert pub.flush(5)
    assert [int(f[b"seq"]) for _, f in client.xrange(KEYS.detections("cam"))] == [0, 1, 2]
    assert pub.stats.published["cam"] == 3 and pub.stats.dropped_events["cam"] == 3, pub.stats
    assert client.hget(KEYS.camera("cam"), "processed") == b"3"
    assert client.hgetall(KEYS.counts("cam")) == {b"zone:a:enter:vehicle": b"1", b"tracks:vehicle": b"1"}
    assert caplog.text.count("events not written to its events stream: WRONGTYPE") == 2, caplog.text
    pub.close()
    client.delete(KEYS.events("cam"))


def test_a_detections_stream_of_another_type_drops_the_frames_counted_and_said_once(redis_server, caplog):
    """Its frames and the events they carried were lost with no count of the camera's (only the
    replica's error total: a seq gap nothing explained, a `track_end` without its `track_start`)
    and an error line each, 3 a second. Counted as dropped (publish_dropped), their events in
    dropped_events, said once; the other cameras' frames land."""
    client = redis_server.client()
    client.set(KEYS.detections("cam"), "not a stream")
    pub = publisher(redis_server)
    with caplog.at_level("ERROR", logger="percept.publish"):
        for s in range(4):
            pub.publish(result(s), [("track_start", "{}")] if s == 0 else [])
            pub.publish(result(s, camera="other"))
        assert pub.flush(5)
    assert pub.stats.dropped["cam"] == 4 and pub.stats.dropped_events["cam"] == 1, pub.stats
    assert pub.stats.published["other"] == 4 and client.xlen(KEYS.detections("other")) == 4
    assert caplog.text.count("camera cam: XADD failed: WRONGTYPE") == 1, caplog.text
    pub.camera_stats("cam", fps=1.0)
    assert pub.flush(5)
    assert client.hget(KEYS.camera("cam"), "publish_dropped") == b"4"
    pub.close()
    client.delete(KEYS.detections("cam"))
