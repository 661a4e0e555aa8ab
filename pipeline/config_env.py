"""Camera URLs' ``${VAR}``s where they are used: which variables a config's cameras name
(`percept run` forwards them to the decoders) and a camera's URL expanded from the decoder's own
environment just before it opens (`resolve_camera`; the registry keeps the URL as written)."""

from __future__ import annotations

from typing import Iterable, Mapping
from urllib.parse import quote, urlsplit

from .config import ENV_REF, CameraConfig, PerceptConfig
from .config_credentials import camera_var_prefix
from .config_urls import UNREADABLE_HOST, camera_url_problem
from .redact import UNESCAPED_USERINFO, query_secrets, url_credentials


class CameraEnvError(ValueError):
    """A camera URL names an environment variable the decoder's environment lacks, or is no
    camera URL once its variables are expanded."""


def camera_env_vars(config: PerceptConfig) -> set[str]:
    """The environment variables the config's camera URLs name: the decoder replicas need them."""
    return {name for cam in config.cameras for name in ENV_REF.findall(cam.url)}


def resolve_camera(camera: CameraConfig, env: Mapping[str, str]) -> CameraConfig:
    """The camera with ``${VAR}`` in its URL expanded from ``env`` (the decoder's environment).
    Raises `CameraEnvError` naming the field and the variable when one is not set."""
    names = list(dict.fromkeys(ENV_REF.findall(camera.url)))
    if not names:
        return camera
    missing = [n for n in names if n not in env]
    if missing:
        raise CameraEnvError(
            f"cameras[{camera.id}].url: environment variable {', '.join(missing)} is not set "
            "in the decoder's environment"
        )
    resolved = camera.model_copy(update={"url": ENV_REF.sub(lambda m: env[m.group(1)], camera.url)})
    problem = camera_url_problem(resolved.url)  # what the variables put in: checked as the config is
    if problem:
        raise CameraEnvError(f"cameras[{camera.id}].url, its variables expanded: {problem}")
    if unfit := resolved.source_problem():  # (``${CAM_URL}`` read as a file's path at load: a live camera)
        raise CameraEnvError(f"cameras[{camera.id}].{unfit[0]}: {unfit[1]} (its url, variables expanded, is a "
                             "live camera's)")
    if _userinfo_ambiguous(resolved.url) and not _userinfo_ambiguous(ENV_REF.sub("x", camera.url)):
        # a value with an unescaped @ / ? or # in it: FFmpeg would take a piece of the password for
        # the host (a DNS lookup, a connection, the rest of it offered as the user's)
        raise CameraEnvError(f"cameras[{camera.id}].url, its variables expanded: {UNESCAPED_USERINFO}")
    pinned = env.get(camera_var_prefix(camera.id) + "HOST", "").strip().lower()
    host = _host_of(resolved.url, camera.id) if pinned else ""
    if pinned and host != pinned.strip("[]"):  # the operator's own: its secrets go to that host only
        raise CameraEnvError(f"cameras[{camera.id}].url: names host {host!r}, but {camera_var_prefix(camera.id)}HOST "
                             f"says its variables are for {pinned!r}: not expanded")
    resolved._written_url = camera.url
    values = [env[n] for n in names if len(env[n]) >= 3]  # shorter: a port, a channel number
    resolved._env_values = tuple(dict.fromkeys(v for value in values for v in (value, quote(value, safe=""))))
    return resolved


def _userinfo_ambiguous(url: str) -> bool:
    """Whether FFmpeg's reading of the URL's host (the host part's last "@") and the whole
    credentials' (up to the URL's last "@") differ: an "@" after an unescaped / ? or #."""
    found, whole = url_credentials(url), url_credentials(url, to_last_at=True)
    return (found is None) != (whole is None) or bool(found and whole and found.hostport != whole.hostport)


def _host_of(url: str, camera_id: str) -> str:
    """The host an expanded URL names, as FFmpeg reads it; never a piece of its password (one
    with an unescaped / ? # @ [ or ] in it makes the host unreadable: said so, not quoted)."""
    where = f"cameras[{camera_id}].url, its variables expanded"
    if _userinfo_ambiguous(url):
        raise CameraEnvError(f"{where}: {UNESCAPED_USERINFO}")
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:  # "'Secret' does not appear to be an IPv4 or IPv6 address": a [..] in the password
        raise CameraEnvError(f"{where}: {UNREADABLE_HOST}") from None


def variables_named(cameras: Iterable[CameraConfig]) -> dict[str, set[str]]:
    """Each ``${VAR}`` the cameras' URLs name, and the ids of the cameras that name it."""
    named: dict[str, set[str]] = {}
    for cam in cameras:
        for name in ENV_REF.findall(cam.url):
            named.setdefault(name, set()).add(cam.id)
    return named


def foreign_variable_error(camera: CameraConfig, field: str, others: Iterable[str] = (),
                           named_by: Mapping[str, set[str]] | None = None) -> str | None:
    """Why a camera added through the API may not name a ``${VAR}`` it names (None: it may). The
    decoder expands a URL's variables from its whole environment and opens whatever host the URL
    names, so an API caller could send any secret there (``${PERCEPT_REDIS_URL}``, another
    camera's password, in a host: a DNS lookup): over the API a URL names only its camera's own
    variables, ``CAM_<ID>_<WORD>`` (``CAM_DOCK_PASSWORD``; ``CAM_FRONT_2_PASSWORD`` is camera
    front-2's, not front's), only as its credentials (``user:${…}@``, a ``?password=``-like
    value), and none when another camera (``others``: their ids) has the same names (``Dock`` and
    ``dock``, ``a-1`` and ``a_1``), nor one another camera's URL names (``named_by``,
    `variables_named`: a config camera ``refused`` may use ``${CAM_REF_PASSWORD}``, which an API
    camera ``ref`` would otherwise carry to a host of its own, the operator's ``CAM_REFUSED_HOST``
    pin notwithstanding). A config file's cameras are the operator's: not checked."""
    names = list(dict.fromkeys(ENV_REF.findall(camera.url)))
    if not names:
        return None
    prefix = camera_var_prefix(camera.id)
    twin = next((other for other in others if other != camera.id and camera_var_prefix(other) == prefix), None)
    if twin is not None:
        return (f"{field}: its variables ({prefix}…) would be camera {twin!r}'s too: a camera added through the "
                "API that names variables needs an id whose variable names no other camera shares")
    found = url_credentials(camera.url)
    allowed = list(query_secrets(camera.url))
    if found is not None:
        allowed.append((found.start, found.end - len(found.hostport)))
    for m in ENV_REF.finditer(camera.url):
        name = m.group(1)
        taken = sorted((named_by or {}).get(name, set()) - {camera.id})
        if taken:
            return (f"{field}: ${{{name}}} is named by camera {taken[0]!r}'s URL: a camera added through the API "
                    "names only variables no other camera names")
        own = name.startswith(prefix) and name[len(prefix):].isalpha() and name[len(prefix):].isupper()
        if not own or not any(a <= m.start() and m.end() <= b for a, b in allowed):
            return (f"{field}: ${{{name}}}: a camera added through the API names only its own variables "
                    f"({prefix}PASSWORD, {prefix}USER, …), and only as its user or password, as in "
                    f"user:${{{prefix}PASSWORD}}@host or as the value of a password query parameter; the decoders "
                    f"need {prefix}PASSWORD set")  # (no `password: x` or `?password=x` in it: the CLI's redact() keeps it whole)
    return None
