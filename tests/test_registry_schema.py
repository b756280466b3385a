"""Schema: the seed's SQL runs verbatim, migrations are idempotent, health follows the database."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import conninfo
from psycopg.types.json import Jsonb

from registry_service.db import apply_migrations, load_migrations
from tests.support import ROOT, SEED_OPTIMAL_PARAMS, SEED_STATS_BY_ALGORITHM, SEED_TREND


@pytest.fixture()
def seed_db(database_url: str, registry) -> psycopg.Connection:
    """A private database with the registry's schema and a handful of known runs."""
    name = f"seed_{uuid.uuid4().hex[:10]}"
    admin = conninfo.make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = conninfo.make_conninfo(database_url, dbname=name)
    asyncio.run(apply_migrations(url))
    rows = [
        ("sarsa", "completed", 0.1, 0.99, 0.95, 14.0, "2026-01-01 10:00+00"),
        ("sarsa", "completed", 0.2, 0.95, 0.85, 20.0, "2026-01-01 12:00+00"),
        ("q_learning", "completed", 0.12, 0.99, 1.0, 13.2, "2026-01-02 09:00+00"),
        ("q_learning", "running", 0.3, 0.9, None, None, "2026-01-02 10:00+00"),
    ]
    conn = psycopg.connect(url, autocommit=True)
    for algorithm, status, alpha, gamma, success, steps, created in rows:
        test_metrics = None if success is None else Jsonb({"success_rate": success, "avg_steps": steps})
        conn.execute(
            "INSERT INTO training_runs (run_id, algorithm, status, params, test_metrics, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (uuid.uuid4(), algorithm, status, Jsonb({"alpha": alpha, "gamma": gamma}), test_metrics, created),
        )
    yield conn
    conn.close()
    with psycopg.connect(admin, autocommit=True) as admin_conn:
        admin_conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_seed_statistics_query_runs_verbatim(seed_db: psycopg.Connection) -> None:
    rows = {r[0]: r[1:] for r in seed_db.execute(SEED_STATS_BY_ALGORITHM).fetchall()}
    assert rows["sarsa"][0] == 2
    assert rows["sarsa"][1] == pytest.approx(0.90)
    assert rows["sarsa"][2] == pytest.approx(17.0)
    assert rows["q_learning"][:2] == (1, pytest.approx(1.0))


def test_seed_trend_query_runs_verbatim(seed_db: psycopg.Connection) -> None:
    seed_db.execute("SET TIME ZONE 'UTC'")
    rows = seed_db.execute(SEED_TREND).fetchall()
    assert [r[0].day for r in rows] == [1, 2]
    assert rows[0][1] == pytest.approx(0.90)
    assert rows[1][1] == pytest.approx(1.0)


def test_seed_optimal_params_query_runs_verbatim(seed_db: psycopg.Connection) -> None:
    rows = seed_db.execute(SEED_OPTIMAL_PARAMS).fetchall()
    assert rows == [("0.12", "0.99", "1.0"), ("0.1", "0.99", "0.95")]


def test_migrations_are_idempotent(database_url: str, registry, db: psycopg.Connection) -> None:
    assert asyncio.run(apply_migrations(database_url)) == []
    versions = [r[0] for r in db.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()]
    assert versions == [m.version for m in load_migrations()]


def test_health_is_serving_with_a_database(registry) -> None:
    with grpc.insecure_channel(registry.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "taxidriver.registry.v1.RegistryService", "taxidriver.ingest.v1.IngestService"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=service)).status == (
                health_pb2.HealthCheckResponse.SERVING
            )


def test_health_follows_the_database() -> None:
    """A registry on its own embedded server: NOT_SERVING while it is down, SERVING again after."""
    from registry_service.app import start_registry
    from registry_service.settings import RegistrySettings
    from taxidriver.embedded_pg import EmbeddedPostgres

    # Under .data like the session server: the server account cannot enter pytest's private tmp folders.
    data_dir = ROOT / ".data" / f"test-registry-health-{uuid.uuid4().hex[:8]}"
    server = EmbeddedPostgres(data_dir=data_dir, durable=False)
    url = server.start()

    async def scenario() -> list[int]:
        app = await start_registry(
            RegistrySettings(address="127.0.0.1:0", database_url=url, health_interval=0.2, pool_min_size=1)
        )
        seen: list[int] = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)

                async def wait_for(status: int) -> None:
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
                        if reply.status == status:
                            seen.append(status)
                            return
                        await asyncio.sleep(0.1)
                    raise AssertionError(f"health never became {status}")

                await wait_for(health_pb2.HealthCheckResponse.SERVING)
                await asyncio.to_thread(server.stop)
                await wait_for(health_pb2.HealthCheckResponse.NOT_SERVING)
                # Not ready, but alive: Kubernetes must not restart it for the database's outage.
                liveness = await stub.Check(health_pb2.HealthCheckRequest(service="liveness"))
                assert liveness.status == health_pb2.HealthCheckResponse.SERVING
                await asyncio.to_thread(server.start)
                await wait_for(health_pb2.HealthCheckResponse.SERVING)
        finally:
            await app.stop(0)
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    assert seen == [1, 2, 1]
