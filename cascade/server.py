"""The gRPC server bootstrap every service uses: one call builds, binds and starts it, and one
declaration (StageServer) gives each service its `start` and its `python -m` entry point.

A server gets health checking (grpc.health.v1), reflection when asked, RPC metrics on its own HTTP
port, load shedding (maximum_concurrent_rpcs), TLS or mutual TLS with the caller check
(cascade.tls, cascade.callers) and graceful shutdown: health NOT_SERVING first, then
server.stop(grace) lets in-flight calls finish while new ones are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry

from cascade import profiles, topology
from cascade.artifacts import ArtifactError
from cascade.callers import GATEWAY_IDENTITY, CallerCheck
from cascade.candidates import Candidates, InvalidField, check_positions, from_proto
from cascade.config import Secret, Setting, SettingsError, explain_settings, format_settings
from cascade.config import assignments as config_assignments
from cascade.data.schema import DataError
from cascade.files import write_atomic
from cascade.guard import QueueGuard
from cascade.malformed import MalformedRequests
from cascade.reload import Reloader
from cascade.telemetry import (
    MetricsInterceptor,
    MetricsServer,
    RpcMetrics,
    new_registry,
    start_metrics_server,
)
from cascade.tls import ServerCertificates, TlsError, is_loopback
from cascade.v1 import common_pb2
from cascade.warmup import WarmUp, warm_up, warmup_counter

log = logging.getLogger(__name__)

AddServicers = Callable[[grpc.Server], Iterable[str]]  # adds servicers, returns their full names


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"  # "0.0.0.0" in a container; also the metrics server's address
    port: int = 0  # gRPC port; 0 = ephemeral
    metrics_port: int = 0  # Prometheus /metrics port; 0 = ephemeral, -1 = off
    max_workers: int = 4  # a small pool beat larger ones (one core per process)
    max_message_bytes: int = 4 * 1024 * 1024  # both directions; 2,000 candidates are ~30 KB
    maximum_concurrent_rpcs: int = 64  # more fail at once: RESOURCE_EXHAUSTED; 0 = no cap
    # Calls allowed to wait for a worker; one more is refused at once with a pushback (0 = off).
    max_queued: int = 16
    grace_s: float = 5.0  # how long stop() lets in-flight calls finish
    shutdown_delay_s: float = 0.0  # NOT_SERVING before refusing calls, so balancers notice
    max_connection_age_s: float = 300.0  # then clients reconnect, finding new replicas; 0 = off
    reload_interval_s: float = 2.0  # poll the bundle name for a newly published version; 0 = off
    # When set, the bound ports are written here as JSON once serving: a supervisor that asked
    # for port 0 learns the port the server holds (no probe-then-rebind race).
    port_file: str = ""
    # Transport security (PEM files, e.g. a mounted Kubernetes Secret; re-read when they change).
    tls_cert: Path | None = None  # with tls_key: TLS on the gRPC port
    tls_key: Path | None = None  # the private key of tls_cert
    tls_client_ca: Path | None = None  # mutual TLS: only clients with a certificate it signed
    # HTTPS on the metrics port (PEM files, e.g. the gRPC port's own pair; read at start).
    metrics_tls_cert: Path | None = None
    metrics_tls_key: Path | None = None
    # Under mutual TLS, the client certificate common names whose stage calls are accepted.
    allowed_callers: tuple[str, ...] = (GATEWAY_IDENTITY,)
    caller_token: Secret = Secret("")  # without mutual TLS: stage calls must carry this token
    # Plaintext on an address other machines reach is refused unless this says so explicitly.
    insecure: bool = False
    reflection: bool = False  # gRPC server reflection: the local stack turns it on
    probe_port: int = -1  # a plaintext port with only grpc.health.v1 (kubelet probes under TLS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "caller_token", Secret(self.caller_token))
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in [-1, 65535], got {self.metrics_port}")
        if self.max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, got {self.max_queued}")
        if self.max_workers < 1 or self.max_message_bytes < 1 or self.maximum_concurrent_rpcs < 0:
            raise ValueError(
                "max_workers, max_message_bytes must be >= 1, maximum_concurrent_rpcs >= 0"
            )
        if min(self.grace_s, self.shutdown_delay_s, self.max_connection_age_s) < 0:
            raise ValueError("grace_s, shutdown_delay_s and max_connection_age_s must be >= 0")
        if self.reload_interval_s < 0:
            raise ValueError(f"reload_interval_s must be >= 0, got {self.reload_interval_s}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if (self.metrics_tls_cert is None) != (self.metrics_tls_key is None):
            raise ValueError("metrics_tls_cert and metrics_tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if not -1 <= self.probe_port <= 65535:
            raise ValueError(f"probe_port must be in [-1, 65535], got {self.probe_port}")
        if self.tls_cert is None and not self.insecure and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host} is reachable from other machines: set tls_cert and tls_key "
                "(tls_client_ca for mutual TLS), or insecure = true to serve plaintext on purpose"
            )

    @classmethod
    def of(cls, service: str, **settings) -> ServerSettings:
        """A service's defaults: its gRPC and metrics ports from cascade.topology."""
        ports = topology.spec(service)
        return cls(port=ports.port, metrics_port=ports.metrics_port, **settings)

    def security(self) -> str:
        """The transport mode in words, for the start-up log."""
        if self.tls_client_ca is not None:
            return "mutual TLS"
        if self.tls_cert is not None:
            return "TLS"
        return "plaintext (insecure)" if self.insecure else "plaintext (loopback only)"


