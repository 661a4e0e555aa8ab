"""Configuration errors as a user reads them: one ``path: message, got value`` line per problem,
the YAML path exact (``cameras[1].fps: must be >= 0, got -2``), and the exit code they cause.
The value quoted never carries a credential (`pipeline/redact.py`)."""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from .redact import redact, url_secrets

CONFIG_ERROR_EXIT_CODE = 2


class ConfigError(ValueError):
    """A configuration that cannot run. ``errors`` holds one ``path: message`` line per problem;
    ``camera_ids``: the ids of the config's cameras as written, in order: the message a person
    reads names the camera of each ``cameras[i]`` line (``… got -2  (camera 'gate')``)."""

    def __init__(self, errors: list[str], source: str | None = None, camera_ids: Sequence[Any] = ()):
        if len(errors) > MAX_ERRORS + 1:  # (1000 aliases of one bad camera: 1000 lines)
            errors = [*errors[:MAX_ERRORS], f"… and {len(errors) - MAX_ERRORS} more errors"]
        self.errors = errors
        self.source = source
        self.camera_ids = tuple(camera_ids)
        head = f"invalid config {source}" if source else "invalid config"
        super().__init__(head + ":\n" + "\n".join(f"  {e}{_camera_named(e, self.camera_ids)}" for e in errors))


MAX_ERRORS = 50  # lines said; the rest counted
_CAMERA_AT = re.compile(r"cameras\[([0-9]+)\]")
_CAMERA_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # (CameraConfig.id's own pattern: nothing else is quoted)


def camera_ids_of(data: Any) -> list[Any]:
    """The ``id`` of each camera in a config as written (None where there is none)."""
    cameras = data.get("cameras") if isinstance(data, Mapping) else None
    return [c.get("id") if isinstance(c, Mapping) else None for c in cameras] if isinstance(cameras, list) else []


def _camera_named(line: str, ids: tuple[Any, ...]) -> str:
    """`` (camera 'gate')`` for a line about ``cameras[i]`` whose id is one (else nothing)."""
    m = _CAMERA_AT.match(line)
    if m is None or int(m.group(1)) >= len(ids):
        return ""
    camera = ids[int(m.group(1))]
    return f"  (camera {camera!r})" if isinstance(camera, str) and _CAMERA_ID.fullmatch(camera) else ""


_UNION_MARKERS = {"int", "float", "str", "bool", "AutoscaleConfig", "literal['auto']", "[key]"}
ERROR_AT = "value_error_at"


def error_at(at: tuple[str | int, ...], message: str) -> PydanticCustomError:
    """An error a model validator raises about one of its items (``("zones", "crossing")``):
    rendered at that item's path (``cameras[0].zones.crossing: message``), not the model's."""
    return PydanticCustomError(ERROR_AT, "{message}", {"message": message, "at": tuple(at)})


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int) and loc[i + 1:i + 2] == ("[key]",):  # a key YAML read as off / yes / 1: no index
            out += " (one of its keys)"  # (came as 0 / 1: [0] named the first line, not the key `off`)
        elif isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_MARKERS or str(part).startswith("function-"):
            continue  # markers pydantic adds to locations inside unions and validators
        elif not str(part).isprintable():  # a key with a line break in it: quoted, the line stays one
            out += f"[{_key(part)!r}]"
        else:
            out += f".{_key(part)}" if out else _key(part)
    # (a key is the user's text too: a URL pasted as a zone's name, or as a camera's key, its
    # password found as FFmpeg reads it — one with a space in it was quoted whole)
    secrets = tuple(secret for part in loc if isinstance(part, str) and "@" in part for secret in url_secrets(part))
    return redact(out, secrets)


MAX_KEY = 80  # a key of the path quoted at most so long (a 1 MB zone name came back whole in a 422)


def _key(part: Any) -> str:
    """A key of a path as quoted: its URL's password scrubbed first, then cut to `MAX_KEY`."""
    text = redact(str(part), url_secrets(str(part)))
    return text if len(text) <= MAX_KEY else text[:MAX_KEY] + "…"


def quoted_id(value: str) -> str:
    """An id from a request's path as an answer quotes it (``'gate'``): scrubbed and cut as a
    key (`_key`; an unknown camera's 404 sent a 60 000-character id back whole)."""
    return repr(_key(value))


_MESSAGES = {
    "greater_than_equal": lambda c: f"must be >= {c['ge']:g}",
    "greater_than": lambda c: f"must be > {c['gt']:g}",
    "less_than_equal": lambda c: f"must be <= {c['le']:g}",
    "less_than": lambda c: f"must be < {c['lt']:g}",
    "string_pattern_mismatch": lambda c: f"must match {c['pattern']}",
    "string_too_short": lambda c: "must not be empty",
    "string_too_long": lambda c: f"must be at most {c['max_length']} characters",
    "int_from_float": lambda c: "must be a whole number",
    "model_type": lambda c: "must be a mapping of keys",  # (pydantic named the model's class)
    "dict_type": lambda c: "must be a mapping of keys",
}


def format_validation_error(exc: ValidationError, *, quote: bool = True,
                            written: Mapping[str, str] | None = None) -> list[str]:
    """One ``path: message, got value`` line per problem (``quote`` False: without the value,
    for files whose content is not to be shown, a card path that came over the API);
    ``written``: value → name of each ``${VAR}`` substituted, a value quoted as its ``${VAR}``
    (before it is escaped and cut to `MAX_QUOTED`: a secret with a quote or a backslash in it, or
    a long one, was quoted as it is)."""
    by_path: dict[str, list[dict[str, Any]]] = {}
    for err in exc.errors(include_url=False):
        if written and "input" in err:
            err = {**err, "input": _as_variables(err["input"], written)}
        at = tuple((err.get("ctx") or {}).get("at", ())) if err["type"] == ERROR_AT else ()
        loc = tuple(err["loc"])[:-1] if err["type"] == "invalid_key" else tuple(err["loc"])  # (its last: the key)
        by_path.setdefault(_path(loc + at), []).append(err)
    lines: list[str] = []
    for path, errs in by_path.items():
        # Several errors on one path come from union branches (replicas: int | {min, max}):
        # the branch whose type matched the input explains the problem best.
        specific = [e for e in errs if not e["type"].endswith(("_type", "_parsing"))]
        lines.extend(_format_one(path, (specific or errs)[0], quote))
    return lines


