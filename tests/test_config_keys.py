"""A config error names the key written (one YAML read as a boolean or a number) and says a value's own length."""

from __future__ import annotations

import pytest


def test_a_mapping_key_yaml_read_as_a_boolean_or_number_is_not_named_as_an_index(tmp_path):
    """``lines: {in: …, off: …}``: YAML's bare ``off`` is False, which pydantic reports as key 0:
    the error named ``cameras[0].lines[0]``, the first line (``in``), not the key written."""
    from pipeline.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("cameras:\n  - id: gate\n    url: a.mp4\n    lines:\n      in: [[0, 0.5], [1, 0.5]]\n"
                    "      off: [[0, 0.7], [1, 0.7]]\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    assert refused.value.errors[0].startswith("cameras[0].lines (one of its keys): must be a valid string"), \
        refused.value.errors


def test_a_value_too_long_is_said_with_its_own_length():
    """The text quoted is cut before it is measured: a URL of 120 000 characters was "at most
    4096 characters, got 'rtsp://h/xxx…… (802 characters)'", a message contradicting itself."""
    from pipeline.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as refused:
        parse_config({"cameras": [{"id": "big", "url": "rtsp://h/" + "x" * 120_000}]}, env={})
    (line,) = refused.value.errors
    assert line.startswith("cameras[0].url: ") and "4096" in line and "(a string of 120009 characters)" in line, line
