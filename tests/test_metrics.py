"""Prometheus metrics and `percept top`: the pure parts (percentiles, histogram quantiles, rows),
`CameraMetrics` turning the pipeline's counters into increments, `ModelMetrics` around a batch,
`percept top` through a Redis restart, the Grafana dashboard and the compose file. A running graph
scraped on Ray's metrics endpoint: tests/test_metrics_graph.py."""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from cli.top import (
    CameraRow,
    DeploymentStats,
    camera_line,
    deployment_line,
    deployment_stats,
    histogram_mean,
    histogram_quantile,
    percentile,
    render,
)
from pipeline import metrics as pm
from pipeline.sources import SourceState

from .conftest import REPO
from .waiting import wait_for


class MemoryRecorder(pm.Recorder):
    enabled = True

    def __init__(self):
        self.counters: dict[tuple, float] = defaultdict(float)
        self.gauges: dict[tuple, float] = {}
        self.observed: dict[tuple, list[float]] = defaultdict(list)

    @staticmethod
    def key(metric, tags):
        return (metric.name, *sorted(tags.items()))

    def inc(self, metric, value, tags):
        assert value > 0, "Ray's Counter.inc refuses values <= 0"
        self.counters[self.key(metric, tags)] += value

    def set(self, metric, value, tags):
        self.gauges[self.key(metric, tags)] = value

    def observe(self, metric, value, tags):
        self.observed[self.key(metric, tags)].append(value)


# --- unit: pure logic ----------------------------------------------------------------------------

def test_percentile_interpolates_between_ranks():
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([40.0, 10.0, 30.0, 20.0], 0.5) == 25.0
    assert percentile(list(range(1, 101)), 0.95) == pytest.approx(95.05)


def test_histogram_quantile_and_mean_from_cumulative_buckets():
    # 10 observations: 4 at ≤10, 4 in (10, 20], 2 above 40
    buckets = {10.0: 4, 20.0: 8, 40.0: 8, float("inf"): 10}
    assert histogram_quantile(0.5, buckets) == pytest.approx(12.5)  # rank 5: a quarter into (10, 20]
    assert histogram_quantile(0.2, buckets) == pytest.approx(5.0)
    assert histogram_quantile(0.95, buckets) == 40.0  # in +Inf: the highest finite bound, as Prometheus
    assert histogram_quantile(0.5, {10.0: 0, float("inf"): 0}) is None
    sizes = {1.0: 2, 2.0: 2, 3.0: 3, 4.0: 6, float("inf"): 6}  # batches of 1, 1, 3, 4, 4, 4
    assert histogram_mean(sizes) == pytest.approx(17 / 6)
    assert histogram_mean({1.0: 0, float("inf"): 0}) is None


def test_deployment_stats_sum_replicas_and_window_differences():
    def sample(name, worker, value, **labels):
        return (name, {"deployment": "detector", "WorkerId": worker, **labels}, value)

    samples = [
        sample("ray_percept_batch_max_size", "w1", 4), sample("ray_percept_batch_max_size", "w2", 4),
        sample("ray_percept_batch_size_bucket", "w1", 3, le="2.0"), sample("ray_percept_batch_size_bucket", "w1", 5, le="+Inf"),
        sample("ray_percept_batch_size_bucket", "w2", 1, le="2.0"), sample("ray_percept_batch_size_bucket", "w2", 3, le="+Inf"),
        sample("ray_percept_inference_ms_bucket", "w1", 8, le="50.0"), sample("ray_percept_inference_ms_bucket", "w1", 8, le="+Inf"),
        sample("ray_percept_model_errors_total", "w2", 2),
        ("ray_percept_frames_published_total", {"camera": "x"}, 9),  # not a deployment's
    ]
    stats = deployment_stats(samples)
    assert set(stats) == {"detector"}
    d = stats["detector"]
    assert len(d.replicas) == 2 and d.max_batch == 4 and d.errors == 2
    assert d.batch == {2.0: 4, float("inf"): 8}
    old = DeploymentStats(d.replicas, 4, {2.0: 4, float("inf"): 6}, {}, {}, 1)
    window = d.minus(old)
    assert window.batch == {2.0: 0, float("inf"): 2} and window.errors == 1
    line = deployment_line("detector", d)
    assert line.split()[:2] == ["detector", "2"] and "/4" in line and line.split()[-1] == "2"
    # a classifier's batches are crops, its max_size requests: no fill (192 crops said "400%" of 32)
    assert deployment_line("classifier-vehicle", d).split()[2:4] == ["2.0", "crops"]
    # a replica gone (a scale-down): the window is what the one left did, not nothing
    later = deployment_stats([sample("ray_percept_batch_max_size", "w1", 4),
                              sample("ray_percept_batch_size_bucket", "w1", 13, le="2.0"),
                              sample("ray_percept_batch_size_bucket", "w1", 25, le="+Inf"),
                              sample("ray_percept_model_errors_total", "w1", 1)])["detector"]
    window = later.minus(d)
    assert window.batch == {2.0: 10, float("inf"): 20} and window.errors == 1 and len(window.replicas) == 1


