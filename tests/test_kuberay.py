"""The KubeRay RayService (deploy/kuberay/rayservice.yaml) agrees with the project: its
serveConfigV2 is `percept build` output and a valid Serve config, the default GPU shares fit one
GPU, its pods run the GPU image with the models and secrets, and scripts/kuberay-manifest.py
rewrites only the serve config (the rest of test_packaging.py's checks, on their own)."""

from __future__ import annotations

from urllib.parse import urlsplit

import yaml

from .test_packaging import (CLUSTER_CONFIG, KUBERAY_CONFIG, RAYSERVICE, REPO, env_refs, kuberay_manifest,
                             percept_build, pins)


def test_rayservice_serve_config_is_percept_build_output():
    manifest = yaml.safe_load(RAYSERVICE.read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    embedded = manifest["spec"]["serveConfigV2"]
    built = percept_build("-c", "configs/kuberay.yaml", "--http-host", "0.0.0.0")
    assert yaml.safe_load(embedded) == yaml.safe_load(built), "serveConfigV2 differs from `percept build`: run `make kuberay`"
    assert embedded == built, "serveConfigV2 is not the text `percept build` writes: run `make kuberay`"

    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(embedded))
    assert schema.http_options.host == "0.0.0.0"
    app = schema.applications[0]
    assert app.import_path == "deployments.graph:app_builder"
    assert app.args["config"] == yaml.safe_load(KUBERAY_CONFIG.read_text())  # ${VARS} kept: secrets resolved on the cluster


def test_default_gpu_shares_fit_one_gpu():
    """`num_gpus: auto` packs one replica of every model of the shipped configs (and of the
    demo, and of three classifiers) onto one GPU, none for a model that runs on the CPU anyway (a
    card's network, an OpenVINO export); numbers in a config are kept as they are."""
    from deployments.graph import deployment_options
    from pipeline.backends import runs_on_cpu_only
    from pipeline.config import load_config, parse_config
    from pipeline.samples import demo_config
    import os

    env = {"CAM_PASS": "x", "REDIS_PW": "x"}
    three = {c: {"weights": "yolov8n-cls.pt"} for c in ("vehicle", "pedestrian", "sign")}
    configs = {
        "example.yaml": load_config(REPO / "configs" / "example.yaml", env=env),
        "cluster.yaml": load_config(CLUSTER_CONFIG, env=env),
        "kuberay.yaml": load_config(KUBERAY_CONFIG, env=env),
        "demo": demo_config(None, None, ".percept"),
        "demo with the shared models": demo_config(None, os.environ.get("PERCEPT_MODELS_DIR"), ".percept"),
        "three classifiers": parse_config({"classifiers": three}, env={}),
        "a card's network": parse_config({"classifiers": {
            "vehicle": {"weights": "vehicle-attributes-recognition-barrier-0039/FP16-INT8/"
                                   "vehicle-attributes-recognition-barrier-0039.xml"},
            "pedestrian": {"weights": "p.pt"}}}, env={}),
        "numbers": parse_config({"detector": {"num_gpus": 0.25}, "classifiers": {
            "vehicle": {"weights": "v.pt", "num_gpus": 0.5}, "pedestrian": {"weights": "p.pt"}}}, env={}),
    }
    for name, config in configs.items():
        asked = {sec.deployment: sec.cfg.num_gpus for sec in config.detector_sections() + config.classifier_sections()}
        with_gpu = deployment_options(config, gpu_available=True)
        without = deployment_options(config, gpu_available=False)
        gpus = {m: with_gpu[m]["ray_actor_options"]["num_gpus"] for m in asked}
        cpu_only = {sec.deployment for sec in config.detector_sections() + config.classifier_sections()
                    if runs_on_cpu_only(sec.cfg, models_dir=config.models_dir)}
        assert sum(gpus.values()) <= 1.0 and (sum(gpus.values()) > 0 or set(asked) <= cpu_only), (name, gpus)
        for m, value in asked.items():
            if value == "auto":  # a model that runs on the CPU anyway holds no share it cannot use
                assert (gpus[m] == 0) == (m in cpu_only) and without[m]["ray_actor_options"]["num_gpus"] == 0, (
                    name, m, gpus)
            else:
                assert gpus[m] == without[m]["ray_actor_options"]["num_gpus"] == value, (name, m, gpus)
    three_gpus = deployment_options(configs["three classifiers"], gpu_available=True)
    assert three_gpus["detector"]["ray_actor_options"]["num_gpus"] == 0.5
    assert three_gpus["classifier-sign"]["ray_actor_options"]["num_gpus"] == 0.1666  # floored: sums to <= 1
    assert deployment_options(configs["cluster.yaml"], gpu_available=True)["detector"]["ray_actor_options"][
        "num_gpus"] == 1.0  # its classifier runs on CPU (num_gpus: 0): the detector keeps the whole GPU
    card = deployment_options(configs["a card's network"], gpu_available=True)  # OpenVINO runs it on the CPU
    assert [card[m]["ray_actor_options"]["num_gpus"] for m in ("detector", "classifier-vehicle", "classifier-pedestrian")
            ] == [0.5, 0.0, 0.5]
    numbers = deployment_options(configs["numbers"], gpu_available=True)
    assert numbers["classifier-pedestrian"]["ray_actor_options"]["num_gpus"] == 0.25  # what 0.25 + 0.5 leave


