"""The one place credentials are scrubbed from URLs and messages before they are logged or published."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

# everything up to the last "@" of the URL: a password with "@", "/", "?" or "#" left unescaped
# is scrubbed whole too (a path with "@" in it loses its host in the text: the safe side)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,31}://)(?P<userinfo>[^\s'\"]*@)")
# a query parameter named for a secret (its value is scrubbed): alone or after a prefix ending in
# "_", "-" or "." (access_token, client_secret, stream_key, X-Amz-Signature; pw, loginpas: cameras'
# CGI URLs); a word no other name ends in after any prefix (userpwd, accesstoken); a short one in
# camelCase (privateKey, authToken, adminPass: not monkey, passage); a digit or two after it
# (password1); CDN and media servers' signed URLs (sign, hdnts, hdnea, authkey, wowzatokenhash,
# wmsAuthSign); userpass (cameras' CGI URLs). Also a
# path segment so written (XMEye cameras: /user=admin_password=x_channel=1), up to the next "_" or
# "/". A query value goes on past a ";" (``pwd=Summer;2024!``: one password)
_SECRET_NAME = (r"(?:(?:[\w.-]{0,64}[_.-])?(?:password|passwd|passphrase|pwd|pass|pw|psw|pswd|loginpas|loginpass|passwort"
                r"|passcode|token|auth|authorization|bearer|jwt|session|session_?id|sid"
                r"|apikey|api_key|secret|key|signature|sig|sign|hdnts|hdnea|credentials?)"
                r"|[\w.-]{0,64}?(?:password|passwd|passphrase|pwd|pswd|passwort|passcode|token|secret|signature|credentials?"
                r"|apikey|authorization|authkey|secretkey|streamkey|accesskey|privatekey|tokenhash|userpass)"
                r"|[\w.-]{0,64}[a-z0-9](?-i:Pass|Pw|Pwd|Key|Auth|Sig|Sign|Session|Sid))\d*=")


def _query_patterns(stop: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The secret query value (`_SECRET_NAME`; in a path, after a "/" or "_" — any "_" of the text —
    first a name and "=" looked for at once, without going back: ``"_" * 4000`` took 7 s, the
    time growing as the square of the text's length) and the percent-encoded name's (``?%70assword=x``:
    servers decode the name, so it is read as ``password``), each value ending at ``&``, ``#``
    or one of ``stop``; in a fragment too (``#password=x`` was accepted and stored in clear)."""
    return (re.compile(rf"(?i)([?&;#]{_SECRET_NAME})[^&#{stop}]*"
                       rf"|([/_](?=[\w.-]{{0,100}}+=){_SECRET_NAME})(?:\$\{{[A-Za-z_][A-Za-z0-9_]*\}}|[^&#;/_{stop}])*"),
            re.compile(rf"([?&;#][^=&#;\s'\"/?]*%[0-9A-Fa-f]{{2}}[^=&#;\s'\"/?]*=)([^&#{stop}]*)"))


# in free text a value ends at a quote or a space too (the text goes on after the URL); in a whole
# URL it does not: ``pwd='Secr3t'`` or ``pwd=Summer'24`` is what the camera gets, quotes and all
_QUERY_SECRET, _ENCODED_NAME = _query_patterns(r"\s'\"")
_URL_QUERY_SECRET, _URL_ENCODED_NAME = _query_patterns("")
# ``?u=admin&p=secret`` (camera CGI and NVR URLs): a bare ``p`` is a password where the same query
# names a user; alone (``?p=2``: a page, a profile) it is not
_QUERY = {stop: re.compile(rf"\?[^#{stop}]*") for stop in (r"\s'\"", "")}
_USER_PARAM = re.compile(r"(?i)(?:u|usr|user|username|user_name|login|loginuse|loginname|account)")
_PAIRED_PASSWORD = re.compile(r"(?i)p\d*")


def _paired_passwords(text: str, *, whole_url: bool = False) -> list[tuple[int, int]]:
    """Where the values of ``p=`` parameters in a query that also names a user start and end."""
    found: list[tuple[int, int]] = []
    for query in _QUERY["" if whole_url else r"\s'\""].finditer(text):
        params, at = [], query.start() + 1
        for part in re.split(r"([&;])", query.group(0)[1:]):
            if part not in ("&", ";"):
                name, eq, _ = part.partition("=")
                params.append((name, at + len(name) + 1, at + len(part), bool(eq)))
            at += len(part)
        # (names read as decoded, as servers read them: ``?u%73er=admin&%70=…`` was kept in clear)
        if any(_USER_PARAM.fullmatch(unquote(name)) for name, *_ in params):
            found += [(start, end) for name, start, end, eq in params if eq and _PAIRED_PASSWORD.fullmatch(unquote(name))]
    return found
_SECRET_NAME_ALONE = re.compile(rf"(?i){_SECRET_NAME}")
_PASSWORD_ARG = re.compile(r"(?i)\b(password|passwd|requirepass)(['\"]?\s*[=:]\s*)(\S+)")


