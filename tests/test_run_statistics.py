"""run_statistics, the per (algorithm, UTC day, status) sums behind unfiltered and algorithm-only
statistics and total_size: every writer keeps them equal to aggregating training_runs directly.

Each test works on its own algorithm name, so other tests' runs never enter its comparisons.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from taxidriver.registry.v1 import registry_service_pb2 as pb
from tests.test_registry_queries import make_run

SUMMARY = """
SELECT day, status, runs, success_sum, success_count, steps_sum, steps_count, reward_sum, reward_count,
       execution_sum, execution_count
FROM run_statistics WHERE algorithm = %s AND runs <> 0 ORDER BY day, status
"""
DIRECT = """
SELECT (created_at AT TIME ZONE 'UTC')::date AS day, status, count(*) AS runs,
       coalesce(sum(success_rate), 0), count(success_rate), coalesce(sum(avg_steps), 0), count(avg_steps),
       coalesce(sum(avg_reward), 0), count(avg_reward), coalesce(sum(execution_time), 0), count(execution_time)
FROM training_runs WHERE algorithm = %s GROUP BY 1, 2 ORDER BY 1, 2
"""
INSERT = """
INSERT INTO training_runs (run_id, algorithm, status, mode, env_id, params, test_metrics, execution_time, created_at)
SELECT gen_random_uuid(), %(algorithm)s, s.status, 'user', 'Taxi-v3', '{}',
       CASE WHEN s.status = 'completed'
            THEN jsonb_build_object('success_rate', (i %% 10) / 10.0, 'avg_steps', 10 + i %% 7, 'avg_reward', i %% 5)
       END,
       CASE WHEN s.status = 'completed' THEN i / 3.0 END,
       now() - make_interval(days => %(age_days)s + i %% 3)
FROM generate_series(1, %(count)s) i,
     LATERAL (SELECT CASE WHEN i %% 4 = 0 THEN 'running' ELSE 'completed' END AS status) s
"""


def algorithm() -> str:
    return f"stats_{uuid.uuid4().hex[:12]}"


def assert_summary_is_direct(conn: psycopg.Connection, name: str) -> None:
    summary = conn.execute(SUMMARY, (name,)).fetchall()
    direct = conn.execute(DIRECT, (name,)).fetchall()
    assert [row[:3] for row in summary] == [row[:3] for row in direct]
    for kept, counted in zip(summary, direct, strict=True):
        assert kept[4::2] == counted[4::2]  # the counts of values: exact
        assert kept[3::2] == pytest.approx(counted[3::2])  # float sums, added in another order


def test_summary_equals_direct_sql_after_inserts_completion_deletes_and_purges(
    db: psycopg.Connection, queries, ingest
) -> None:
    name = algorithm()
    db.execute(INSERT, {"algorithm": name, "age_days": 0, "count": 120})
    db.execute(INSERT, {"algorithm": name, "age_days": 20_000, "count": 30})  # ~55 years old: purged below
    assert_summary_is_direct(db, name)
    # Completion of running runs (one statement, many rows) and a metric changed on one run.
    db.execute(
        "UPDATE training_runs SET status = 'completed', test_metrics = %s, execution_time = 2"
        " WHERE algorithm = %s AND status = 'running'",
        (json.dumps({"success_rate": 1.0, "avg_steps": 13}), name),
    )
    db.execute(
        "UPDATE training_runs SET test_metrics = '{\"success_rate\": 0.25}' WHERE run_id ="
        " (SELECT run_id FROM training_runs WHERE algorithm = %s ORDER BY run_id LIMIT 1)",
        (name,),
    )
    assert_summary_is_direct(db, name)
    db.execute(
        "DELETE FROM training_runs WHERE run_id IN"
        " (SELECT run_id FROM training_runs WHERE algorithm = %s ORDER BY run_id LIMIT 17)",
        (name,),
    )
    assert_summary_is_direct(db, name)
    purged = queries.PurgeRuns(pb.PurgeRunsRequest(older_than_days=20_000))
    assert purged.purged_runs >= 1
    assert_summary_is_direct(db, name)
    # Rolled back: nothing of the insert stays in the sums.
    with pytest.raises(psycopg.errors.DivisionByZero):
        with db.transaction():
            db.execute(INSERT, {"algorithm": name, "age_days": 0, "count": 10})
            db.execute("SELECT 1 / 0")
    assert_summary_is_direct(db, name)
    # COPY, as the bench seeds.
    with db.cursor().copy("COPY training_runs (run_id, algorithm, status, mode, env_id, params) FROM STDIN") as copy:
        for _ in range(5):
            copy.write_row((uuid.uuid4(), name, "failed", "user", "Taxi-v3", "{}"))
    assert_summary_is_direct(db, name)


def test_runs_through_the_api_keep_the_summary_right(db: psycopg.Connection, queries, ingest) -> None:
    name = algorithm()
    runs = [make_run(ingest, "m", algorithm=name, success=0.5 + i / 10, steps=20 - i) for i in range(3)]
    make_run(ingest, "m", algorithm=name, complete=False)
    queries.DeleteRun(pb.DeleteRunRequest(run_id=runs[0]))
    assert_summary_is_direct(db, name)
    fast = queries.GetStatistics(pb.GetStatisticsRequest(filter=f'algorithm = "{name}"'))
    scan = queries.GetStatistics(
        pb.GetStatisticsRequest(filter=f'algorithm = "{name}" AND create_time > "1900-01-01T00:00:00Z"')
    )
    assert (fast.total_runs, fast.completed_runs) == (scan.total_runs, scan.completed_runs) == (3, 2)


def writes(conn: psycopg.Connection) -> Any:
    """Rows inserted and updated in run_statistics by the current transaction."""
    row = conn.execute(
        "SELECT n_tup_ins + n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'run_statistics'"
    ).fetchone()
    assert row is not None
    return row[0]


def test_a_bulk_write_touches_each_summary_row_once(database_url: str, registry) -> None:
    """An insert or delete of many runs in one statement (COPY, a purge) upserts each (algorithm, day,
    status) row once, not once per run: 100k runs seeded in one COPY left 2,173 live summary rows in
    1,620 pages (every per-run upsert a dead row version), and statistics read them all."""
    name = algorithm()
    with psycopg.connect(database_url) as conn:
        before = writes(conn)
        conn.execute(INSERT.replace("i %% 3", "0"), {"algorithm": name, "age_days": 0, "count": 200})
        # 200 runs on one day with two statuses: two summary rows written.
        assert writes(conn) - before == 2
        before = writes(conn)
        conn.execute("DELETE FROM training_runs WHERE algorithm = %s", (name,))
        assert writes(conn) - before == 2
        assert_summary_is_direct(conn, name)
