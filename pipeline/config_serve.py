"""What Serve's HTTP proxy binds (`HttpConfig`) and what the camera API lets through
(`SecurityConfig`)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from .config_models import Strict
from .config_urls import bind_host_problem


class SecurityConfig(Strict):
    allow_inline_credentials: bool = Field(
        False,
        description="accept camera URLs with an inline password (stored in Redis in clear); "
        "default: refused, write rtsp://user:${VAR}@host/... instead",
    )
    api_local_sources: bool = Field(
        False,
        description="let cameras added through the API read the server's own files and devices (a path, file:, "
        "device:N, unix:) and listen for streams (?listen=1, mode=listener, a unicast udp:// or rtp://); "
        "default: network cameras the service connects to, and multicast groups",
    )
    api_max_cameras: int = Field(
        256, ge=0, le=100_000,
        description="cameras added through the API at once (each takes a decoder's reader and memory); "
        "more get HTTP 409; the config file's cameras do not count; 0: the API adds none",
    )
    api_hosts: list[str] = Field(
        default_factory=list, max_length=256,
        description="host names the API and live view answer to besides IP addresses and localhost "
        "(`*.example.org`: its subdomains; `*`: any); a request naming another is refused (400): a web "
        "page whose name is pointed at this address (DNS rebinding) would drive the API from a browser",
    )

    @field_validator("api_hosts")
    @classmethod
    def _host_names(cls, names: list[str]) -> list[str]:
        out = []
        for name in names:
            plain = name.strip().rstrip(".").lower()
            bare = plain[2:] if plain.startswith("*.") else plain
            if plain != "*" and not re.fullmatch(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*", bare):
                raise ValueError(f"{name!r} is no host name (a name such as percept.example.org, "
                                 "*.example.org for its subdomains, or * for any; no port, no scheme)")
            out.append(plain)
        return out


class HttpConfig(Strict):
    host: str = Field("127.0.0.1", description="Serve HTTP bind address; 127.0.0.1 unless you mean it")
    port: int = Field(8000, ge=1, le=65535, description="the port Serve binds (0, a port the system picks, could not be found by percept cameras --api)")
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] = "EveryNode"

    @field_validator("host")
    @classmethod
    def _bindable(cls, v: str) -> str:
        problem = bind_host_problem(v)
        if problem:
            raise ValueError(problem)
        return v
