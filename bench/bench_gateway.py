"""What the gateway's hop costs: unary latency and streaming throughput, direct vs through it.

Processes, as in production: a stand-in RegistryService upstream (this script
with --upstream), `python -m gateway` in front of it, and the client here. Two
reference hops run next to the gateway, written only for this measurement: the
floor, an empty pass-through proxy on grpc's asyncio API (what one more gRPC hop
costs in Python, with no authentication, metadata, telemetry or health), and the
same on grpc's thread-pool API. Calls to every target are interleaved in rounds
so machine noise hits all alike.

Prints:
  bench: gateway_unary_p50_direct_ms, gateway_unary_p50_via_gateway_ms
  bench: gateway_unary_p50_overhead_ms, gateway_unary_p99_overhead_ms   (target: p50 <= 0.3 ms)
  bench: gateway_stream_direct_msgs_per_s, gateway_stream_via_gateway_msgs_per_s
  bench: gateway_stream_throughput_ratio                                 (target: >= 0.9)
  bench: gateway_auth_unary_p50_overhead_ms, gateway_auth_stream_throughput_ratio (API keys required)
  bench: gateway_floor_unary_p50_overhead_ms, gateway_floor_stream_throughput_ratio
  bench: gateway_floor_sync_unary_p50_overhead_ms, gateway_floor_sync_stream_throughput_ratio
  bench: gateway_ref_nginx_unary_p50_overhead_ms, gateway_ref_nginx_stream_throughput_ratio
    (a reference hop in C, nginx's grpc_pass, when nginx is installed: what one more hop costs
    here outside Python)
  and for every hop its own CPU time: <hop>_unary_cpu_us_per_call, <hop>_stream_cpu_us_per_msg
  (what the hop costs, which the machine's load inflates far less than it does latency)

Where the gateway's time goes (py-spy --native on `python -m gateway` under this
benchmark, 2026-12-01, load 17-20). Unary: of its busy samples, 42 % are system calls
grpc makes (sendmsg, the writes that wake the event loop from grpc's poller thread,
futex), 22 % grpc's core and Cython layer, 13 % asyncio's loop, 4 % grpc.aio's
Python, and 8 % ours (forwarding, metadata, telemetry, the request id). Streaming:
sendmsg alone is 50 % (one per relayed message, as the upstream makes one per message
it sends), loop wake-ups 20 %, futex 12 %, ours under 1 %. grpc's event-engine threads
(not sampled by py-spy) used about a fifth of the main thread's CPU (/proc). So the
hop costs what one more gRPC call in and out costs; the floor figures measure that.

BENCH_GATEWAY_VARIANTS="name:KEY=VALUE,KEY=VALUE;..." adds a gateway per variant,
started with those settings, and prints the same figures for it
(gateway_<name>_unary_p50_overhead_ms, ...): before/after figures from one run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from bench.quick import size  # noqa: E402
from taxidriver.auth.v1 import auth_service_pb2, auth_service_pb2_grpc  # noqa: E402
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2  # noqa: E402

UNARY_ROUNDS = int(os.environ.get("BENCH_GATEWAY_ROUNDS", str(size(10, 1))))
UNARY_PER_ROUND = size(200, 20)
STREAM_MESSAGES = int(os.environ.get("BENCH_GATEWAY_STREAM_MESSAGES", str(size(20_000, 500))))
STREAM_CHUNK = 1024
STREAM_REPEATS = int(os.environ.get("BENCH_GATEWAY_STREAM_REPEATS", str(size(3, 1))))
VARIANTS = os.environ.get("BENCH_GATEWAY_VARIANTS", "")

SERVICE = "taxidriver.registry.v1.RegistryService"
GET_RUN = f"/{SERVICE}/GetRun"
EXPORT_MODEL = f"/{SERVICE}/ExportModel"


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


class BenchAuth(auth_service_pb2_grpc.AuthServiceServicer):
    """Every key is an admin's; keys never change (the gateway caches answers, as in production)."""

    async def Authenticate(
        self, request: auth_service_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.AuthenticateResponse:
        return auth_service_pb2.AuthenticateResponse(user_id="1", username="bench", role=auth_service_pb2.ROLE_ADMIN)

    async def WatchKeyChanges(
        self, request: auth_service_pb2.WatchKeyChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[auth_service_pb2.WatchKeyChangesResponse]:
        yield auth_service_pb2.WatchKeyChangesResponse()  # live: the gateway may cache
        await asyncio.Event().wait()


async def serve_upstream(port_file: Path) -> None:
    from taxidriver.server import ServiceBinding, create_server, stop_signal

    servicer, auth = BenchRegistry(), BenchAuth()
    running = await create_server(
        address="127.0.0.1:0",
        services=[
            ServiceBinding(
                name=SERVICE,
                register=lambda s: registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, s),
            ),
            ServiceBinding(
                name="taxidriver.auth.v1.AuthService",
                register=lambda s: auth_service_pb2_grpc.add_AuthServiceServicer_to_server(auth, s),
            ),
        ],
    )
    stop = stop_signal()
    port_file.write_text(str(running.port))  # noqa: ASYNC240 - once, before serving
    await stop.wait()
    await running.server.stop(0.5)


async def serve_floor(port_file: Path, upstream: str) -> None:
    """The floor: bytes in, bytes out, on grpc's asyncio API, and nothing else."""
    channel = grpc.aio.insecure_channel(upstream)
    get_run = channel.unary_unary(GET_RUN)
    export_model = channel.unary_stream(EXPORT_MODEL)

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        response: bytes = await get_run(request)
        return response

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> None:
        call = export_model(request)
        while (response := await call.read()) is not grpc.aio.EOF:
            await context.write(response)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(unary, stream),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))  # noqa: ASYNC240 - once, before serving
    await server.wait_for_termination()


