"""Which ``Host`` a request to the camera API may name (`security.api_hosts`): a guard against
DNS rebinding. A web page on a name its owner controls can point that name at this address
(127.0.0.1, the LAN address) once loaded, and then reads and writes the API as its own origin:
add a camera that sends a password to its host, fetch the cameras' snapshots. Its requests name
its own host; a name the operator did not list is refused. IP addresses (a browser connecting to
an address sends it as the host, no name involved) and localhost are always answered."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

ALWAYS = ("localhost", "*.localhost")


def host_name(header: str) -> str:
    """The name of a ``Host`` header, without its port or an IPv6 address's brackets."""
    header = header.strip()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name.rstrip(".").lower()


def _listed(name: str, patterns: Sequence[str]) -> bool:
    return any(p == "*" or p == name or (p.startswith("*.") and name.endswith(p[1:])) for p in patterns)


def host_refused(header: str | None, allowed: Sequence[str]) -> str | None:
    """Why a request naming this ``Host`` is refused, or None (an IP address, localhost, a name
    ``allowed`` lists; no header: not a browser's request)."""
    if not header:
        return None
    name = host_name(header)
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    if _listed(name, ALWAYS) or _listed(name, allowed):
        return None
    return (f"Host {name[:100]!r} is not a name this API answers to: add it to security.api_hosts (the names a "
            f"browser may reach it by; IP addresses and localhost are always answered): a web page can point "
            f"a name it owns at this address and drive the API from a browser (DNS rebinding)")


def all_interfaces(host: str) -> bool:
    """Whether a bind address is every interface's."""
    return host in ("0.0.0.0", "::", "")


def with_own_name(config: Any) -> Any:
    """``config`` (a `PerceptConfig`) whose API also answers to the name `percept run` prints as its
    address, beside `security.api_hosts`: ``http.host`` when it is a name, this machine's name when
    it binds every interface."""
    host = config.http.host.rstrip(".").lower()
    if all_interfaces(host):
        import socket

        host = socket.gethostname().lower()
    try:
        ipaddress.ip_address(host)
        return config  # (an address: always answered)
    except ValueError:
        pass
    names = [n for n in (host,) if n and n not in config.security.api_hosts]
    security = config.security.model_copy(update={"api_hosts": [*config.security.api_hosts, *names]})
    return config.model_copy(update={"security": security})
