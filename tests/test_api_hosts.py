"""The camera API answers only requests naming a host it knows (`pipeline/api_hosts.py`,
`security.api_hosts`): a web page whose own name was pointed at this address (DNS rebinding)
added cameras and read snapshots from the operator's browser. In-process app on a real
redis-server (as test_api_input.py); the rule alone as pure logic."""

from __future__ import annotations

import pytest

from pipeline.api_hosts import host_name, host_refused
from pipeline.config import ConfigError, parse_config

from .test_api_input import api_app


@pytest.mark.parametrize("header, name", [("127.0.0.1:8000", "127.0.0.1"), ("[::1]:8000", "::1"), ("[::1]", "::1"),
                                          ("Cams.Example.ORG.:443", "cams.example.org"), ("gpu-box", "gpu-box"),
                                          ("::1", "::1")])
def test_a_host_headers_name(header, name):
    assert host_name(header) == name


def test_addresses_localhost_and_listed_names_are_answered_others_refused():
    for header in ("127.0.0.1:8000", "10.1.2.3", "[::1]:8000", "[fe80::1]:80", "localhost:8000", "app.localhost", None, ""):
        assert host_refused(header, []) is None, header
    refused = host_refused("rebind.attacker.example:8000", ["gpu-box", "*.cams.example.org"])
    assert refused.startswith("Host 'rebind.attacker.example' is not a name this API answers to: add it to "
                              "security.api_hosts"), refused
    assert host_refused("gpu-box:8000", ["gpu-box"]) is None and host_refused("GPU-BOX", ["gpu-box"]) is None
    assert host_refused("a.cams.example.org", ["*.cams.example.org"]) is None
    assert host_refused("cams.example.org", ["*.cams.example.org"]) is not None  # (its subdomains only)
    assert host_refused("evilcams.example.org", ["*.cams.example.org"]) is not None
    assert host_refused("anything.example", ["*"]) is None


def test_api_hosts_takes_host_names_only():
    assert parse_config({"security": {"api_hosts": ["GPU-Box.", "*.Example.org", "*"]}}).security.api_hosts == \
        ["gpu-box", "*.example.org", "*"]
    for bad in ("http://gpu-box", "gpu-box:8000", "a b", "*example.org", ""):
        with pytest.raises(ConfigError) as err:
            parse_config({"security": {"api_hosts": [bad]}})
        assert "security.api_hosts" in str(err.value) and "is no host name" in str(err.value), err.value


def test_a_request_naming_an_unlisted_host_changes_nothing_and_reads_nothing(redis_server, monkeypatch):
    from fastapi.testclient import TestClient

    with api_app(redis_server.url, "apihost", monkeypatch, security={"api_hosts": ["gpu-box"]}) as app, \
            TestClient(app, base_url="http://rebind.attacker.example:8000") as api:
        evil = {"Host": "rebind.attacker.example:8000", "Origin": "http://rebind.attacker.example:8000"}
        r = api.post("/cameras", json={"id": "rebound", "url": "rtsp://203.0.113.5/x"}, headers=evil)
        assert r.status_code == 400 and "security.api_hosts" in r.json()["detail"], r.text
        for path in ("/cameras", "/", "/status", "/cameras/rebound/snapshot.jpg"):
            assert api.get(path, headers=evil).status_code == 400, path
        assert redis_server.client().hgetall("apihost:cameras") == {}
        for host in ("gpu-box:8000", "127.0.0.1:8000", "localhost"):  # listed, an address, localhost
            r = api.post("/cameras", json={"id": "gate", "url": "rtsp://cam.local/s"}, headers={"Host": host})
            assert r.status_code == 201, (host, r.text)
        assert [c["id"] for c in api.get("/cameras", headers={"Host": "gpu-box"}).json()] == ["gate"]


def test_percept_run_bound_on_every_interface_answers_to_the_name_it_prints():
    """`percept run` with http.host 0.0.0.0 prints http://<this machine's name>:8000/ as the live
    view's address: that name is answered, where the default bind (127.0.0.1) adds none."""
    from cli.run import ingress_line
    from pipeline.api_hosts import with_own_name

    everywhere = with_own_name(parse_config({"http": {"host": "0.0.0.0"}, "security": {"api_hosts": ["gpu-box"]}}))
    printed = ingress_line(everywhere).split("live view http://", 1)[1].split("/", 1)[0]
    assert host_refused(printed, everywhere.security.api_hosts) is None, (printed, everywhere.security.api_hosts)
    assert everywhere.security.api_hosts[0] == "gpu-box"
    assert with_own_name(parse_config({})).security.api_hosts == []
    named = with_own_name(parse_config({"http": {"host": "GPU-Box"}}))  # (a name it binds and prints: answered too)
    printed = ingress_line(named).split("live view http://", 1)[1].split("/", 1)[0]
    assert named.security.api_hosts == ["gpu-box"] and host_refused(printed, named.security.api_hosts) is None