def serve_floor_sync(port_file: Path, upstream: str) -> None:
    """The same on grpc's thread-pool API (a blocking channel, a thread per call)."""
    channel = grpc.insecure_channel(upstream)
    get_run = channel.unary_unary(GET_RUN)
    export_model = channel.unary_stream(EXPORT_MODEL)

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        response: bytes = get_run(request)
        return response

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from export_model(request)

    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_handlers(unary, stream),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_file.write_text(str(port))
    server.wait_for_termination()


def _handlers(unary: object, stream: object) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "GetRun": grpc.unary_unary_rpc_method_handler(unary),
            "ExportModel": grpc.unary_stream_rpc_method_handler(stream),
        },
    )


@dataclass(frozen=True)
class Hop:
    target: str
    pid: int  # the process serving `target`


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
                stub.GetRun(registry_service_pb2.GetRunRequest(run_id="x"), timeout=5, metadata=KEY)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


# Sent to every target alike (only the gateway with keys required checks it).
KEY = (("authorization", "Bearer bench-key"),)


def unary_latencies(stub: registry_service_pb2_grpc.RegistryServiceStub, count: int) -> list[float]:
    request = registry_service_pb2.GetRunRequest(run_id="00000000-0000-0000-0000-000000000000")
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        stub.GetRun(request, timeout=10, metadata=KEY)
        samples.append(time.perf_counter() - started)
    return samples


