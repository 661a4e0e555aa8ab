"""The ``redis:`` section of the configuration: where results go, and the outage buffer."""

from __future__ import annotations

import re

from pydantic import Field, ValidationInfo, field_validator

from .config_models import Strict
from .config_urls import redis_url_problem


STREAM_PREFIX = r"^[A-Za-z0-9_.:-]+$"
TLS_ONLY = "only with a rediss:// URL: redis:// and unix:// do not use TLS (the password would go in clear)"


class OutageBufferConfig(Strict):
    max_entries: int = Field(10_000, ge=1, description="results kept while Redis is unreachable (every result not yet confirmed, in flight too)")
    max_bytes: int = Field(64 * 2**20, ge=1024, description="memory the results kept while Redis is unreachable take")


class RedisConfig(Strict):
    url: str | None = Field(None, description="redis:// or rediss:// URL; omitted: a private redis-server")
    stream_prefix: str = Field("percept", pattern=STREAM_PREFIX, description="key prefix")
    maxlen: int = Field(100_000, ge=1, le=2**63 - 1, description="approximate entries kept per stream (MAXLEN ~)")
    removed_keep_s: float | None = Field(
        86_400, ge=0, le=2**31,
        description="how long a removed camera's streams, counters and state stay once its tracks are ended "
                    "(then Redis deletes them; 0: at once; null: kept for good)")
    password: str | None = Field(None, repr=False, description="AUTH password; use ${ENV_VAR}")
    username: str | None = Field(None, description="ACL user (Redis 6+)")
    tls_ca_file: str | None = Field(None, description="CA bundle to verify a rediss:// server")
    buffer: OutageBufferConfig = OutageBufferConfig()

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v is not None and re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", v):
            return v  # a variable `percept build` leaves for the cluster to set (resolved there)
        if v is not None and not re.match(r"^(redis|rediss|unix)://", v):
            raise ValueError("must start with redis://, rediss:// or unix://")
        problem = redis_url_problem(v) if v is not None else None
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("password")
    @classmethod
    def _not_empty(cls, v: str | None, info: ValidationInfo) -> str | None:
        """Empty: no password for a server of ``url`` (one without AUTH); refused for the private
        redis-server, which it started with no password, without a word (a ${VAR} never filled in)."""
        if v == "" and info.data.get("url") is None and "url" in info.data:
            raise ValueError("is empty (a ${VAR} set to nothing?): the private redis-server would run with no "
                             "password; leave the key out for that")
        return v or None

    @field_validator("username", "tls_ca_file")
    @classmethod
    def _with_a_url(cls, v: str | None, info: ValidationInfo) -> str | None:
        """The private redis-server (no ``url``) has a password only, and no TLS."""
        url = info.data.get("url")
        if v is not None and url is None and "url" in info.data:
            raise ValueError("only with redis.url (the private redis-server has no ACL users and no TLS)")
        if v is not None and info.field_name == "tls_ca_file" and url and not url.startswith(("rediss://", "${")):
            raise ValueError(TLS_ONLY)
        return v
