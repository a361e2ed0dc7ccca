"""A grpc.health.v1 probe for container health checks: exit 0 when the server answers SERVING.

`python -m cascade.healthcheck 127.0.0.1:50051 [--service cascade.v1.Recall] [--timeout 2]
[--tls-ca ca.pem [--tls-cert c.pem --tls-key k.pem]]` stands in for grpc_health_probe, which these
machines cannot fetch; with --tls-* it checks a TLS or mutual-TLS port. Exit codes: 0 SERVING, 1 any
other status, no answer in time or an unknown service, 2 bad arguments. One line on stdout says
which.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = 0
NOT_SERVING = 1


def check(
    address: str,
    service: str = "",
    timeout_s: float = 2.0,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> str:
    """The health status name `address` reports for `service` ("" = the whole server), or
    "ERROR: <gRPC code>" when the check failed: DEADLINE_EXCEEDED or UNAVAILABLE when no answer
    came within `timeout_s`, NOT_FOUND for a service the server does not know. `tls_ca`: the port
    serves TLS (with `tls_cert`/`tls_key` when it wants a client certificate)."""
    if tls_ca is None:
        channel = grpc.insecure_channel(address)
    else:
        from cascade.tls import channel_credentials

        channel = grpc.secure_channel(address, channel_credentials(tls_ca, tls_cert, tls_key))
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as error:
            return f"ERROR: {error.code().name}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="host:port of the gRPC server, e.g. 127.0.0.1:50051")
    parser.add_argument("--service", default="", help="service name; empty = the whole server")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer")
    parser.add_argument("--tls-ca", type=Path, help="the port serves TLS signed by this CA")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="client key (mutual TLS)")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")
    status = check(
        args.address, args.service, args.timeout, args.tls_ca, args.tls_cert, args.tls_key
    )
    print(f"{args.address} {args.service or '(server)'}: {status}", flush=True)
    return SERVING if status == "SERVING" else NOT_SERVING


if __name__ == "__main__":
    sys.exit(main())
