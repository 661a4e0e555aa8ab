"""Cluster packaging without Docker: docker/Dockerfile, docker/compose*.yaml, the KubeRay
RayService and configs/cluster.yaml agree with each other and with the project.

What Docker would find out first is checked here: the image copies every package pyproject.toml
lists and installs the project with the tested pins; the compose services run the right
commands with the environment configs/cluster.yaml needs; the RTSP service's command serves the
cameras configs/cluster.yaml names (run for real with the project's RTSP server). The KubeRay
RayService is checked in test_kuberay.py."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
CLUSTER_CONFIG = REPO / "configs" / "cluster.yaml"
KUBERAY_CONFIG = REPO / "configs" / "kuberay.yaml"  # deploy/kuberay/rayservice.yaml's
RAYSERVICE = REPO / "deploy" / "kuberay" / "rayservice.yaml"
SERVICES = {"redis", "rtsp", "ray-head", "ray-worker", "percept", "prometheus", "grafana"}
RAY_NODES = ("ray-head", "ray-worker", "percept")  # services that run the percept image
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

sys.path.insert(0, str(REPO / "scripts"))
docker_constraints = __import__("docker-constraints")
kuberay_manifest = __import__("kuberay-manifest")


# --- helpers ---------------------------------------------------------------------------------

def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def copies(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """COPY source -> destination."""
    found = {}
    for word, args in instructions:
        if word == "COPY" and not args.startswith("--from"):
            *sources, dest = args.split()
            for src in sources:
                found[src] = dest
    return found


def pins() -> dict[str, str]:
    out = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"docker/constraints.txt: {line!r} is not name==version"
            out[canonicalize_name(name)] = version.strip()
    return out


def compose(name: str = "compose.yaml") -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def env_refs(path: Path) -> set[str]:
    """The ${VARS} in a YAML file's values (comments don't count)."""
    return set(ENV_REF.findall(yaml.safe_dump(yaml.safe_load(path.read_text()))))


def argv(command) -> list[str]:
    return command if isinstance(command, list) else shlex.split(command)


def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_CONFIG.read_text())


def percept_build(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "cli", "build", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


# --- the wheel ---------------------------------------------------------------------------------

def test_an_installed_wheel_finds_its_model_cards(tmp_path):
    """A plain (non-editable) install has no configs/ beside it: the wheel carries the cards
    (``pipeline/cards``) and finds them there, without PERCEPT_CARDS_DIR."""
    import shutil
    import zipfile

    src = tmp_path / "src"  # a copy: pip builds in the tree it is given
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("pipeline", "deployments", "cli", "benchmarks", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("percept-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what installing a pure-Python wheel puts in place
    env = {k: v for k, v in os.environ.items() if k != "PERCEPT_CARDS_DIR"}
    env["PYTHONPATH"] = str(site)
    probe = ("import json, pipeline.backends.card as c; "
             "print(json.dumps([c.__file__, str(c.CARDS_DIR), sorted(p.name for p in c.CARDS_DIR.glob('*.yaml'))]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    module, cards_dir, cards = json.loads(out.stdout)
    assert module.startswith(str(site)) and cards_dir == str(site / "pipeline" / "cards")
    assert cards == sorted(p.name for p in (REPO / "configs" / "models").glob("*.yaml")) and cards


# --- Dockerfile ------------------------------------------------------------------------------

def test_dockerfile_copies_every_package_pyproject_installs():
    instr = dockerfile(DOCKER / "Dockerfile")
    copied = copies(instr)
    setuptools = pyproject()["tool"]["setuptools"]
    folders = [setuptools.get("package-dir", {}).get(p, p.replace(".", "/")) for p in setuptools["packages"]]
    needed = {"pyproject.toml", "README.md", *folders}  # (a folder is copied itself or with a folder above it)
    missing = {n for n in needed if not any(n == c or n.startswith(f"{c}/") for c in copied)}
    assert not missing, f"docker/Dockerfile does not COPY {sorted(missing)}: `pip install .` would fail"
    ignored = [ln.strip().rstrip("/") for ln in (REPO / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    assert ".venv" in ignored and ".git" in ignored
    assert not set(copied) & set(ignored), "a COPY source is excluded by .dockerignore"


def test_dockerfile_installs_the_project_with_the_tested_pins():
    instr = dockerfile(DOCKER / "Dockerfile")
    runs = [args for word, args in instr if word == "RUN" and "pip install" in args]
    assert len(runs) == 1, runs
    cmd = shlex.split(runs[0].split("&&")[0])
    assert cmd[:2] == ["pip", "install"]
    # the project itself, with the extras the constraints were generated for
    projects = [t for t in cmd if re.fullmatch(r"\.(\[[a-z,]+\])?", t)]
    assert len(projects) == 1, cmd
    extras = set(re.findall(r"[a-z]+", projects[0]))
    assert extras == set(docker_constraints.EXTRAS)
    # pinned by docker/constraints.txt, copied to where -c reads it
    constraint = cmd[cmd.index("-c") + 1]
    assert copies(instr).get("docker/constraints.txt") == constraint
    # Ray pinned to RAY_VERSION, the version in docker/constraints.txt and in the Ray base image
    args = dict(a.split("=", 1) for w, a in instr if w == "ARG" and "=" in a)
    assert "ray[serve]==${RAY_VERSION}" in cmd
    assert args["RAY_VERSION"] == pins()["ray"]


def test_dockerfile_variants_share_python_and_ray():
    instr = dockerfile(DOCKER / "Dockerfile")
    stages = {args.split(" AS ")[1].strip(): args.split(" AS ")[0].strip()
              for word, args in instr if word == "FROM" and " AS " in args}
    assert stages["base-gpu"] == "rayproject/ray:${RAY_VERSION}-py311-gpu"
    assert stages["base-cpu"].startswith("python:3.11-")
    assert ("FROM", "base-${VARIANT}") in instr
    args = dict(a.split("=", 1) for w, a in instr if w == "ARG" and "=" in a)
    assert args["VARIANT"] == "cpu"
    # the pins were resolved for the image's Python
    header = (DOCKER / "constraints.txt").read_text().splitlines()[2]
    assert "Python 3.11," in header
    # both run as Ray's image user, with the models where configs and manifests expect them
    assert ("USER", "ray") in instr
    assert ("ENV", "PERCEPT_MODELS_DIR=/models") in instr
    assert ("ENV", "YOLO_OFFLINE=1") in instr  # a weights file missing from /models: an error, never a download


def test_rtsp_image_installs_what_the_test_suite_uses():
    instr = dockerfile(DOCKER / "Dockerfile.rtsp")
    server = [src for src in copies(instr) if src.endswith("rtsp_server.py")]
    assert server and (REPO / server[0]).is_file()
    apt = " ".join(args for word, args in instr if word == "RUN" and "apt-get install" in args).split()
    script = (REPO / "scripts" / "install-system-deps.sh").read_text()
    test_pkgs = re.search(r'== "--test".*?pkgs\+=\((.*?)\)', script, re.S).group(1).split()
    assert set(test_pkgs) <= set(apt), f"missing from Dockerfile.rtsp: {set(test_pkgs) - set(apt)}"
    entry = json.loads(dict(instr)["ENTRYPOINT"])
    assert entry[-4:] == ["--host", "0.0.0.0", "--port", "8554"]


# --- dependencies ----------------------------------------------------------------------------

def test_constraints_pin_every_pyproject_dependency_within_its_range():
    p = pins()
    for req in docker_constraints.pyproject_requirements():
        name = canonicalize_name(req.name)
        assert name in p, f"{req} has no pin in docker/constraints.txt (make constraints)"
        assert req.specifier.contains(p[name], prereleases=True), f"pin {name}=={p[name]} is outside {req}"


def test_constraints_are_a_closed_consistent_set():
    """Every requirement of a pinned package (read from the venv where it has that exact
    version) is pinned too, at a version that satisfies it: the set resolves as a whole."""
    p = pins()
    extras: dict[str, set[str]] = defaultdict(set)
    for req in docker_constraints.pyproject_requirements():
        extras[canonicalize_name(req.name)] |= set(req.extras)
    checked, problems, changed = set(), [], True
    while changed:
        changed = False
        for name, version in p.items():
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                continue
            if dist.version != version or (name, frozenset(extras[name])) in checked:
                continue
            checked.add((name, frozenset(extras[name])))
            for child in map(Requirement, dist.requires or []):
                if child.marker and not any(child.marker.evaluate({"extra": e}) for e in extras[name] or {""}):
                    continue
                cname = canonicalize_name(child.name)
                if cname not in p:
                    problems.append(f"{name}=={version} needs {child}: not pinned")
                elif not child.specifier.contains(p[cname], prereleases=True):
                    problems.append(f"{name}=={version} needs {child}: pinned {p[cname]}")
                elif not set(child.extras) <= extras[cname]:
                    extras[cname] |= set(child.extras)
                    changed = True
    assert not problems, "\n".join(problems) + "\n(make constraints)"
    if len({n for n, _ in checked}) < len(p) // 2:
        pytest.skip("this venv no longer has most pinned versions: run `make constraints`")


def test_installed_environment_satisfies_pyproject():
    """The venv the tests run in resolved every dependency pyproject names (extras included)."""
    project = pyproject()["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for req in map(Requirement, reqs):
        version = metadata.version(req.name)
        assert req.specifier.contains(version, prereleases=True), f"{req.name} {version} does not satisfy {req}"


# --- compose ---------------------------------------------------------------------------------

def test_compose_has_the_five_services_with_their_commands():
    doc = compose()
    services = doc["services"]
    assert set(services) == SERVICES

    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    cmd = argv(redis["command"])
    assert cmd[0] == "redis-server" and cmd[cmd.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis["volumes"]

    head = argv(services["ray-head"]["command"])
    assert head[:3] == ["ray", "start", "--head"] and "--block" in head and "--port=6379" in head
    assert "--dashboard-host=0.0.0.0" in head  # `serve deploy` from the percept service

    worker = argv(services["ray-worker"]["command"])
    assert worker[:2] == ["ray", "start"] and "--block" in worker and "--address=ray-head:6379" in worker
    resources = json.loads(next(a for a in worker if a.startswith("--resources=")).split("=", 1)[1])
    assert resources and all(v > 0 for v in resources.values())
    assert services["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"

    script = " ".join(argv(services["percept"]["command"]))
    built = re.search(r"percept build -c (\S+) --http-host 0\.0\.0\.0 -o (\S+)", script)
    assert built, script
    assert f"serve deploy {built.group(2)} --address http://ray-head:8265" in script

    # every published port is on loopback only
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_nodes_get_the_image_models_config_and_secrets():
    doc = compose()
    services = doc["services"]
    needed = env_refs(CLUSTER_CONFIG)
    assert {"CAM_PASS", "REDIS_PW"} <= needed
    for name in RAY_NODES:
        svc = services[name]
        assert svc["build"]["dockerfile"] == "docker/Dockerfile"
        assert (DOCKER / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve().is_file()
        env = svc["environment"]
        assert env["PERCEPT_MODELS_DIR"] == "/models"
        assert needed <= set(env), f"{name} lacks {needed - set(env)} that configs/cluster.yaml uses"
        mounts = {v.rsplit(":", 2)[1] if v.endswith((":ro", ":rw")) else v.rsplit(":", 1)[1]: v for v in svc["volumes"]}
        assert "/models" in mounts and mounts["/models"].endswith(":ro")
        config_src = mounts["/config"].split(":")[0]
        assert (DOCKER / config_src / "cluster.yaml").resolve() == CLUSTER_CONFIG
    # the config the percept service deploys is the one mounted there
    script = " ".join(argv(services["percept"]["command"]))
    assert "-c /config/cluster.yaml" in script
    rtsp = services["rtsp"]
    assert (DOCKER / rtsp["build"]["context"] / rtsp["build"]["dockerfile"]).resolve().is_file()
    # the cameras' password from the environment, never on the command line (every local user's: ps)
    command = argv(rtsp["command"])
    assert "--password" not in command and command[command.index("--password-env") + 1] == "CAM_PASS", command
    assert "CAM_PASS" in rtsp["environment"] and not any("${" in str(a) for a in command), command


COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-?])([^}]*))?\}")
RAY_START_AUTH_CHECK = """
from ray._private.authentication.authentication_token_setup import (ensure_token_if_auth_enabled,
                                                                    maybe_enable_token_auth_if_token_available)
