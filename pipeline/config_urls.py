"""What the URLs of a config must look like: Redis's (`redis_url_problem`) and cameras'
(`camera_url_problem`; over the API also `api_source_problem`), and the address Serve's HTTP
binds (`bind_host_problem`). Their messages quote no credentials."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import parse_qsl, urlsplit

import redis
from redis.connection import parse_url

from .redact import UNESCAPED_USERINFO, password_without_host, port_or_password, redact, url_credentials, url_secrets


ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # a ${VAR} in a config value


def redis_url_problem(url: str) -> str | None:
    """Why redis-py cannot use ``url`` (None: it can), quoting nothing of its credentials: a
    password with "/" or "#" in it makes redis-py read a piece of it as the port."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:  # (bytes of another encoding in argv or the environment)
        return "not a Redis URL: it is not valid UTF-8"
    found = url_credentials(url)
    try:
        netloc = urlsplit(url).netloc
    except ValueError:  # "Invalid IPv6 URL": a [ or ] in the password (quoted, the URL would be too)
        return "not a Redis URL: the host cannot be read (a [ or ] in a password is written %5B or %5D)"
    if found is not None and found.hostport != netloc.rpartition("@")[2]:
        return f"not a Redis URL: {UNESCAPED_USERINFO}"
    whole = url_credentials(url, to_last_at=True)  # an "@" after the host part ("redis://:a@b/pw@host"): a
    if whole is not None and (found is None or whole.end != found.end):  # password's tail read as the path or host
        return f"not a Redis URL: {UNESCAPED_USERINFO}"
    if password_without_host(url) is not None:  # (redis-py quoted it: "Port could not be cast … as 'pw'")
        return "not a Redis URL: the port is no number; a password goes between \"redis://:\" and \"@host:6379/0\""
    try:
        options = parse_url(url)
        # the connection redis-py would make, made (no I/O): options of the query it does not take
        # (?ssl_cert_reqs= on redis://, ?max_connections=-1) raised at the first command
        redis.Redis.from_url(url).connection_pool.make_connection()
    except (ValueError, TypeError, redis.RedisError) as exc:  # (?protocol=9: redis-py's ConnectionError)
        return f"not a Redis URL: {redact(str(exc), url_secrets(url))}"
    parts = urlsplit(url)
    path = parts.path
    if url.lower().startswith("unix:") and (parts.netloc or not path.startswith("/")):
        # (redis-py took "unix://tmp/r.sock"'s "tmp" for a host, dropped it, and connected to /r.sock)
        return "not a Redis URL: unix:// takes the socket's absolute path after its two slashes (unix:///run/redis.sock)"
    if url.lower().startswith(("redis://", "rediss://")) and not parts.hostname:
        return "not a Redis URL: no host (redis://host:6379/0; redis-py would connect to localhost instead)"
    if url.lower().startswith(("redis://", "rediss://")) and not host_name_ok(parts.hostname):
        # (an empty label or one over 63 characters: the IDNA codec's UnicodeError at the first command)
        return (f"not a Redis URL: the host is no address or host name (an empty label, or one over 63 "
                f"characters): "
                f"{parts.hostname[:60]!r}")
    timing = _timing_problem(options)
    if timing:
        return f"not a Redis URL: {timing}"
    if url.lower().startswith(("redis://", "rediss://")) and not re.fullmatch(r"/?\d*", path):
        return f"not a Redis URL: the path is the database's number (redis://host:6379/0), got {path[:40]!r}"
    if options.get("decode_responses"):
        return "not a Redis URL for percept: ?decode_responses (percept reads the entries as bytes): remove it"
    return None


_MOST_S = 86_400.0  # a Redis URL's timeouts and health check interval: at most a day
_TIMINGS = ("socket_timeout", "socket_connect_timeout", "health_check_interval")


def _timing_problem(options: dict) -> str | None:
    """A Redis URL's ``?socket_timeout=`` and the like out of range: -1 or NaN raised at the
    first command, inf or 1e300 an OverflowError, and 0 timed every read out at once."""
    for name, value in options.items():
        if name not in _TIMINGS or value is None:  # (not retry_on_timeout: a yes or no)
            continue
        least = 0 if name == "health_check_interval" else 1e-3  # (0: no health checks, redis-py's default)
        if not isinstance(value, (int, float)) or not least <= value <= _MOST_S:
            return f"?{name} must be a number of seconds from {least:g} to {_MOST_S:g}, got {str(value)[:20]}"
    return None


