"""The publish phase's measurements (benchmarks/phases.py): `measure_publisher`, the `Publisher`
on real payloads, against `redis_benchmark_xadd`, ``redis-benchmark`` sending the same XADD on
the same server."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import time
from typing import Any, Sequence

import numpy as np


def measure_publisher(client: Any, results: Sequence[Any], *, n: int, prefix: str = "benchpub",
                      maxlen: int = 100_000, batch: int = 256, timeout: float = 120.0,
                      warmup: int = 2000) -> dict[str, Any]:
    """Entries/s of `Publisher` (JSON encoding and pipelined script calls on its writer thread)
    publishing ``n`` results cycled from ``results`` (real payloads) on one camera stream, in
    steady state: ``warmup`` results are published first (another stream, not counted)."""
    from dataclasses import replace

    from pipeline.publish import Publisher
    from pipeline.schema import FrameResult
    from pipeline.streams import StreamKeys

    keys = StreamKeys(prefix)
    camera = "pub"
    client.delete(keys.detections(camera), keys.detections("warmup"))
    pub = Publisher(client, keys=keys, maxlen=maxlen, max_buffer_entries=n + 1, max_buffer_bytes=2**31,
                    batch=batch).start()
    base = time.time()

    def prepare(camera: str, count: int) -> list[FrameResult]:
        return [FrameResult(replace(r.meta, camera=camera, seq=i, frame_ts=base + i * 0.001), r.objects, r.models,
                            r.latency_ms) for i, r in zip(range(count), itertools.cycle(results))]

    for r in prepare("warmup", warmup):
        pub.publish(r)
    pub.flush(timeout)
    client.delete(keys.detections("warmup"))
    prepared = prepare(camera, n)
    sizes = [len(r.to_json()) for r in results]
    t_enc = time.perf_counter()
    for r in prepared[:2000]:
        r.to_json_bytes()
    encode_us = (time.perf_counter() - t_enc) / min(n, 2000) * 1e6
    t0 = time.perf_counter()
    for r in prepared:
        pub.publish(r)
    ok = pub.flush(timeout)
    elapsed = time.perf_counter() - t0
    pub.close(timeout=5)
    published = pub.stats.published[camera]
    return {"entries_per_s": published / elapsed if ok else None, "published": published, "seconds": elapsed,
            "warmup_entries": pub.stats.published["warmup"],
            "payload_bytes_mean": float(np.mean(sizes)), "encode_us_per_entry": encode_us, "batch": batch, "errors": pub.stats.errors,
            "flushed": ok}


def redis_benchmark_xadd(port: int, *, payload_bytes: int, n: int = 20_000, clients: int = 1, pipeline: int = 256,
                         host: str = "127.0.0.1", password: str | None = None, maxlen: int = 100_000,
                         key: str = "benchrb") -> dict[str, Any]:
    """``redis-benchmark`` sending the publisher's XADD (same fields, same payload size, MAXLEN ~)."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        raise RuntimeError("redis-benchmark is not installed (Debian: apt-get install redis-tools)")
    payload = "x" * max(1, payload_bytes)
    cmd = [exe, "-h", host, "-p", str(port), "-n", str(n), "-c", str(clients), "-P", str(pipeline), "--csv"]
    if password:
        cmd += ["-a", password]
    command = ["XADD", key, "MAXLEN", "~", str(maxlen), "*", "v", "1", "camera", "bench", "seq", "1", "json", payload]
    failures: list[str] = []
    for _ in range(3):  # a run whose clients were all disconnected (seen once in CI, rc 1) is run again
        out = subprocess.run(cmd + command, capture_output=True, text=True, timeout=300)
        rps = None
        for line in out.stdout.splitlines():
            m = re.match(r'^"[^"]*","([0-9.]+)"', line)
            if m:
                rps = float(m.group(1))
        if rps is not None:
            return {"rps": rps, "clients": clients, "pipeline": pipeline, "requests": n, "payload_bytes": payload_bytes,
                    "runs_failed": failures,
                    "command": "XADD <key> MAXLEN ~ %d * v 1 camera bench seq 1 json <%d bytes>" % (maxlen, payload_bytes)}
        failures.append(f"rc={out.returncode}: {out.stdout[-300:]} {out.stderr[-300:]}".strip())
    raise RuntimeError(f"redis-benchmark gave no result in {len(failures)} runs ({failures[-1]})")
