"""`percept build`'s warning of a camera password written inline, `make constraints` on the venv as
it is, and what compose says of its token when auth is off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from .test_packaging import DOCKER, RAY_NODES, REPO, compose, interpolated


def test_percept_build_warns_of_a_camera_password_written_inline(tmp_path):
    """``security.allow_inline_credentials: true`` let ``rtsp://viewer:camSecret99@…`` into the
    Serve config `percept build` writes without a word (a Redis password so written was warned
    of). Each such camera is named by index, id and field, the password never; one written all
    as ``${VAR}``s is not."""
    from cli.build import inline_camera_secrets

    cameras = [
        {"id": "door", "url": "rtsp://viewer:camSecret99@10.0.0.9:554/s1"},
        {"id": "gate", "url": "http://10.0.0.10/cgi/mjpg?user=admin&pwd=qsGate77x"},
        {"id": "yard", "url": "rtsp://viewer:${CAM_PASS}@10.0.0.11/s1?token=${CAM_TOKEN}"},
        {"id": "dock", "url": "rtsp://viewer:pre${CAM_PASS}@10.0.0.12/s1"},  # "pre" is written out
        {"id": "lab", "url": "rtsp://10.0.0.13:554/s1"},
    ]
    assert inline_camera_secrets({"cameras": cameras}) == [
        ("cameras[0].url (camera 'door')", "${CAM_DOOR_PASSWORD}"),
        ("cameras[1].url (camera 'gate')", "${CAM_GATE_PASSWORD}"),
        ("cameras[3].url (camera 'dock')", "${CAM_DOCK_PASSWORD}")]
    assert inline_camera_secrets({"cameras": "x"}) == inline_camera_secrets([]) == []
    assert inline_camera_secrets({"cameras": [{"id": "bad id!", "url": "rtsp://u:pw@h/s"}]}) == [
        ("cameras[0].url", "${CAM_X_PASSWORD}")]  # (an id the config would refuse is not quoted)

    config = tmp_path / "inline.yaml"
    config.write_text(yaml.safe_dump({"security": {"allow_inline_credentials": True},
                                      "redis": {"url": "redis://redis:6379/0"}, "cameras": cameras}))
    out = subprocess.run([sys.executable, "-m", "cli", "build", "-c", str(config), "-o", str(tmp_path / "serve.yaml")],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CAM_PASS": "envPassValue1", "CAM_TOKEN": "envTokenValue2"})
    assert out.returncode == 0, out.stderr
    warnings = [ln for ln in out.stderr.splitlines() if ln.startswith("percept build: warning:")]
    assert len(warnings) == 3, out.stderr
    for line, (field, var) in zip(warnings, [("cameras[0].url (camera 'door')", "${CAM_DOOR_PASSWORD}"),
                                            ("cameras[1].url (camera 'gate')", "${CAM_GATE_PASSWORD}"),
                                            ("cameras[3].url (camera 'dock')", "${CAM_DOCK_PASSWORD}")]):
        assert line.startswith(f"percept build: warning: {field} holds its password as written: the Serve "
                               "config carries it"), line
        assert var in line, line
    for secret in ("camSecret99", "qsGate77x", "envPassValue1", "envTokenValue2"):
        assert secret not in out.stderr, out.stderr
    assert "camSecret99" in (tmp_path / "serve.yaml").read_text()  # (what it warns of: the config as written)


def test_make_constraints_needs_only_the_venv_not_its_install_stamp(tmp_path):
    """`make constraints` depended on ``$(VENV)/.installed``: after an upgrade that touched
    pyproject.toml, it first reinstalled with ``-c docker/constraints.txt``, putting the old pins
    back, and then wrote them again. It runs on the venv as it is; without one it says so."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")  # (make -n runs nothing)
    (venv / ".installed").write_text("")
    os.utime(venv / ".installed", (1_000_000_000, 1_000_000_000))  # older than pyproject.toml and the pins

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "--no-print-directory", *args, f"VENV={venv}"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    stale = make("-n", "test-fast")  # (the stamp is stale: a target that needs it reinstalls)
    assert stale.returncode == 0 and "-c docker/constraints.txt" in stale.stdout, stale
    dry = make("-n", "constraints")
    assert dry.returncode == 0, dry
    assert dry.stdout.split("\n") == [f"{venv}/bin/python scripts/docker-constraints.py", ""], dry.stdout
    (venv / "bin" / "python").unlink()
    missing = make("constraints")
    assert missing.returncode == 2 and "no virtualenv at" in missing.stderr and "pip" not in missing.stdout, missing


def test_compose_without_a_token_in_disabled_mode_says_what_it_wants():
    """The file said ``RAY_AUTH_MODE=disabled`` turns auth off, "the token then unused", while
    every Ray node's ``${RAY_AUTH_TOKEN:?…}`` made compose refuse without one. Compose still asks
    for it (an empty token is refused by `ray start` in token mode too, but with no word of what to
    set): the refusal and the file's comment say that in disabled mode any value does."""
    shell = {"CAM_PASS": "c", "REDIS_PW": "r", "PERCEPT_MODELS_DIR": "/m", "RAY_AUTH_MODE": "disabled"}
    for name in RAY_NODES:
        environment = compose()["services"][name]["environment"]
        with pytest.raises(KeyError, match=r"RAY_AUTH_TOKEN: set RAY_AUTH_TOKEN.*any value with "
                                           r"RAY_AUTH_MODE=disabled"):
            {k: interpolated(v, shell) for k, v in environment.items()}
    comments = " ".join(ln.lstrip("# ").strip() for ln in (DOCKER / "compose.yaml").read_text().splitlines()
                        if ln.startswith("#"))
    said = comments[comments.index("RAY_AUTH_MODE=disabled"):][:200]
    assert "compose still asks for RAY_AUTH_TOKEN" in said and "any value does" in said, said