class BindError(OSError):
    """A server could not bind its address, usually because the port is taken."""


@dataclass
class RunningServer:
    """A started server. `port` and `metrics_port` are the bound ones (real even when asked 0)."""

    stage: str
    server: grpc.Server
    port: int
    metrics_port: int | None
    registry: CollectorRegistry
    health: health.HealthServicer
    services: tuple[str, ...]
    settings: ServerSettings
    _metrics_server: MetricsServer | None
    _pool: futures.ThreadPoolExecutor
    reloader: Reloader | None = None
    certificates: ServerCertificates | None = None  # TLS files, re-read on change
    probe: grpc.Server | None = None  # the plaintext health-only server, when asked
    probe_port: int | None = None
    service: Any = None  # the servicer StageServer.start built
    malformed: MalformedRequests | None = None  # unparseable requests: counted, summarised
    _stop_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _stopped: bool = False

    @property
    def address(self) -> str:
        return f"{_host(self.settings.host)}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: health NOT_SERVING, wait shutdown_delay_s, then refuse new calls
        and let in-flight ones finish for up to `grace` seconds (default settings.grace_s)."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            grace = self.settings.grace_s if grace is None else grace
            log.info("%s: stopping (grace %.1f s)", self.stage, grace)
            self.health.enter_graceful_shutdown()
            if self.reloader is not None:
                self.reloader.stop()
            if self.settings.shutdown_delay_s:
                time.sleep(self.settings.shutdown_delay_s)
            self.server.stop(grace).wait()
            if self.probe is not None:
                self.probe.stop(0)
            self._pool.shutdown(wait=False)
            if self._metrics_server is not None:
                self._metrics_server.close()
            if self.malformed is not None:
                self.malformed.close()
            log.info("%s: stopped", self.stage)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped; False if `timeout` passed first."""
        return not self.server.wait_for_termination(timeout)  # gRPC returns "timed out"


def serve(
    stage: str,
    add_servicers: AddServicers,
    settings: ServerSettings | None = None,
    registry: CollectorRegistry | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    reloader: Reloader | None = None,
) -> RunningServer:
    """Build, bind and start `stage`'s server. `registry` may already hold the service's own
    metrics; the RPC metrics are added to it. `reloader` (hot model reload) starts with the
    server and stops with it. Raises BindError naming the port on a clash."""
    settings = ServerSettings() if settings is None else settings
    registry = new_registry() if registry is None else registry
    try:
        certificates = _certificates(settings)
    except TlsError as error:
        raise BindError(f"{stage}: TLS: {error}") from error
    callers = _caller_check(stage, settings)
    malformed = MalformedRequests(stage, registry)
    pool = futures.ThreadPoolExecutor(settings.max_workers, thread_name_prefix=f"{stage}-rpc")
    server = grpc.server(
        pool,
        # The queue guard innermost: an outer interceptor (the gateway's admission) still sees
        # the call end and frees its slot.
        interceptors=[
            MetricsInterceptor(RpcMetrics(stage, registry)),
            *([callers] if callers else []),
            *interceptors,
            QueueGuard(stage, pool, settings.max_queued, registry),
            # Innermost, so an outer interceptor's parser sees a marker, never a raised error.
            malformed,
        ],
        options=_server_options(settings),
        maximum_concurrent_rpcs=settings.maximum_concurrent_rpcs or None,
    )
    services = tuple(add_servicers(server))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *services):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if settings.reflection:
        reflection.enable_server_reflection(
            (*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )

    address = f"{_host(settings.host)}:{settings.port}"
    try:
        if certificates is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, certificates.credentials())
        probe, probe_port = _probe_server(settings, health_servicer)
    except RuntimeError as error:
        pool.shutdown(wait=False)
        raise BindError(
            f"{stage}: cannot bind gRPC port {settings.port} on {settings.host} "
            f"(port already in use?): {error}"
        ) from error
    metrics_server = None
    if settings.metrics_port >= 0:
        try:
            metrics_server = start_metrics_server(
                registry, settings.metrics_port, settings.host, _metrics_tls(settings)
            )
        except OSError as error:
            server.stop(None)
            pool.shutdown(wait=False)
            raise BindError(
                f"{stage}: cannot bind metrics port {settings.metrics_port} on "
                f"{settings.host} (port already in use?): {error}"
            ) from error
    server.start()
    if probe is not None:
        probe.start()
    running = RunningServer(
        stage,
        server,
        port,
        metrics_server.port if metrics_server else None,
        registry,
        health_servicer,
        services,
        settings,
        metrics_server,
        pool,
        reloader,
        certificates,
        probe,
        probe_port,
        malformed=malformed,
    )
    if reloader is not None:
        reloader.start(registry)
    if settings.port_file:
        write_port_file(Path(settings.port_file), running.port, running.metrics_port)
    log.info(
        "%s: serving %s on %s, metrics on port %s; transport %s; %s; reflection %s%s",
        stage,
        ", ".join(services),
        running.address,
        running.metrics_port,
        settings.security(),
        callers.describe() if callers else "no caller check",
        "on" if settings.reflection else "off",
        f"; plaintext health probe on port {probe_port}" if probe else "",
    )
    return running


def write_port_file(path: Path, port: int, metrics_port: int | None) -> None:
    """{"port": ..., "metrics_port": ...}, replaced atomically (a reader sees all or nothing)."""
    write_atomic(path, json.dumps({"port": port, "metrics_port": metrics_port}))


def free_port() -> int:
    """A loopback port free right now. Only for a port that must be known before its process
    starts (a replica list, a probe port, redis-server): servers themselves bind port 0 and
    report what they got (SERVER_PORT_FILE), which no other process can take in between."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_port_file(path: Path) -> tuple[int, int | None] | None:
    """The ports a server wrote with write_port_file, or None while it has not yet."""
    try:
        ports = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return int(ports["port"]), ports["metrics_port"]


