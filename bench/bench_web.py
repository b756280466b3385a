"""What the HTTP face costs: ListRuns over HTTP/JSON vs gRPC, and one run's curves as JSON.

Real processes, as `make run` starts them: embedded PostgreSQL, registry, trainer,
gateway (API keys on) and web. The same ListRuns (50 runs, summary view) is called
through the gateway over gRPC and through web over HTTP/JSON (keep-alive client),
interleaved in rounds so that machine noise hits both alike; the overhead is the
difference of the medians. Then one 6000-episode run's curves: the full run as
canonical JSON (GET /database/runs/{id}?view=full) and the dashboard's downsampled
curves (/dashboard/curves, 1000 buckets).

Prints:
  bench: http_list_p50_grpc_ms, http_list_p50_http_ms, http_list_p50_overhead_ms
  bench: http_curve_6000_p50_ms             (GET /database/runs/{id}?view=full, 6000 episodes)
  bench: http_curve_6000_downsampled_p50_ms (GET /dashboard/curves, width 1000)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import httpx  # noqa: E402
import psycopg  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from bench.quick import size  # noqa: E402
from taxidriver.embedded_pg import EmbeddedPostgres, free_port  # noqa: E402
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2  # noqa: E402
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc  # noqa: E402

LIST_RUNS = size(50, 3)
CURVE_EPISODES = size(6000, 200)
ROUNDS = size(10, 1)
PER_ROUND = size(40, 5)
CURVE_CALLS = size(30, 3)


def wait_grpc(target: str, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{target} not SERVING")


def wait_http(url: str, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready")


def train(channel: grpc.Channel, key: str, episodes: int, algorithm: str = "q_learning") -> str:
    metadata = (("authorization", f"Bearer {key}"),)
    reply = trainer_service_pb2_grpc.TrainerServiceStub(channel).StartRun(
        trainer_service_pb2.StartRunRequest(
            algorithm=algorithm,
            mode=trainer_service_pb2.TRAINING_MODE_OPTIMIZED,
            hyperparameters=trainer_service_pb2.Hyperparameters(training_episodes=episodes),
            test_episodes=10,
        ),
        metadata=metadata,
        timeout=60,
    )
    registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
    for event in registry.WatchRun(
        registry_service_pb2.WatchRunRequest(run_id=reply.run_id, status_only=True), metadata=metadata, timeout=600
    ):
        if event.event.status_change.status == resources_pb2.RUN_STATUS_FAILED:
            raise RuntimeError(f"run {reply.run_id} failed")
    return reply.run_id


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def measure(gateway: str, web: str, key: str) -> None:
    metadata = (("authorization", f"Bearer {key}"),)
    with (
        grpc.insecure_channel(gateway) as channel,
        httpx.Client(base_url=web, headers={"Authorization": f"Bearer {key}"}) as http,
    ):
        algorithms = ["q_learning", "sarsa", "expected_sarsa", "double_q_learning"]
        for index in range(LIST_RUNS):
            train(channel, key, 200, algorithms[index % len(algorithms)])
        curve_run = train(channel, key, CURVE_EPISODES)
        registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
        request = registry_service_pb2.ListRunsRequest(page_size=50)
        assert len(registry.ListRuns(request, metadata=metadata, timeout=30).runs) == min(50, LIST_RUNS + 1)
        assert len(http.get("/database/runs", params={"page_size": 50}).json()["runs"]) == min(50, LIST_RUNS + 1)
        grpc_times: list[float] = []
        http_times: list[float] = []
        for _ in range(ROUNDS):
            for _ in range(PER_ROUND):
                started = time.perf_counter()
                registry.ListRuns(request, metadata=metadata, timeout=30)
                grpc_times.append(time.perf_counter() - started)
            for _ in range(PER_ROUND):
                started = time.perf_counter()
                reply = http.get("/database/runs", params={"page_size": 50})
                reply.json()
                http_times.append(time.perf_counter() - started)
                assert reply.status_code == 200
        print(f"bench: http_list_p50_grpc_ms = {p50_ms(grpc_times):.2f} ms")
        print(f"bench: http_list_p50_http_ms = {p50_ms(http_times):.2f} ms")
        print(f"bench: http_list_p50_overhead_ms = {p50_ms(http_times) - p50_ms(grpc_times):.2f} ms")

        full_times: list[float] = []
        sampled_times: list[float] = []
        size_full = size_sampled = 0
        for _ in range(CURVE_CALLS):
            started = time.perf_counter()
            reply = http.get(f"/database/runs/{curve_run}", params={"view": "full"})
            episodes = len(reply.json()["run"]["curves"]["rewards"])
            full_times.append(time.perf_counter() - started)
            assert episodes == CURVE_EPISODES, episodes
            size_full = len(reply.content)
            started = time.perf_counter()
            reply = http.get("/dashboard/curves", params={"run_id": curve_run, "width": 1000})
            reply.json()
            sampled_times.append(time.perf_counter() - started)
            size_sampled = len(reply.content)
        print(f"  curves: full JSON {size_full / 1024:.0f} KiB, downsampled JSON {size_sampled / 1024:.0f} KiB")
        print(f"bench: http_curve_6000_p50_ms = {p50_ms(full_times):.2f} ms")
        print(f"bench: http_curve_6000_downsampled_p50_ms = {p50_ms(sampled_times):.2f} ms")
        print(f"  ({CURVE_EPISODES} episodes; {LIST_RUNS + 1} runs listed; {ROUNDS}x{PER_ROUND} calls per side)")


def main() -> int:
    from registry_service import users

    (ROOT / ".data").mkdir(exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix="bench-web-", dir=ROOT / ".data"))
    server = None
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if os.environ.get("DATABASE_URL"):
            print("bench_web: needs its own database; runs on an embedded PostgreSQL", flush=True)
        server = EmbeddedPostgres(data_dir=temp / "pg", durable=False)
        url = server.start()
        ports = {name: free_port() for name in ("registry", "trainer", "gateway", "web")}
        registry = f"127.0.0.1:{ports['registry']}"
        trainer = f"127.0.0.1:{ports['trainer']}"
        gateway = f"127.0.0.1:{ports['gateway']}"
        web = f"http://127.0.0.1:{ports['web']}"
        specs = [
            ("registry_service", {"DATABASE_URL": url, "REGISTRY_ADDRESS": registry}),
            ("trainer_service", {"TRAINER_ADDRESS": trainer, "REGISTRY_TARGET": registry, "TRAINER_WORKERS": "1"}),
            ("gateway", {"GATEWAY_ADDRESS": gateway, "TRAINER_TARGETS": trainer, "REGISTRY_TARGET": registry}),
            ("web", {"WEB_PORT": str(ports["web"]), "GATEWAY_TARGET": gateway, "LOG_LEVEL": "WARNING"}),
        ]
        for module, env in specs:
            log = (temp / f"{module}.log").open("wb")
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", module],
                    cwd=ROOT,
                    env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            if module == "web":
                wait_http(web)
            else:
                wait_grpc({"registry_service": registry, "trainer_service": trainer, "gateway": gateway}[module])
        with psycopg.connect(url, autocommit=True) as conn:
            key = users.ensure_user_with_key(conn, "bench-web", "trainer")
        measure(gateway, web, key)
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        if server is not None:
            server.stop()
        shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
