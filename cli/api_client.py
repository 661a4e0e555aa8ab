"""The commands' HTTP client of the graph's ingress (``--api``): JSON requests, 503/429 retried
until a deadline with one line saying so, redirects refused (percept's API never redirects)."""

from __future__ import annotations

import http.client
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from pipeline.redact import redact, redact_url

# an error answer that is no JSON (another service's HTML page was printed as the answer)
NOT_PERCEPTS = "not an answer of percept's API (a page of another service?): give the address of percept's API as --api"


def call_api(api: str, method: str, path: str, body: Any = None, *, wait_s: float,
             timeout: float = 30.0, retried: list[bytes] | None = None) -> tuple[int, Any]:
    """(HTTP status, JSON answer) of a request to the graph's ingress at ``api`` (`request_api`)."""
    data = json.dumps(body).encode() if body is not None else None
    status, raw, _ = request_api(api, method, path, data, wait_s=wait_s, timeout=timeout, retried=retried)
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"detail": NOT_PERCEPTS if status >= 400 else raw.decode(errors="replace")[:300]}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib follows a POST's 301/302 as a GET (a camera add became
    ``GET /cameras``, printed ``[]`` and exited 0) and hands back a PUT's or DELETE's unfollowed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        return None


_API_OPENER = urllib.request.build_opener(_NoRedirect)


def redirected(code: int, headers: Any) -> urllib.error.URLError:
    """What an answer of HTTP 3xx raises: percept's API never redirects, so ``--api`` names
    something else (a proxy sending http to https, a path that is not the ingress)."""
    where = redact_url(str((headers or {}).get("Location") or "")) or "nowhere said"
    return urllib.error.URLError(f"it answered HTTP {code}, a redirect to {where}: nothing was done; give the "
                                 f"address of percept's API itself as --api")


RETRIED_STATUS = (503, 429)  # unavailable for now, busy (`explain`'s places): asked again until ``wait_s``
UNAVAILABLE_STATUS = (429, 502, 503, 504)  # exit 3 when still so at the end


def request_api(api: str, method: str, path: str, data: bytes | None = None, *, wait_s: float,
                timeout: float = 30.0, retried: list[bytes] | None = None) -> tuple[int, bytes, Any]:
    """(HTTP status, body, headers) of a request to the graph's ingress at ``api``. A 503 (the
    graph's Redis unavailable, a camera not publishing yet) or a 429 (busy) is retried every second until
    ``wait_s`` has passed, with one line saying so; other errors are answers. An unreachable
    ingress, or one that does not answer HTTP (``--api`` naming Redis's port), raises
    ``URLError``/``OSError``. ``retried`` gets the body of each 503 answer that was retried (one
    that says a timeout: its request may have been carried out all the same, Redis slow)."""
    url = api.rstrip("/") + path
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with _API_OPENER.open(request, timeout=timeout) as resp:
                return resp.status, resp.read(), resp.headers
        except http.client.HTTPException as exc:  # not an HTTP server (BadStatusLine, …)
            raise urllib.error.URLError(f"not an HTTP answer ({type(exc).__name__}: {exc})") from None
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                raise redirected(exc.code, exc.headers) from None
            raw = exc.read() or b""
            if exc.code not in RETRIED_STATUS or time.monotonic() >= deadline:
                return exc.code, raw, exc.headers
            if retried is not None and exc.code == 503:
                retried.append(raw)
            if not said:
                print(f"percept: {_unavailable_line(raw, redact_url(api), exc.code)} — retrying", file=sys.stderr,
                      flush=True)
                said = True
            time.sleep(1.0)  # the next try (the loop ends at the deadline above)


def _unavailable_line(raw: bytes, where: str, status: int = 503) -> str:
    try:
        detail = str(json.loads(raw).get("detail", ""))
    except (ValueError, AttributeError):
        detail = ""
    if detail.startswith("redis"):
        return f"redis unreachable at the graph behind {where}"
    return f"the graph behind {where} answered {status} ({redact(detail)[:200] or 'unavailable'})"
