"""Query latency at 100k runs: p50/p99 of the registry's query RPCs over gRPC.

Seeds 100,000 runs (and 10,000 annotations) with COPY into a database it
creates and drops ($DATABASE_URL's server, or an embedded server in a temporary
folder), starts a registry process on it and times each RPC from a client.
Prints `bench: query_p50_ms_<name>` and `query_p99_ms_<name>` lines (500 calls
each: with 50-200 the p99 was about the slowest call, i.e. whatever else the
machine ran at that moment); targets p99 <= 20 ms, list/best/stats/search <= 10.
For each query it also prints the registry's own time (the handler's duration
from its call log: no client, no transport) and the CPU per call of the
registry process and of its PostgreSQL backends (from /proc): on a loaded
machine latency is mostly waiting for a core, CPU per call is the query's cost.
Reference figures: the seed's own SQL run directly with psycopg on the same data.

Seen on the shared 2-core machine at load 9-12 (README, Performance): p50 6-115
ms and p99 35-520 ms whatever the code, the handler's time within ~3 ms of the
client's (gRPC is not where the time goes), PostgreSQL's best time for each
statement 0.1-2 ms, and ~10 ms of registry CPU per 50-run page: the latency is
waiting for a core, once per round trip and for the registry's Python.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
from google.protobuf import struct_pb2
from psycopg import conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quick import size  # noqa: E402
from registry_service.db import apply_migrations  # noqa: E402
from taxidriver.embedded_pg import EmbeddedPostgres, free_port  # noqa: E402
from taxidriver.registry.v1 import registry_service_pb2 as pb  # noqa: E402
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc  # noqa: E402
from taxidriver.registry.v1 import resources_pb2  # noqa: E402
from taxidriver.vocabulary import status_word  # noqa: E402
from tests.support import wait_for_health  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", str(size(100_000, 1_000))))
# p99 of 500 calls is their 6th slowest; with 50-200 it was about the slowest call, i.e. the load.
CALLS = size(500, 10)
LOG = ROOT / ".data" / "bench-queries-registry.log"
ALGORITHMS = ["brute_force", "q_learning", "sarsa", "expected_sarsa", "double_q_learning", "monte_carlo"]
# Most runs completed, a few stopped otherwise or still running (the words stored in training_runs.status).
COMPLETED = status_word(resources_pb2.RUN_STATUS_COMPLETED)
STATUSES = [COMPLETED] * 17 + [
    status_word(resources_pb2.RUN_STATUS_FAILED),
    status_word(resources_pb2.RUN_STATUS_CANCELLED),
    status_word(resources_pb2.RUN_STATUS_RUNNING),
]


def seed(url: str) -> None:
    rng = random.Random(42)
    now = datetime.now(UTC)
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        with conn.cursor() as cursor:
            columns = (
                "run_id, algorithm, status, mode, env_id, params, training_metrics, test_metrics, "
                "execution_time, created_at, updated_at, episodes_recorded, episodes_planned, stop_reason"
            )
            annotated: list[uuid.UUID] = []
            with cursor.copy(f"COPY training_runs ({columns}) FROM STDIN") as copy:
                for index in range(RUNS):
                    run_id = uuid.UUID(int=rng.getrandbits(128), version=4)
                    if index % 10 == 0:
                        annotated.append(run_id)
                    algorithm = rng.choice(ALGORITHMS)
                    status = rng.choice(STATUSES)
                    episodes = rng.choice([1000, 2000, 6000, 10000])
                    params = {
                        "alpha": rng.choice([0.05, 0.1, 0.12, 0.2, 0.5]),
                        "gamma": rng.choice([0.9, 0.95, 0.99]),
                        "epsilon": 1.0,
                        "epsilon_min": 0.01,
                        "epsilon_decay": 0.995,
                        "training_runs": episodes,
                        "max_steps": 200,
                        "test_episodes": 100,
                        "seed": index,
                    }
                    completed = status == COMPLETED
                    success = min(1.0, max(0.0, rng.gauss(0.9, 0.1))) if completed else None
                    test_metrics = (
                        {"success_rate": success, "avg_steps": rng.uniform(12.5, 60), "avg_reward": rng.uniform(-5, 8)}
                        if completed
                        else None
                    )
                    created = now - timedelta(seconds=rng.uniform(0, 90 * 86400))
                    copy.write_row(
                        (
                            run_id,
                            algorithm,
                            status,
                            rng.choice(["user", "optimized", "time_budget"]),
                            "Taxi-v3",
                            json.dumps(params),
                            json.dumps({"mean_reward": rng.uniform(-50, 8)}) if completed else None,
                            json.dumps(test_metrics) if test_metrics else None,
                            rng.uniform(1, 60) if completed else None,
                            created,
                            created,
                            episodes if completed else episodes // 2,
                            episodes,
                            "episodes_done" if completed else "",
                        )
                    )
            with cursor.copy("COPY run_annotations (annotation_id, run_id, annotation, tags) FROM STDIN") as copy:
                for run_id in annotated:
                    tags = rng.sample(["optimized", "best_performance", "baseline", "sweep", "bug"], 2)
                    copy.write_row((uuid.uuid4(), run_id, "seeded annotation", "{" + ",".join(tags) + "}"))
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    print(f"  seeded {RUNS} runs with COPY in {time.perf_counter() - started:.1f}s")


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 (nearest rank) of a list of durations."""
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def timed(call: Callable[[int], object], calls: int) -> tuple[float, float]:
    """p50/p99 of `calls` calls after 5 warm-up calls; `call(i)` gets its sample's number (-1: warm-up)."""
    for _ in range(5):
        call(-1)
    samples = []
    for index in range(calls):
        started = time.perf_counter()
        call(index)
        samples.append((time.perf_counter() - started) * 1000)
    return percentiles(samples)


