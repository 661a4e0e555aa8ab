"""`percept top`: one row per camera and one per model deployment, refreshed in place.

Camera rows come from Redis: the camera registry and hashes (state, fps, drops), and the last
``--samples`` entries of each detections stream (lag from the newest entry's capture time, e2e
p50/p95 from ``latency_ms.total``, objects of the newest frame). Deployment rows come from Ray's
metrics endpoints (replicas, mean batch size against the max, inference and queue-wait p50,
errors), which the decoder replicas advertise in Redis (``--metrics`` names them instead).
Without them the camera rows are shown alone, with a note. Plain ANSI (clear and redraw) so it
reads the same over SSH; ``--once`` prints one snapshot without escapes and exits. A Redis
outage prints one line (as `percept run` does) and the screen says so until Redis is back."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from pipeline.config import CONFIG_ERROR_EXIT_CODE
from pipeline.redact import redact

from .common import EXIT_UNAVAILABLE, RedisOutage, api_url_arg, fail, number_arg, prefix_arg, redis_url_arg

CLEAR = "\x1b[H\x1b[2J"
WINDOW_S = 30.0  # deployment numbers: over the last this many seconds (since start with --once)


def register(sub: Any) -> None:
    t = sub.add_parser("top", help="live view: a row per camera and per model deployment")
    t.add_argument("-c", "--config", help="read redis url/prefix from this config")
    t.add_argument("--redis", type=redis_url_arg, help="redis URL (default: config, PERCEPT_REDIS_URL, localhost)")
    t.add_argument("--prefix", type=prefix_arg, help="stream prefix (default: config or 'percept')")
    t.add_argument("--metrics", action="append", metavar="URL", type=api_url_arg,
                   help="a Ray metrics endpoint, http://host:port/metrics (repeatable; default: advertised in Redis)")
    t.add_argument("--interval", type=number_arg(float, 0.1, 3600), default=1.0,
                   help="seconds between refreshes (default 1, at most 3600)")
    t.add_argument("--samples", type=number_arg(int, 1, 100_000), default=50,
                   help="stream entries per camera for e2e p50/p95 (default 50, at most 100000)")
    t.add_argument("--once", action="store_true", help="print one snapshot and exit")
    t.add_argument("--duration", type=number_arg(float, 0.1), help="stop after this many seconds")
    t.set_defaults(func=_top)


# --- pure logic --------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) with linear interpolation between closest ranks; None if empty."""
    if not values:
        return None
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts ``{upper bound: count}``."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank, prev_bound, prev_count = q * buckets[bounds[-1]], 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def histogram_mean(buckets: dict[float, float]) -> float | None:
    """Mean from bucket counts, each taken at its upper bound (exact for integer sizes whose
    buckets are 1, 2, 3, …; Ray's exported _sum is only approximate)."""
    bounds = sorted(b for b in buckets if not math.isinf(b))
    total = buckets.get(math.inf, buckets[bounds[-1]] if bounds else 0)
    if total <= 0:
        return None
    acc, prev = 0.0, 0.0
    for bound in bounds:
        acc += (buckets[bound] - prev) * bound
        prev = buckets[bound]
    acc += (total - prev) * (bounds[-1] if bounds else 0)
    return acc / total


@dataclass
class CameraRow:
    camera: str
    state: str = "pending"
    fps: float = 0.0
    lag_s: float | None = None
    dropped: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    objects: dict[str, int] = field(default_factory=dict)
    error: str = ""


@dataclass
class DeploymentStats:
    """One deployment, summed over its replicas: cumulative histograms (``{le: count}``); ``parts``
    holds the same for each replica (``WorkerId`` + ``NodeAddress``)."""
    replicas: set[str] = field(default_factory=set)
    max_batch: float = 0.0
    batch: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    inference: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    queue: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    errors: float = 0.0
    parts: dict[str, "DeploymentStats"] = field(default_factory=dict)

    def add(self, histogram: str | None, le: float, value: float) -> None:
        if histogram is None:
            self.errors += value
        else:
            getattr(self, histogram)[le] += value

    def minus(self, old: "DeploymentStats") -> "DeploymentStats":
        """What happened since ``old`` (replicas and max batch as now), replica by replica as
        Prometheus' ``rate()`` counts: a replica gone since adds nothing, a new one counts from 0
        (summed over replicas, one that left made every difference negative, shown as none)."""
        def sub(a: dict[float, float], b: dict[float, float]) -> dict[float, float]:
            return defaultdict(float, {k: max(0.0, v - b.get(k, 0.0)) for k, v in a.items()})

        if not self.parts or not old.parts:  # (sums only: as they are)
            return DeploymentStats(self.replicas, self.max_batch, sub(self.batch, old.batch),
                                   sub(self.inference, old.inference), sub(self.queue, old.queue),
                                   max(0.0, self.errors - old.errors))
        out = DeploymentStats(self.replicas, self.max_batch)
        for key, part in self.parts.items():
            window = part.minus(old.parts.get(key, DeploymentStats()))
            for name in ("batch", "inference", "queue"):
                for le, v in getattr(window, name).items():
                    out.add(name, le, v)
            out.errors += window.errors
        return out


