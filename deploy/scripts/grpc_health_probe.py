#!/usr/bin/env python3
"""grpc.health.v1 probe for container health checks (grpc_health_probe is not on PyPI).

Used by the Dockerfiles' HEALTHCHECK and the compose file; Kubernetes uses its native
`grpc:` probes instead. Exit 0 only when the server answers SERVING for the service.

    grpc-health-probe [--service NAME] [--timeout SECONDS] [ADDRESS]

ADDRESS defaults to $HEALTH_PROBE_ADDRESS or 127.0.0.1:50051.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grpc-health-probe", description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default=os.environ.get("HEALTH_PROBE_ADDRESS", "127.0.0.1:50051"))
    parser.add_argument("--service", default="", help="service name; empty means the whole server")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"{args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address} {args.service or '(server)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
