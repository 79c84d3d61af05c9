#!/usr/bin/env python3
"""Container health check: exit 0 iff the gRPC health service reports SERVING.

Used by the image's HEALTHCHECK and by compose. It asks the standard grpc.health.v1 service of
the tierstore server in this container for the overall status (service name ""). The port comes
from TIERSTORE_LISTEN (the same variable the server reads), else the server's default port; a
wildcard listen host (0.0.0.0, ::) is probed on loopback.

Usage: healthcheck.py [SERVICE]   (SERVICE defaults to "", the server's overall health)
Exit codes: 0 healthy, 1 not serving or unreachable (Docker reserves 2).
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORT = 7070  # the port of tierstore.server.config.DEFAULT_LISTEN (tests/deploy_checks.py)
SERVICE = ""  # overall health; the store service itself is "tierstore.v1.StateStore"
TIMEOUT_S = 3.0
_WILDCARDS = {"", "0.0.0.0", "::", "[::]", "*"}


def target(listen: str | None) -> str:
    """The HOST:PORT to probe for a TIERSTORE_LISTEN value (None: the default port)."""
    if not listen:
        return f"127.0.0.1:{DEFAULT_PORT}"
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"TIERSTORE_LISTEN: expected HOST:PORT, got {listen!r}")
    if host in _WILDCARDS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def check(address: str, service: str = SERVICE, timeout_s: float = TIMEOUT_S) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            print(f"unhealthy: {address}: {exc.code().name}", file=sys.stderr)
            return False
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {address}: {status}", file=sys.stderr)
        return False
    return True


def main(argv: list[str]) -> int:
    service = argv[1] if len(argv) > 1 else SERVICE
    try:
        address = target(os.environ.get("TIERSTORE_LISTEN"))
    except ValueError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0 if check(address, service) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