def test_a_replica_missing_from_the_windows_first_scrape_is_not_counted_from_zero(monkeypatch):
    """`top` started while one node's endpoint timed out: that replica counted from 0, its whole
    life's errors shown as the last seconds'."""
    import cli.top as top

    def errors(w1, w2=None):
        out = [("ray_percept_model_errors_total", {"deployment": "detector", "WorkerId": "w1"}, w1)]
        return out + ([("ray_percept_model_errors_total", {"deployment": "detector", "WorkerId": "w2"}, w2)]
                      if w2 is not None else [])

    clock = [0.0]
    monkeypatch.setattr(top.time, "monotonic", lambda: clock[0])
    view = top.DeploymentView(["http://a/metrics", "http://b/metrics"])
    for t, samples in ((0, errors(3)), (5, errors(3, 500)), (10, errors(4, 500))):
        clock[0] = t
        monkeypatch.setattr(top, "scrape", lambda urls, s=samples: (s, []))
        deployments, note = view.update(None, "p", None, redis_up=True)
    assert deployments["detector"].errors == 1 and note == "deployments: last 10 s", (deployments, note)


def test_rows_render_cameras_deployments_and_outage():
    row = CameraRow("road", "online", 4.0, 0.25, 6, 88.0, 140.0, {"vehicle": 2, "pedestrian": 1})
    line = camera_line(row)
    assert line.split()[:8] == ["road", "online", "4.0", "0.2", "s", "6", "88", "140"]
    assert line.endswith("pedestrian=1 vehicle=2")
    bad = camera_line(CameraRow("gate", "reconnecting", error="stream ended"))
    assert bad.split()[:3] == ["gate", "reconnecting", "0.0"] and bad.endswith("error: stream ended")
    screen = render(None, None, ["deployments: none"], width=40)
    assert "(redis unreachable)" in screen and all(len(s) <= 40 for s in screen)


# --- unit: CameraMetrics and ModelMetrics --------------------------------------------------------

class FakeConductor(SimpleNamespace):  # (`ConductorStats.state_now`: its source's, failed once its reader crashed)
    state_now = property(lambda self: "failed" if self.crashed else self.source.state.value)


def fake_conductor(cid, publisher, next_seq=100):
    source = SimpleNamespace(frames_read=0, skipped=0, next_seq=next_seq, state=SourceState.CONNECTING)
    return FakeConductor(camera=SimpleNamespace(id=cid), publisher=publisher, crashed=False, source=source,
                         slot=SimpleNamespace(dropped=0), counters=SimpleNamespace(failed=0))


def fake_publisher():
    from pipeline.publish import PublisherStats

    return SimpleNamespace(stats=PublisherStats(), pending=0, newest_ms=lambda camera: None)