HISTOGRAMS = {"ray_percept_batch_size_bucket": "batch", "ray_percept_inference_ms_bucket": "inference",
              "ray_percept_queue_wait_ms_bucket": "queue"}


def deployment_stats(samples: Iterable[tuple[str, dict[str, str], float]]) -> dict[str, DeploymentStats]:
    """Per deployment (and per replica in its ``parts``), from scraped samples ``(name, labels,
    value)`` of one or more endpoints."""
    out: dict[str, DeploymentStats] = defaultdict(DeploymentStats)
    for name, labels, value in samples:
        dep = labels.get("deployment")
        if dep is None:
            continue
        replica = labels.get("WorkerId", "") + labels.get("NodeAddress", "")
        if name == "ray_percept_batch_max_size":
            out[dep].replicas.add(replica)
            out[dep].max_batch = max(out[dep].max_batch, value)
        elif name in HISTOGRAMS or name == "ray_percept_model_errors_total":
            histogram, le = HISTOGRAMS.get(name), float(labels.get("le", "0"))
            out[dep].add(histogram, le, value)
            out[dep].parts.setdefault(replica, DeploymentStats()).add(histogram, le, value)
    return dict(out)


def camera_line(row: CameraRow) -> str:
    lag = "-" if row.lag_s is None else f"{row.lag_s:.1f} s"
    p50 = "-" if row.p50_ms is None else f"{row.p50_ms:.0f}"
    p95 = "-" if row.p95_ms is None else f"{row.p95_ms:.0f}"
    objects = " ".join(f"{k}={v}" for k, v in sorted(row.objects.items())) or "-"
    err = f"  error: {redact(row.error)}" if row.error and row.state != "online" else ""  # (a URL's password)
    return (f"{row.camera:<14} {row.state:<12} {row.fps:5.1f} {lag:>7} {row.dropped:>7} "
            f"{p50:>7} {p95:>7}  {objects}{err}")


CAMERA_HEADER = f"{'CAMERA':<14} {'STATE':<12} {'FPS':>5} {'LAG':>7} {'DROPPED':>7} {'E2E p50':>7} {'p95 ms':>7}  OBJECTS"
DEPLOYMENT_HEADER = f"{'DEPLOYMENT':<22} {'REPLICAS':>8} {'BATCH (fill)':>14} {'INFER p50':>10} {'QUEUE p50':>10} {'ERRORS':>7}"


def deployment_line(name: str, d: DeploymentStats) -> str:
    mean = histogram_mean(d.batch)
    if mean is None:
        batch = "-"
    elif name.startswith("classifier"):  # its batches in crops, its max_size in requests: no fill
        batch = f"{mean:.1f} crops"
    elif d.max_batch:
        batch = f"{mean:.1f}/{d.max_batch:.0f} ({100 * mean / d.max_batch:.0f}%)"
    else:
        batch = f"{mean:.1f}"
    infer, queue = histogram_quantile(0.5, d.inference), histogram_quantile(0.5, d.queue)
    infer_s = "-" if infer is None else f"{infer:.0f} ms"
    queue_s = "-" if queue is None else f"{queue:.0f} ms"
    return f"{name:<22} {len(d.replicas):>8} {batch:>14} {infer_s:>10} {queue_s:>10} {d.errors:>7.0f}"


def render(rows: list[CameraRow] | None, deployments: dict[str, DeploymentStats] | None, notes: list[str],
           *, width: int = 200) -> list[str]:
    lines = [CAMERA_HEADER]
    lines += ["(redis unreachable)"] if rows is None else [camera_line(r) for r in rows]
    if deployments:
        lines += ["", DEPLOYMENT_HEADER] + [deployment_line(n, d) for n, d in sorted(deployments.items())]
    lines += [""] + notes if notes else []
    return [line[:width] for line in lines]


# --- reading Redis and the metrics endpoints ---------------------------------------------------

