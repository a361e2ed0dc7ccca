"""Per-replica health at the gateway: each stage target resolved into its replicas, one channel
per replica, and outlier ejection of a replica that keeps failing or timing out.

A target is `host:port`, a comma list of them (an `ipv4:` prefix is allowed) or a DNS name, e.g.
`dns:///rank.cascade.svc.cluster.local:50053`, resolved to every address it has (a headless
Service answers with every ready pod). Each call goes to the replica with the fewest calls in
flight, each failure in a row counting as one more (ties round robin): a hung replica's calls
pile up, so it stops getting new ones after a call or two, long before its first deadline expires.
Each replica has its own Breaker: `failures` in a row (errors, deadlines, unanswered health
probes) eject it, so a hung replica costs the few calls that were already on it, not half of all
calls. An ejected replica gets no request: a background prober sends it a
grpc.health.v1 check once per cooldown and takes it back when it answers SERVING. Names are
resolved again every `resolve_interval_s` (new pods join, gone ones are closed); at the same time
the client certificate files are checked, and when they changed (rotation) every replica gets a
new channel built from them (the old channels close one round later, after their calls ended).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from cascade.client import ClientSettings, make_channel
from gateway.pipeline import Breaker

log = logging.getLogger(__name__)
MakeChannel = Callable[[str, str], grpc.Channel]  # (address, name the certificate carries)
PICKS = ("least_in_flight", "round_robin")


@dataclass(frozen=True)
class Endpoint:
    address: str  # "10.0.0.7:50053" or "[::1]:50053", what the replica's channel dials
    server_name: str  # the host name the target gave ("" for a literal address): TLS checks it


def resolve(target: str) -> list[Endpoint]:
    """Every replica address of `target`; a name that does not resolve gives none (logged)."""
    spec = target.strip()
    for prefix in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if spec.startswith(prefix):
            spec = spec[len(prefix) :]
            break
    endpoints: list[Endpoint] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"target {target!r}: {part!r} is not host:port")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
            endpoints.append(Endpoint(_join(host, port), ""))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as error:
            log.warning("replicas: cannot resolve %s: %s", host, error)
            continue
        for address in dict.fromkeys(info[4][0] for info in infos):
            endpoints.append(Endpoint(_join(str(address), port), host))
    return list(dict.fromkeys(endpoints))


def channel_factory(
    settings: ClientSettings, retry_methods: Sequence[str] | None = None
) -> MakeChannel:
    """Channels to single replicas. Under TLS a replica found through a DNS name is dialled by
    address but its certificate is checked against that name (a pod IP is in no certificate)."""

    def make(address: str, server_name: str) -> grpc.Channel:
        replica = settings
        if server_name and settings.tls_ca is not None and not settings.tls_server_name:
            replica = dataclasses.replace(settings, tls_server_name=server_name)
        # Every gateway call sets its own timeout: no default-deadline interceptor needed.
        return make_channel(address, replica, retry_methods, default_deadline=False)

    return make


def _load(replica: Replica) -> tuple[int, int]:
    # Each failure in a row counts as a call in flight: a replica whose last calls timed out
    # gets a call only when the others are that much busier (or the prober cleared it).
    failures = replica.breaker.failures
    return replica.in_flight + failures, failures


def _stamp(paths: Sequence[Path]) -> tuple:
    """What changes when a file is replaced (a Secret update swaps a symlink: a new inode)."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            info = path.stat()
            stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
        except OSError:
            stamps.append(None)  # mid-swap: compared again on the next refresh
    return tuple(stamps)


