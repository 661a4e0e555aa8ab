"""The HTTP calls the graph tests make against the Serve ingress: an error status is an answer
to assert on, not an exception."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def get(url: str, timeout: float = 30) -> tuple[int, Any, bytes]:
    """(status, headers (case-insensitive), body)"""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def call_json(method: str, url: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    """(status, the JSON answer) of a request with a JSON body."""
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