def camera_rows(client: Any, prefix: str, samples: int, now: float | None = None) -> list[CameraRow]:
    from pipeline.registry import CameraRegistry
    from pipeline.streams import StreamKeys, number, parse_entry_id, per_key, states_as_seen

    keys, now = StreamKeys(prefix), time.time() if now is None else now
    valid, invalid = CameraRegistry(client, keys).read()
    ids = sorted({c.id for c in valid} | {c.id for c in invalid})
    states, _ = states_as_seen(client, keys, ids, now)
    pipe = client.pipeline(transaction=False)
    for cid in ids:
        pipe.xrevrange(keys.detections(cid), count=samples)
    rows = []
    for cid, entries in zip(ids, per_key(pipe)):
        st = states.get(cid, {})
        row = CameraRow(cid, st.get("state", "pending"), number(st.get("fps")),  # (load's drops and the outages')
                        dropped=int(number(st.get("dropped"))) + int(number(st.get("publish_dropped"))),
                        error=st.get("last_error", ""))
        if isinstance(entries, Exception):  # (a key not written by percept)
            row.state, row.error, entries = "unreadable", f"{keys.detections(cid)}: {entries}", []
        totals = []
        for i, (entry_id, fields) in enumerate(entries):
            if i == 0:
                row.lag_s = max(0.0, now - parse_entry_id(entry_id)[0] / 1000)
            try:
                payload = json.loads(fields[b"json"])
                total = float(payload.get("latency_ms", {}).get("total", 0.0))
                if math.isfinite(total):  # ("nan", "inf" from an entry percept did not write: not a latency)
                    totals.append(total)
                if i == 0:
                    # (a category that is no text, from an entry not written by percept, is not counted:
                    # the line sorts them)
                    row.objects = dict(Counter(c for o in payload.get("objects", []) if isinstance(c := o["category"], str)))
            except (KeyError, ValueError, TypeError, AttributeError, OverflowError, RecursionError):  # an entry
                # not as percept writes them (a number no float holds, JSON nested deeper than the stack)
                continue
        row.p50_ms, row.p95_ms = percentile(totals, 0.5), percentile(totals, 0.95)
        rows.append(row)
    return rows


def scrape(urls: Sequence[str], timeout_s: float = 2.0) -> tuple[list[tuple[str, dict[str, str], float]], list[str]]:
    """Samples of every endpoint that answered, and what went wrong with the others."""
    from prometheus_client.parser import text_string_to_metric_families

    def one(url: str) -> tuple[list[tuple[str, dict[str, str], float]], str | None]:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                text = resp.read().decode()
            return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text)
                    for s in fam.samples if s.name.startswith("ray_percept_")], None
        except Exception as exc:  # an endpoint down, or not Prometheus text: the others still count
            return [], redact(f"{url}: {type(exc).__name__}: {str(exc)[:200]}")

    samples, problems = [], []
    # all at once: one after the other, each endpoint that does not answer cost a refresh its timeout
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(urls)))) as pool:
        for got, problem in pool.map(one, urls):
            samples += got
            problems += [problem] if problem else []
    return samples, problems