def test_camera_metrics_export_increments_of_the_pipeline_counters():
    rec, now = MemoryRecorder(), [1000.0]
    m = pm.CameraMetrics(rec, clock=lambda: now[0])
    pub = fake_publisher()
    pub.stats.dropped["a"] = 7  # restored from Redis when the camera resumed: not new drops
    c = fake_conductor("a", pub)
    m.track(c)
    c.source.frames_read, c.source.next_seq, c.source.skipped = 80, 108, 2  # 8 frames yielded
    c.slot.dropped, c.source.state = 1, SourceState.ONLINE
    pub.stats.published["a"] = 6
    m.frame_published("a", 250.0)
    pub.stats.confirmed["a"] = "1000250-7"  # the newest frame Redis holds: captured 0.75 s before the collect
    now[0] += 1.0
    m.collect({"a": c}, pub)
    got = rec.counters
    assert got[("percept_frames_decoded_total", ("camera", "a"))] == 80
    assert got[("percept_frames_sampled_total", ("camera", "a"))] == 10
    assert got[("percept_frames_dropped_total", ("camera", "a"), ("reason", "replaced"))] == 1
    assert got[("percept_frames_dropped_total", ("camera", "a"), ("reason", "skipped"))] == 2
    assert got[("percept_frames_published_total", ("camera", "a"))] == 6
    assert ("percept_publisher_dropped_total", ("camera", "a")) not in got
    assert rec.gauges[("percept_camera_state", ("camera", "a"), ("state", "online"))] == 1
    assert rec.gauges[("percept_camera_state", ("camera", "a"), ("state", "connecting"))] == 0
    assert rec.gauges[("percept_camera_lag_seconds", ("camera", "a"))] == pytest.approx(0.75)
    assert rec.observed[("percept_e2e_latency_ms", ("camera", "a"))] == [250.0]
    # frames handed to the publisher that Redis has not confirmed (an outage): the lag grows
    now[0] += 5.0
    m.frame_published("a", 100.0)
    m.collect({"a": c}, pub)
    assert rec.gauges[("percept_camera_lag_seconds", ("camera", "a"))] == pytest.approx(5.75)
    # the next round adds only what happened since; a restarted camera's counters start again at 0
    c.source.frames_read, pub.stats.published["a"], pub.stats.dropped["a"] = 90, 9, 8
    m.collect({"a": c}, pub)
    assert got[("percept_frames_decoded_total", ("camera", "a"))] == 90
    assert got[("percept_frames_published_total", ("camera", "a"))] == 9
    assert got[("percept_publisher_dropped_total", ("camera", "a"))] == 1
    c2 = fake_conductor("a", pub, next_seq=108)
    m.track(c2)
    c2.source.frames_read = 5
    m.collect({"a": c2}, pub)
    assert got[("percept_frames_decoded_total", ("camera", "a"))] == 95
    # the camera moved away: this replica shows it in no state
    m.collect({}, pub)
    assert all(v == 0 for k, v in rec.gauges.items() if k[0] == "percept_camera_state")


def test_a_camera_that_moved_and_is_still_connecting_shows_its_lag_from_its_last_frame():
    """The old owner shows lag 0 once the camera left; the new one, before its first frame,
    shows the time since the newest frame on the camera's stream (dashboards take the max)."""
    rec, now = MemoryRecorder(), [1000.0]
    m = pm.CameraMetrics(rec, clock=lambda: now[0])
    pub = fake_publisher()
    pub.newest_ms = lambda camera: 940_000  # the previous owner's last frame, read at the camera's start
    c = fake_conductor("a", pub)
    m.track(c)
    now[0] += 0.2
    m.collect({"a": c}, pub)
    assert rec.gauges[("percept_camera_lag_seconds", ("camera", "a"))] == pytest.approx(60.2)
    fresh = pm.CameraMetrics(rec, clock=lambda: now[0])  # a camera with no frame yet anywhere
    pub.newest_ms = lambda camera: None
    fresh.track(fake_conductor("b", pub))
    now[0] += 3
    fresh.collect({"b": fake_conductor("b", pub)}, pub)
    assert rec.gauges[("percept_camera_lag_seconds", ("camera", "b"))] == pytest.approx(3.0)