# a network camera's scheme written without its "//" (rtsp:/u:p@h, rtsp//u:p@h, rtsp:u:p@h): refused
# as URLs since 2026-12-03, but registered before, FFmpeg reading them with their credentials
_MALFORMED_USERINFO = re.compile(r"(?<![A-Za-z0-9+.:/-])(?P<scheme>(?:rtsps?|https?|rtmps?|srt|hls)(?::/?|//))"
                                 r"(?!/)[^\s'\"]*@", re.I)


def quoted_url(value: object) -> str:
    """A path or URL the user gave, quoted in an error (``'rtsp://***@cam/s1'``): a camera's URL
    given as `--calib`, a dataset's as `--data`, printed its password."""
    return repr(redact_url(str(value)))


def redact_url(url: str) -> str:
    """``rtsp://user:pass@host/x`` → ``rtsp://***@host/x``, ``?password=x`` → ``?password=***``;
    URLs without credentials are unchanged. A whole URL is split as FFmpeg does (a password
    with quotes or spaces too); in other text, any ``scheme://…@`` is scrubbed; a camera URL
    missing its "//" (``rtsp:/u:p@host``), up to its last "@"."""
    found = url_credentials(url, to_last_at=True)
    out = found.with_userinfo("***") if found is not None else _scrub_userinfo(url)
    if found is None and (hostless := password_without_host(url)) is not None:
        start = _URL_NETLOC.match(url).start("netloc")  # type: ignore[union-attr]
        out = out[:start] + out[start:].replace(hostless, "***", 1)
    if found is None and "://" not in url:
        out = _scrub_bare_userinfo(_scrub_malformed(out))
    return _scrub_query(out, whole_url=True)


def _scrub_bare_userinfo(value: str) -> str:
    """A value that is no URL (no "://") yet holds ``user:password@`` (``redis//:pw@host``,
    ``u:pw@host``, a scheme mistyped): everything up to its last "@" (a file name with an "@"
    and no ":" before it is left as it is)."""
    head, at, rest = value.rpartition("@")
    if not at or ":" not in head or head.endswith("***"):
        return value
    return f"***@{rest}"


def _scrub_malformed(text: str) -> str:
    return _MALFORMED_USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)


def _scrub_query(text: str, *, whole_url: bool = False) -> str:
    secret, encoded = (_URL_QUERY_SECRET, _URL_ENCODED_NAME) if whole_url else (_QUERY_SECRET, _ENCODED_NAME)
    for start, end in reversed(_paired_passwords(text, whole_url=whole_url)):
        text = text[:start] + "***" + text[end:]
    text = encoded.sub(lambda m: f"{m.group(1)}***" if _encoded_secret(m) else m.group(0), text)
    return secret.sub(lambda m: f"{m.group(1) or m.group(2)}***", text)


def _encoded_secret(m: re.Match[str]) -> bool:
    """Whether a percent-encoded query name (`_ENCODED_NAME`) decodes to a secret's."""
    return _SECRET_NAME_ALONE.fullmatch(unquote(m.group(1)[1:])) is not None


def _scrub_userinfo(text: str) -> str:
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Scrub any known secret, then URL credentials and ``password=...`` pairs, from free text.
    The known ones first, whole (the patterns stop at a ``;``, a space or a quote: a password
    with one in it kept its rest), also as Python quotes them (PyAV's errors quote the URL so)."""
    out = str(text)
    for secret in sorted(_forms(secrets), key=len, reverse=True):
        out = out.replace(secret, "***")
    out = _scrub_query(_scrub_malformed(_scrub_userinfo(out)))
    return _PASSWORD_ARG.sub(lambda m: f"{m.group(1)}{m.group(2)}***", out)


def _forms(secrets: tuple[str, ...]) -> set[str]:
    """Each secret as written and as ``repr`` writes it inside its quotes (escaped quotes,
    backslashes, control characters)."""
    return {form for secret in secrets if secret for form in (secret, repr(secret)[1:-1],
                                                             repr(secret.replace("'", '"'))[1:-1])}


UNESCAPED_USERINFO = "a user name or password with / ? # or @ in it must be percent-encoded (%2F %3F %23 %40)"
_URL_NETLOC = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://(?P<netloc>[^/?#]*)")


@dataclass(frozen=True)
class UrlCredentials:
    """Where a URL's ``user[:password]@`` is: ``url[start:end]`` is ``userinfo@host[:port]``."""

    url: str
    start: int
    end: int
    user: str
    password: str | None
    hostport: str

    def with_userinfo(self, userinfo: str) -> str:
        return self.url[:self.start] + f"{userinfo}@{self.hostport}" + self.url[self.end:]


def url_credentials(url: str, *, to_last_at: bool = False, port_too: bool = False) -> UrlCredentials | None:
    """The credentials of ``scheme://user:pass@host/…`` (None: none). A password with "@", "/",
    "?" or "#" left unescaped is found whole ("user:pa/ss@host": not a host "user" on port
    "pa"). ``to_last_at``: the password goes on up to the URL's last "@" even after an "@" in
    its host part ("user:Tr0ub@dor/horse@host", not host "dor"): what scrubbing takes (a path
    or query with "@" in it, ``?notify=ops@example.com``, loses its host in the text: the safe
    side); otherwise the host part's "@" is the last, as FFmpeg reads it. ``port_too``: digits
    after the host part's ":" may be a password's start too (`port_or_password`)."""
    m = _URL_NETLOC.match(url)
    if not m:
        return None
    start, end = m.span("netloc")
    at = url.rfind("@", end)  # an "@" after the host part
    if "@" not in m.group("netloc"):
        _, colon, after = m.group("netloc").partition(":")
        if at < 0 or not colon or (after.isdigit() and not port_too):  # no "@" after it, or a port: no credentials
            return None
    elif not to_last_at:
        at = -1
    if at >= 0:
        end = at + 1 + len(_URL_NETLOC.match("x://" + url[at + 1:]).group("netloc"))  # type: ignore[union-attr]
    userinfo, _, hostport = url[start:end].rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not colon and (encoded := userinfo.lower().find("%3a")) >= 0:  # FFmpeg decodes "admin%3Apw" before it splits
        user, colon, password = userinfo[:encoded], ":", userinfo[encoded + 3:]
    return UrlCredentials(url, start, end, user, password if colon else None, hostport)


_DOTTED_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)(?::\d*)?")