def test_models_that_run_on_the_cpu_anyway_take_no_gpu_share(tmp_path):
    """An ultralytics OpenVINO export (a folder with its metadata.yaml and one .xml) on device
    auto, or any model on ``backend: openvino``: OpenVINO has no CUDA device, so the share went
    unused; the same export on ``device: cuda:0`` (asked for) keeps one."""
    from deployments.graph import gpu_shares
    from pipeline.config import parse_config

    export = tmp_path / "yolo_openvino_model"
    export.mkdir()
    (export / "metadata.yaml").write_text("task: detect\n")
    (export / "model.xml").write_text("<net/>")
    pt = {"vehicle": {"weights": "v.pt"}}

    def shares(detector: dict) -> dict:
        return gpu_shares(parse_config({"detector": detector, "classifiers": pt}, env={}), gpu_available=True)

    assert shares({"weights": str(export)}) == {"detector": 0.0, "classifier-vehicle": 1.0}
    assert shares({"weights": str(export), "device": "cpu"}) == {"detector": 0.0, "classifier-vehicle": 1.0}
    assert shares({"weights": str(export), "device": "cuda:0"}) == {"detector": 0.5, "classifier-vehicle": 0.5}
    assert shares({"weights": "yolo11n.pt", "backend": "openvino"}) == {"detector": 0.0, "classifier-vehicle": 1.0}
    assert shares({"weights": "yolo11n.pt"}) == {"detector": 0.5, "classifier-vehicle": 0.5}
    # device: cpu, whatever the weights: it held half a GPU it never used
    assert shares({"weights": "yolo11n.pt", "device": "cpu"}) == {"detector": 0.0, "classifier-vehicle": 1.0}


def test_what_numbers_leave_of_a_gpu_is_shared_without_rounding_it_away():
    """0.7 + 0.2 + 0.1 is 0.99999… in floats: the detector on auto got the 1e-16 left, floored to
    0, and ran on the CPU without a word. Numbers past one GPU (1 + 0.5) left 1.0 to an auto
    classifier: 2.5 GPUs asked, unschedulable on two."""
    from deployments.graph import gpu_shares
    from pipeline.config import parse_config

    def shares(detector, *classifiers):
        return gpu_shares(parse_config({"detector": {"weights": "d.pt", "num_gpus": detector}, "classifiers": {
            "vehicle": [{"weights": "v.pt", "name": f"c{i}", "num_gpus": n} for i, n in enumerate(classifiers)]}},
            env={}), gpu_available=True)

    assert shares("auto", 0.7, 0.2, 0.1)["detector"] == 1.0  # nothing usable left of the first: a GPU of its own
    assert shares("auto", 0.9999)["detector"] == 1.0
    assert shares(1, 0.5, "auto")["classifier-vehicle-c1"] == 0.5  # the second GPU's other half
    assert shares("auto", 0.5, "auto") == {"classifier-vehicle-c0": 0.5, "detector": 0.25, "classifier-vehicle-c1": 0.25}