from ray._private.authentication.authentication_utils import is_token_auth_enabled
maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # what `ray start` runs first
ensure_token_if_auth_enabled(None, create_token_if_missing=False)
print("token" if is_token_auth_enabled() else "off")
"""


def interpolated(value: str, shell: dict[str, str]) -> str:
    """A compose value with the shell's variables as compose puts them in (``${V}``,
    ``${V:-default}``, ``${V:?error}``: an unset or empty variable takes the default)."""
    def one(m: re.Match) -> str:
        name, op, arg = m.groups()
        if shell.get(name):
            return shell[name]
        if op == "?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == "-" else ""
    return COMPOSE_VAR.sub(one, str(value))


@pytest.mark.parametrize("shell,mode", [({}, "no token"), ({"RAY_AUTH_TOKEN": "0f" * 16}, "token"),
                                        ({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "x"}, "off")])
def test_compose_nodes_take_rays_token_auth_from_the_shell(shell, mode, tmp_path):
    """The file said ``RAY_AUTH_MODE: disabled``: exporting ``token`` before ``up``, as the README
    told a shared machine to, changed nothing. Then it was off unless asked for: the dashboard on
    the host's loopback took any local user's job, which could read every node's CAM_PASS. Each
    node's environment as compose makes it, through the checks ``ray start`` makes first (Ray
    2.60): token auth by default, `up` refused without the token, off only when asked for."""
    shell = {"CAM_PASS": "c", "REDIS_PW": "r", "PERCEPT_MODELS_DIR": "/m", **shell}
    for name in RAY_NODES:
        environment = compose()["services"][name]["environment"]
        if mode == "no token":  # (compose refuses to start, saying what to set)
            with pytest.raises(KeyError, match="RAY_AUTH_TOKEN: set RAY_AUTH_TOKEN"):
                {k: interpolated(v, shell) for k, v in environment.items()}
            continue
        env = {k: interpolated(v, shell) for k, v in environment.items()}
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        out = subprocess.run([sys.executable, "-c", RAY_START_AUTH_CHECK], env={**run_env, **env, "HOME": str(tmp_path)},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.split() == [mode], (name, out.stdout, out.stderr[-500:])


def test_compose_gpu_override_gives_the_worker_gpus():
    base, gpu = compose(), compose("compose.gpu.yaml")
    assert set(gpu["services"]) <= set(base["services"])
    for name in RAY_NODES:
        assert gpu["services"][name]["build"]["args"]["VARIANT"] == "gpu"
        assert gpu["services"][name]["image"] != base["services"][name]["image"]
    devices = gpu["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_the_gpu_override_deploys_once_ray_counts_a_gpu(tmp_path):
    """`num_gpus: auto` is decided when `serve deploy` builds the app, and the same build deployed
    again is not built again: a GPU worker that joined after it left the detector on the CPU for
    good. The override's command (as compose passes it to sh: ``$$`` is a ``$``) waits for a GPU
    in `ray status`, then runs the base command; `ray`, `percept` and `serve` here write down
    their calls (`ray status` names a GPU from its second call on)."""
    base, gpu = compose(), compose("compose.gpu.yaml")
    shell, flag, script = gpu["services"]["percept"]["command"]
    assert (shell, flag) == ("sh", "-c") and script.endswith(base["services"]["percept"]["command"][2]), script
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    calls = tmp_path / "calls"
    fakes = {"ray": f'echo "ray $*" >> {calls}; n=$(grep -c "^ray" {calls}); echo "Total Usage:"; echo " 0.0/6.0 CPU"; '
                    '[ "$n" -ge 2 ] && echo " 0.0/1.0 GPU"; exit 0',
             "percept": f'echo "percept $*" >> {calls}', "serve": f'echo "serve $*" >> {calls}'}
    for name, body in fakes.items():
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    out = subprocess.run(["sh", "-c", script.replace("$$", "$")], env={"PATH": f"{bin_}:/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = calls.read_text().splitlines()
    assert lines[:2] == ["ray status --address ray-head:6379"] * 2, lines
    assert lines[2].startswith("percept build -c /config/cluster.yaml") and lines[3].startswith("serve deploy"), lines
    assert lines[4].startswith("percept subscribe"), lines
    assert out.stdout.count("waiting for a GPU worker") == 1, out.stdout


def test_restart_policies_bring_every_long_running_service_back():
    """Only `percept` had one: after a crash, an OOM kill or a reboot the cluster stayed down."""
    for name, service in compose()["services"].items():
        assert service.get("restart") in ("unless-stopped", "on-failure", "always"), name


def test_config_cameras_are_the_rtsp_service_mounts():
    rtsp = compose()["services"]["rtsp"]
    args = argv(rtsp["command"])
    mounts = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    user = args[args.index("--user") + 1]
    for cam in cluster_config()["cameras"]:
        url = urlsplit(cam["url"])
        assert (url.hostname, url.port, url.username) == ("rtsp", 8554, user), cam
        assert url.password == "${CAM_PASS}" and args[args.index("--password-env") + 1] == "CAM_PASS"
        assert url.path.strip("/") in mounts, f"camera {cam['id']}: no mount {url.path} on the rtsp service"


def test_rtsp_service_command_serves_the_cluster_cameras(videos, rtsp_server_cls):
    """Run the compose rtsp service's command with the project's RTSP server on loopback (the
    videos volume mapped to the shared clips) and read a frame from every camera in
    configs/cluster.yaml, with its credentials."""
    import cv2

    args = argv(compose()["services"]["rtsp"]["command"])
    mounts = {m: spec.replace("/videos", str(videos), 1)
              for m, spec in (a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))}
    password = "s3cret"
    with rtsp_server_cls(mounts, user=args[args.index("--user") + 1], password=password) as server:
        for cam in cluster_config()["cameras"]:
            url = cam["url"].replace("${CAM_PASS}", password).replace("rtsp:8554", f"127.0.0.1:{server.port}")
            cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
            try:
                ok, frame = cap.read()
            finally:
                cap.release()
            assert ok and frame is not None and frame.size, f"camera {cam['id']}: no frame from the rtsp service"


def test_make_demo_and_bench_refuse_a_models_folder_that_is_not_there(tmp_path):
    """`PERCEPT_MODELS_DIR=/typo make demo` installed everything, then failed at run time; `make
    bench` had no check at all."""
    import subprocess

    for target in ("demo-models", "bench"):
        done = subprocess.run(["make", "-s", target, f"PERCEPT_MODELS_DIR={tmp_path / 'typo'}"], cwd=DOCKER.parent,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "no models folder" in done.stderr and "typo" in done.stderr, done
    ok = subprocess.run(["make", "-s", "demo-models", f"PERCEPT_MODELS_DIR={tmp_path}"], cwd=DOCKER.parent,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok


def test_make_passes_the_demos_port_and_a_torch_index_on(tmp_path):
    """`make demo HTTP_PORT=…` and `make setup TORCH_INDEX=…` (a CPU-only torch, as the Docker
    image's build argument) reach the commands they are for; without them the commands are as before."""
    import subprocess

    def planned(*args: str) -> str:
        done = subprocess.run(["make", "-n", "-B", *args, f"PERCEPT_MODELS_DIR={tmp_path}", f"VENV={tmp_path / 'venv'}"],
                              cwd=DOCKER.parent, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done
        return done.stdout

    assert "percept demo --duration 5 --http-port 8080" in planned("demo", "DURATION=5", "HTTP_PORT=8080")
    assert "--http-port" not in planned("demo")
    index = "https://download.pytorch.org/whl/cpu"
    assert f"pip install -q --extra-index-url {index} -c docker/constraints.txt" in planned("setup", f"TORCH_INDEX={index}")
    assert "--extra-index-url" not in planned("setup")
