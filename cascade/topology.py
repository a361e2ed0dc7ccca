"""The shape of the stack, declared once: its five services, the order a request crosses the
stages, the order a bundle trains them in, each service's default gRPC and metrics ports and the
RPC it exists for. The local stack, the CLI, the demo, the gateway's and the stages' default
settings, the Prometheus and Grafana generators, the compose and Kubernetes checks and the tests
read it from here.

Which Python module serves, trains or evaluates a stage is not here: the shared library must not
name the gateway or the stages, even as strings (tests/test_layers.py), so that table lives in the
application layer (app/stages.py), keyed by these names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # also the env prefix (CASCADE_<NAME>_), the metrics `stage` label, the log name
    port: int  # default gRPC port
    metrics_port: int  # default Prometheus /metrics port
    rpc: str  # the RPC the service exists for, as the metrics' `rpc` label spells it

    @property
    def target(self) -> str:
        """Where a caller on the same machine finds it by default."""
        return f"127.0.0.1:{self.port}"

    @property
    def env_prefix(self) -> str:
        return f"CASCADE_{self.name.upper()}_"


GATEWAY = ServiceSpec("gateway", 50050, 9150, "cascade.v1.Gateway/Recommend")
# The stages in the order a request crosses them (recall -> prerank -> rank -> rerank).
STAGE_SPECS = (
    ServiceSpec("recall", 50051, 9151, "cascade.v1.Recall/Recall"),
    ServiceSpec("prerank", 50052, 9152, "cascade.v1.Prerank/Prerank"),
    ServiceSpec("rank", 50053, 9153, "cascade.v1.Rank/Rank"),
    ServiceSpec("rerank", 50054, 9154, "cascade.v1.Rerank/Rerank"),
)
STAGES = tuple(s.name for s in STAGE_SPECS)
# Every service, the gateway first: its port is the base, the stages take the next ones.
SERVICE_SPECS = (GATEWAY, *STAGE_SPECS)
SERVICES = tuple(s.name for s in SERVICE_SPECS)
# The order `cascade train all` builds a bundle in: later stages read earlier components, and the
# pre-ranker is distilled from the ranker (its teacher), so it trains after rank.
TRAIN_ORDER = ("recall", "rank", "prerank", "rerank")
DEFAULT_PORTS = {s.name: s.port for s in SERVICE_SPECS}
DEFAULT_METRICS_PORTS = {s.name: s.metrics_port for s in SERVICE_SPECS}


def spec(name: str) -> ServiceSpec:
    """The service called `name`; KeyError for another name."""
    for service in SERVICE_SPECS:
        if service.name == name:
            return service
    raise KeyError(f"no service {name!r}: one of {', '.join(SERVICES)}")


def ports_from(base: int) -> dict[str, int]:
    """Every service's port counted from `base` (the gateway's) in SERVICES order; a base of 0
    gives 0 to all (each binds a free port)."""
    return {name: base and base + i for i, name in enumerate(SERVICES)}
