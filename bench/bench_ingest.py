"""End-to-end ingest: trainer-like gRPC streams into a real registry process and PostgreSQL.

Prints `bench: ingest_episodes_per_s` (episodes acknowledged per second over
several concurrent runs, in the batches the trainer really sends for an optimized
Q-learning run) and `ingest_episodes_per_s_batch_600` (those of a 6000-episode user
run), each with the registry process's CPU time per batch (steadier than wall time
on a shared machine). A worker hands its episodes over at every checkpoint (every
tenth of the run, at least 100: params.default_checkpoint_every), every 5,000
episodes or every 0.2 s, whichever comes first; its kernel trains a tenth of a
10,000-episode run in well under 0.2 s, so the checkpoint sets the size: 1,000
episodes for the optimized run (10,000 episodes), 600 for a user run of the seed's
6,000. Each run's batches are sent at once on its stream (a window). The reference, in the
same run: the same batches each waiting for the ack of the one before, as the trainer's
streamer sends them (it coalesces only what piles up while a batch waits for its ack).
`bench: bytes_per_run_6000_episodes` (growth of every
registry table, indexes and TOAST included, per completed 6000-episode run: its row and
episodes, no artifact), `bytes_per_run_live_6000_episodes` (the bytes of the run's live rows:
the growth above also holds the dead chunk rows a run's compaction leaves until autovacuum
lets PostgreSQL reuse them), `bytes_per_run_6000_episodes_with_model` (the same runs once
their model is stored: a 24 KB Q-table, as CompleteRun carries it), then
`bytes_per_run_6000_episodes_with_plots` (once their first ListArtifacts had the registry
render and store their five plots: a run's cost once anyone looked at it) and
`curve_fetch_p50_ms_6000` (GetRun with every curve of one 6000-episode run, through a gateway
process; reference: direct).
BENCH_REGISTRY_PROFILE=<file> runs the registry under cProfile (its stats go to <file>).
Uses $DATABASE_URL's server (a temporary database) or an embedded one
started like the test suite's (fsync off: it measures our code, not the disk).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psycopg
from google.protobuf import struct_pb2
from psycopg import conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quick import size  # noqa: E402
from taxidriver.embedded_pg import EmbeddedPostgres, free_port  # noqa: E402
from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2  # noqa: E402
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc  # noqa: E402
from taxidriver.registry.v1 import registry_service_pb2 as registry_pb2  # noqa: E402
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc  # noqa: E402
from taxidriver.registry.v1 import resources_pb2  # noqa: E402
from tests.support import wait_for_health  # noqa: E402
from trainer_service.params import PRESETS, default_checkpoint_every  # noqa: E402

EPISODES = 6000
# The batches a worker sends (one per checkpoint, see above).
BATCH = default_checkpoint_every(PRESETS["q_learning"].hyperparameters.training_episodes)
USER_BATCH = default_checkpoint_every(EPISODES)
CONCURRENT_RUNS = size(4, 2)
ROUNDS = size(11, 2)
SIZE_RUNS = size(20, 2)
CURVE_FETCHES = size(50, 3)

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
    """A window: every batch of the run sent at once, acks read as they come (one statement per batch)."""
    acks = [ack async for ack in stub.IngestEpisodes(iter(batches))]
    return acks[-1].episodes_recorded


async def ingest_run_lockstep(
    stub: ingest_grpc.IngestServiceStub, batches: list[ingest_pb2.IngestEpisodesRequest]
) -> int:
    """The reference: each batch waits for the ack of the one before (one statement per batch)."""
    call = stub.IngestEpisodes()
    recorded = 0
    for batch in batches:
        await call.write(batch)
        recorded = (await call.read()).episodes_recorded
    await call.done_writing()
    return recorded


async def timed_rounds(
    stub: ingest_grpc.IngestServiceStub,
    rounds: list[list[list[ingest_pb2.IngestEpisodesRequest]]],
    registry_pid: int,
    send: Any,
) -> tuple[int, float, float]:
    """Episodes acked, seconds, and registry CPU ms per batch over the rounds (after a warm-up one)."""
    await asyncio.gather(*(send(stub, b) for b in rounds[0]))
    cpu = cpu_seconds(registry_pid)
    started = time.perf_counter()
    total = 0
    for batches in rounds[1:]:
        total += sum(await asyncio.gather(*(send(stub, b) for b in batches)))
    elapsed = time.perf_counter() - started
    cpu_ms = (cpu_seconds(registry_pid) - cpu) * 1000 / sum(len(b) for r in rounds[1:] for b in r)
    return total, elapsed, cpu_ms


async def register(stub: ingest_grpc.IngestServiceStub, run_id: str) -> None:
    await stub.RegisterRun(
        ingest_pb2.RegisterRunRequest(run_id=run_id, algorithm="q_learning", mode="user", episodes_planned=EPISODES)
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(target: str, url: str, gateway_target: str, registry_pid: int) -> None:
    rng = np.random.default_rng(7)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ingest_grpc.IngestServiceStub(channel)
        # Throughput: CONCURRENT_RUNS runs streamed at once, ROUNDS times (messages prepared beforehand).
        for batch, name in (
            (BATCH, "ingest_episodes_per_s"),
            (USER_BATCH, f"ingest_episodes_per_s_batch_{USER_BATCH}"),
        ):
            measured = {}
            for send in (ingest_run, ingest_run_lockstep):  # the same runs' batches, freshly registered
                rounds = []
                for _ in range(ROUNDS):
                    ids = [str(uuid.uuid4()) for _ in range(CONCURRENT_RUNS)]
                    await asyncio.gather(*(register(stub, run_id) for run_id in ids))
                    rounds.append([episode_batches(run_id, rng, batch) for run_id in ids])
                measured[send] = await timed_rounds(stub, rounds, registry_pid, send)
            total, elapsed, cpu_ms = measured[ingest_run]
            print(f"bench: {name} = {total / elapsed:.0f} episodes/s")
            print(
                f"  ({total} episodes, {CONCURRENT_RUNS} concurrent streams, batches of {batch}, {elapsed:.2f}s;"
                f" registry CPU {cpu_ms:.3f} ms per batch; load average {os.getloadavg()[0]:.1f})"
            )
            total, elapsed, cpu_ms = measured[ingest_run_lockstep]
            print(
                f"  reference: each batch waiting for its ack (one statement per batch) {total / elapsed:.0f}"
                f" episodes/s, registry CPU {cpu_ms:.3f} ms per batch"
            )

        # Storage: completed runs (episodes compacted), every table with its indexes and TOAST.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            before = table_bytes(conn)
        ids = []
        for _ in range(SIZE_RUNS):
            run_id = str(uuid.uuid4())
            ids.append(run_id)
            await register(stub, run_id)
            await ingest_run(stub, episode_batches(run_id, rng))
            await stub.CompleteRun(
                ingest_pb2.CompleteRunRequest(
                    run_id=run_id, episodes_total=EPISODES, test_metrics=SCORES, brute_force_metrics=RANDOM_SCORES
                )
            )
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            after = table_bytes(conn)
            live = live_bytes(conn, ids)
        per_run = (after - before) / SIZE_RUNS
        print(f"bench: bytes_per_run_6000_episodes = {per_run:.0f} bytes")
        print(f"bench: bytes_per_run_live_6000_episodes = {live / SIZE_RUNS:.0f} bytes")
        await stored_artifacts(stub, target, url, ids, before)
        print("  reference: the seed stored ~5.9 MB of JSON per 6000-episode run; MLflow 3 9.57 MB; target <= 100 KB")
    await curve_fetch(target, gateway_target, ids[-1])


SCORES = struct_pb2.Struct()
SCORES.update({"success_rate": 0.97, "avg_steps": 13.4, "avg_reward": 7.5})
RANDOM_SCORES = struct_pb2.Struct()
RANDOM_SCORES.update({"random_success_rate": 0.04, "random_avg_steps": 194.0, "random_avg_reward": -770.0})


async def stored_artifacts(
    stub: ingest_grpc.IngestServiceStub, target: str, url: str, ids: list[str], before: int
) -> None:
    """The same runs' growth with their model, then with their plots (rendered on first read)."""
    model = np.random.default_rng(3).normal(size=(500, 6)).tobytes()
    for run_id in ids:
        header = ingest_pb2.ArtifactHeader(
            run_id=run_id, kind=resources_pb2.ARTIFACT_KIND_MODEL, name="q_table.npy", episode=EPISODES
        )
        await stub.UploadArtifact(
            iter([ingest_pb2.UploadArtifactRequest(header=header), ingest_pb2.UploadArtifactRequest(chunk=model)])
        )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        print(f"bench: bytes_per_run_6000_episodes_with_model = {(table_bytes(conn) - before) / len(ids):.0f} bytes")
    async with grpc.aio.insecure_channel(target) as channel:
        registry = registry_grpc.RegistryServiceStub(channel)
        for run_id in ids:
            request = registry_pb2.ListArtifactsRequest(run_id=run_id, kind=resources_pb2.ARTIFACT_KIND_PLOT)
            await registry.ListArtifacts(request, timeout=120)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        print(f"bench: bytes_per_run_6000_episodes_with_plots = {(table_bytes(conn) - before) / len(ids):.0f} bytes")


