"""Backup/restore and the purge command, run as real processes against real databases."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from psycopg import conninfo

from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from tests.support import ROOT


def run_module(module: str, *args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture()
def fresh_database(database_url: str) -> Iterator[str]:
    name = f"restore_{uuid.uuid4().hex[:10]}"
    admin = conninfo.make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield conninfo.make_conninfo(database_url, dbname=name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_backup_restores_into_a_fresh_database(
    registry, database_url: str, fresh_database: str, tmp_path: Path
) -> None:
    run_id = str(uuid.uuid4())
    with grpc.insecure_channel(registry.target) as channel:
        ingest = ingest_grpc.IngestServiceStub(channel)
        ingest.RegisterRun(ingest_pb2.RegisterRunRequest(run_id=run_id, algorithm="sarsa", episodes_planned=3))
        list(
            ingest.IngestEpisodes(
                iter([ingest_pb2.IngestEpisodesRequest(run_id=run_id, rewards=[1.0, 2.0, 3.0], steps=[4, 5, 6])])
            )
        )
    file = tmp_path / "registry.dump"
    dumped = run_module("registry_service.backup", "dump", "--file", str(file), url=database_url)
    assert dumped.returncode == 0, dumped.stderr
    assert file.stat().st_size > 0
    restored = run_module("registry_service.backup", "restore", "--file", str(file), url=fresh_database)
    assert restored.returncode == 0, restored.stderr
    with psycopg.connect(fresh_database) as conn:
        row = conn.execute(
            "SELECT r.algorithm, r.episodes_recorded, e.rewards FROM training_runs r"
            " JOIN run_episodes e USING (run_id) WHERE r.run_id = %s",
            (run_id,),
        ).fetchone()
        versions = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert row == ("sarsa", 3, [1.0, 2.0, 3.0])
    assert versions is not None and versions[0] >= 2


def test_restore_of_a_missing_file_fails_clearly(fresh_database: str, tmp_path: Path) -> None:
    result = run_module("registry_service.backup", "restore", "--file", str(tmp_path / "nope.dump"), url=fresh_database)
    assert result.returncode == 1
    assert "no backup file" in result.stderr


def test_purge_command_counts_in_dry_run(fresh_database: str) -> None:
    migrated = run_module("registry_service.migrate", url=fresh_database)
    assert migrated.returncode == 0, migrated.stderr
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO training_runs (run_id, algorithm, status, created_at) VALUES"
            " (gen_random_uuid(), 'sarsa', 'completed', now() - interval '40 days'),"
            " (gen_random_uuid(), 'sarsa', 'completed', now())"
        )
    dry = run_module("registry_service.purge", "--older-than-days", "30", "--dry-run", url=fresh_database)
    assert dry.returncode == 0 and "would purge 1 run" in dry.stderr
    done = run_module("registry_service.purge", "--older-than-days", "30", url=fresh_database)
    assert done.returncode == 0 and "purged 1 run" in done.stderr
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT count(*) FROM training_runs").fetchone() == (1,)
