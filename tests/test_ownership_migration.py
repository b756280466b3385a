"""Migration 0013 on a database that already holds runs: their owners become unknown, not invented."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import grpc
import psycopg
import pytest
from psycopg import conninfo
from psycopg.types.json import Jsonb

from registry_service.db import CREATE_MIGRATIONS_TABLE, apply_migrations, load_migrations
from taxidriver.registry.v1 import registry_service_pb2 as rpb
from taxidriver.registry.v1 import registry_service_pb2_grpc as rgrpc
from tests.support import SEED_STATS_BY_ALGORITHM, InProcessService, LoopThread

OWNERSHIP_VERSION = 13


@pytest.fixture()
def database_before_ownership(database_url: str, registry: InProcessService) -> Iterator[str]:
    """A private database migrated up to (not including) 0013, with a run and an annotation in it."""
    name = f"owners_{uuid.uuid4().hex[:10]}"
    admin = conninfo.make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = conninfo.make_conninfo(database_url, dbname=name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(CREATE_MIGRATIONS_TABLE)
        for migration in load_migrations():
            if migration.version >= OWNERSHIP_VERSION:
                continue
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (migration.version, migration.name)
                )
        run_id = uuid.uuid4()
        conn.execute(
            "INSERT INTO training_runs (run_id, algorithm, status, params, test_metrics)"
            " VALUES (%s, 'sarsa', 'completed', %s, %s)",
            (run_id, Jsonb({"alpha": 0.1, "gamma": 0.99}), Jsonb({"success_rate": 0.9, "avg_steps": 14.0})),
        )
        conn.execute(
            "INSERT INTO run_annotations (annotation_id, run_id, annotation) VALUES (%s, %s, 'old note')",
            (uuid.uuid4(), run_id),
        )
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_existing_runs_get_an_unknown_owner_and_the_seed_sql_still_runs(
    database_before_ownership: str, loop_thread: LoopThread
) -> None:
    from registry_service.app import start_registry
    from registry_service.settings import RegistrySettings

    applied = asyncio.run(apply_migrations(database_before_ownership))
    assert applied and applied[0].startswith(f"{OWNERSHIP_VERSION:04d}_")
    with psycopg.connect(database_before_ownership) as conn:
        assert conn.execute("SELECT creator, resumed_by, cancelled_by FROM training_runs").fetchall() == [
            (None, None, None)
        ]
        assert conn.execute("SELECT author FROM run_annotations").fetchall() == [(None,)]
        assert [row[0] for row in conn.execute(SEED_STATS_BY_ALGORITHM).fetchall()] == ["sarsa"]

    settings = RegistrySettings(address="127.0.0.1:0", database_url=database_before_ownership)
    second = InProcessService(loop_thread, lambda: start_registry(settings))
    try:
        with grpc.insecure_channel(second.target) as channel:
            stub = rgrpc.RegistryServiceStub(channel)
            unknown = stub.ListRuns(rpb.ListRunsRequest(filter='creator = ""'), timeout=10)
            assert [run.creator for run in unknown.runs] == [""]
            assert stub.ListRuns(rpb.ListRunsRequest(filter='creator = "alice"'), timeout=10).runs == []
            notes = stub.ListAnnotations(rpb.ListAnnotationsRequest(run_id=unknown.runs[0].run_id), timeout=10)
            assert [note.author for note in notes.annotations] == [""]
    finally:
        second.stop()