async def curve_fetch(direct_target: str, gateway_target: str, run_id: str) -> None:
    """All series of one 6000-episode run (GetRun FULL), direct and through the gateway, alternated."""
    request = registry_pb2.GetRunRequest(run_id=run_id, view=resources_pb2.RUN_VIEW_FULL)
    samples: dict[str, list[float]] = {"direct": [], "gateway": []}
    async with grpc.aio.insecure_channel(direct_target) as direct, grpc.aio.insecure_channel(gateway_target) as gw:
        stubs = {"direct": registry_grpc.RegistryServiceStub(direct), "gateway": registry_grpc.RegistryServiceStub(gw)}
        for stub in stubs.values():
            reply = await stub.GetRun(request)
            assert len(reply.run.curves.rewards) == EPISODES
        for _ in range(CURVE_FETCHES):
            for name, stub in stubs.items():
                started = time.perf_counter()
                await stub.GetRun(request)
                samples[name].append((time.perf_counter() - started) * 1000)
    print(f"bench: curve_fetch_p50_ms_6000 = {statistics.median(samples['gateway']):.2f} ms")
    direct_p50 = statistics.median(samples["direct"])
    print(f"  reference: direct to the registry p50 {direct_p50:.2f} ms; MLflow 3, one metric's 6000 steps: 300-407 ms")