def test_drops_a_camera_brings_from_its_earlier_runs_are_not_counted_again_before_it_is_tracked():
    """`resume_camera` raises the publisher's drop count to the camera's total in Redis; a collect
    that runs before the decoder tracks the new conductor (or when opening it fails) saw that as
    new drops."""
    rec = MemoryRecorder()
    m = pm.CameraMetrics(rec)
    pub = fake_publisher()
    pub.stats.dropped["a"] = pub.stats.resumed_dropped["a"] = 500  # what resume_camera does
    m.collect({}, pub)
    assert ("percept_publisher_dropped_total", ("camera", "a")) not in rec.counters
    pub.stats.dropped["a"] = 503
    m.collect({}, pub)
    assert rec.counters[("percept_publisher_dropped_total", ("camera", "a"))] == 3
    # it moves away and comes back (A → B → A): what it dropped at B (exported there) comes with it
    pub.stats.dropped["a"] = pub.stats.resumed_dropped["a"] = 540
    m.collect({}, pub)
    assert rec.counters[("percept_publisher_dropped_total", ("camera", "a"))] == 3, "B's drops counted again here"


def test_top_keeps_the_endpoints_that_answer_when_one_is_no_prometheus_endpoint():
    from cli.top import scrape
    from pipeline.redis_server import free_port

    class Html(QuietHandler):
        def do_GET(self):
            body = b"<!doctype html><html>Ray dashboard</html>" if self.path == "/html" else (
                b"# TYPE ray_percept_frames_published_total counter\n"
                b'ray_percept_frames_published_total{camera="a"} 5.0\n')
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

    with serving(Html) as base:
        samples, problems = scrape([f"{base}/html", f"{base}/metrics", f"http://127.0.0.1:{free_port()}/"])
    assert samples == [("ray_percept_frames_published_total", {"camera": "a"}, 5.0)]
    assert len(problems) == 2 and problems[0].startswith(f"{base}/html: ValueError"), problems


def test_no_op_default_records_nothing_and_keeps_no_state():
    m = pm.NO_METRICS
    m.frame_published("a", 10.0)
    m.collect({"a": fake_conductor("a", fake_publisher())}, fake_publisher())
    assert not m._last_frame_ts and not m._tracked


def test_model_metrics_time_each_batch_and_count_failed_items():
    rec = MemoryRecorder()
    mm = pm.ModelMetrics("classifier-vehicle", rec)
    mm.max_batch_size(32)
    requests = [["crop1", "crop2"], ["crop3"]]
    for r in requests:
        mm.arrived(r)
    with mm.batch(requests, size=3) as batch:
        batch.results = [[{"type": "cab"}, ValueError("bad crop")], [{"type": "jeep"}]]
    for r in requests:
        mm.left(r)
    tags = ("deployment", "classifier-vehicle")
    assert rec.observed[("percept_batch_size", tags)] == [3]
    assert len(rec.observed[("percept_queue_wait_ms", tags)]) == 2
    assert len(rec.observed[("percept_inference_ms", tags)]) == 1
    assert rec.counters[("percept_model_errors_total", tags)] == 1
    assert rec.gauges[("percept_batch_max_size", tags)] == 32
    with pytest.raises(RuntimeError), mm.batch(requests):
        raise RuntimeError("model crashed")
    assert rec.counters[("percept_model_errors_total", tags)] == 3
    with pytest.raises(RuntimeError), mm.batch(requests, size=3):  # a classifier's: its crops, not its requests
        raise RuntimeError("model crashed")
    assert rec.counters[("percept_model_errors_total", tags)] == 6
    assert not mm._arrived


def test_a_camera_run_that_came_and_went_between_two_collections_is_counted():
    """Tracked (started) and gone (handed over) before any collection: its frames were never
    exported, and its entry stayed."""
    rec = MemoryRecorder()
    m = pm.CameraMetrics(rec)
    pub = fake_publisher()
    c = fake_conductor("a", pub)
    m.track(c)
    c.source.frames_read, c.source.next_seq = 40, 40
    m.collect({}, pub)
    assert rec.counters[("percept_frames_decoded_total", ("camera", "a"))] == 40 and m._tracked == {}