@dataclass(frozen=True)
class StageServer:
    """What a service's server.py declares; `start` and `main` do the rest, the same way for all
    five: settings (a bad one: exit 2 naming it), the load, the service, its servicer, health,
    reflection, metrics, hot reload, the port file, signals and graceful shutdown.

    `load(settings)` returns what serving holds (a model, tables, a catalog) and raises
    SettingsError, ArtifactError or DataError when it cannot; `service(settings, loaded,
    registry)` builds the servicer, whose `swap(loaded)` serves a reloaded one. `reload(settings,
    service)` loads for a hot reload when that differs from `load` (it may reuse the old state).
    """

    name: str  # the service's name in cascade.topology: env prefix, metrics label, logs
    settings: type[Any]  # its settings dataclass, with a `server: ServerSettings` field
    load: Callable[[Any], Any]
    service: Callable[[Any, Any, CollectorRegistry], Any]
    register: Callable[[Any, grpc.Server], None]  # the generated add_<Name>Servicer_to_server
    service_name: str  # the full gRPC service name it registers (health, reflection)
    interceptors: Callable[[Any, Any], Sequence[grpc.ServerInterceptor]] = lambda s, service: ()
    reload: Callable[[Any, Any], Any] | None = None
    describe: Callable[[Any, Any], str] | None = None  # one start-up log line about the model
    close: Callable[[Any], None] | None = None  # after the server has stopped
    # Synthetic requests through the loaded models before the port opens (cascade/warmup.py).
    warm_up: WarmUp | None = None

    def add_servicers(self, service: Any) -> AddServicers:
        def add(server: grpc.Server) -> list[str]:
            self.register(service, server)
            return [self.service_name]

        return add

    def reloader(
        self, settings: Any, service: Any, warmed: Callable[[Any], Any] | None = None
    ) -> Reloader:
        """Swaps a newly published bundle into `service` (polls when reload_interval_s > 0),
        passed through `warmed` (the start's warmer) before it serves."""
        reload = self.reload or (lambda settings, _service: self.load(settings))
        warm = warmed or (lambda loaded: loaded)
        return Reloader.for_service(
            self.name, settings, lambda: warm(reload(settings, service)), service.swap
        )

    def warmer(self, settings: Any, registry: CollectorRegistry) -> Callable[[Any], Any]:
        """Warms what `load` returned through a scratch service (its metrics in a registry of
        its own, so real traffic's metrics never see the synthetic requests); returns it."""
        if self.warm_up is None:
            return lambda loaded: loaded
        plan, counter = self.warm_up, warmup_counter(registry)

        def warmed(loaded: Any) -> Any:
            scratch = self.service(settings, loaded, new_registry(process_metrics=False))
            warm_up(self.name, scratch, plan, counter)
            return loaded

        return warmed

    def start(
        self, settings: Any, loaded: Any = None, registry: CollectorRegistry | None = None
    ) -> RunningServer:
        """A running server (tests pass what `load` would return); the servicer is
        `running.service`."""
        registry = new_registry() if registry is None else registry
        loaded = self.load(settings) if loaded is None else loaded
        warmed = self.warmer(settings, registry)
        service = self.service(settings, warmed(loaded), registry)
        reloader = self.reloader(settings, service, warmed)
        interceptors = self.interceptors(settings, service)
        running = serve(
            self.name,
            self.add_servicers(service),
            settings.server,
            registry,
            interceptors,
            reloader,
        )
        running.service = service
        return running

    def resolve(
        self,
        config: Path | None = None,
        assignments: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> tuple[Any, list[Setting]]:
        """The service's settings from every layer: defaults, the profile files
        CASCADE_PROFILE_FILE lists, `config`, the environment, `assignments` (KEY=VALUE, the
        command line); with the layer each value came from. SettingsError names what is bad."""
        environ = os.environ if environ is None else environ
        return explain_settings(
            self.settings,
            config,
            topology.spec(self.name).env_prefix,
            overrides=config_assignments(assignments),
            environ=environ,
            profiles=profiles.layers(profiles.from_environment(environ), self.name),
        )

    def main(self, argv: Sequence[str] | None = None) -> int:
        """`python -m <server module> [--config FILE] [--set KEY=VALUE ...]`: serve until
        SIGTERM or SIGINT (`--print-settings`: print every resolved setting and its source)."""
        parser = argparse.ArgumentParser(description=f"the {self.name} gRPC service")
        parser.add_argument("--config", type=Path, help="JSON or TOML settings file")
        parser.add_argument(
            "--set",
            dest="assignments",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a setting on the command line, the top layer (e.g. server.port=50051)",
        )
        parser.add_argument(
            "--print-settings",
            action="store_true",
            help="print each resolved setting, its value and the layer it came from, and exit",
        )
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        try:
            settings, rows = self.resolve(args.config, args.assignments)
            if args.print_settings:
                print(format_settings(rows))
                return 0
            loaded = self.load(settings)
        except (SettingsError, ArtifactError, DataError) as error:
            print(f"{self.name}: refusing to start: {error}", file=sys.stderr)
            return 2
        try:
            running = self.start(settings, loaded)
        except BindError as error:
            print(f"{self.name}: {error}", file=sys.stderr)
            return 1
        if self.describe is not None:
            log.info("%s: %s", self.name, self.describe(settings, running.service))
        try:
            wait_for_stop_signal(self.name)
        finally:
            running.stop()
            if self.close is not None:
                self.close(running.service)
        return 0


def wait_for_stop_signal(name: str) -> None:
    """Block until SIGTERM or SIGINT (the previous handlers come back after). Main thread only."""
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame) -> None:
        log.info("%s: received %s", name, signal.Signals(signum).name)
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop_requested.wait(0.5):  # a timed wait keeps signal delivery prompt
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def invalid_argument(context: grpc.ServicerContext, field: str, description: str) -> NoReturn:
    """Abort the call with INVALID_ARGUMENT and a BadRequest.FieldViolation naming `field`
    (read it on the client with cascade.client.field_violations)."""
    _abort_naming(context, code_pb2.INVALID_ARGUMENT, field, description)


