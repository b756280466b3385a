"""End-to-end ingest: trainer-like gRPC streams into a real registry process and PostgreSQL.

Prints `bench: ingest_episodes_per_s` (episodes acknowledged per second over
several concurrent runs) and `bench: bytes_per_run_6000_episodes` (growth of
every registry table, indexes and TOAST included, per completed 6000-episode
run). Uses $DATABASE_URL's server (a temporary database) or an embedded one
started like the test suite's (fsync off: it measures our code, not the disk).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import psycopg
from psycopg import conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quick import size  # noqa: E402
from taxidriver.embedded_pg import EmbeddedPostgres, free_port  # noqa: E402
from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2  # noqa: E402
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc  # noqa: E402
from tests.support import wait_for_health  # noqa: E402

EPISODES = 6000
BATCH = 1000
CONCURRENT_RUNS = size(4, 2)
ROUNDS = size(11, 2)
SIZE_RUNS = size(20, 2)

TABLES = ("training_runs", "run_episodes", "artifacts", "saved_models", "run_annotations")


def episode_batches(
    run_id: str, rng: np.random.Generator, batch: int = BATCH
) -> list[ingest_pb2.IngestEpisodesRequest]:
    """Realistic Taxi curves: integer-valued rewards, steps up to 200, decaying epsilon."""
    steps = np.minimum(200, rng.geometric(0.02, EPISODES) + 10).astype(np.int32)
    successes = steps < 200
    rewards = np.where(successes, 20 - steps, -steps - 10 * rng.integers(0, 5, EPISODES)).astype(np.float32)
    epsilons = np.maximum(0.01, 0.995 ** np.arange(EPISODES)).astype(np.float32)
    td_errors = rng.gamma(2.0, 0.3, EPISODES).astype(np.float32)
    return [
        ingest_pb2.IngestEpisodesRequest(
            run_id=run_id,
            first_episode=start,
            rewards=rewards[start : start + batch].tolist(),
            steps=steps[start : start + batch].tolist(),
            epsilons=epsilons[start : start + batch].tolist(),
            td_errors=td_errors[start : start + batch].tolist(),
            successes=successes[start : start + batch].tolist(),
        )
        for start in range(0, EPISODES, batch)
    ]


async def ingest_run(stub: ingest_grpc.IngestServiceStub, batches: list[ingest_pb2.IngestEpisodesRequest]) -> int:
    acks = [ack async for ack in stub.IngestEpisodes(iter(batches))]
    return acks[-1].episodes_recorded


async def register(stub: ingest_grpc.IngestServiceStub, run_id: str) -> None:
    await stub.RegisterRun(
        ingest_pb2.RegisterRunRequest(run_id=run_id, algorithm="q_learning", mode="user", episodes_planned=EPISODES)
    )


async def measure(target: str, url: str) -> None:
    rng = np.random.default_rng(7)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ingest_grpc.IngestServiceStub(channel)
        # Throughput: CONCURRENT_RUNS runs streamed at once, ROUNDS times (messages prepared beforehand).
        # The trainer coalesces pending episodes into requests of up to 20,000; 1,000 is the cautious case.
        for batch, name in ((BATCH, "ingest_episodes_per_s"), (EPISODES, "ingest_episodes_per_s_batch_6000")):
            rounds = []
            for _ in range(ROUNDS):
                ids = [str(uuid.uuid4()) for _ in range(CONCURRENT_RUNS)]
                await asyncio.gather(*(register(stub, run_id) for run_id in ids))
                rounds.append([episode_batches(run_id, rng, batch) for run_id in ids])
            await asyncio.gather(*(ingest_run(stub, b) for b in rounds[0]))  # warm-up
            started = time.perf_counter()
            total = 0
            for batches in rounds[1:]:
                total += sum(await asyncio.gather(*(ingest_run(stub, b) for b in batches)))
            elapsed = time.perf_counter() - started
            print(f"bench: {name} = {total / elapsed:.0f} episodes/s")
            print(f"  ({total} episodes, {CONCURRENT_RUNS} concurrent streams, batches of {batch}, {elapsed:.2f}s)")

        # Storage: completed runs (episodes compacted), every table with its indexes and TOAST.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            before = table_bytes(conn)
        for _ in range(SIZE_RUNS):
            run_id = str(uuid.uuid4())
            await register(stub, run_id)
            await ingest_run(stub, episode_batches(run_id, rng))
            await stub.CompleteRun(ingest_pb2.CompleteRunRequest(run_id=run_id, episodes_total=EPISODES))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            after = table_bytes(conn)
        per_run = (after - before) / SIZE_RUNS
        print(f"bench: bytes_per_run_6000_episodes = {per_run:.0f} bytes")
        print("  reference: the seed stored ~5.9 MB of JSON per 6000-episode run; target <= 200 KB")


def table_bytes(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT sum(pg_total_relation_size(t::regclass)) FROM unnest(%s::text[]) t", (list(TABLES),)
    ).fetchone()
    return int(row[0]) if row else 0


def main() -> int:
    temp = None
    server = None
    admin = None
    (ROOT / ".data").mkdir(exist_ok=True)  # a fresh clone has no .data yet (its log goes there)
    if os.environ.get("DATABASE_URL"):
        name = f"bench_ingest_{uuid.uuid4().hex[:8]}"
        admin = conninfo.make_conninfo(os.environ["DATABASE_URL"], dbname="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = conninfo.make_conninfo(os.environ["DATABASE_URL"], dbname=name)
    else:
        temp = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=ROOT / ".data"))
        server = EmbeddedPostgres(data_dir=temp, durable=False)
        url = server.start()
    port = free_port()
    log = open(ROOT / ".data" / "bench-ingest-registry.log", "wb")
    registry = subprocess.Popen(
        [sys.executable, "-m", "registry_service"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url, "REGISTRY_ADDRESS": f"127.0.0.1:{port}", "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_health(f"127.0.0.1:{port}", "taxidriver.ingest.v1.IngestService")
        asyncio.run(measure(f"127.0.0.1:{port}", url))
    finally:
        registry.terminate()
        registry.wait(30)
        log.close()
        if server is not None:
            server.stop()
            shutil.rmtree(temp, ignore_errors=True)
        if admin is not None:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
