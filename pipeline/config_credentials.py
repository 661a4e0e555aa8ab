"""Camera credentials in the config (pipeline/config.py): the variables named for a camera
(``CAM_<ID>_PASSWORD``), the refusal of a password typed inline in its URL, and the variables a
config's camera URLs name that the environment lacks. (A `CameraConfig` and a `PerceptConfig`
are typed `Any` here: pipeline/config.py imports this module.)"""

from __future__ import annotations

import re
from typing import Any, Mapping

from .config_urls import ENV_REF
from .redact import query_secrets, url_credentials


def camera_var_prefix(camera_id: str) -> str:
    """How the variables named for a camera start: ``CAM_<ID>_`` (``front-2``: ``CAM_FRONT_2_``)."""
    return "CAM_" + re.sub(r"[^A-Za-z0-9]", "_", camera_id).upper() + "_"


def inline_password_error(camera: Any, field: str, *, setting: bool = True) -> str | None:
    """The refusal of a password typed inline in the camera URL (``rtsp://user:secret@host``,
    ``?pwd=secret``), saying how to write it as a variable (and, with ``setting``, which setting
    accepts it); None when passwords are ``${VAR}``s."""
    var = camera_var_prefix(camera.id) + "PASSWORD"
    example = camera.url
    for start, end in reversed(query_secrets(example)):  # ?pwd=secret
        if ENV_REF.sub("", example[start:end]):
            example = example[:start] + f"${{{var}}}" + example[end:]
    found = url_credentials(example)
    if found is not None and found.password is not None and ENV_REF.sub("", found.password):
        whole = url_credentials(example, to_last_at=True)
        if whole is not None and whole.password != found.password:
            # an "@" further on ("p@ss/word@host"): where the password ends is unsure, so no part
            # of the URL is quoted (the host read from FFmpeg's reading was the password's end)
            example = f"its password as ${{{var}}} (scheme://{found.user}:${{{var}}}@host/…)"
        else:
            example = found.with_userinfo(f"{found.user}:${{{var}}}")
    if example == camera.url:
        return None
    how = f"{field}: inline password refused; write {example} and set {var} in the decoder's environment"
    return how + (", or set security.allow_inline_credentials: true to store it in Redis in clear" if setting else "")


def camera_env_errors(config: Any, env: Mapping[str, str]) -> list[str]:
    """One ``cameras[i].url: environment variable X is not set`` line per variable ``env`` lacks."""
    return [
        f"cameras[{i}].url: environment variable {name} is not set"
        for i, cam in enumerate(config.cameras)
        for name in dict.fromkeys(ENV_REF.findall(cam.url))
        if name not in env
    ]
