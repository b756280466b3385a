"""Load: 50 concurrent clients through one gateway, queries mixed with small trainings.

Starts registry, trainer (2 workers) and gateway in-process on a background loop, on a
database it creates and drops ($DATABASE_URL's server, or an embedded PostgreSQL in a
temporary folder under .data/). The gateway runs without API keys (authentication is
measured elsewhere). Each of 50 client threads makes a fixed number of calls over its own
channel: ListRuns, GetRun, ListBestRuns, GetStatistics and, one call in twenty, a small
Q-learning run (300 episodes, 10 test episodes). Then it stops by itself and prints
`bench: load_*` lines. Errors are every non-OK answer; RESOURCE_EXHAUSTED (the trainer's
per-caller cap) is also counted apart as load_refused.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import psycopg
from psycopg import conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quick import size  # noqa: E402
from taxidriver.embedded_pg import EmbeddedPostgres  # noqa: E402
from taxidriver.registry.v1 import registry_service_pb2 as pb  # noqa: E402
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc  # noqa: E402
from taxidriver.trainer.v1 import trainer_service_pb2 as tpb  # noqa: E402
from taxidriver.trainer.v1 import trainer_service_pb2_grpc as trainer_grpc  # noqa: E402
from tests.support import InProcessService, LoopThread  # noqa: E402

CLIENTS = int(os.environ.get("BENCH_LOAD_CLIENTS", str(size(50, 4))))
CALLS_PER_CLIENT = int(os.environ.get("BENCH_LOAD_CALLS", str(size(40, 4))))


def small_run(seed: int) -> tpb.StartRunRequest:
    return tpb.StartRunRequest(
        algorithm="q_learning",
        mode=tpb.TRAINING_MODE_USER,
        hyperparameters=tpb.Hyperparameters(
            alpha=0.5,
            gamma=0.95,
            epsilon=1.0,
            epsilon_min=0.05,
            epsilon_decay=0.99,
            training_episodes=300,
            max_steps=200,
        ),
        seed=seed,
        test_episodes=10,
    )


def client(target: str, index: int, run_ids: list[str], results: list[tuple[float, grpc.StatusCode]]) -> None:
    rng = random.Random(index)
    with grpc.insecure_channel(target) as channel:
        queries = registry_grpc.RegistryServiceStub(channel)
        trainer = trainer_grpc.TrainerServiceStub(channel)
        for call in range(CALLS_PER_CLIENT):
            roll = rng.random()
            started = time.perf_counter()
            try:
                if call % 20 == 0:
                    run_ids.append(trainer.StartRun(small_run(index * 1000 + call), timeout=60).run_id)
                elif roll < 0.35:
                    queries.ListRuns(pb.ListRunsRequest(page_size=20), timeout=30)
                elif roll < 0.6 and run_ids:
                    queries.GetRun(pb.GetRunRequest(run_id=rng.choice(run_ids)), timeout=30)
                elif roll < 0.8:
                    queries.ListBestRuns(pb.ListBestRunsRequest(limit=10), timeout=30)
                else:
                    queries.GetStatistics(pb.GetStatisticsRequest(), timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
            results.append((time.perf_counter() - started, code))


def main() -> int:
    server: EmbeddedPostgres | None = None
    temp: Path | None = None
    admin = name = ""
    if os.environ.get("DATABASE_URL"):
        admin = conninfo.make_conninfo(os.environ["DATABASE_URL"], dbname="postgres")
        name = f"bench_load_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = conninfo.make_conninfo(os.environ["DATABASE_URL"], dbname=name)
    else:
        (ROOT / ".data").mkdir(exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix="bench-load-", dir=ROOT / ".data"))
        server = EmbeddedPostgres(data_dir=temp, durable=False)
        url = server.start()
    loop = LoopThread()
    services: list[InProcessService] = []
    try:
        from gateway.app import start_gateway
        from gateway.settings import GatewaySettings
        from registry_service.app import start_registry
        from registry_service.settings import RegistrySettings
        from trainer_service.app import start_trainer
        from trainer_service.settings import TrainerSettings

        registry = InProcessService(
            loop, lambda: start_registry(RegistrySettings(address="127.0.0.1:0", database_url=url, pool_max_size=20))
        )
        services.append(registry)
        trainer = InProcessService(
            loop,
            lambda: start_trainer(
                TrainerSettings(
                    address="127.0.0.1:0", registry_target=registry.target, workers=2, max_active_runs_per_caller=1000
                )
            ),
        )
        services.append(trainer)
        gateway = InProcessService(
            loop,
            lambda: start_gateway(
                GatewaySettings(
                    address="127.0.0.1:0",
                    trainer_targets=(trainer.target,),
                    registry_target=registry.target,
                    auth_required=False,
                )
            ),
        )
        services.append(gateway)
        # Let the trainer's workers warm up so the first trainings do not time the JIT.
        deadline = time.monotonic() + 120
        while trainer.app.runs.pool.ready_workers < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        results: list[tuple[float, grpc.StatusCode]] = []
        run_ids: list[str] = []
        threads = [threading.Thread(target=client, args=(gateway.target, i, run_ids, results)) for i in range(CLIENTS)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        latencies = sorted(seconds * 1000 for seconds, _ in results)
        errors = sum(1 for _, code in results if code != grpc.StatusCode.OK)
        refused = sum(1 for _, code in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED)
        codes = sorted({code.name for _, code in results if code != grpc.StatusCode.OK})
        print(f"bench: load_clients = {CLIENTS} clients")
        print(f"bench: load_calls = {len(results)} calls")
        print(f"bench: load_errors = {errors} calls{' (' + ', '.join(codes) + ')' if codes else ''}")
        print(f"bench: load_refused = {refused} calls")
        print(f"bench: load_trainings_started = {len(run_ids)} runs")
        print(f"bench: load_p50_ms = {statistics.median(latencies):.1f} ms")
        print(f"bench: load_p99_ms = {latencies[int(len(latencies) * 0.99) - 1]:.1f} ms")
        print(f"bench: load_throughput_calls_per_s = {len(results) / elapsed:.1f} calls/s")
        for service in reversed(services):
            service.stop(grace=2.0)
        services.clear()
    finally:
        for service in reversed(services):
            try:
                service.stop(grace=1.0)
            except Exception as exc:  # noqa: BLE001 - best effort while tearing down after a failure
                print(f"stopping a service failed: {exc}", file=sys.stderr)
        loop.close()
        if server is not None:
            server.stop()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        if name:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