def server_times(log: Path) -> dict[str, list[float]]:
    """The registry's own duration of each timed call (its call log's duration_ms), by case name.

    Each timed call carries x-request-id `bench:<case>:<i>`; the registry logs one JSON line per call
    with that id and its handler's time (no gRPC transport, no client).
    """
    found: dict[str, list[float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"bench:' not in line:
            continue
        entry = json.loads(line)
        request_id = entry.get("request_id", "")
        if request_id.startswith("bench:") and "duration_ms" in entry:
            found.setdefault(request_id.split(":")[1], []).append(float(entry["duration_ms"]))
    return found


def cpu_ms(pids: list[int]) -> float | None:
    """CPU time (user + system) used so far by these processes, from /proc (None: not readable,
    e.g. a PostgreSQL server on another machine). Unlike a call's latency, it barely depends on
    what else the machine runs."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total * 1000 / os.sysconf("SC_CLK_TCK")


def backends(url: str) -> list[int]:
    """The PostgreSQL processes serving the registry's connections."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
    return [row[0] for row in rows]


def measure(target: str, url: str, registry_pid: int) -> None:
    params = struct_pb2.Struct()
    params.update({"alpha": 0.1, "gamma": 0.99, "training_runs": 6000})
    with grpc.insecure_channel(target) as channel:
        stub = registry_grpc.RegistryServiceStub(channel)
        first_page = stub.ListRuns(pb.ListRunsRequest(page_size=50))
        requests: dict[str, tuple[Callable[..., Any], Any]] = {
            "list": (stub.ListRuns, pb.ListRunsRequest(page_size=50)),
            "list_next_page": (
                stub.ListRuns,
                pb.ListRunsRequest(page_size=50, page_token=first_page.next_page_token),
            ),
            "list_filtered": (
                stub.ListRuns,
                pb.ListRunsRequest(
                    filter='algorithm = "sarsa" AND test_metrics.success_rate > 0.95 AND params.alpha = 0.1',
                    order_by="test_metrics.avg_steps asc",
                    page_size=50,
                ),
            ),
            "list_tag": (stub.ListRuns, pb.ListRunsRequest(filter='tags:"best_performance"', page_size=50)),
            "best": (stub.ListBestRuns, pb.ListBestRunsRequest(limit=10)),
            "best_sarsa": (stub.ListBestRuns, pb.ListBestRunsRequest(algorithm="sarsa", limit=10)),
            "stats": (stub.GetStatistics, pb.GetStatisticsRequest()),
            "stats_filtered": (stub.GetStatistics, pb.GetStatisticsRequest(filter='algorithm = "sarsa"')),
            "search": (stub.SearchRunsByParams, pb.SearchRunsByParamsRequest(params=params, page_size=50)),
        }
        for name, (method, request) in requests.items():

            def call(index: int, method: Callable[..., Any] = method, request: Any = request, name: str = name) -> Any:
                tag = f"bench:{name}:{index}" if index >= 0 else f"warm:{name}"
                return method(request, metadata=(("x-request-id", tag),))

            serving = backends(url)
            cpu_before = cpu_ms([registry_pid]), cpu_ms(serving)
            p50, p99 = timed(call, CALLS)
            cpu_after = cpu_ms([registry_pid]), cpu_ms(serving)
            print(f"bench: query_p50_ms_{name} = {p50:.2f} ms")
            print(f"bench: query_p99_ms_{name} = {p99:.2f} ms")
            spent = [
                f"{who} {(after - before) / (CALLS + 5):.2f} ms"
                for who, before, after in zip(("registry", "postgres"), cpu_before, cpu_after, strict=True)
                if before is not None and after is not None
            ]
            print(f"  CPU per call {name}: {', '.join(spent)} (user + system, {CALLS + 5} calls)")
    time.sleep(0.5)  # the registry writes a call's log line after its reply
    for name, durations in server_times(LOG).items():
        p50, p99 = percentiles(durations)
        print(f"  server side {name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms ({len(durations)} calls, handler time)")
    # Reference: the seed's statistics query, straight SQL, no gRPC.
    with psycopg.connect(url) as conn:
        seed_sql = (
            "SELECT algorithm, COUNT(*) as total_runs, AVG((test_metrics->>'success_rate')::FLOAT) as avg_success,"
            " AVG((test_metrics->>'avg_steps')::FLOAT) as avg_steps FROM training_runs"
            " WHERE status = 'completed' GROUP BY algorithm"
        )
        p50, p99 = timed(lambda _index: conn.execute(seed_sql).fetchall(), size(50, 3))
        print(f"  reference: the seed's statistics SQL directly: p50 {p50:.2f} ms, p99 {p99:.2f} ms")


def main() -> int:
    temp = None
    server = None
    admin = None
    name = f"bench_queries_{uuid.uuid4().hex[:8]}"
    (ROOT / ".data").mkdir(exist_ok=True)  # a fresh clone has no .data yet
    if os.environ.get("DATABASE_URL"):
        admin = conninfo.make_conninfo(os.environ["DATABASE_URL"], dbname="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = conninfo.make_conninfo(os.environ["DATABASE_URL"], dbname=name)
    else:
        temp = Path(tempfile.mkdtemp(prefix="bench-queries-", dir=ROOT / ".data"))
        server = EmbeddedPostgres(data_dir=temp, durable=False)
        url = server.start()
    registry = None
    log = open(LOG, "wb")
    try:
        import asyncio

        asyncio.run(apply_migrations(url))
        seed(url)
        port = free_port()
        registry = subprocess.Popen(
            [sys.executable, "-m", "registry_service"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": url, "REGISTRY_ADDRESS": f"127.0.0.1:{port}", "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_health(f"127.0.0.1:{port}", "taxidriver.registry.v1.RegistryService")
        measure(f"127.0.0.1:{port}", url, registry.pid)
    finally:
        if registry is not None:
            registry.terminate()
            registry.wait(30)
        log.close()
        if server is not None and temp is not None:
            server.stop()
            shutil.rmtree(temp, ignore_errors=True)
        if admin is not None:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
