"""The shipped example configs stay valid."""

from pathlib import Path

import pytest

from pipeline.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_is_valid(path):
    cfg = load_config(path, env={"CAM_PASS": "x", "VIDEOS": "/videos", "REDIS_PW": "x"})
    assert cfg.cameras