def test_metrics_endpoints_read_skip_a_value_percept_did_not_write():
    """A bare float() on each value: one that is no number made `top` exit with a traceback."""
    class Hash:
        def time(self):
            return (1010, 0)

        def hgetall(self, key):
            return {b"http://10.0.0.1:8080/metrics": b"1000.0", b"http://10.0.0.9:1/metrics": b"n/a"}

    assert pm.read_endpoints(Hash(), "p") == ["http://10.0.0.1:8080/metrics"]


def test_model_metrics_set_their_gauge_again_before_ray_forgets_it():
    import asyncio

    rec = MemoryRecorder()
    sets = []
    rec.set = lambda metric, value, tags: sets.append((metric.name, value))
    mm = pm.ModelMetrics("detector", rec)
    mm.max_batch_size(8)

    async def three_more():
        task = asyncio.create_task(mm.keep_gauges(every_s=0.01))
        try:
            while len(sets) < 4:
                await asyncio.sleep(0.01)  # polled under wait_for's 10 s deadline below
        finally:
            task.cancel()

    asyncio.run(asyncio.wait_for(three_more(), timeout=10))
    assert set(sets) == {("percept_batch_max_size", 8.0)}


def test_metric_names_are_prefixed_and_unique():
    names = [m.name for m in pm.ALL_METRICS]
    assert len(set(names)) == len(names) and all(n.startswith("percept_") for n in names)
    assert all(m.name.endswith("_total") for m in pm.ALL_METRICS if m.kind == "counter")
    assert pm.FRAMES_PUBLISHED.scraped == "ray_percept_frames_published_total"


# --- percept top through a Redis outage (no Ray: camera rows, and a note for deployments) ---------

@pytest.mark.integration
def test_top_rides_out_a_redis_restart(tmp_path):
    import signal
    import time
    from pathlib import Path

    from pipeline.config import CameraConfig
    from pipeline.redis_server import EmbeddedRedis
    from pipeline.registry import CameraRegistry
    from pipeline.streams import StreamKeys

    keys = StreamKeys("toptest")
    server = EmbeddedRedis(tmp_path / "redis").start()
    client = server.client()
    CameraRegistry(client, keys).add(CameraConfig(id="gate", url="/videos/gate.mp4", fps=2))
    client.hset(keys.camera("gate"), mapping={"state": "online", "fps": "2.00", "dropped": "3"})
    for i, total_ms in enumerate((80, 120, 100)):
        payload = {"objects": [{"category": "vehicle"}], "latency_ms": {"total": total_ms}}
        client.xadd(keys.detections("gate"), {"json": json.dumps(payload)}, id=f"{int(time.time() * 1000)}-{i}")
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "top", "--redis", server.url, "--prefix", "toptest",
                                 "--interval", "0.3", "--duration", "120"], cwd=REPO, stdout=out, stderr=err, text=True)
    rows = lambda: Path(out_path).read_text().count("\ngate ")
    try:
        wait_for(lambda: rows() >= 1, 60, "a camera row")
        first = next(ln for ln in out_path.read_text().splitlines() if ln.startswith("gate "))
        assert first.split()[:3] == ["gate", "online", "2.0"] and first.split()[6:8] == ["100", "118"], first
        server.kill()
        wait_for(lambda: "(redis unreachable)" in out_path.read_text(), 30, "the screen to say redis is unreachable")
        server.start()
        wait_for(lambda: "is back" in err_path.read_text(), 30, "percept top to notice redis is back")
        after = rows()
        wait_for(lambda: rows() > after + 1, 30, "camera rows again after the outage")
        assert proc.poll() is None, "percept top exited during the outage"
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        server.stop()
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert rc == 0 and "Traceback" not in stdout + stderr, stderr
    assert stderr.count("redis unreachable at redis://127.0.0.1:") == 1, stderr
    assert "deployments: no Ray metrics endpoint known" in stdout
    assert "\x1b[" not in stdout  # not a terminal: snapshots one after another, no escapes


# --- the dashboard, Prometheus and the compose services agree with the metrics -------------------

