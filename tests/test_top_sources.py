"""`percept top`'s deployment rows when their sources are partly there: an endpoint of several
down, an endpoints hash written by someone else (another type, another scheme)."""

from __future__ import annotations

import http.server

import pipeline.metrics as pm
from cli.common import RedisOutage
from cli.top import DeploymentView

from .test_metrics import QuietHandler, serving


class OneReplica(QuietHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'ray_percept_batch_max_size{deployment="detector",WorkerId="w1"} 8.0\n')


def _free_port() -> int:
    server = http.server.HTTPServer(("127.0.0.1", 0), QuietHandler)
    port = server.server_address[1]
    server.server_close()  # (nothing listens there now: refused)
    return port


def test_an_endpoint_that_does_not_answer_is_said_while_the_others_show(redis_server):
    """Replicas on a node whose endpoint is down dropped out of the rows without a word, as long
    as another endpoint answered."""
    down = f"http://127.0.0.1:{_free_port()}/metrics"
    with serving(OneReplica) as base:
        view = DeploymentView([f"{base}/metrics", down])
        stats, note = view.update(redis_server.client(), "tops", RedisOutage(redis_server.url), redis_up=True)
    assert stats is not None and "detector" in stats, (stats, note)
    assert "1 of 2 metrics endpoints unreachable" in note and down in note, note


def test_an_endpoints_hash_of_another_type_or_another_scheme_is_not_followed(redis_server):
    """Anyone who can write the endpoints hash had `top` fetch ``file:///etc/hostname`` (and print
    the file in its error); a key of another type ended `top`, exit 3, the camera rows unshown."""
    client = redis_server.client()
    key, now = pm.endpoints_key("tops"), pm.redis_now(client)
    with serving(OneReplica) as base:
        client.hset(key, mapping={"file:///etc/hostname": f"{now:.3f}", f"{base}/metrics": f"{now:.3f}",
                                  "gopher://x/": f"{now:.3f}"})
        assert pm.read_endpoints(client, "tops") == [f"{base}/metrics"]
        stats, note = DeploymentView(None).update(client, "tops", RedisOutage(redis_server.url), redis_up=True)
        assert stats is not None and "unreachable" not in note, note
    client.delete(key)
    client.set(key, "not a hash")
    try:
        stats, note = DeploymentView(None).update(client, "tops", RedisOutage(redis_server.url), redis_up=True)
        assert stats is None and note.startswith(f"deployments: {key} unreadable: ") and "WRONGTYPE" in note, note
    finally:
        client.delete(key)


def test_a_cameras_dropped_counts_the_frames_its_outages_dropped_too(redis_server):
    """DROPPED showed frames dropped for load only: 106 a camera thrown away by the outage buffer
    (`publish_dropped`) were said nowhere but in /status."""
    from cli.top import camera_rows

    client = redis_server.client()
    client.hset("tops:cameras", "gate", '{"source": "config", "camera": {"id": "gate", "url": "rtsp://cam/g"}}')
    client.hset("tops:camera:gate", mapping={"state": "online", "fps": "3.0", "dropped": "17", "publish_dropped": "106"})
    [row] = camera_rows(client, "tops", 5)
    assert (row.camera, row.dropped) == ("gate", 123), row