def live_bytes(conn: psycopg.Connection, run_ids: list[str]) -> int:
    """The runs' own rows (training_runs and run_episodes, TOASTed values at their stored size)."""
    row = conn.execute(
        "SELECT (SELECT coalesce(sum(pg_column_size(r.*)), 0) FROM training_runs r WHERE r.run_id = ANY(%s::uuid[]))"
        " + (SELECT coalesce(sum(pg_column_size(e.*)), 0) FROM run_episodes e WHERE e.run_id = ANY(%s::uuid[]))",
        (run_ids, run_ids),
    ).fetchone()
    return int(row[0]) if row else 0


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
    profile = os.environ.get("BENCH_REGISTRY_PROFILE")
    registry = subprocess.Popen(
        [sys.executable, *(["-m", "cProfile", "-o", profile] if profile else []), "-m", "registry_service"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url, "REGISTRY_ADDRESS": f"127.0.0.1:{port}", "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    gateway_port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway"],
        cwd=ROOT,
        env={
            **os.environ,
            "GATEWAY_ADDRESS": f"127.0.0.1:{gateway_port}",
            "GATEWAY_AUTH_REQUIRED": "false",
            "REGISTRY_TARGET": f"127.0.0.1:{port}",
            "TRAINER_TARGETS": f"127.0.0.1:{port}",  # unused here: no trainer call is made
            "PYTHONPATH": str(ROOT),
            "LOG_LEVEL": "WARNING",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_health(f"127.0.0.1:{port}", "taxidriver.ingest.v1.IngestService")
        wait_for_health(f"127.0.0.1:{gateway_port}", "taxidriver.registry.v1.RegistryService")
        asyncio.run(measure(f"127.0.0.1:{port}", url, f"127.0.0.1:{gateway_port}", registry.pid))
    finally:
        gateway.terminate()
        gateway.wait(30)
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
