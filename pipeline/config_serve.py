"""What Serve's HTTP proxy binds (`HttpConfig`) and what the camera API lets through
(`SecurityConfig`)."""

from __future__ import annotations

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
