"""The one place credentials are scrubbed from URLs and messages before they are logged or published."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]*@)")
_PASSWORD_ARG = re.compile(r"(?i)\b(password|passwd|requirepass)(\s*[=:]\s*)(\S+)")


def redact_url(url: str) -> str:
    """``rtsp://user:pass@host/x`` → ``rtsp://***@host/x``; URLs without credentials are unchanged."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", url)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Scrub URL credentials, ``password=...`` pairs and any known secret from free text."""
    out = redact_url(str(text))
    out = _PASSWORD_ARG.sub(lambda m: f"{m.group(1)}{m.group(2)}***", out)
    for secret in secrets:
        if secret:
            out = out.replace(secret, "***")
    return out
