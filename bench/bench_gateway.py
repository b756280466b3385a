"""What the gateway's hop costs: unary latency and streaming throughput, direct vs through it.

Three processes, as in production: a stand-in RegistryService upstream (this
script with --upstream), `python -m gateway` in front of it, and the client
here. Direct and gateway calls are interleaved in rounds so machine noise hits
both alike.

Prints:
  bench: gateway_unary_p50_direct_ms, gateway_unary_p50_via_gateway_ms
  bench: gateway_unary_p50_overhead_ms, gateway_unary_p99_overhead_ms   (target: p50 <= 0.5 ms)
  bench: gateway_stream_direct_msgs_per_s, gateway_stream_via_gateway_msgs_per_s
  bench: gateway_stream_throughput_ratio                                 (target: >= 0.9)
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from bench.quick import size  # noqa: E402
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2  # noqa: E402

UNARY_ROUNDS = int(os.environ.get("BENCH_GATEWAY_ROUNDS", str(size(10, 1))))
UNARY_PER_ROUND = size(200, 20)
STREAM_MESSAGES = size(20_000, 500)
STREAM_CHUNK = 1024
STREAM_REPEATS = size(3, 1)


class BenchRegistry(registry_service_pb2_grpc.RegistryServiceServicer):
    """Answers at once, so what is measured is the transport and the hop."""

    def __init__(self) -> None:
        self.run = registry_service_pb2.GetRunResponse(
            run=resources_pb2.Run(run_id="00000000-0000-0000-0000-000000000000", algorithm="sarsa")
        )

    async def GetRun(
        self, request: registry_service_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> registry_service_pb2.GetRunResponse:
        return self.run

    async def ExportModel(
        self, request: registry_service_pb2.ExportModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_service_pb2.ExportModelResponse]:
        count = int(request.model_id)
        chunk = registry_service_pb2.ExportModelResponse(chunk=b"q" * STREAM_CHUNK)
        for _ in range(count):
            yield chunk


async def serve_upstream(port_file: Path) -> None:
    from taxidriver.server import ServiceBinding, create_server, stop_signal

    servicer = BenchRegistry()
    running = await create_server(
        address="127.0.0.1:0",
        services=[
            ServiceBinding(
                name="taxidriver.registry.v1.RegistryService",
                register=lambda s: registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, s),
            )
        ],
    )
    stop = stop_signal()
    port_file.write_text(str(running.port))  # noqa: ASYNC240 - once, before serving
    await stop.wait()
    await running.server.stop(0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
        deadline = time.monotonic() + 60
        while True:
            try:
                stub.GetRun(registry_service_pb2.GetRunRequest(run_id="x"), timeout=5)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def unary_latencies(stub: registry_service_pb2_grpc.RegistryServiceStub, count: int) -> list[float]:
    request = registry_service_pb2.GetRunRequest(run_id="00000000-0000-0000-0000-000000000000")
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        stub.GetRun(request, timeout=10)
        samples.append(time.perf_counter() - started)
    return samples


def stream_rate(stub: registry_service_pb2_grpc.RegistryServiceStub) -> float:
    started = time.perf_counter()
    received = 0
    for _ in stub.ExportModel(registry_service_pb2.ExportModelRequest(model_id=str(STREAM_MESSAGES)), timeout=120):
        received += 1
    elapsed = time.perf_counter() - started
    assert received == STREAM_MESSAGES
    return received / elapsed


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"}
    with tempfile.TemporaryDirectory() as scratch:
        port_file = Path(scratch) / "port"
        upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(port_file)], env=env)
        gateway: subprocess.Popen[bytes] | None = None
        try:
            deadline = time.monotonic() + 60
            while not port_file.exists() or not port_file.read_text():
                if time.monotonic() > deadline or upstream.poll() is not None:
                    raise RuntimeError("upstream did not start")
                time.sleep(0.05)
            direct_target = f"127.0.0.1:{port_file.read_text()}"
            gateway_target = f"127.0.0.1:{free_port()}"
            gateway = subprocess.Popen(
                [sys.executable, "-m", "gateway"],
                cwd=ROOT,
                env={
                    **env,
                    "GATEWAY_ADDRESS": gateway_target,
                    # The stand-in upstream has no AuthService: this measures forwarding alone
                    # (with keys, a cached lookup is added per call, not a registry round trip).
                    "GATEWAY_AUTH_REQUIRED": "false",
                    "REGISTRY_TARGET": direct_target,
                    "TRAINER_TARGETS": direct_target,
                },
            )
            wait_ready(direct_target)
            wait_ready(gateway_target)
            measure(direct_target, gateway_target)
        finally:
            for process in (gateway, upstream):
                if process is not None:
                    process.terminate()
                    process.wait(20)
    return 0


def measure(direct_target: str, gateway_target: str) -> None:
    with grpc.insecure_channel(direct_target) as direct_channel, grpc.insecure_channel(gateway_target) as gw_channel:
        direct = registry_service_pb2_grpc.RegistryServiceStub(direct_channel)
        via_gateway = registry_service_pb2_grpc.RegistryServiceStub(gw_channel)
        unary_latencies(direct, 300)
        unary_latencies(via_gateway, 300)
        direct_samples: list[float] = []
        gateway_samples: list[float] = []
        for _ in range(UNARY_ROUNDS):
            direct_samples += unary_latencies(direct, UNARY_PER_ROUND)
            gateway_samples += unary_latencies(via_gateway, UNARY_PER_ROUND)
        p50_direct, p50_gateway = percentile(direct_samples, 0.5), percentile(gateway_samples, 0.5)
        p99_direct, p99_gateway = percentile(direct_samples, 0.99), percentile(gateway_samples, 0.99)
        print(f"bench: gateway_unary_p50_direct_ms = {p50_direct * 1000:.3f} ms")
        print(f"bench: gateway_unary_p50_via_gateway_ms = {p50_gateway * 1000:.3f} ms")
        print(f"bench: gateway_unary_p50_overhead_ms = {(p50_gateway - p50_direct) * 1000:.3f} ms")
        print(f"bench: gateway_unary_p99_overhead_ms = {(p99_gateway - p99_direct) * 1000:.3f} ms")

        stream_rate(direct)
        stream_rate(via_gateway)
        direct_rates, gateway_rates = [], []
        for _ in range(STREAM_REPEATS):
            direct_rates.append(stream_rate(direct))
            gateway_rates.append(stream_rate(via_gateway))
        direct_rate, gateway_rate = statistics.median(direct_rates), statistics.median(gateway_rates)
        print(f"bench: gateway_stream_direct_msgs_per_s = {direct_rate:.0f} msg/s")
        print(f"bench: gateway_stream_via_gateway_msgs_per_s = {gateway_rate:.0f} msg/s")
        print(f"bench: gateway_stream_throughput_ratio = {gateway_rate / direct_rate:.3f} ratio")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--upstream":
        asyncio.run(serve_upstream(Path(sys.argv[2])))
        sys.exit(0)
    sys.exit(main())
