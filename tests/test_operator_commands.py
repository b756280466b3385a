"""Operator commands (`users`, `backup`, `purge`, `migrate`) find their database the same way:
DATABASE_URL, else the embedded server of a running `make run` (its data folder)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from taxidriver.embedded_pg import EmbeddedPostgres
from tests.support import ROOT

COMMANDS = {
    "migrate": ["registry_service.migrate"],
    "users": ["registry_service.users", "list"],
    "purge": ["registry_service.purge", "--older-than-days", "30", "--dry-run"],
    "backup": ["registry_service.backup", "dump", "--file", "{data}/backup.dump"],
}


def run(command: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TAXI_DRIVER_DATA_DIR": str(data_dir)}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", *(part.format(data=data_dir) for part in command)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def make_run_data() -> Iterator[Path]:
    """A data folder as `make run` leaves it: the embedded server running in <data>/postgres."""
    data_dir = ROOT / ".data" / f"test-operator-{uuid.uuid4().hex[:8]}"
    server = EmbeddedPostgres(data_dir=data_dir / "postgres", durable=False)
    server.start()
    try:
        yield data_dir
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_operator_command_uses_the_embedded_server_of_make_run(make_run_data: Path, name: str) -> None:
    if name != "migrate":
        assert run(COMMANDS["migrate"], make_run_data).returncode == 0
    result = run(COMMANDS[name], make_run_data)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_operator_command_says_the_same_when_there_is_no_database(tmp_path: Path, name: str) -> None:
    result = run(COMMANDS[name], tmp_path / "nothing-here")
    assert result.returncode == 2, result.stderr
    assert "error: DATABASE_URL is unset and the embedded PostgreSQL of `make run`" in result.stderr


def test_users_ensure_reuses_the_kept_key_and_replaces_a_revoked_one(
    database_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    from registry_service.users import hash_key

    key_file = tmp_path / "keys" / "ensure-api-key"
    env = {**os.environ, "DATABASE_URL": database_url}
    command = [sys.executable, "-m", "registry_service.users", "ensure", "ensure-test", "--role", "reader"]

    def ensure() -> str:
        result = subprocess.run(
            [*command, "--key-file", str(key_file)], cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "tdk_" not in result.stdout  # the key goes to its file only
        return key_file.read_text().strip()

    first = ensure()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert ensure() == first
    db.execute("UPDATE api_keys SET revoked_at = now() WHERE key_sha256 = %s", (hash_key(first),))
    second = ensure()
    assert second != first
    active = db.execute(
        """
        SELECT k.key_sha256 FROM api_keys k JOIN users u USING (user_id)
        WHERE u.username = 'ensure-test' AND k.revoked_at IS NULL
        """
    ).fetchall()
    assert [row[0] for row in active] == [hash_key(second)]
