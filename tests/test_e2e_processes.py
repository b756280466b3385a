"""End to end with real processes: `make run`'s stack trains through the gateway.

Runs `python -m taxidriver.devstack --once` (what `make run` runs) against the
session's database on free ports: registry, trainer and gateway start as
separate processes, SARSA trains in optimized mode with 250 test episodes
through the gateway, then the stack stops. The stored rows are then checked in
PostgreSQL directly.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.support import (
    ROOT,
    SEED_OPTIMAL_PARAMS,
    SEED_STATS_BY_ALGORITHM,
    SEED_TREND,
    free_port,
    stored_episode_indices,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def first_training(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    data_dir = tmp_path_factory.mktemp("devstack")
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "taxidriver.devstack",
            "--once",
            "--gateway-port",
            str(free_port()),
            "--trainer-port",
            str(free_port()),
            "--registry-port",
            str(free_port()),
            "--web-port",
            str(free_port()),
            "--data-dir",
            str(data_dir),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in (data_dir / "logs").glob("*.log"))
    assert result.returncode == 0, f"devstack failed:\n{result.stdout}\n{result.stderr}\n{logs}"
    match = re.search(r"run ([0-9a-f-]{36}) completed", result.stdout)
    assert match, result.stdout
    return match.group(1), result.stdout


def test_first_training_prints_its_test_metrics(first_training: tuple[str, str]) -> None:
    _, output = first_training
    assert re.search(r"success_rate = (0(\.\d+)?|1(\.0+)?)\b", output)
    assert re.search(r"avg_steps = \d+(\.\d+)?", output)
    assert "grpcurl -plaintext" in output
    # Each service drained and exited cleanly on SIGTERM.
    for service in ("web", "gateway", "trainer_service", "registry_service"):
        assert f"{service} stopped (exit code 0)" in output
    # make run prints the HTTP face's URL.
    assert re.search(r"web: http://127\.0\.0\.1:\d+/ ", output)


def test_run_row_holds_the_seed_keys(first_training: tuple[str, str], database_url: str) -> None:
    run_id, output = first_training
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            """
            SELECT algorithm, status, params, test_metrics, episodes_recorded
            FROM training_runs WHERE run_id = %s
            """,
            (run_id,),
        ).fetchone()
    assert row is not None
    algorithm, status, params, test_metrics, episodes_recorded = row
    assert (algorithm, status) == ("sarsa", "completed")
    assert params["training_runs"] == episodes_recorded > 0
    for key in ("alpha", "gamma", "epsilon", "epsilon_min", "epsilon_decay", "max_steps"):
        assert isinstance(params[key], int | float), key
    assert params["test_episodes"] == 250
    assert 0.0 <= test_metrics["success_rate"] <= 1.0
    assert test_metrics["avg_steps"] > 0
    printed = float(re.search(r"success_rate = ([0-9.]+)", output).group(1))  # type: ignore[union-attr]
    assert printed == pytest.approx(test_metrics["success_rate"])
    # The optimized preset must actually solve Taxi.
    assert test_metrics["success_rate"] == 1.0


def test_every_episode_is_stored_exactly_once(first_training: tuple[str, str], database_url: str) -> None:
    run_id, _ = first_training
    with psycopg.connect(database_url) as conn:
        planned = conn.execute(
            "SELECT (params->>'training_runs')::int FROM training_runs WHERE run_id = %s", (run_id,)
        ).fetchone()[0]  # type: ignore[index]
        indices = stored_episode_indices(conn, run_id)
        lengths_agree = conn.execute(
            """
            SELECT bool_and(cardinality(rewards) = episode_count AND cardinality(steps) = episode_count
                            AND cardinality(successes) = episode_count)
            FROM run_episodes WHERE run_id = %s
            """,
            (run_id,),
        ).fetchone()[0]  # type: ignore[index]
    assert indices == list(range(planned))
    assert lengths_agree is True


def test_seed_queries_run_verbatim(first_training: tuple[str, str], database_url: str) -> None:
    run_id, _ = first_training
    with psycopg.connect(database_url) as conn:
        per_algorithm = {row[0]: row for row in conn.execute(SEED_STATS_BY_ALGORITHM).fetchall()}
        assert per_algorithm["sarsa"][1] >= 1
        assert 0.0 <= per_algorithm["sarsa"][2] <= 1.0
        per_day = conn.execute(SEED_TREND).fetchall()
        assert len(per_day) >= 1
        best = conn.execute(SEED_OPTIMAL_PARAMS).fetchall()
        alpha = conn.execute("SELECT params->>'alpha' FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
        assert alpha is not None and alpha[0] in {row[0] for row in best}


def test_the_dev_key_is_an_admin_key_kept_in_a_private_file_and_stored_as_a_hash(
    first_training: tuple[str, str], database_url: str
) -> None:
    from registry_service.users import hash_key

    _, output = first_training
    match = re.search(r"API key of the 'dev' user \(admin role\): .* (/\S+/dev-api-key) \(mode 0600\)", output)
    assert match, output
    key_file = Path(match.group(1))
    key = key_file.read_text().strip()
    assert key.startswith("tdk_") and key not in output
    assert key_file.stat().st_mode & 0o777 == 0o600
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT u.username, u.role FROM api_keys k JOIN users u USING (user_id) WHERE k.key_sha256 = %s",
            (hash_key(key),),
        ).fetchone()
    assert row == ("dev", "admin")
