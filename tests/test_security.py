"""Redis AUTH and TLS on real redis-servers; credentials never leak into output."""

import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import parse_config
from pipeline.publish import Publisher
from pipeline.redis_server import EmbeddedRedis, free_port
from pipeline.streams import StreamKeys, redis_from_config
from pipeline.subscribe import Subscriber

from .test_publish import result
from .waiting import wait_for

KEYS = StreamKeys("sec")
REPO = Path(__file__).resolve().parents[1]


def roundtrip(redis_cfg):
    client = redis_from_config(redis_cfg)
    pub = Publisher(client, keys=KEYS, maxlen=100).start()
    pub.publish(result(1))
    assert pub.flush(5)
    pub.close()
    (msg,) = Subscriber(client, KEYS, ["cam"], start="0", block_ms=100).messages(limit=1)
    return msg.payload


def test_auth_password_from_environment(tmp_path):
    with EmbeddedRedis(tmp_path / "r", password="Auth-Pw-42") as server:
        cfg = parse_config({"redis": {"url": server.url, "password": "${REDIS_PW}"}}, env={"REDIS_PW": "Auth-Pw-42"})
        assert roundtrip(cfg.redis)["seq"] == 1


def test_the_private_redis_servers_password_is_not_on_its_command_line(tmp_path, monkeypatch):
    """Every local user reads a process's command line (``ps``; redis-server overwrites its own
    with a title once it runs, not before): the private redis-server takes its password on its
    stdin. One with spaces, quotes and a backslash works as it is; a restart (`revive`) takes it
    the same way."""
    import redis

    import pipeline.redis_server as module

    started, popen = [], subprocess.Popen
    monkeypatch.setattr(module.subprocess, "Popen", lambda args, **kw: (started.append(args), popen(args, **kw))[1])
    password = 'Pw with "quotes" \\ and spaces'
    with EmbeddedRedis(tmp_path / "r", password=password) as server:
        for _ in range(2):
            assert started and not any("Pw with" in arg or "requirepass" in arg for arg in started[-1]), started[-1]
            assert server.client().ping()
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(port=server.port).ping()
            server.proc.kill()
            server.proc.wait()
            assert server.revive().startswith("killed by signal")


def test_wrong_password_is_a_clear_error_without_the_password(tmp_path):
    with EmbeddedRedis(tmp_path / "r", password="Auth-Pw-42") as server:
        config = tmp_path / "c.yaml"
        config.write_text(f"redis: {{url: '{server.url}', password: Not-The-Pw-7}}\n")
        out = subprocess.run([sys.executable, "-m", "cli", "subscribe", "cam", "-c", str(config),
                              "--count", "1"], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert out.returncode == 3
        # (said as every other command says it: it was `redis redis://…: invalid username-password pair`)
        assert "percept: redis refused our credentials: " in out.stderr and "invalid" in out.stderr.lower(), out.stderr
        assert "Not-The-Pw-7" not in out.stderr + out.stdout


def test_a_wrong_password_is_no_outage_for_top_nor_the_api_client(tmp_path, capsys):
    """redis-py makes a refused password a connection error: `percept top` said "unreachable —
    retrying" forever. It exits 3 saying Redis refused the credentials, without them."""
    from cli.main import main
    from pipeline.streams import redis_unavailable

    with EmbeddedRedis(tmp_path / "r", password="Auth-Pw-42") as server:
        wrong = f"redis://:Not-The-Pw-7@127.0.0.1:{server.port}/0"
        assert main(["top", "--once", "--redis", wrong]) == 3
        err = capsys.readouterr().err
        assert "redis refused our credentials" in err and "unreachable" not in err, err
        assert "Not-The-Pw-7" not in err
        import redis

        with pytest.raises(redis.AuthenticationError) as refused:
            redis.Redis.from_url(wrong).ping()
        assert not redis_unavailable(refused.value)


def test_percept_run_says_redis_refused_its_credentials_not_that_it_cannot_reach_it(tmp_path, capsys):
    """`percept run` checks its Redis at start: a wrong password was reported as "redis.url:
    cannot reach …"."""
    from contextlib import ExitStack

    import redis

    from cli.run import redis_for

    with EmbeddedRedis(tmp_path / "r", password="Auth-Pw-42") as server, ExitStack() as stack:
        cfg = parse_config({"redis": {"url": server.url, "password": "Not-The-Pw-7"}, "state_dir": str(tmp_path / "s")},
                           env={})
        with pytest.raises(redis.AuthenticationError):
            redis_for(cfg, stack)  # (`cli.main` says: redis refused our credentials, exit 3)


def tls_answers(proc: subprocess.Popen, port: int, ca: Path) -> bool:
    """The server completes a TLS handshake (certificate checked against ``ca``) and answers a
    PING (PONG, or NOAUTH before AUTH): it is ready."""
    if proc.poll() is not None:
        pytest.fail(f"redis-server exited ({proc.returncode}) before answering over TLS")
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        conn.sendall(b"PING\r\n")
        return conn.recv(64).startswith((b"+PONG", b"-NOAUTH"))


@pytest.fixture()
def tls_redis(tmp_path):
    """redis-server with TLS only (Debian builds it with TLS), certificates made by openssl."""
    d = tmp_path
    def sh(*cmd):
        subprocess.run(cmd, check=True, capture_output=True, cwd=d)
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
       "-days", "2", "-subj", "/CN=percept-test-ca")
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
       "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    sh("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
       "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
                             "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no", "--save", "",
                             "--requirepass", "Tls-Pw-1"], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: tls_answers(proc, port, d / "ca.crt"), 30, f"redis-server answering over TLS on port {port}")
    yield port, d / "ca.crt"
    proc.terminate()
    proc.wait(5)