def resource_exhausted(context: grpc.ServicerContext, field: str, description: str) -> NoReturn:
    """Abort with RESOURCE_EXHAUSTED (a full table, not a bad value) and a FieldViolation."""
    _abort_naming(context, code_pb2.RESOURCE_EXHAUSTED, field, description)


def _abort_naming(
    context: grpc.ServicerContext, code: int, field: str, description: str
) -> NoReturn:
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(code=code, message=f"{field}: {description}", details=[detail])
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable: abort_with_status raises")  # for type checkers


def read_candidates(
    context: grpc.ServicerContext, message: common_pb2.CandidateList, maximum: int
) -> Candidates:
    """A request's candidate list as arrays; INVALID_ARGUMENT naming the field when its arrays
    disagree (in length, or a channel position without a channel) or when it holds more than
    `maximum` candidates."""
    try:
        candidates = from_proto(message)
        check_positions(candidates)
    except InvalidField as error:
        invalid_argument(context, error.field, error.description)
    if len(candidates.item_ids) > maximum:
        invalid_argument(
            context, "candidates", f"{len(candidates.item_ids)} candidates > maximum {maximum}"
        )
    return candidates


def _certificates(settings: ServerSettings) -> ServerCertificates | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return ServerCertificates(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


def _metrics_tls(settings: ServerSettings) -> tuple[Path, Path] | None:
    if settings.metrics_tls_cert is None or settings.metrics_tls_key is None:
        return None
    return settings.metrics_tls_cert, settings.metrics_tls_key


def _caller_check(stage: str, settings: ServerSettings) -> CallerCheck | None:
    """Stage calls only from the gateway: by certificate under mutual TLS, else by token when
    one is set; neither (the loopback local stack) leaves the port open to local callers."""
    mutual = settings.tls_client_ca is not None
    if not mutual and not settings.caller_token:
        return None
    return CallerCheck(stage, mutual, settings.allowed_callers, settings.caller_token)


def _probe_server(
    settings: ServerSettings, servicer: health.HealthServicer
) -> tuple[grpc.Server | None, int | None]:
    """A plaintext server with only the health service (it shares the main server's status, so
    NOT_SERVING on shutdown shows on both): the kubelet's gRPC probe cannot speak TLS."""
    if settings.probe_port < 0:
        return None, None
    probe = grpc.server(
        futures.ThreadPoolExecutor(1, thread_name_prefix="probe"),
        options=[("grpc.so_reuseport", 0)],
    )
    health_pb2_grpc.add_HealthServicer_to_server(servicer, probe)
    port = probe.add_insecure_port(f"{_host(settings.host)}:{settings.probe_port}")
    return probe, port


def _server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    options = [
        ("grpc.so_reuseport", 0),  # a second server on the same port fails instead of sharing it
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        # Accept the keepalive pings cascade.client sends (every 20 s by default, even when idle).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ]
    if settings.max_connection_age_s:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(max(settings.grace_s, 1.0) * 1000)),
        ]
    return options


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