# what FFmpeg's network input protocols are called (`ffmpeg -protocols`; rtsp is a demuxer's), besides
# files and device:N: a typo (rtps://) is refused before it is tried
CAMERA_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "rtmps", "rtmpt", "rtmpts", "rtmpe", "rtmpte",
                  "srt", "rist", "udp", "udplite", "rtp", "srtp", "tcp", "tls", "sctp", "ftp", "sftp", "gopher",
                  "gophers", "mmsh", "mmst", "amqp", "zmq", "ipfs", "ipns", "unix", "file")
_NEEDS_HOST = {"rtsp", "rtsps", "http", "https", "rtmp", "rtmps", "rtmpt", "rtmpe", "mmsh", "mmst"}


_COLON_FORMS = {"file", "unix", "zmq"}  # FFmpeg's file:x, unix:/run/cam.sock, zmq:tcp://host:port
UNREADABLE_HOST = "the host cannot be read (a [ or ] outside an IPv6 address [..]?)"  # urlsplit: "Invalid IPv6 URL"


# a network camera written without its scheme, read as a file path: it failed as "file not found"
# with its password in the error (the camera's status in Redis, the logs)
_SCHEMELESS_USERINFO = re.compile(r"[^/@\s:]*:[^/@\s]*@")  # user:password@
_SCHEMELESS_HOST_PORT = re.compile(r"(?!device:)[A-Za-z0-9.-]+:[0-9]{1,5}(?:[/?#]|$)")  # host:port


def _schemeless_network(url: str) -> str | None:
    """A path, device:N or a URL that is all ${VAR}: None; what looks like a network camera
    without its scheme: the refusal (nothing of it quoted)."""
    if _SCHEMELESS_USERINFO.match(url):
        return ("no scheme, so it is read as a file path, but it starts with user:password@: write the camera's "
                "scheme first (rtsp://user:…@host/…), its password as ${VAR}")
    if _SCHEMELESS_HOST_PORT.match(url):
        return "no scheme, so it is read as a file path, but it starts with host:port: write rtsp://host:port/… (or its scheme)"
    return None


