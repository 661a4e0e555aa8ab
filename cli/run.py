"""`percept run`: the graph for the cameras of a config file, with a live line per camera.

Before Ray starts, every model is loaded once (a config error exits 2) and Redis is reached (or
a private redis-server started). The status monitor rides out a Redis outage: one line when it
goes, one when it is back; the graph keeps buffering results meanwhile."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pipeline.config import (
    CONFIG_ERROR_EXIT_CODE,
    ConfigError,
    PerceptConfig,
    load_config,
)
from pipeline.redact import redact, redact_url
from pipeline.api_hosts import all_interfaces, with_own_name

from .ray_watch import ClusterGcs, RayDaemons
from .common import EXIT_UNAVAILABLE, RedisOutage, fail, number_arg, say, state_dir_error
from .run_console import monitor_cameras, registered
from .terminate import StartupTermination, while_ray_lives


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the colour codes of Ray's errors (an actor's name)


class Unavailable(RuntimeError):
    pass


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="run the graph for the cameras in a config file")
    run.add_argument("-c", "--config", required=True)
    run.add_argument("--address", type=ray_address_arg,
                     help="Ray cluster address, HOST:PORT or ray://HOST:PORT (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--duration", type=number_arg(float, 0.1), help="stop after this many seconds")
    run.add_argument("--quiet", action="store_true", help="no live status lines")
    run.set_defaults(func=lambda args: run_graph(
        load_config(args.config), address=args.address, duration=args.duration, monitor=not args.quiet,
        verbose=args.verbose, source=args.config))


class PrivateRedis:
    """Keeps `percept run`'s private redis-server up: started again (from its data) when its
    process ends while the graph runs (the OOM killer, a kill), tried at most every 10 s."""

    def __init__(self, server: Any):
        self.server = server
        self.next_try = 0.0

    def keep_up(self) -> None:
        from pipeline.redis_server import RedisServerError

        if time.monotonic() < self.next_try:
            return
        try:
            why = self.server.revive()
        except RedisServerError as exc:
            self.next_try = time.monotonic() + 10.0
            say(f"private redis-server did not start again: {exc}; trying again in 10 s")
            return
        if why:
            say(f"private redis-server {why}: started again on {self.server.url} with its data")


def redis_for(config: PerceptConfig, stack: ExitStack, keeper: list[PrivateRedis] | None = None) -> PerceptConfig:
    """Use the configured Redis, or start a private redis-server for this run (its `PrivateRedis`
    appended to ``keeper``)."""
    import redis

    from pipeline.redis_server import EmbeddedRedis, RedisServerError
    from pipeline.streams import CREDENTIALS_REFUSED, database_missing, redis_from_config

    state = Path(config.state_dir)
    if config.redis.url is None:
        try:
            server = stack.enter_context(EmbeddedRedis(state / "redis", password=config.redis.password))
        except RedisServerError as exc:  # not installed, cannot start
            raise Unavailable(f"redis.url is not set and the private redis-server did not start: {exc}") from None
        config = config.model_copy(update={"redis": config.redis.model_copy(update={"url": server.url})})
        stack.callback(lambda: (state / "redis.url").unlink(missing_ok=True))
        (state / "redis.url").write_text(server.url + "\n")
        if keeper is not None:
            keeper.append(PrivateRedis(server))
        say(f"private redis-server at {server.url} (data in {state / 'redis'})")
    try:
        redis_from_config(config.redis).ping()
    except CREDENTIALS_REFUSED:
        raise  # said as such (`cli.main`), not as "cannot reach"
    except redis.RedisError as exc:
        if missing := database_missing(exc):
            raise ConfigError([f"redis.url: {redact_url(config.redis.url)}: {missing}"]) from None
        raise Unavailable(f"redis.url: cannot reach {redact_url(config.redis.url)}: {redact(str(exc))}") from None
    return config


def start_ray(address: str | None, *, verbose: bool,
              num_cpus: int | None = None) -> str:
    """A private local Ray unless an address is given (with ``num_cpus`` logical CPUs when the
    graph reserves more than the machine has cores). Replica output stays out of the console
    unless ``verbose`` (it goes to the replica log files)."""
    import ray

    from deployments.graph import replica_env

    # "local" starts a private Ray even when a `ray start` cluster runs on this machine.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    problem = None if address in ("local", "auto") else ray_address_problem(address)
    if problem:  # (ray.init would retry an address nobody answers at for minutes)
        raise Unavailable(f"--address: cannot reach the Ray cluster at {redact_url(address)}: {problem}")
    try:
        ray.init(
            address=address,
            runtime_env={"env_vars": replica_env(os.environ)},  # (no credentials: Ray logs it)
            include_dashboard=False,
            logging_level=logging.INFO if verbose else logging.ERROR,
            log_to_driver=verbose,
            **({"num_cpus": num_cpus} if num_cpus and address == "local" else {}),
        )
    except Exception as exc:
        auth = ("; a cluster with token authentication needs RAY_AUTH_MODE=token and its token "
                "(RAY_AUTH_TOKEN, or ~/.ray/auth_token)" if address != "local" else "")
        raise Unavailable(f"Ray did not start or join {redact_url(address)}: {type(exc).__name__}: "
                          f"{redact(str(exc))[:500]}{auth}") from None
    return address


def _not_host_port(address: str) -> bool:
    host, _, port = address.removeprefix("ray://").rstrip("/").rpartition(":")
    return not host or not port.isdigit()


def ray_address_arg(value: str) -> str:
    """argparse type of ``--address``: ``local``, ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``; else exit 2."""
    if value not in ("local", "auto") and _not_host_port(value):
        raise argparse.ArgumentTypeError(f"not HOST:PORT (or ray://HOST:PORT, local, auto), got {redact_url(value)!r}")
    return value


def _address_form_error(address: str | None) -> str | None:
    """RAY_ADDRESS (when no --address) in a form Ray cannot use: said before anything starts."""
    value = address or os.environ.get("RAY_ADDRESS")
    if value and value not in ("local", "auto") and _not_host_port(value):
        return f"RAY_ADDRESS: not HOST:PORT (or ray://HOST:PORT, local, auto), got {redact_url(value)!r}"
    return None


def ray_address_problem(address: str, timeout_s: float = 5.0) -> str | None:
    """Why nothing answers at a Ray address (``HOST:PORT`` or ``ray://HOST:PORT``), or None."""
    import socket

    if _not_host_port(address):
        return "not HOST:PORT (or ray://HOST:PORT)"
    host, _, port = address.removeprefix("ray://").rstrip("/").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def _quiet_serve(verbose: bool) -> None:
    """Serve (re)configures its driver-side logger at start; keep it to errors unless verbose."""
    if not verbose:
        logging.getLogger("ray.serve").setLevel(logging.ERROR)


def serve_graph(config: PerceptConfig, stack: ExitStack, *, verbose: bool = False, local: bool = True) -> str:
    """Serve started and the graph deployed; returns where the replica log files are: the state
    folder's ``logs`` on a private Ray, each node's own Ray session folder on a cluster (a path
    of this machine would be made, or fail to be, on every node)."""
    import ray
    from ray import serve

    from deployments.graph import build_app, unmet_resources

    _quiet_serve(verbose)
    have = ray.cluster_resources()
    gpu = have.get("GPU", 0) > 0
    if local and (unmet := unmet_resources(config, have, gpu_available=gpu)):  # (a cluster may add nodes)
        raise ConfigError(unmet)
    logs = Path(config.state_dir).resolve() / "logs"
    where = {"logs_dir": str(logs)} if local else {}
    serve.start(
        proxy_location=config.http.proxy_location,
        http_options={"host": config.http.host, "port": config.http.port},
        logging_config=where,
    )
    _quiet_serve(verbose)
    if not local and (problem := _serving_elsewhere(config)):
        raise ConfigError([problem])
    # On exit our application is deleted (its replicas drain); Serve itself stays for whoever
    # else uses the cluster, and a private Ray goes with ray.shutdown. Said before the deploy: one
    # that fails part-way (a classifier that cannot start) or is interrupted (SIGTERM, Ctrl-C
    # while the models load) left the decoders that did start running on a cluster.
    stack.callback(while_ray_lives, serve.delete, "percept")
    serve.run(
        build_app(config, gpu_available=gpu),
        name="percept",
        route_prefix="/",
        logging_config={"enable_access_log": False, **where},
    )
    _quiet_serve(verbose)
    return str(logs) if local else "each node's Ray session folder (logs/serve/)"


def _serving_elsewhere(config: PerceptConfig) -> str | None:
    """A cluster's Serve, left running by an earlier run (or started by another user), keeps the
    HTTP host and port it started with: `serve.start` joins it and ignores ours (at INFO, hidden);
    the console named a port nobody listened on, and a narrower ``http.host`` left the API open
    on every interface. What to change when they differ, else None."""
    from ray.serve.context import _get_global_client

    running = _get_global_client().http_config
    if config.http.proxy_location == "Disabled" or (running.host, running.port) == (config.http.host, config.http.port):
        return None
    return (f"http.host/http.port: {config.http.host}:{config.http.port}, but the cluster's Serve already listens "
            f"on {running.host}:{running.port} (an earlier run left it running; it takes no new HTTP options): set "
            f"http.host: {running.host} and http.port: {running.port}, or stop it first with "
            f"`serve shutdown -y --address <the cluster's dashboard>` (every application on it stops)")


def port_taken(host: str, port: int) -> str | None:
    """Why Serve's proxy could not listen on ``host:port`` here (None: it can): it said so only as
    a Ray traceback in colour codes, ``RuntimeError: Failed to bind to address``."""
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return None  # (a name that does not resolve: Serve's own error says it)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (as a server binds: TIME_WAIT is no use)
        try:
            probe.bind(address)
        except OSError as exc:
            return f"{host}:{port} is in use" if exc.errno == errno.EADDRINUSE else f"{host}:{port}: {exc.strerror}"
    return None


def _read_files_again(config: PerceptConfig) -> None:
    """A new run reads its file cameras again: the marks of files an earlier run read to their
    end (`pipeline.streams.ended_mark`) are cleared."""
    import redis

    from pipeline.streams import StreamKeys, clear_ended, redis_from_config

    client = redis_from_config(config.redis)
    try:
        clear_ended(client, StreamKeys(config.redis.stream_prefix), [c.id for c in config.cameras])
    except redis.RedisError as exc:
        raise Unavailable(f"redis.url: {redact_url(config.redis.url or '')}: {redact(str(exc))}") from None
    finally:
        client.close()


def run_graph(config: PerceptConfig, *, address: str | None, duration: float | None, monitor: bool,
              verbose: bool = False, source: str | None = None, port_option: str = "http.port") -> int:
    """The graph on Ray until the duration ends or a signal; ``source``: the config file (named
    in a config error found now, such as a model file that is missing); ``port_option``: what
    sets the HTTP port, named when it is in use (the demo has no config file)."""
    import ray

    from pipeline.backends.checks import check_models
    from pipeline.streams import StreamKeys, redis_from_config

    with ExitStack() as stack:
        # a SIGTERM while starting unwinds what was started (the private redis-server runs in a
        # session of its own: nothing else stops it); once running, `monitor_cameras` stops cleanly
        # (cli/terminate.py: exit 143 whenever it lands, Ray's own handlers included)
        term = StartupTermination()
        if term.active:
            stack.callback(signal.signal, signal.SIGTERM, term.install())
        try:
            problem = state_dir_error(config.state_dir, "state_dir") or _address_form_error(address)
            if problem:
                raise ConfigError([problem])
            check_models(config)
            local = (address or os.environ.get("RAY_ADDRESS") or "local") == "local"
            if local and config.http.proxy_location != "Disabled" and (
                    taken := port_taken(config.http.host, config.http.port)):
                raise Unavailable(f"{port_option}: {taken} (another percept run, or another service: set "
                                  f"{port_option} to a free one)")
            keeper: list[PrivateRedis] = []
            config = with_own_name(redis_for(config, stack, keeper))
            _read_files_again(config)
        except ConfigError as exc:
            return fail(str(ConfigError(exc.errors, exc.source or source, exc.camera_ids)), CONFIG_ERROR_EXIT_CODE)
        except Unavailable as exc:
            return fail(str(exc), EXIT_UNAVAILABLE)
        from deployments.graph import ray_cpus_for

        term.check()
        stack.callback(while_ray_lives, ray.shutdown, stops_ray=True)  # (also what a ray.init cut short had started)
        try:
            with term.around_ray_init():
                address = start_ray(address, verbose=verbose, num_cpus=ray_cpus_for(config))
        except Unavailable as exc:
            return fail(str(exc), EXIT_UNAVAILABLE)
        try:
            with term.exits_as_terminated():
                logs = serve_graph(config, stack, verbose=verbose, local=address == "local")
        except ConfigError as exc:  # (what it asks of a private Ray that has none of it)
            return fail(str(ConfigError(exc.errors, exc.source or source, exc.camera_ids)), CONFIG_ERROR_EXIT_CODE)
        except Exception as exc:  # a replica that cannot start (model error) fails the deploy
            return fail(f"deployment failed: {ANSI.sub('', redact(str(exc)))[-2000:]}", EXIT_UNAVAILABLE)
        term.check()
        say(f"running {len(config.cameras)} camera(s); streams {config.redis.stream_prefix}:detections:<camera>; "
            f"replica logs in {logs}")
        say(ingress_line(config))
        client = redis_from_config(config.redis)
        outage = RedisOutage(config.redis.url, carry_on_refused=True)
        keys = StreamKeys(config.redis.stream_prefix)
        daemons = RayDaemons.started_here() if address == "local" else RayDaemons([])
        gcs = ClusterGcs.of_this_driver() if address != "local" else ClusterGcs(None)

        def keep_up() -> None:
            if keeper:
                keeper[0].keep_up()
            daemons.check()  # (raises RayGone)
            if (line := gcs.check()) is not None:  # (a cluster's: said, Ray decides)
                print(f"percept: {line}", file=sys.stderr, flush=True)

        return monitor_cameras(client, keys, registered(client, keys, [c.id for c in config.cameras]),
                               duration=duration, show=monitor, outage=outage, keep_up=keep_up)
    return 0


def ingress_line(config: PerceptConfig) -> str:
    """Where a person looks: the live view page (when on) and the camera API, on Serve's proxy."""
    if config.http.proxy_location == "Disabled":
        return "no HTTP ingress (http.proxy_location: Disabled): no live view, no camera API"
    host = config.http.host
    if all_interfaces(host):
        import socket

        host = socket.gethostname()  # bound on every interface: this machine's name reaches it
    base = f"http://{f'[{host}]' if ':' in host else host}:{config.http.port}"
    view = f"live view {base}/  " if config.view.enabled else "live view off (view.enabled: false); "
    return f"{view}camera API {base}/cameras"