def _join(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Replica:
    """One backend process: its channel, stubs made on it, and its own breaker."""

    def __init__(self, endpoint: Endpoint, channel: grpc.Channel, breaker: Breaker):
        self.endpoint, self.channel, self.breaker = endpoint, channel, breaker
        self.stubs: dict[type, object] = {}
        self.health = health_pb2_grpc.HealthStub(channel)
        self.in_flight = 0  # calls picked and not yet recorded (under the pool's lock)
        self.probed_at = 0.0  # monotonic time of the last health probe

    @property
    def address(self) -> str:
        return self.endpoint.address

    def stub(self, stub_class: type):
        stub = self.stubs.get(stub_class)
        if stub is None:
            stub = self.stubs[stub_class] = stub_class(self.channel)
        return stub

    @property
    def ejected(self) -> bool:
        breaker = self.breaker
        return bool(breaker.threshold) and breaker.failures >= breaker.threshold


class ReplicaMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.ejections = Counter(
            "cascade_gateway_replica_ejections",
            "Replicas ejected after failing or timing out repeatedly, by stage.",
            ["stage"],
            registry=registry,
        )
        self.replicas = Gauge(
            "cascade_gateway_replicas",
            "Replicas the gateway knows of, by stage and state (serving, ejected).",
            ["stage", "state"],
            registry=registry,
        )


class ReplicaPool:
    """The replicas of one stage. `pick` a replica, call it, then `record` the outcome."""

    def __init__(
        self,
        stage: str,
        target: str,
        make_channel: MakeChannel,
        failures: int,
        cooldown_s: float,
        metrics: ReplicaMetrics | None = None,
        resolve_interval_s: float = 10.0,
        probe_timeout_s: float = 0.25,
        pick: str = "least_in_flight",
        credential_files: Sequence[Path] = (),
    ):
        """`credential_files`: the client's TLS files; channels are rebuilt when they change."""
        self.stage, self.target, self.make_channel = stage, target, make_channel
        self.failures, self.cooldown_s = failures, cooldown_s
        self.metrics, self.probe_timeout_s = metrics, probe_timeout_s
        self.resolve_interval_s = resolve_interval_s
        if pick not in PICKS:
            raise ValueError(f"pick must be one of {PICKS}, got {pick!r}")
        self.least_in_flight = pick == "least_in_flight"  # else plain round robin (benchmarks)
        self.credential_files = [Path(f) for f in credential_files]
        self._credentials = _stamp(self.credential_files)
        self._retired: list[grpc.Channel] = []  # closed on the next refresh, after their calls
        self.replicas: tuple[Replica, ...] = ()  # replaced whole, never mutated: lock-free reads
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.refresh()
        self._thread = threading.Thread(target=self._watch, name=f"{stage}-replicas", daemon=True)
        self._thread.start()

    def pick(self, exclude: Replica | None = None) -> Replica | None:
        """The replica with the fewest calls in flight, ties round robin, among those not ejected
        (and not `exclude`); None when every one is ejected (the stage's fallback answers). Every
        replica returned must get a `record`."""
        replicas = self.replicas
        n = len(replicas)
        start = next(self._turn)
        with self._lock:
            best = None
            for offset in range(n):
                replica = replicas[(start + offset) % n]
                # Ejected replicas are left to the prober: a request never waits on one.
                if replica is exclude or replica.ejected:
                    continue
                if best is None or _load(replica) < _load(best):
                    best = replica
                if not self.least_in_flight:
                    break
            if best is None or not best.breaker.allow():
                return None
            best.in_flight += 1
            return best

    def record(self, replica: Replica, ok: bool | None) -> None:
        """A call's outcome; None when it says nothing about the replica (a tiny deadline)."""
        with self._lock:
            replica.in_flight -= 1
        self._judge(replica, ok, "calls")

    def _judge(self, replica: Replica, ok: bool | None, by: str) -> None:
        was_ejected = replica.ejected
        replica.breaker.record(ok)
        if replica.ejected and not was_ejected:
            log.warning(
                "%s: ejected replica %s after %d failures in a row (the last from %s)",
                self.stage,
                replica.address,
                replica.breaker.failures,
                by,
            )
            if self.metrics is not None:
                self.metrics.ejections.labels(self.stage).inc()
        elif was_ejected and ok:
            log.info("%s: replica %s is back", self.stage, replica.address)
        self._report()

    def serving(self) -> list[str]:
        return [r.address for r in self.replicas if not r.ejected]

    def refresh(self) -> None:
        """Resolves the target again: new addresses get a channel, vanished ones are closed.
        A resolution that finds nothing keeps the replicas known so far (DNS hiccup). Changed
        client certificate files give every replica a new channel."""
        for channel in self._retired:
            channel.close()
        self._retired = []
        endpoints = resolve(self.target) or [r.endpoint for r in self.replicas]
        credentials = _stamp(self.credential_files)
        rotated = credentials != self._credentials
        retire = []
        with self._lock:  # a file that does not load yet raises here: nothing changed, retried
            known = {r.endpoint: r for r in self.replicas}
            kept = []
            for endpoint in endpoints:
                old = known.pop(endpoint, None)
                if old is not None and rotated:
                    retire.append(old.channel)
                    old = Replica(endpoint, self._channel(endpoint), old.breaker)
                kept.append(old if old is not None else self._replica(endpoint))
            self.replicas = tuple(kept)
            self._credentials = credentials
        self._retired += retire
        if rotated:
            log.info("%s: client certificate files changed: new channels", self.stage)
        for gone in known.values():
            log.info("%s: replica %s left %s", self.stage, gone.address, self.target)
            self._retired.append(gone.channel)
        self._report()

    def probe(self) -> None:
        """Health-checks each replica with failures in a row, once per cooldown: SERVING clears
        them (an ejected replica is taken back), no answer adds one (a hung replica is ejected
        by the probes, without a request paying for it)."""
        now = time.monotonic()
        for replica in self.replicas:
            if not replica.breaker.failures or now < replica.probed_at + self.cooldown_s:
                continue
            if replica.ejected and not replica.breaker.allow():
                continue  # still cooling down, or another probe is out
            replica.probed_at = now
            try:
                reply = replica.health.Check(
                    health_pb2.HealthCheckRequest(), timeout=self.probe_timeout_s
                )
                ok = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                ok = False
            self._judge(replica, ok, "health probes")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for channel in (*(r.channel for r in self.replicas), *self._retired):
            channel.close()

    def _channel(self, endpoint: Endpoint) -> grpc.Channel:
        return self.make_channel(endpoint.address, endpoint.server_name)

    def _replica(self, endpoint: Endpoint) -> Replica:
        return Replica(endpoint, self._channel(endpoint), Breaker(self.failures, self.cooldown_s))

    def _watch(self) -> None:
        step = min(self.cooldown_s / 2, 0.1)
        rounds_per_resolve = max(1, int(self.resolve_interval_s / step))
        for round_ in itertools.count(1):
            if self._stop.wait(step):
                return
            try:
                self.probe()
                if round_ % rounds_per_resolve == 0:
                    self.refresh()
            except Exception:  # keep watching whatever happened
                log.exception("%s: replica watch failed", self.stage)

    def _report(self) -> None:
        if self.metrics is None:
            return
        replicas = self.replicas
        ejected = sum(r.ejected for r in replicas)
        self.metrics.replicas.labels(self.stage, "ejected").set(ejected)
        self.metrics.replicas.labels(self.stage, "serving").set(len(replicas) - ejected)
