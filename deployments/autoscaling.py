"""A custom Serve autoscaling policy for the detector and classifiers: scale on frame lag, frames
waiting and how busy the replicas are (`pipeline.autoscale.desired_replicas`).

Referenced from the autoscaling config as ``deployments.autoscaling:VideoLagPolicy``; Serve
applies min/max replicas and the up/downscale delays around it."""

from __future__ import annotations

import time
from typing import Any

from pipeline.autoscale import desired_replicas, requests_floor, settled_decision

POLICY = "deployments.autoscaling:VideoLagPolicy"


class VideoLagPolicy:
    def __init__(self, target_lag_s: float = 0.5, target_waiting: float = 16.0,
                 target_ongoing_requests: float | None = None, batch_size: int = 1):
        self.target_lag_s = target_lag_s
        self.target_waiting = target_waiting
        # the floor's requests a replica: at least two batches (one running, one filling) — with a
        # classifier's 32, 9 requests in flight at 8 each held two replicas 15 % busy for good
        self.target_ongoing_requests = (max(target_ongoing_requests, 2 * batch_size) if target_ongoing_requests
                                        else target_ongoing_requests)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        metrics = ctx.aggregated_metrics or {}
        lag = list((metrics.get("frame_lag_s") or {}).values())
        waiting = list((metrics.get("frames_waiting") or {}).values())
        busy = list((metrics.get("busy") or {}).values())
        running = ctx.current_num_replicas  # (Serve counts the running replicas only)
        want = desired_replicas(running, lag, waiting, busy,
                                target_lag_s=self.target_lag_s, target_waiting=self.target_waiting)
        want = max(want, requests_floor(getattr(ctx, "total_num_requests", 0) or 0, self.target_ongoing_requests))
        state = dict(ctx.policy_state or {})
        target = getattr(ctx, "target_num_replicas", None)
        now = getattr(ctx, "current_time", None) or time.time()
        # since when fewer replicas run than Serve's target (replicas starting, or no room for them)
        state["short_since"] = (state.get("short_since") or now) if target and running < target else None
        want = settled_decision(want, running, target, now - (state["short_since"] or now))
        state["last"] = {"lag_s": max(lag, default=0.0), "waiting": sum(waiting),
                         "busy": max(busy, default=0.0), "want": want}
        return want, state
