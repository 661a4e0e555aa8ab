"""Asking a network camera before and after FFmpeg opens it, without its credentials.

`camera_unanswered`: before the open, a connection (and for ``rtsp://`` an OPTIONS request),
outside OpenCV's one-open-at-a-time lock, so that a camera that takes no connection or does not
answer fails here while the other cameras of its process (re)connect. `diagnose_rtsp`: after a
failed RTSP open, why it failed in words an operator can act on (one DESCRIBE request)."""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import threading
import time
import urllib.request
from urllib.parse import urlsplit

from .redact import UNESCAPED_USERINFO, query_secrets, url_credentials

DEFAULT_PORTS = {"rtsp://": 554, "rtsps://": 322, "http://": 80, "https://": 443, "rtmp://": 1935, "rtmps://": 443}
# an RTMP client's first handshake bytes (C0: version 3; C1: time, zeros, 1528 bytes): a server
# answers S0 (and S1) at once, before any stream is named
RTMP_HELLO = b"\x03" + bytes(1536)


def _target(url: str) -> tuple[str, int, str, str] | str:
    """(host, port, how to name them, the URL without credentials) of a network camera's URL as
    FFmpeg reads it, or why they cannot be read (words for the operator, nothing of a password)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL": a [ or ] (in a password too) outside an address
        return "the URL's host cannot be read: a [ or ] outside an IPv6 address (percent-encode one in a password as %5B or %5D)"
    found, scrubbed = url_credentials(url), url_credentials(url, to_last_at=True)
    try:
        host, port = parts.hostname or "", parts.port or DEFAULT_PORTS.get(f"{parts.scheme.lower()}://", 554)
    except ValueError:
        host, port = "", 0
    if found is not None and (found.hostport != parts.netloc.rpartition("@")[2] or not host):
        # "user:pa/ss@host": the "/" ends the host part, which is then a piece of the password
        return f"the URL's host cannot be read: {UNESCAPED_USERINFO}"
    if not host or not 0 < port < 65536:
        return "the URL's host and port cannot be read (rtsp://host[:port]/path, a port from 1 to 65535)"
    named = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URL writes it
    where = f"{named}:{port}"
    if scrubbed is not None and (found is None or scrubbed.hostport != found.hostport):
        # an "@" after the host part: FFmpeg's host may be a piece of a password ("user:Tr0ub@dor/horse@cam"):
        # tried as FFmpeg did, not named
        where = f"the URL's host, port {port} (not shown: if the password has / ? # or @ in it, percent-encode them)"
    clean = f"rtsp://{named}:{port}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
    return host, port, where, without_query_secrets(clean)


def without_query_secrets(text: str) -> str:
    """A request target with its ``?token=``-like values left empty (`redact.query_secrets`): a
    probe asks with no credentials, in its query neither."""
    for start, end in reversed(query_secrets(text)):
        text = text[:start] + text[end:]
    return text


class LookupTimeout(TimeoutError):
    """The host's name was not looked up in time."""


_lookups: dict[tuple[str, int], tuple[threading.Event, list]] = {}  # lookups under way, by (host, port)
_lookups_lock = threading.Lock()


def _lookup(host: str, port: int, deadline: float) -> list:
    """``socket.getaddrinfo`` before ``deadline`` (monotonic), else `LookupTimeout`: the system's
    resolver has no timeout of its own (a DNS server that does not answer: 5 s a try, per try and
    search domain), and a camera's open took that long past its ``open_timeout_s``. A lookup
    given up on ends on its own thread; a camera reconnecting meanwhile waits on it, not on
    another one."""
    if _is_address(host):
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    with _lookups_lock:
        pending = _lookups.get((host, port))
        if pending is None:
            pending = _lookups[(host, port)] = (threading.Event(), [])
            threading.Thread(target=_look, args=(host, port, pending), name="percept-lookup", daemon=True).start()
    done, answer = pending
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise LookupTimeout(host)
    if isinstance(answer[0], BaseException):
        raise answer[0]
    return answer[0]


def _look(host: str, port: int, pending: tuple[threading.Event, list]) -> None:
    done, answer = pending
    try:
        answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    except BaseException as exc:  # (handed to whoever waits on it)
        answer.append(exc)
    with _lookups_lock:
        _lookups.pop((host, port), None)
    done.set()