def _format_one(path: str, err: dict[str, Any], quote: bool = True) -> list[str]:
    kind = err["type"]
    make = _MESSAGES.get(kind)
    msg = make(err.get("ctx") or {}) if make else err["msg"].removeprefix("Value error, ")
    msg = msg.replace("Input should be", "must be")
    if kind == "invalid_key":  # (was said at a path naming it as a list index: cameras[0][1] for `yes:`)
        return [f"{path or 'the top level'}: a key must be text, got {_shown(path, err.get('input'))} (quote it: YAML "
                "reads yes/no/on/off unquoted as true/false, and digits as a number)"]
    if not path:
        return msg.splitlines()
    if kind == "extra_forbidden":
        return [f"{path}: unknown key"]
    if kind == "missing":
        return [f"{path}: required key is missing"]
    if kind in ("value_error", ERROR_AT):  # (a validator's words may quote the value: its credentials scrubbed)
        return [f"{path}: {redact(msg)}"]
    if kind == "string_type" and isinstance(err.get("input"), (bool, int, float, datetime.date)):
        msg += " (quote it: YAML reads a bare 0123 as the octal number 83, 1_000 as 1000, yes/on as true)"
    return [f"{path}: {msg}, got {_shown(path, err.get('input'))}" if quote else f"{path}: {msg}"]


# a value as repr() quotes it (not from an apostrophe inside a word: "the camera's host, got '…'")
_QUOTED = re.compile(r"(?<!\w)'(?:[^'\\]|\\.)*'|(?<!\w)\"(?:[^\"\\]|\\.)*\"")


def as_written(lines: list[str], used: Mapping[str, str]) -> list[str]:
    """Error lines whose quoted values hold a value that came from the environment quote its
    ``${VAR}`` instead (a validator's own words may quote the value it refused: a secret set for
    one key and given to another by mistake is not printed). Replaced inside quotes only, as
    written or as repr() escapes it, cut short too (``host[:60]!r``): a secret that is a word
    ("redis", "must") or a piece of a host, replaced in a line's path or words, was given away by
    where it stood. Values of fewer than 4 characters are left (they would match pieces of words)."""
    forms = [(form, name) for value, name in sorted(used.items(), key=lambda kv: -len(kv[0])) if len(value) >= 4
             for form in dict.fromkeys((value, repr(value)[1:-1]))]
    if not forms:
        return lines

    def written(m: re.Match[str]) -> str:
        quote, inner = m.group(0)[0], m.group(0)[1:-1]
        for form, name in forms:
            inner = inner.replace(form, f"${{{name}}}")
            at = inner.find(form[:4])
            while at != -1:  # the quote ends inside the value: cut there
                if form.startswith(inner[at:]):
                    inner = inner[:at] + f"${{{name}}}"
                    break
                at = inner.find(form[:4], at + 1)
        return quote + inner + quote

    return [_QUOTED.sub(written, line) for line in lines]


def _as_variables(value: Any, written: Mapping[str, str]) -> Any:
    """``value`` with each substituted value of 4 characters or more written as its ``${VAR}``
    (shorter ones would match pieces of words), inside lists and mappings too."""
    if isinstance(value, str):
        for text, name in sorted(written.items(), key=lambda kv: -len(kv[0])):
            if len(text) >= 4:
                value = value.replace(text, f"${{{name}}}")
        return value
    if isinstance(value, Mapping):
        return {_as_variables(k, written): _as_variables(v, written) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_variables(v, written) for v in value]
    return value


def _shown(path: str, value: Any) -> str:
    """The value a line quotes, without credentials, and at most `MAX_QUOTED` characters: never a
    password field's, and URLs' ``user:pass@`` scrubbed wherever they are (a camera given as a
    bare URL string), each URL's password found as FFmpeg reads it (one with a space or a quote
    in it: free text's patterns stop there)."""
    if path.rsplit(".", 1)[-1] in SECRET_KEYS:
        return "***"
    secrets = tuple(secret for text in _texts(value) for secret in url_secrets(text))
    length = None  # a string's own length (the text quoted is cut first: it said "(802 characters)" of 120 000)
    if isinstance(value, str) and len(value) > 4 * MAX_QUOTED:  # (cut first: 1000 lines of a 100 kB text)
        length, value = len(value), value[:4 * MAX_QUOTED]
    try:
        text = repr(value)
    except ValueError:  # an integer of thousands of digits (Python's int → str limit)
        text = f"an integer of {value.bit_length()} bits" if isinstance(value, int) else type(value).__name__
    shown = redact(text, secrets)
    if len(shown) <= MAX_QUOTED:
        return shown
    return f"{shown[:MAX_QUOTED]}… ({f'a string of {length}' if length else len(shown)} characters)"


MAX_QUOTED = 200


def _texts(value: Any, limit: int = 1000) -> list[str]:
    """The strings in a value (within lists, tuples and dicts, keys too), the first ``limit``."""
    out: list[str] = []
    stack = [value]
    while stack and len(out) < limit:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend([*item.keys(), *item.values()])
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return out


SECRET_KEYS = {"password", "token", "secret"}
