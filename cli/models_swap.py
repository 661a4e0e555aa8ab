"""`percept models swap` and `percept models served`: hot swap of a running graph's model
weights through its HTTP API (``PUT /models/{deployment}``, ``GET /models``).

    percept models swap detector PATH [--name NAME] [--api URL]
    percept models swap classifier CATEGORY PATH [--name NAME] [--card CARD] [--api URL]
    percept models served [--api URL]

The API loads and checks the new weights before anything changes, then the replicas switch one
at a time while cameras keep publishing (`pipeline/lifecycle/swap.py`); the command returns when
every replica serves the new model. A path that exists here is sent as an absolute path; it must
be readable by the model replicas. Exit 2: refused (bad file, unknown deployment, a swap in
progress), the old model keeps serving; exit 3: the graph is unreachable or still rolling out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from pipeline.config import CONFIG_ERROR_EXIT_CODE
from pipeline.redact import redact, redact_url

from .common import (EXIT_UNAVAILABLE, UNAVAILABLE_STATUS, api_text, ingress_url_arg, call_api, fail, name_arg, number_arg,
                     unreachable)


def _api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", default=os.environ.get("PERCEPT_API", "http://127.0.0.1:8000"), type=ingress_url_arg,
                   help="the running graph's HTTP address (default: PERCEPT_API or http://127.0.0.1:8000)")
    p.add_argument("--wait", type=number_arg(float, 0.0), default=60.0,
                   help="seconds to keep retrying while the graph's Redis is unreachable (default 60)")


def _swap_parser(actions: Any) -> argparse.ArgumentParser:
    s = actions.add_parser("swap", help="replace a running graph's detector or classifier weights, no downtime")
    targets = s.add_subparsers(dest="target", required=True)
    det = targets.add_parser("detector", help="the detector (deployment detector, or detector-NAME)")
    clf = targets.add_parser("classifier", help="a category's classifier (classifier-CATEGORY[-NAME])")
    # (empty values refused: ``--name "$NAME"`` with NAME unset swapped the main detector)
    clf.add_argument("category", type=name_arg, help="the category whose classifier is replaced (vehicle, pedestrian, ...)")
    for p in (det, clf):
        p.add_argument("weights", metavar="PATH", type=name_arg, help="the new weights (readable by the model replicas), "
                       "or a file in PERCEPT_MODELS_DIR")
        p.add_argument("--name", type=name_arg, help="which one, when the config has several (its name: detector-NAME, "
                       "classifier-CATEGORY-NAME)")
        p.add_argument("--card", type=name_arg, help="model card of a plain network (default: the shipped card, if any)")
        p.add_argument("--timeout", type=number_arg(float, 1.0, 3600.0), default=300.0,
                       help="seconds to wait for every replica (default 300)")
        _api_args(p)
        p.set_defaults(func=_swap)
    return s


def _served_parser(actions: Any) -> argparse.ArgumentParser:
    p = actions.add_parser("served", help="what each model deployment of a running graph serves, per replica")
    _api_args(p)
    p.add_argument("--json", action="store_true", help="the API's answer as JSON")
    p.set_defaults(func=_served)
    return p


def deployment_name(args: argparse.Namespace) -> str:
    if args.target == "detector":
        return f"detector-{args.name}" if args.name else "detector"
    return f"classifier-{args.category}" + (f"-{args.name}" if args.name else "")


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None,
          timeout: float = 60.0) -> tuple[int, Any]:
    return call_api(args.api, method, path, body, wait_s=args.wait, timeout=timeout)


def _refusal(what: str, status: int, answer: Any) -> int:
    detail = answer.get("detail", answer) if isinstance(answer, dict) else answer
    lines = detail if isinstance(detail, list) else [detail]
    text = "; ".join(d.get("msg", str(d)) if isinstance(d, dict) else str(d) for d in lines)
    code = EXIT_UNAVAILABLE if status in UNAVAILABLE_STATUS else CONFIG_ERROR_EXIT_CODE if 400 <= status < 500 else 1
    return fail(f"{what}: HTTP {status}: {api_text(redact(text))}", code)  # (as `cameras`: an error may quote a URL)


def _swap(args: argparse.Namespace) -> int:
    deployment = deployment_name(args)
    weights = os.path.abspath(args.weights) if os.path.exists(args.weights) else args.weights
    card = os.path.abspath(args.card) if args.card and os.path.exists(args.card) else args.card
    # (a failed rollout's answer comes after its rollback rolled out: up to twice --timeout)
    body = {"weights": weights, "card": card, "timeout_s": args.timeout}
    print(f"percept: checking {redact_url(weights)} for {deployment}, then rolling it out", file=sys.stderr, flush=True)
    try:
        status, answer = _call(args, "PUT", f"/models/{quote(deployment, safe='')}", body, timeout=2 * args.timeout + 120)
    except (urllib.error.URLError, OSError) as exc:
        return unreachable(args.api, exc)
    if status >= 400:
        return _refusal(f"models swap {deployment}", status, answer)
    try:
        done = (f"{deployment} serves {answer['model']} on {answer['replicas']} replica(s) (was {answer['previous']}; "
                f"generation {answer['generation']}; checked in {answer['validate_s']:.1f} s, rolled out in "
                f"{answer['rollout_s']:.1f} s)")
    except (TypeError, KeyError, ValueError):  # --api names another HTTP service
        return fail(f"models swap {deployment}: {redact_url(args.api)} did not answer as percept's API (is --api the graph's "
                    "ingress?)", EXIT_UNAVAILABLE)
    print(done, flush=True)
    for note in answer.get("notes") or []:  # (what the swap does not change: the frames' size)
        print(f"percept: note: {api_text(redact(str(note)))}", file=sys.stderr, flush=True)
    return 0


_STATES = {"rolling": "  (rolling out)",
           "failed": "  (failed: replica {failed_replica} cannot load it; see its error)",
           "mixed": "  (replicas serve different weights: swap again to settle them)",
           "unrecorded": "  (replicas serve other weights, no swap recorded: swap again to record them)",
           "no replicas": "  (no replica reports)"}


def _served(args: argparse.Namespace) -> int:
    try:
        status, answer = _call(args, "GET", "/models")
    except (urllib.error.URLError, OSError) as exc:
        return unreachable(args.api, exc)
    if status >= 400:
        return _refusal("models served", status, answer)
    try:
        if not isinstance(answer, list):  # (an empty body read as {}: a blank line, exit 0; with --json,
            raise TypeError(type(answer).__name__)  # another service's page printed as {"detail": …}, exit 0)
        if args.json:
            print(json.dumps(answer, indent=2))
            return 0
        lines = [api_text(line) for dep in answer for line in _served_lines(dep)]
    except (TypeError, KeyError, ValueError, AttributeError):  # --api names another HTTP service
        return fail(f"models served: {redact_url(args.api)} did not answer with percept's model list (is --api the graph's "
                    "ingress?)", EXIT_UNAVAILABLE)
    if not lines:
        print("percept: models served: no model deployments", file=sys.stderr, flush=True)
    else:
        print("\n".join(lines), flush=True)
    return 0


def _served_lines(dep: dict) -> list[str]:
    state = _STATES.get(dep.get("state") or ("done" if dep["rolled_out"] else "rolling"), "").format(**dep)
    lines = [f"{dep['deployment']:<28} {dep['model']:<32} generation {dep['generation']}{state}"]
    for r in dep["replicas"]:
        extra = f"  loading generation {r['loading']}" if r["loading"] is not None else ""  # (0: as it starts)
        extra += f"  error: {r['error']}" if r["error"] else ""
        lines.append(f"  replica {r['replica']:<12} {r['model']:<32} generation {r['generation']}{extra}")
    return lines