def _connect(host: str, port: int, deadline: float) -> socket.socket:
    """A connection to the first of the host's addresses that takes one before ``deadline``
    (monotonic), each given an equal share of the time left (a dead IPv6 address does not
    take all of it)."""
    infos = _lookup(host, port, deadline)
    error: OSError = TimeoutError()
    for i, (family, kind, proto, _, address) in enumerate(infos):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        sock.settimeout(left / (len(infos) - i))
        try:
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def _ask(host: str, port: int, where: str, request: bytes | None, timeout_s: float,
         tls: bool = False, peer: list[str] | None = None) -> tuple[str, str | None]:
    """One request without credentials (None: connect only), all within ``timeout_s``: (the
    status line it got, or "" if none; why there was no connection or answer, or None).
    ``tls``: over TLS, its certificate not checked (only the status line is read). ``peer``:
    gets the address that took the connection."""
    deadline = time.monotonic() + timeout_s
    try:
        with _connect(host, port, deadline) as sock:
            if peer is not None:
                peer.append(str(sock.getpeername()[0]))
            if request is None:
                return "", None
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            if tls:
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                sock = context.wrap_socket(sock, server_hostname=host)
            sock.sendall(request)
            return sock.recv(256).split(b"\r\n", 1)[0].decode(errors="replace"), None
    except ConnectionRefusedError:
        return "", f"connection refused by {where} (camera or server down?)"
    except LookupTimeout:
        name = "the URL's host" if where.startswith("the URL") else f"host {host!r}"
        return "", f"{name} was not looked up within {timeout_s:g} s (DNS server slow or unreachable)"
    except socket.gaierror:
        return "", f"unknown host: {where}" if where.startswith("the URL") else f"unknown host {host!r}"
    except (TimeoutError, socket.timeout):
        return "", f"no answer from {where} within {timeout_s:g} s (unreachable or hung)"
    except OSError as exc:
        return "", f"{where} unreachable ({exc.strerror or exc})"
    except (UnicodeError, ValueError) as exc:  # a name that cannot be looked up ("cam..local", a label > 63)
        return "", f"the host of {where} cannot be looked up ({type(exc).__name__})"


def _through_proxy(url: str, host: str) -> bool:
    """Whether FFmpeg reaches this HTTP(S) camera through a proxy (``http_proxy`` and
    ``no_proxy`` in the environment): then it is not asked directly."""
    scheme = urlsplit(url).scheme.lower()
    return scheme in ("http", "https") and scheme in urllib.request.getproxies_environment() and \
        not urllib.request.proxy_bypass_environment(host)