def test_dashboard_uses_every_metric_by_its_scraped_name():
    import re

    dashboard = json.loads((REPO / "deploy" / "grafana" / "percept.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"ray_percept_\w+", e)}
    known = {m.scraped + suffix: m for m in pm.ALL_METRICS
             for suffix in (("_bucket", "_sum", "_count") if m.kind == "histogram" else ("",))}
    assert used <= set(known), f"unknown series in the dashboard: {used - set(known)}"
    assert {known[n].name for n in used} == {m.name for m in pm.ALL_METRICS}, "a metric the dashboard does not show"
    assert all(e.count("(") == e.count(")") for e in exprs)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "camera"} <= variables


def test_compose_runs_prometheus_on_the_ray_metrics_port_and_grafana_with_the_dashboard():
    import yaml

    docker = REPO / "docker"
    services = yaml.safe_load((docker / "compose.yaml").read_text())["services"]
    ports = {name: {a.split("=", 1)[1].split()[0] for a in services[name]["command"] if a.startswith("--metrics-export-port=")}
             for name in ("ray-head", "ray-worker")}
    prom = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    sd = prom["scrape_configs"][0]["dns_sd_configs"][0]
    assert set(sd["names"]) == {"ray-head", "ray-worker"} and ports == {n: {str(sd["port"])} for n in ports}

    def mounts(service):
        out = {}
        for v in services[service]["volumes"]:
            src, dst = v.split(":")[:2]
            if src.startswith("."):
                assert (docker / src).resolve().exists(), f"{service}: {src} does not exist"
                out[dst] = (docker / src).resolve()
        return out

    assert mounts("prometheus")["/etc/prometheus/prometheus.yml"] == REPO / "deploy" / "prometheus" / "prometheus.yml"
    graf = mounts("grafana")
    provisioning = graf["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "percept.yml").read_text())["providers"]
    folder = providers[0]["options"]["path"]
    assert graf[f"{folder}/percept.json"] == REPO / "deploy" / "grafana" / "percept.json"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and "127.0.0.1:9090:9090" in services["prometheus"]["ports"]


def test_metrics_endpoints_of_nodes_gone_for_good_are_dropped(redis_server):
    """Each decoder advertises its node's metrics URL in one hash; nothing removed the URLs of
    nodes that left (a cluster's nodes come and go), so the hash, and what `percept top` tries
    on a refresh, only grew. An entry unseen for 10 minutes is deleted at the next write; one
    seen lately stays (read_endpoints leaves it out after 2 minutes)."""
    client = redis_server.client()
    key, now = pm.endpoints_key("ep"), pm.redis_now(client)
    client.hset(key, mapping={"http://gone:8080": f"{now - 3600:.3f}", "http://odd:8080": "not a time",
                              "http://quiet:8080": f"{now - 300:.3f}"})
    pm.write_endpoints(client, "ep", ["http://here:8080"], ttl_s=60)
    assert sorted(client.hkeys(key)) == [b"http://here:8080", b"http://quiet:8080"]
    assert pm.read_endpoints(client, "ep") == ["http://here:8080"]


def test_top_scrapes_the_metrics_endpoints_at_once():
    """One endpoint after the other, each that did not answer cost a refresh its 2 s timeout
    (ten unreachable nodes: a "1 s" refresh took 20 s). Each endpoint here answers only once all
    three were asked (a barrier): asked one at a time, none would."""
    from cli.top import scrape

    everyone = threading.Barrier(3, timeout=20)

    class Together(QuietHandler):
        def do_GET(self):
            try:
                everyone.wait()
            except threading.BrokenBarrierError:
                self.send_response(503)
                self.end_headers()
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(f'ray_percept_frames_published_total{{camera="{self.path[1:]}"}} 1.0\n'.encode())

    with serving(Together) as base:
        samples, problems = scrape([f"{base}/a", f"{base}/b", f"{base}/c"], timeout_s=30)
    assert problems == [] and sorted(s[1]["camera"] for s in samples) == ["a", "b", "c"], (samples, problems)


class QuietHandler(http.server.BaseHTTPRequestHandler):
    log_message = lambda self, *args: None  # noqa: E731


@contextlib.contextmanager
def serving(handler: type) -> Iterator[str]:
    """A local HTTP server with ``handler`` in threads, its base URL while in the block."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