def port_or_password(url: str) -> bool:
    """Whether ``scheme://name:digits/…@host…`` reads both ways: a host ``name`` (no dot) and its
    port with an "@" further on, or a user and a password of digits then an unescaped / ? or #
    before a dotted host or an address (``admin:2024/Spring@10.0.0.5``; FFmpeg reads the first,
    and would send the rest of the password to host ``admin``). ``h:554/live@main`` is a path."""
    whole = url_credentials(url, to_last_at=True, port_too=True)
    if whole is None or url_credentials(url, to_last_at=True) is not None:
        return False
    return "." not in whole.user and ":" not in whole.user and bool(_DOTTED_HOST.fullmatch(whole.hostport))


def password_without_host(url: str) -> str | None:
    """What follows the user in ``scheme://user:secret`` with no "@" and no number for a port
    (``redis://default:pw``, ``redis://:pw:6379``: the "@host" left out, a client reads the
    password as the port and says so, quoting it); None for ``host:port`` and anything else."""
    m = _URL_NETLOC.match(url)
    netloc = m.group("netloc") if m else ""
    if not netloc or "@" in netloc or netloc.startswith("[") or ":" not in netloc:
        return None
    after = netloc.partition(":")[2]
    return None if not after or after.isdigit() or "${" in after else after


def redact_text_given(text: str, limit: int) -> str:
    """A user's own text quoted back (a key, a name that may be a URL pasted there): scrubbed
    whole, its URL's password found as FFmpeg reads it (one with a space in it: free text's
    patterns stop there), then cut to ``limit`` (cut first, an ``@`` past the cut left the
    password unscrubbed)."""
    return redact(text, url_secrets(text))[:limit]


def url_secrets(url: str) -> tuple[str, ...]:
    """The password a (resolved) URL carries, read both ways (`url_credentials`), and its
    ``password=``-like query values of 4 characters or more (shorter: scrubbed in the URL, but
    not wherever else such a short string appears), each as written and percent-decoded: what
    `redact` scrubs from an error that quotes it outside the URL (an exception's own wording)."""
    readings = [url_credentials(url), url_credentials(url, to_last_at=True)]
    if port_or_password(url):  # ("user:2024/Spring@10.0.0.5": refused as a camera URL, scrubbed whole in text)
        readings.append(url_credentials(url, to_last_at=True, port_too=True))
    found = [f.password for f in readings if f and f.password]
    found += [p for part in (password_without_host(url),) if part for p in (part, part.rpartition(":")[0]) if p]
    found += [v for start, end in query_secrets(url) if len(v := url[start:end]) >= 4]
    return tuple(dict.fromkeys(v for p in found for v in (p, unquote(p))))


def query_secrets(url: str) -> list[tuple[int, int]]:
    """Where the values of a URL's ``password=``-like query parameters start and end (up to the
    next ``&`` or ``#``: quotes and spaces are part of the value)."""
    found = [(m.end(1) if m.group(1) else m.end(2), m.end()) for m in _URL_QUERY_SECRET.finditer(url)]
    found += [(m.end(1), m.end()) for m in _URL_ENCODED_NAME.finditer(url) if _encoded_secret(m)]
    found += _paired_passwords(url, whole_url=True)
    return sorted(set(found))