def camera_unanswered(url: str, *, timeout_s: float, peer: list[str] | None = None) -> str | None:
    """Why a network camera cannot be opened now — no connection within ``timeout_s``, or for
    ``rtsp://`` no answer to an OPTIONS request either — or None (it answered, or its URL is left
    to FFmpeg: one it cannot read, one behind a proxy). Asked before FFmpeg opens it: OpenCV opens
    one input at a time, so a camera that does not answer would otherwise hold every other
    camera's (re)connect in its process for its whole ``open_timeout_s``. No credentials are sent.
    ``peer``: gets the address that answered, where the URL's host reads unambiguously
    (`with_address`)."""
    target = _target(url)
    if isinstance(target, str) or _through_proxy(url, target[0]):
        return None
    host, port, where, clean = target
    scheme = url.lower().split("://", 1)[0]
    ask = {"rtsp": f"OPTIONS {clean} RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode(), "rtmp": RTMP_HELLO}.get(scheme)
    return _ask(host, port, where, ask, timeout_s, peer=None if where.startswith("the URL") else peer)[1]


def with_address(url: str, address: str) -> str:
    """An ``rtsp://`` URL whose host name is replaced by ``address`` (the one `camera_unanswered`
    reached), its user, password, port, path and query as written: FFmpeg then looks up no name
    while it holds OpenCV's one-open-at-a-time lock (a camera whose DNS answers slowly held
    every other camera's open for the lookup, past its open timeout). A host that is an
    address already, or that does not read unambiguously, leaves the URL as it is."""
    target = _target(url)
    if isinstance(target, str) or target[2].startswith("the URL") or not url.lower().startswith("rtsp://"):
        return url
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host = hostport[1:hostport.index("]")] if hostport.startswith("[") else hostport.rsplit(":", 1)[0]
    if _is_address(host) or not _is_address(address) or "%" in address:  # (a zone index: no URL form FFmpeg reads)
        return url
    named = f"[{address}]" if ":" in address else address
    netloc = f"{userinfo}{at}{named}" + (f":{parts.port}" if parts.port else "")
    start = len(parts.scheme) + 3
    return url[:start] + netloc + url[start + len(parts.netloc):]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


DIAGNOSED = ("rtsp://", "http://", "https://")  # what `diagnose_open` asks (others: "no answer")


def diagnose_open(url: str, *, timeout_s: float = 3.0) -> str:
    """Why FFmpeg could not open a network camera: `diagnose_rtsp` for RTSP, `diagnose_http`
    for HTTP(S); other protocols say nothing more than that there was no stream."""
    scheme = url.lower().split("://", 1)[0]
    if scheme == "rtsp":
        return diagnose_rtsp(url, timeout_s=timeout_s)
    if scheme in ("http", "https"):
        return diagnose_http(url, timeout_s=timeout_s)
    return "no answer"


def diagnose_http(url: str, *, timeout_s: float = 3.0) -> str:
    """Why an HTTP(S) camera's open failed: one GET without credentials (the server that took
    the connection answered 404 or 401, and the camera said "no answer")."""
    target = _target(url)
    if isinstance(target, str):
        return target
    host, port, where, _ = target
    if _through_proxy(url, host):
        return "FFmpeg could not open a stream there (through the proxy in http_proxy / https_proxy)"
    parts = urlsplit(url)
    path = without_query_secrets((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    named = f"[{host}]" if ":" in host else host
    request = f"GET {path} HTTP/1.1\r\nHost: {named}:{port}\r\nConnection: close\r\n\r\n".encode()
    status, why = _ask(host, port, where, request, timeout_s, tls=parts.scheme.lower() == "https")
    if why is not None:
        return why
    return _status_words(status, url, "the server")


def _status_words(status: str, url: str, who: str) -> str:
    """A status line in words an operator can act on (RTSP's and HTTP's codes are alike)."""
    code = status.split(" ", 2)[1] if status.count(" ") >= 1 else ""
    if code == "401":  # (asked without credentials: a camera that wants them says so)
        names = [m.group(0)[:-1] for start, _ in query_secrets(url) if (m := re.search(r"[^?&;/_]*=$", url[:start]))]
        # (most cameras ask for credentials before they look at the path: a wrong path or a stream
        # that is off gets a 401 here too, never its own 404 or 503)
        then = f", then its path ({who} may ask for credentials before it looks at the path)"
        if names:  # (emptied in the request: `without_query_secrets`)
            return (f"401 Unauthorized: {who} wants credentials; check the user and password, and "
                    f"{', '.join(dict.fromkeys(names))} in the camera URL (not sent by this check){then}")
        if urlsplit(url).username is None:  # (it splits: _target did)
            return f"401 Unauthorized: {who} wants a user and password in its URL"
        return f"401 Unauthorized: {who} wants credentials; check the user and password in the camera URL{then}"
    if code == "403":
        return f"403 Forbidden: {who} refuses this stream (check the user's rights, or the path)"
    if code == "404":
        return "404 Not Found: check the stream path in the camera URL"
    if code.startswith("2"):
        return f"server answered {status!r} but no video could be decoded (codec or transport problem)"
    return f"server answered {status!r}" if status else "server closed the connection"


def diagnose_rtsp(url: str, *, timeout_s: float = 3.0) -> str:
    """Why an RTSP open failed, in words a camera operator can act on: one DESCRIBE request and
    the status line it gets. It carries no credentials: FFmpeg sends them only when the server
    asks, Digest when offered; this request, sent on every failed open to whatever host the URL
    now reaches, never sends the password (a 401 says the camera wants them)."""
    target = _target(url)
    if isinstance(target, str):
        return target
    host, port, where, clean = target
    status, why = _ask(host, port, where,
                       f"DESCRIBE {clean} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n".encode(), timeout_s)
    if why is not None:
        return why
    return _status_words(status, url, "the camera")
