"""Ultralytics kept off the network while it exports or trains (`export`, `finetune`).

``YOLO_OFFLINE=1`` is not enough: ultralytics reads it for its analytics and downloads of model
names, but a dataset check (`check_det_dataset`, which INT8 calibration and training both run)
still calls `check_font`, which asks GitHub for ``Arial.ttf`` (``requests.head``) and downloads
it. `offline_ultralytics` swaps those entry points for local ones while the block runs:

- `check_font`: the font if it is already in ultralytics' config folder, else None (no download);
  patched where ultralytics imported it by name (its dataset checks and its plotting);
- integration callbacks (anonymous analytics; for trainers Platform streaming, Ray Tune and the
  loggers): none;
- the pip update check: never; ``AUTOINSTALL``: off (missing packages are checked beforehand).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..openvino_quiet import quiet_openvino


def local_font(font: str = "Arial.ttf") -> Path | None:
    """`check_font` without its download: the font in ultralytics' config folder, else None."""
    from ultralytics.utils import USER_CONFIG_DIR

    file = Path(USER_CONFIG_DIR) / Path(font).name
    return file if file.exists() else None


def _patches() -> list[tuple[Any, str, Any]]:
    from ultralytics.data import utils as data_utils
    from ultralytics.utils import callbacks, checks, plotting

    return [(callbacks, "add_integration_callbacks", lambda instance: None),
            (checks, "check_pip_update_available", lambda: False),
            (checks, "AUTOINSTALL", False),
            *((module, "check_font", local_font) for module in (checks, data_utils, plotting))]


@contextlib.contextmanager
def offline_ultralytics(*extra: tuple[Any, str, Any]) -> Iterator[None]:
    """Ultralytics without anything that reaches the network (see the module's doc) while the
    block runs; ``extra``: more (module, attribute, value) to set meanwhile. Restored after."""
    quiet_openvino()  # (its OpenVINO exports import openvino)
    patches = [*_patches(), *extra]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)