def camera_url_problem(url: str) -> str | None:
    """What is wrong with a camera URL's scheme, host or port as written (None: nothing seen;
    parts written as ``${VAR}`` are checked where the decoder expands them). A password is never
    quoted: the text names the part only."""
    if url != url.strip():
        return "spaces or line breaks before or after the URL"
    if any(ord(c) < 32 or ord(c) == 127 for c in url):  # (a NUL cut it short in C; a line break went into RTSP's request)
        return "a control character (a line break, a tab, NUL) inside the URL: percent-encode it"
    typo = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)(:/?(?!/)|//)", url)
    if typo and typo.group(1).lower() in CAMERA_SCHEMES and typo.group(1).lower() not in _COLON_FORMS:
        return f"{typo.group(0)}… is not a URL: write {typo.group(1)}://host/…"
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if m is None:
        return _schemeless_network(url)
    if m.group(1).lower() == "file":
        return None
    scheme = m.group(1).lower()
    if scheme == "hls":  # (accepted, then failed for good: FFmpeg has no hls:// protocol)
        return "hls:// is no FFmpeg protocol: give the playlist's own http(s)://…/….m3u8 URL"
    if scheme not in CAMERA_SCHEMES:
        return (f"unknown scheme {m.group(1)}:// (a camera is rtsp://, rtsps://, http(s)://, rtmp://, srt://, udp://, "
                "… a file path or device:N)")
    if port_or_password(url):  # (nothing of it quoted: the digits may be a password's start)
        return ("host:port and then an \"@\" (in the path or query), or user:password with / ? or # in the "
                "password? Percent-encode the password's / ? # (%2F %3F %23), or the \"@\" (%40)")
    try:
        found = url_credentials(url)
        hostport = found.hostport if found is not None else urlsplit(url).netloc
    except ValueError:  # urlsplit: "Invalid IPv6 URL" (a [ or ] that does not enclose an address)
        return UNREADABLE_HOST
    if "${" in hostport:
        return None
    try:
        parts = urlsplit(f"{scheme}://{hostport}")
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        if "IPv6" in str(exc):
            return UNREADABLE_HOST
        return "the port must be a number from 1 to 65535 (scheme://host:port/…)"
    if port == 0:
        return "the port must be a number from 1 to 65535 (scheme://host:port/…)"
    if not host and scheme in _NEEDS_HOST:
        return f"no host ({scheme}://host[:port]/…)"
    if host and scheme in _NEEDS_HOST and not _host_name(host):  # ("ho st", "-": accepted, failed at every open)
        return f"the host is no address or host name (letters, digits, - and . between them): {host[:60]!r}"
    return None


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")  # a label as DNS spells one
_CAMERA_HOST_LABEL = re.compile(r"(?!-)[\w-]{1,63}(?<!-)")  # a camera's: "_" and other letters too (resolvers take them)


def _host_name(host: str, label: re.Pattern[str] = _CAMERA_HOST_LABEL) -> bool:
    """An IP address, or a host name whose labels are each ``label`` (a name of digits alone is
    an address mistyped: not one)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    return 0 < len(name) <= 253 and all(label.fullmatch(part) for part in labels) and not labels[-1].isdigit()


def host_name_ok(host: str) -> bool:
    """A host Python can ask a resolver for: one with an empty label or one over 63 characters
    ("a..b") raised the IDNA codec's UnicodeError at connect (an IPv6 address: always)."""
    if ":" in host:
        return True
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def bind_host_problem(host: str) -> str | None:
    """Why Serve's HTTP proxy could not bind ``host`` (None: an IP address, a host name as DNS
    spells one, or "" for every interface). Serve itself finds out only once the proxy starts,
    in a log on the cluster; it does not expand a ``${VAR}`` in its ``http_options`` either."""
    if host == "":
        return None
    if ENV_REF.search(host):
        return (f"{host[:60]!r} is not expanded (Serve's http_options are taken as written): set the variable "
                "where the config is read, or write the address")
    if _host_name(host, _HOST_LABEL):
        return None
    return (f"not an address to bind: {host[:60]!r} (an IP address: 127.0.0.1, 0.0.0.0, ::, or a host name "
            "of letters, digits, - and .)")


# what a camera added over the API may be (unless ``security.api_local_sources``): a stream the
# service connects to. A file path, ``file:``, ``device:N``, ``unix:`` read the server's own
# files, devices and sockets; a listening URL (``tcp://0.0.0.0:9000?listen=1``, ``srt://:9000?mode=listener``,
# a unicast ``udp://``, which FFmpeg reads from any sender on its port) takes video from anyone who
# reaches the port, on every interface whatever ``http.host`` says
API_SCHEMES = frozenset({"rtsp", "rtsps", "http", "https", "rtmp", "rtmps", "rtmpt", "rtmpts", "rtmpe", "rtmpte",
                         "srt", "rist", "udp", "udplite", "rtp", "srtp", "tcp", "tls", "mmsh", "mmst", "ftp", "sftp"})
_RECEIVING = frozenset({"udp", "udplite", "rtp", "srtp", "rist"})  # read by binding a port, unless a multicast group
_OPTIONS_IN_URL = frozenset({"tcp", "tls", "srt", "rist"})  # protocols that take ``listen`` / ``mode`` from the URL
_ALLOW_LOCAL = "; the config file's cameras may be (or set security.api_local_sources: true)"


def api_source_problem(url: str) -> str | None:
    """Why a camera added through the API may not read ``url`` (None: it may): see `API_SCHEMES`."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if m is None or m.group(1).lower() not in API_SCHEMES:
        what = "a device" if url.startswith("device:") else "a file, device or socket of the server"
        return f"a camera added through the API is a network stream the service connects to, not {what}{_ALLOW_LOCAL}"
    scheme = m.group(1).lower()
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return None  # (camera_url_problem says what is wrong with it)
    # FFmpeg's tcp, tls, srt and rist read their options from the first "?" on, a "#" no end
    # (``tcp://host:9000#?listen=1`` listened)
    options = parse_qsl(url.split("?", 1)[1], keep_blank_values=True) if "?" in url and scheme in _OPTIONS_IN_URL else []
    listening = [k for k, v in options if k.lower() == "listen" and v != "0"
                 or k.lower() == "mode" and v.lower() in ("listener", "server", "rendezvous")]
    unspecified = host in ("", "0.0.0.0", "::")  # (udp://@:1234, tcp://:9000: this host's every address)
    if listening or unspecified or (scheme in _RECEIVING and not _multicast(host)):
        return ("a camera added through the API connects to its camera; this URL listens for whoever sends to a port "
                f"of the server{' (' + listening[0] + '=…)' if listening else ''}: only a multicast group is read that way "
                f"(udp://239.0.0.1:1234){_ALLOW_LOCAL}")
    return None


def _multicast(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_multicast
    except ValueError:
        return False