def test_rayservice_pods_run_the_gpu_image_with_models_and_secrets():
    manifest = yaml.safe_load(RAYSERVICE.read_text())
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == pins()["ray"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        spec = group["template"]["spec"]
        (container,) = [c for c in spec["containers"] if c["name"].startswith("ray-")]
        assert container["image"].endswith(":gpu")
        assert {"name": "PERCEPT_MODELS_DIR", "value": "/models"} in container["env"]
        assert {"secretRef": {"name": "percept-secrets"}} in container["envFrom"]
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in {v["name"] for v in spec["volumes"]}
        # every pod, the head too: the API replica (no CPU of its own) may land there, and hot
        # swaps and explain read the models
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    for group in cluster["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        (container,) = spec["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"]
        assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert cluster["enableInTreeAutoscaling"] is True
    # the Secret supplies what the config and the Redis manifest need
    redis_docs = list(yaml.safe_load_all((REPO / "deploy" / "kuberay" / "redis.yaml").read_text()))
    keys = {e["valueFrom"]["secretKeyRef"]["key"] for d in redis_docs if d["kind"] == "StatefulSet"
            for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert keys <= env_refs(KUBERAY_CONFIG)
    # its command replaces the image's entrypoint (which steps down from root): not root either way
    (redis_pod,) = [d["spec"]["template"]["spec"] for d in redis_docs if d["kind"] == "StatefulSet"]
    assert redis_pod["securityContext"]["runAsNonRoot"] is True and redis_pod["securityContext"]["runAsUser"] > 0
    assert redis_pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    host = urlsplit(yaml.safe_load(KUBERAY_CONFIG.read_text())["redis"]["url"]).hostname
    if "." not in host:  # a Service of the cluster's namespace: the one redis.yaml makes (else the user's Redis)
        assert {d["metadata"]["name"] for d in redis_docs if d["kind"] == "Service"} == {host}
    # Ray's token auth on (KubeRay >= 1.5.1 makes the token and sets it on every pod)
    assert cluster["authOptions"] == {"mode": "token"}


def test_kuberay_script_rewrites_only_the_serve_config():
    text = RAYSERVICE.read_text()
    new = kuberay_manifest.with_serve_config(text, "a: 1\nb:\n  c: 2\n")
    assert yaml.safe_load(new)["spec"]["serveConfigV2"] == "a: 1\nb:\n  c: 2\n"
    before, after = yaml.safe_load(text), yaml.safe_load(new)
    before["spec"].pop("serveConfigV2"), after["spec"].pop("serveConfigV2")
    assert before == after
    assert kuberay_manifest.with_serve_config(new, "a: 1\nb:\n  c: 2\n") == new


def test_the_api_has_places_beyond_its_live_streams():
    """Every MJPEG watcher holds one of the API replica's request places for as long as it
    watches: with ``view.max_streams`` above them, camera calls queued behind the streams."""
    from deployments.graph import deployment_options
    from pipeline.config import parse_config

    for streams, places in ((16, 256), (300, 364), (1024, 1088)):
        config = parse_config({"view": {"max_streams": streams}}, env={})
        assert deployment_options(config, gpu_available=False)["api"]["max_ongoing_requests"] == places


def test_an_unquoted_on_key_survives_the_json_that_serve_deploy_and_kuberay_send():
    """configs/example.yaml writes ``on: [car, truck, bus]``; YAML 1.1 reads that key as true.
    `serve deploy` and KubeRay send the Serve config as JSON, where it became ``"true"``: the
    app failed to deploy (``classifiers.vehicle.true: unknown key``) though `percept run` took
    the same file."""
    import json

    from ray.serve.schema import ServeDeploySchema

    from pipeline.config import parse_config

    built = yaml.safe_load(percept_build("-c", "configs/example.yaml"))
    ServeDeploySchema.model_validate(built)
    sent = json.loads(json.dumps(built))  # what the cluster gets (KubeRay: serveConfigV2 as JSON)
    config = parse_config(sent["applications"][0]["args"]["config"], env={"CAM_PASS": "x"})
    assert config.classifiers["vehicle"][0].on == ["car", "truck", "bus"]
    assert [c.on for c in config.classifiers["sign"]] == [None, ["traffic light"]]


def test_a_local_run_asking_for_resources_its_ray_has_none_of_is_refused_naming_them():
    """A private local Ray never gains a GPU or a custom resource: `serve.run` waited for ever
    (Serve's warning about it hidden), `percept run` hung at "starting"."""
    from deployments.graph import unmet_resources
    from pipeline.config import parse_config

    config = parse_config({"detector": {"weights": "d.pt", "num_gpus": 0.5},
                           "classifiers": {"vehicle": {"weights": "v.pt", "resources": {"edge": 1}}}}, env={})
    assert unmet_resources(config, {"CPU": 2.0}, gpu_available=False) == [
        "detector.num_gpus: 0.5 asked of each detector replica; this machine's Ray has no GPU (Serve would wait "
        "for it for ever)",
        "classifiers.vehicle.resources.edge: 1 asked of each classifier-vehicle replica; this machine's Ray has no "
        "edge (Serve would wait for it for ever)"]
    assert unmet_resources(config, {"CPU": 2.0, "GPU": 1.0, "edge": 1.0}, gpu_available=True) == []
    assert unmet_resources(parse_config({}, env={}), {"CPU": 2.0}, gpu_available=False) == []  # auto: none asked
    # some, but less than the replicas take together
    two = parse_config({"detector": {"weights": "d.pt", "num_gpus": 1, "replicas": 2}}, env={})
    assert unmet_resources(two, {"CPU": 2.0, "GPU": 1.0}, gpu_available=True) == [
        "detector.num_gpus 1 × 2 detector replicas = 2 GPU asked; this machine's Ray has 1 (Serve would wait for "
        "the rest for ever)"]
    both = parse_config({"detector": {"weights": "d.pt", "num_gpus": 1},
                         "classifiers": {"vehicle": {"weights": "v.pt", "num_gpus": 1}}}, env={})
    said = unmet_resources(both, {"CPU": 2.0, "GPU": 1.0}, gpu_available=True)
    assert len(said) == 1 and "detector.num_gpus" in said[0] and "classifiers.vehicle.num_gpus" in said[0], said
    assert unmet_resources(both, {"CPU": 2.0, "GPU": 2.0}, gpu_available=True) == []


def test_a_private_ray_is_given_the_cpus_the_graph_reserves_under_a_containers_cpu_quota(monkeypatch):
    """Under ``docker run --cpus=1`` on a 2-core host Ray gives itself 1 CPU (the quota) while
    `os.cpu_count` says 2: compared with the cores, the graph's 1.25 CPUs fitted, Ray was started
    with its own 1 and `percept run` hung, the decoder never placed."""
    import ray._private.utils

    from deployments import graph
    from pipeline.config import parse_config

    config = parse_config({}, env={})
    assert 1 < graph.logical_cpus(config) <= 2
    monkeypatch.setattr(graph.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(ray._private.utils, "get_num_cpus", lambda *a, **k: 1)
    assert graph.ray_cpus_for(config) == 2
    monkeypatch.setattr(ray._private.utils, "get_num_cpus", lambda *a, **k: 4)
    assert graph.ray_cpus_for(config) is None  # (enough: Ray's own count)


def test_every_deployment_stops_without_serves_two_second_first_wait():
    """Serve waits ``graceful_shutdown_wait_loop_s`` (default 2 s) before a stopping replica
    first looks for requests still ongoing: every deployment `percept build` writes (and `percept
    run` binds) sets it to 0.25 s, so a stop, a redeploy and a scale-down take ~2 s less; ongoing
    requests are still waited for, up to ``graceful_shutdown_timeout_s``."""
    from deployments.graph import SHUTDOWN_WAIT_LOOP_S

    built = yaml.safe_load(percept_build("-c", "configs/example.yaml"))
    (app,) = built["applications"]
    loops = {d["name"]: d.get("graceful_shutdown_wait_loop_s") for d in app["deployments"]}
    assert {"api", "decoder", "detector", "classifier-vehicle", "classifier-pedestrian"} <= set(loops), loops
    assert SHUTDOWN_WAIT_LOOP_S == 0.25 and set(loops.values()) == {0.25}, loops


def _manifest_tree(tmp_path, config: dict):
    """A copy of what scripts/kuberay-manifest.py reads and writes, with ``config`` as
    configs/kuberay.yaml (the project's packages linked: `python -m cli` runs from there)."""
    import shutil

    for rel in ("scripts/kuberay-manifest.py", "deploy/kuberay/rayservice.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "kuberay.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for package in ("cli", "pipeline", "deployments"):
        (tmp_path / package).symlink_to(REPO / package)
    return tmp_path / "deploy" / "kuberay" / "rayservice.yaml"


def test_make_kuberay_refuses_a_password_written_inline(tmp_path):
    """`make kuberay` kept `percept build`'s stderr unless the build failed: its warning of a
    password written inline went unseen, and the password went into the committed manifest
    (exit 0). The warning is passed on, and nothing is written (exit 1), --check too; a config of
    ``${VAR}``s is written as before."""
    import subprocess
    import sys

    base = yaml.safe_load(KUBERAY_CONFIG.read_text())
    inline_redis = {**base, "redis": {**base["redis"], "password": "hunter2-inline"}}
    inline_camera = {**base, "security": {"allow_inline_credentials": True},
                     "cameras": [{**base["cameras"][0], "url": "rtsp://viewer:camSecret99@rtsp:8554/traffic"},
                                 *base["cameras"][1:]]}
    for case, config, secret, field in (("redis", inline_redis, "hunter2-inline", "redis.password"),
                                        ("camera", inline_camera, "camSecret99", "cameras[0].url (camera 'traffic')")):
        for check in ([], ["--check"]):
            tree = tmp_path / f"{case}{len(check)}"
            manifest = _manifest_tree(tree, config)
            before = manifest.read_text()
            out = subprocess.run([sys.executable, str(tree / "scripts" / "kuberay-manifest.py"), *check],
                                 capture_output=True, text=True, timeout=300)
            assert out.returncode == 1, (case, check, out.stderr)
            assert f"percept build: warning: {field} holds its password as written" in out.stderr, out.stderr
            assert "deploy/kuberay/rayservice.yaml: not written: a password is written inline" in out.stderr
            assert secret not in out.stderr and manifest.read_text() == before, (case, check)
    # a config of ${VAR}s: rewritten as before (its serveConfigV2 replaced with the build's)
    tree = tmp_path / "clean"
    manifest = _manifest_tree(tree, {**base, "cameras": base["cameras"][:1]})
    out = subprocess.run([sys.executable, str(tree / "scripts" / "kuberay-manifest.py")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "updated deploy/kuberay/rayservice.yaml" in out.stderr, out.stderr
    serve = yaml.safe_load(yaml.safe_load(manifest.read_text())["spec"]["serveConfigV2"])
    assert [c["id"] for c in serve["applications"][0]["args"]["config"]["cameras"]] == ["traffic"]