def test_tls_with_ca_file(tls_redis):
    port, ca = tls_redis
    cfg = parse_config({"redis": {"url": f"rediss://127.0.0.1:{port}/0", "password": "Tls-Pw-1",
                                  "tls_ca_file": str(ca)}}, env={})
    assert roundtrip(cfg.redis)["camera"] == "cam"  # the fixture waited until the server answers over TLS


def test_a_ca_file_that_is_not_there_is_named_not_waited_out_as_an_outage(tmp_path, capsys):
    """redis-py said "Error 2 connecting … No such file or directory" on every try: `run` gave
    exit 3 naming redis.url, `top` and `subscribe` waited it out as an outage, replicas too."""
    from cli.main import main
    from pipeline.config import ConfigError

    gone = tmp_path / "ca.crt"
    cfg = parse_config({"redis": {"url": "rediss://127.0.0.1:6380/0", "tls_ca_file": str(gone)}}, env={})
    with pytest.raises(ConfigError) as info:
        redis_from_config(cfg.redis)
    assert info.value.errors == [f"redis.tls_ca_file: no such file {str(gone)!r} (the CA bundle that verifies the "
                                 "rediss:// server, on the machine that connects)"]
    config = tmp_path / "c.yaml"
    config.write_text(f"redis: {{url: 'rediss://127.0.0.1:6380/0', tls_ca_file: '{gone}'}}\n")
    assert main(["subscribe", "cam", "-c", str(config), "--timeout", "1"]) == 2
    assert f"redis.tls_ca_file: no such file {str(gone)!r}" in capsys.readouterr().err
    with pytest.raises(ConfigError) as info:  # a ${VAR} URL resolved to plain redis://: TLS asked for, not used
        redis_from_config(cfg.redis.model_copy(update={"url": "redis://127.0.0.1:6380/0"}))
    assert info.value.errors[0].startswith("redis.tls_ca_file: only with a rediss:// URL"), info.value.errors
    with pytest.raises(ConfigError) as info:
        redis_from_config(cfg.redis.model_copy(update={"tls_ca_file": str(tmp_path)}))
    assert info.value.errors[0].startswith(f"redis.tls_ca_file: not a file {str(tmp_path)!r}"), info.value.errors


def test_tls_server_refuses_an_unverified_certificate(tls_redis):
    import redis

    port, _ = tls_redis
    cfg = parse_config({"redis": {"url": f"rediss://127.0.0.1:{port}/0", "password": "Tls-Pw-1"}}, env={})
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis_from_config(cfg.redis).ping()


def test_the_api_refuses_a_body_above_a_megabyte_before_reading_it():
    """The ingress app's own middleware (no Serve needed for it): 413 on a body above 1 MiB, a
    camera with its zones being a few kilobytes; smaller requests go on to the routes."""
    from fastapi.testclient import TestClient

    from deployments.api import MAX_BODY_BYTES, app

    client = TestClient(app, base_url="http://127.0.0.1")  # (an address: no name to list in security.api_hosts)
    big = client.post("/cameras", content=b"{" + b" " * MAX_BODY_BYTES + b"}",
                      headers={"content-type": "application/json"})
    assert big.status_code == 413 and big.json() == {"detail": "request body above 1048576 bytes"}
    assert client.get("/no-such-route").status_code == 404