def stream_rate(stub: registry_service_pb2_grpc.RegistryServiceStub) -> float:
    started = time.perf_counter()
    received = 0
    request = registry_service_pb2.ExportModelRequest(model_id=str(STREAM_MESSAGES))
    for _ in stub.ExportModel(request, timeout=120, metadata=KEY):
        received += 1
    elapsed = time.perf_counter() - started
    assert received == STREAM_MESSAGES
    return received / elapsed


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def parse_variants(text: str) -> dict[str, dict[str, str]]:
    """BENCH_GATEWAY_VARIANTS ("name:K=V,K=V;name2:...") as {name: {K: V}}."""
    variants: dict[str, dict[str, str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, settings = part.partition(":")
        pairs = (item.partition("=") for item in settings.split(",") if item.strip())
        variants[name.strip()] = {key.strip(): value.strip() for key, _, value in pairs}
    return variants


def main() -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"}
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as scratch:

        def start_helper(mode: str, *args: str) -> Hop:
            port_file = Path(scratch) / mode
            process = subprocess.Popen([sys.executable, __file__, mode, str(port_file), *args], env=env)
            processes.append(process)
            deadline = time.monotonic() + 60
            while not port_file.exists() or not port_file.read_text():
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{mode} did not start")
                time.sleep(0.05)
            return Hop(target=f"127.0.0.1:{port_file.read_text()}", pid=process.pid)

        def start_gateway(extra: dict[str, str]) -> Hop:
            target = f"127.0.0.1:{free_port()}"
            gateway_env = {
                **env,
                "GATEWAY_ADDRESS": target,
                # Forwarding alone; the "auth" gateway adds the key check.
                "GATEWAY_AUTH_REQUIRED": "false",
                "REGISTRY_TARGET": direct.target,
                "TRAINER_TARGETS": direct.target,
                **extra,
            }
            processes.append(subprocess.Popen([sys.executable, "-m", "gateway"], cwd=ROOT, env=gateway_env))
            return Hop(target=target, pid=processes[-1].pid)

        try:
            direct = start_helper("--upstream")
            targets = {
                "direct": direct,
                "gateway": start_gateway({}),
                # As deployed: API keys required (the stand-in AuthService answers; cached per key).
                "auth": start_gateway({"GATEWAY_AUTH_REQUIRED": "true"}),
            }
            for name, extra in parse_variants(VARIANTS).items():
                targets[name] = start_gateway(extra)
            targets["floor"] = start_helper("--floor", direct.target)
            targets["floor_sync"] = start_helper("--floor-sync", direct.target)
            nginx = start_nginx(Path(scratch), direct.target)
            if nginx is not None:
                processes.append(nginx[0])
                targets["ref_nginx"] = nginx[1]
            for hop in targets.values():
                wait_ready(hop.target)
            measure(targets)
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(20)
    return 0


NGINX_CONF = """
daemon off; master_process off; worker_processes 1; pid {scratch}/nginx.pid; error_log {scratch}/nginx.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  upstream registry {{ server {upstream}; keepalive 16; }}
  server {{ listen {target} http2; location / {{ grpc_pass grpc://registry; }} }}
}}
"""


def start_nginx(scratch: Path, upstream: str) -> tuple[subprocess.Popen[bytes], Hop] | None:
    """A reference hop in C: nginx's grpc_pass, bytes in and out, one process (when nginx is
    installed; Debian's package). What one more hop costs on this machine outside Python."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        print("  (no nginx on this machine: the gateway_ref_nginx_* reference is not measured)")
        return None
    target = f"127.0.0.1:{free_port()}"
    conf = scratch / "nginx.conf"
    conf.write_text(NGINX_CONF.format(scratch=scratch, upstream=upstream, target=target))
    process = subprocess.Popen([binary, "-c", str(conf), "-p", str(scratch)])
    return process, Hop(target=target, pid=process.pid)


def prefix(name: str) -> str:
    return "gateway" if name == "gateway" else f"gateway_{name}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux): a hop's cost, which machine load
    inflates far less than it does latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(targets: dict[str, Hop]) -> None:
    channels = {name: grpc.insecure_channel(hop.target) for name, hop in targets.items()}
    # The upstream also serves every hop's calls: only the hops' own CPU is attributable.
    hops = [name for name in targets if name != "direct"]
    try:
        stubs = {name: registry_service_pb2_grpc.RegistryServiceStub(channel) for name, channel in channels.items()}
        unary: dict[str, list[float]] = {name: [] for name in stubs}
        for stub in stubs.values():
            unary_latencies(stub, 300)
        cpu_before = {name: cpu_seconds(targets[name].pid) for name in hops}
        for _ in range(UNARY_ROUNDS):
            for name, stub in stubs.items():
                unary[name] += unary_latencies(stub, UNARY_PER_ROUND)
        unary_cpu = {name: cpu_seconds(targets[name].pid) - cpu_before[name] for name in hops}
        p50_direct, p99_direct = percentile(unary["direct"], 0.5), percentile(unary["direct"], 0.99)
        print(f"bench: gateway_unary_p50_direct_ms = {p50_direct * 1000:.3f} ms")
        for name in hops:
            p50, p99 = percentile(unary[name], 0.5), percentile(unary[name], 0.99)
            if name == "gateway":
                print(f"bench: gateway_unary_p50_via_gateway_ms = {p50 * 1000:.3f} ms")
            print(f"bench: {prefix(name)}_unary_p50_overhead_ms = {(p50 - p50_direct) * 1000:.3f} ms")
            print(f"bench: {prefix(name)}_unary_p99_overhead_ms = {(p99 - p99_direct) * 1000:.3f} ms")
            print(f"bench: {prefix(name)}_unary_cpu_us_per_call = {unary_cpu[name] / len(unary[name]) * 1e6:.0f} us")

        rates: dict[str, list[float]] = {name: [] for name in stubs}
        for stub in stubs.values():
            stream_rate(stub)
        cpu_before = {name: cpu_seconds(targets[name].pid) for name in hops}
        for _ in range(STREAM_REPEATS):
            for name, stub in stubs.items():
                rates[name].append(stream_rate(stub))
        stream_cpu = {name: cpu_seconds(targets[name].pid) - cpu_before[name] for name in hops}
        messages = STREAM_REPEATS * STREAM_MESSAGES
        direct_rate = statistics.median(rates["direct"])
        print(f"bench: gateway_stream_direct_msgs_per_s = {direct_rate:.0f} msg/s")
        for name in hops:
            rate = statistics.median(rates[name])
            if name == "gateway":
                print(f"bench: gateway_stream_via_gateway_msgs_per_s = {rate:.0f} msg/s")
            print(f"bench: {prefix(name)}_stream_throughput_ratio = {rate / direct_rate:.3f} ratio")
            print(f"bench: {prefix(name)}_stream_cpu_us_per_msg = {stream_cpu[name] / messages * 1e6:.1f} us")
    finally:
        for channel in channels.values():
            channel.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--upstream":
        asyncio.run(serve_upstream(Path(sys.argv[2])))
        sys.exit(0)
    if len(sys.argv) == 4 and sys.argv[1] == "--floor":
        asyncio.run(serve_floor(Path(sys.argv[2]), sys.argv[3]))
        sys.exit(0)
    if len(sys.argv) == 4 and sys.argv[1] == "--floor-sync":
        serve_floor_sync(Path(sys.argv[2]), sys.argv[3])
        sys.exit(0)
    sys.exit(main())
