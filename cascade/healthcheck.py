"""A grpc.health.v1 probe for container health checks: exit 0 when the server answers SERVING.

`python -m cascade.healthcheck 127.0.0.1:50051 [--service cascade.v1.Recall] [--timeout 2]`
stands in for grpc_health_probe, which these machines cannot fetch. Exit codes: 0 SERVING, 1 any
other status, no answer in time or an unknown service, 2 bad arguments. One line on stdout says
which.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = 0
NOT_SERVING = 1


def check(address: str, service: str = "", timeout_s: float = 2.0) -> str:
    """The health status name `address` reports for `service` ("" = the whole server), or
    "ERROR: <gRPC code>" when the check failed: DEADLINE_EXCEEDED or UNAVAILABLE when no answer
    came within `timeout_s`, NOT_FOUND for a service the server does not know."""
    with grpc.insecure_channel(address) as channel:
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
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")
    status = check(args.address, args.service, args.timeout)
    print(f"{args.address} {args.service or '(server)'}: {status}", flush=True)
    return SERVING if status == "SERVING" else NOT_SERVING


if __name__ == "__main__":
    sys.exit(main())
