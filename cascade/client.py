"""Client channels for stage-to-stage calls: round robin over replicas, retries on UNAVAILABLE for
idempotent calls, keepalive, fast reconnects, a deadline on every call, and TLS or mutual TLS
plus the caller token when the settings name them.

Tried with grpcio 1.85: service-config retries work (hedging is accepted but never hedges); the
tuned reconnect backoff cut the first OK call after a 20 s outage from 7.1 s to 0.48 s; round
robin over `ipv4:a,b` lost no call when one replica stopped (`make bench-faults` drills these).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cascade.callers import TOKEN_HEADER
from cascade.config import Secret
from cascade.tls import channel_credentials


@dataclass(frozen=True)
class ClientSettings:
    timeout_s: float = 1.0  # deadline of a call that sets none
    max_attempts: int = 3  # attempts per call when the answer is UNAVAILABLE; 1 = no retries
    initial_backoff_s: float = 0.01  # first pause between attempts (randomised by gRPC)
    max_backoff_s: float = 0.1
    initial_reconnect_backoff_ms: int = 100  # gRPC's defaults (1 s, 120 s) stall recovery
    max_reconnect_backoff_ms: int = 1_000
    keepalive_time_ms: int = 20_000  # ping idle connections to find dead peers; >= 10 s
    keepalive_timeout_ms: int = 5_000
    max_message_bytes: int = 4 * 1024 * 1024
    load_balancing: str = "round_robin"  # or "pick_first"
    tls_ca: Path | None = None  # TLS: trust servers this CA signed (None: plaintext)
    tls_cert: Path | None = None  # mutual TLS: the client certificate and key to present
    tls_key: Path | None = None
    tls_server_name: str = ""  # the name to check the server certificate against, if not the host
    caller_token: Secret = Secret("")  # sent as x-cascade-caller on every call when set

    def __post_init__(self) -> None:
        object.__setattr__(self, "caller_token", Secret(self.caller_token))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("a client certificate (mutual TLS) needs tls_ca")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if not 1 <= self.max_attempts <= 5:  # gRPC caps attempts at 5
            raise ValueError(f"max_attempts must be in [1, 5], got {self.max_attempts}")
        if not 0.001 <= self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("backoffs must satisfy 0.001 <= initial_backoff_s <= max_backoff_s")
        if self.keepalive_time_ms < 10_000:  # cascade servers accept one ping per 5 s at most
            raise ValueError(
                "keepalive_time_ms must be >= 10000 (servers answer faster pings "
                "with GOAWAY too_many_pings)"
            )


def make_channel(
    target: str,
    settings: ClientSettings | None = None,
    retry_methods: Sequence[str] | None = None,
    default_deadline: bool = True,
) -> grpc.Channel:
    """A channel to `target` ("127.0.0.1:50051", "ipv4:127.0.0.1:1,127.0.0.1:2",
    "dns:///rank:50051"). Calls without a timeout get settings.timeout_s.

    Retries apply to `retry_methods` ("cascade.v1.Rank" for a whole service or
    "cascade.v1.Gateway/Recommend" for one method); None means every method, which suits the
    stage calls since they are all idempotent. Pass () for no retries (e.g. Feedback).

    `default_deadline=False` is for a caller that sets a timeout on every call (the gateway):
    without a caller token the channel then has no client interceptor, whose machinery cost the
    gateway about a tenth of its CPU per request (`make bench-overload`, profiles/gateway.txt).
    """
    settings = ClientSettings() if settings is None else settings
    options = [
        ("grpc.service_config", json.dumps(service_config(settings, retry_methods))),
        ("grpc.service_config_disable_resolution", 1),  # ours, not one found in DNS
        ("grpc.enable_retries", 1),
        ("grpc.initial_reconnect_backoff_ms", settings.initial_reconnect_backoff_ms),
        ("grpc.max_reconnect_backoff_ms", settings.max_reconnect_backoff_ms),
        ("grpc.keepalive_time_ms", settings.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
    ]
    if settings.tls_ca is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        if settings.tls_server_name:
            options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
        credentials = channel_credentials(settings.tls_ca, settings.tls_cert, settings.tls_key)
        channel = grpc.secure_channel(target, credentials, options=options)
    token = settings.caller_token.reveal()
    extra = ((TOKEN_HEADER, token),) if token else ()
    if not default_deadline and not extra:
        return channel
    return grpc.intercept_channel(channel, DefaultDeadline(settings.timeout_s, extra))


def service_config(settings: ClientSettings, retry_methods: Sequence[str] | None = None) -> dict:
    """The gRPC service config make_channel installs (load balancing and retry policy)."""
    config: dict = {"loadBalancingConfig": [{settings.load_balancing: {}}]}
    names = [{}] if retry_methods is None else [_method_name(m) for m in retry_methods]
    if settings.max_attempts > 1 and names:
        config["methodConfig"] = [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": settings.max_attempts,
                    "initialBackoff": f"{settings.initial_backoff_s:.3f}s",
                    "maxBackoff": f"{settings.max_backoff_s:.3f}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
        # Stop retrying when most calls fail (an outage), so retries cannot pile onto it.
        config["retryThrottling"] = {"maxTokens": 10, "tokenRatio": 0.1}
    return config


def _method_name(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return {"service": service, "method": name} if name else {"service": service}


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class DefaultDeadline(grpc.UnaryUnaryClientInterceptor):
    """Gives every unary call without a timeout this one, so no call can wait forever, and adds
    `metadata` (the caller token) to every call."""

    def __init__(self, timeout_s: float, metadata: tuple[tuple[str, str], ...] = ()):
        self.timeout_s, self.metadata = timeout_s, metadata

    def intercept_unary_unary(self, continuation, client_call_details, request):
        d = client_call_details
        if d.timeout is None or self.metadata:
            client_call_details = _CallDetails(
                d.method,
                self.timeout_s if d.timeout is None else d.timeout,
                (*(d.metadata or ()), *self.metadata) if self.metadata else d.metadata,
                d.credentials,
                d.wait_for_ready,
                getattr(d, "compression", None),
            )
        return continuation(client_call_details, request)


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """The BadRequest field violations of a failed call, {field: description}; {} if none."""
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    if status is None:
        return {}
    violations: dict[str, str] = {}
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            for violation in bad_request.field_violations:
                violations[violation.field] = violation.description
    return violations