class DeploymentView:
    """Deployment rows over a sliding window of scrapes (since the first one, until it is
    ``WINDOW_S`` old)."""

    def __init__(self, fixed_urls: Sequence[str] | None):
        self.fixed = list(fixed_urls or [])
        self.known: list[str] = []  # advertised in Redis, as last read
        self.history: deque[tuple[float, dict[str, DeploymentStats]]] = deque()

    def update(self, client: Any, prefix: str, outage: RedisOutage, *, redis_up: bool) -> tuple[dict[str, DeploymentStats] | None, str]:
        """The rows' numbers and a note. While Redis is down, the endpoints last read are used."""
        import redis

        from pipeline.metrics import endpoints_key, read_endpoints

        if not self.fixed and redis_up:
            try:
                self.known = outage.attempt(lambda: read_endpoints(client, prefix), self.known)
            except redis.ResponseError as exc:  # (a key of another type, not written by percept: the cameras still show)
                return None, redact(f"deployments: {endpoints_key(prefix)} unreadable: {exc}")[:300]
        urls = self.fixed or self.known
        if not urls:
            return None, "deployments: no Ray metrics endpoint known (none advertised in redis; try --metrics URL)"
        samples, problems = scrape(urls)
        if problems and not samples:
            return None, "deployments: Ray metrics unreachable (" + "; ".join(problems)[:300] + ")"
        stats, note = self._window(samples)
        if problems:  # the replicas of a node whose endpoint did not answer are missing from the rows: said
            note += f"; {len(problems)} of {len(urls)} metrics endpoints unreachable (" + "; ".join(problems)[:300] + ")"
        return stats, note

    def _window(self, samples: list[tuple[str, dict[str, str], float]]) -> tuple[dict[str, DeploymentStats], str]:
        now, stats = time.monotonic(), deployment_stats(samples)
        self.history.append((now, stats))
        while len(self.history) > 2 and now - self.history[1][0] >= WINDOW_S:
            self.history.popleft()
        t0, _ = self.history[0]
        if len(self.history) < 2:
            return stats, "deployments: since their start"
        window = {n: d.minus(self._base(n)) for n, d in stats.items()}
        return window, f"deployments: last {now - t0:.0f} s"

    def _base(self, name: str) -> "DeploymentStats":
        """What the window of deployment ``name`` counts from: each replica's numbers in the
        oldest scrape of the window that has it (one missing from the oldest, its node's
        endpoint slow that once, counted from 0 showed its whole life as the window's)."""
        base = DeploymentStats()
        for _, stats in self.history:
            d = stats.get(name)
            if d is None:
                continue
            if not d.parts:  # (sums only): the oldest there is
                return d if not base.parts else base
            for key, part in d.parts.items():
                base.parts.setdefault(key, part)
        return base


# --- the command ---------------------------------------------------------------------------------

def snapshot(client: Any, prefix: str, view: DeploymentView, outage: RedisOutage, samples: int) -> tuple[bool, list[str]]:
    """(Redis answered, the lines of one screen)."""
    rows = outage.attempt(lambda: camera_rows(client, prefix, samples), None)
    deployments, note = view.update(client, prefix, outage, redis_up=rows is not None)
    width = shutil.get_terminal_size((200, 40)).columns if sys.stdout.isatty() else 200
    stamp = time.strftime("%H:%M:%S")
    return rows is not None, [f"percept top — prefix {prefix} — {stamp}", *render(rows, deployments, [note], width=width)]


def _top(args: argparse.Namespace) -> int:
    import redis

    from pipeline.redact import redact_url
    from pipeline.streams import connect_redis, database_missing, redis_from_config

    from .subscribe import _redis_source

    try:
        url, prefix, redis_cfg = _redis_source(args)
    except FileNotFoundError as exc:
        return fail(str(exc), EXIT_UNAVAILABLE)
    except ValueError as exc:  # PERCEPT_REDIS_URL
        return fail(str(exc), CONFIG_ERROR_EXIT_CODE)
    prefix = prefix or "percept"
    client = redis_from_config(redis_cfg.model_copy(update={"url": url})) if redis_cfg else connect_redis(url)
    try:
        return _watch(args, client, url, prefix)
    except redis.ResponseError as exc:
        if missing := database_missing(exc):  # (the URL's database number, from --redis or the config: named)
            return fail(f"redis {redact_url(url)}: {missing}", CONFIG_ERROR_EXIT_CODE)
        raise


def _watch(args: argparse.Namespace, client: Any, url: str, prefix: str) -> int:
    """`percept top` on its client: one screen (--once) or a screen every --interval."""
    from pipeline.redact import redact_url

    outage, view = RedisOutage(url, quiet=args.once), DeploymentView(args.metrics)
    if args.once:
        ok, lines = snapshot(client, prefix, view, outage, args.samples)
        print("\n".join(lines), flush=True)
        return 0 if ok else fail(f"redis unreachable at {redact_url(url)} ({outage.reason})", EXIT_UNAVAILABLE)
    stopped = threading.Event()  # SIGTERM: out at once, not after the rest of a long --interval
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    deadline = time.monotonic() + args.duration if args.duration else None
    tty = sys.stdout.isatty()
    try:
        while not stopped.is_set() and (deadline is None or time.monotonic() < deadline):
            _, lines = snapshot(client, prefix, view, outage, args.samples)
            print((CLEAR if tty else "") + "\n".join(lines) + ("" if tty else "\n"), flush=True)
            stopped.wait(max(0.1, min(args.interval, deadline - time.monotonic() if deadline else args.interval)))
    except KeyboardInterrupt:
        stopped.set()  # the usual way out of a live view (exit 0), also while Redis is away
    if outage.down and not stopped.is_set():  # --duration ended while Redis was away
        return fail(f"redis still unreachable at {outage.where} when --duration ended", EXIT_UNAVAILABLE)
    return 0
