"""The fast paths behind the query API at 100k runs (issue 15): which index or table serves a query,
and what total_size means. Timings are in bench/bench_queries.py; these tests assert behaviour."""

from __future__ import annotations

import asyncio

import grpc
import psycopg
import pytest

from taxidriver.registry.v1 import registry_service_pb2 as pb
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc
from tests.test_registry_queries import make_run, marker, struct  # noqa: F401 - fixtures (ingest, queries: conftest)


def plan(database_url: str, sql: str, params: list[object], *, sorts: bool = True) -> str:
    """EXPLAIN's text with sequential scans (and, with sorts=False, explicit sorts) disabled: does an
    index serve this statement at all? Whatever the table's statistics are when the test runs (a
    few rows after other tests, where a sort would be cheaper), only a missing index makes the
    planner fall back to what is disabled."""
    with psycopg.connect(database_url) as conn:
        conn.execute("SET enable_seqscan = off")
        if not sorts:
            conn.execute("SET enable_sort = off")
        return "\n".join(row[0] for row in conn.execute(f"EXPLAIN {sql}", params))


def test_a_runs_tags_follow_its_annotations(ingest, queries, marker, database_url: str) -> None:  # noqa: F811
    run_id = make_run(ingest, marker)
    other = make_run(ingest, marker)
    queries.CreateAnnotation(pb.CreateAnnotationRequest(run_id=run_id, annotation="a", tags=["sweep", "baseline"]))
    queries.CreateAnnotation(pb.CreateAnnotationRequest(run_id=run_id, annotation="b", tags=["baseline", "bug"]))
    assert list(queries.GetRun(pb.GetRunRequest(run_id=run_id)).run.tags) == ["baseline", "bug", "sweep"]
    assert list(queries.GetRun(pb.GetRunRequest(run_id=other)).run.tags) == []
    listed = queries.ListRuns(pb.ListRunsRequest(filter=f'params.marker = "{marker}" AND tags:"bug"'))
    assert [run.run_id for run in listed.runs] == [run_id]
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM run_annotations WHERE run_id = %s AND annotation = 'b'", (run_id,))
    assert list(queries.GetRun(pb.GetRunRequest(run_id=run_id)).run.tags) == ["baseline", "sweep"]
    assert not queries.ListRuns(pb.ListRunsRequest(filter=f'params.marker = "{marker}" AND tags:"bug"')).runs


def test_concurrent_annotations_of_one_run_all_land(ingest, queries, marker) -> None:  # noqa: F811
    """Each annotation's trigger updates the run's tags: concurrent ones queue, none deadlocks."""
    run_id = make_run(ingest, marker)
    from concurrent.futures import ThreadPoolExecutor

    def annotate(index: int) -> None:
        queries.CreateAnnotation(pb.CreateAnnotationRequest(run_id=run_id, annotation="x", tags=[f"t{index}"]))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(annotate, range(16)))
    assert sorted(queries.GetRun(pb.GetRunRequest(run_id=run_id)).run.tags) == sorted(f"t{i}" for i in range(16))


def test_the_tag_filter_and_algorithm_orderings_have_indexes(database_url: str, registry) -> None:
    from registry_service.filters import compile_filter

    tag = compile_filter('tags:"best_performance"')
    assert "training_runs_tags" in plan(database_url, f"SELECT run_id FROM training_runs r WHERE {tag.sql}", tag.params)
    ordered = plan(
        database_url,
        "SELECT run_id FROM training_runs r WHERE r.algorithm = %s"
        " ORDER BY r.avg_steps ASC NULLS LAST, r.run_id LIMIT 5",
        ["sarsa"],
        sorts=False,
    )
    assert "training_runs_steps_by_algorithm" in ordered and "Sort" not in ordered


def test_statistics_by_algorithm_come_from_the_summary_and_match_a_scan(ingest, queries, marker) -> None:  # noqa: F811
    make_run(ingest, marker, algorithm="monte_carlo", success=0.6, steps=25)
    make_run(ingest, marker, algorithm="monte_carlo", success=0.8, steps=21)
    make_run(ingest, marker, algorithm="monte_carlo", complete=False)
    for text in ('algorithm = "monte_carlo"', 'algorithm = "monte_carlo" AND status = "completed"'):
        fast = queries.GetStatistics(pb.GetStatisticsRequest(filter=text))
        # create_time is not in the summary table: this filter takes the scan over the runs.
        slow = queries.GetStatistics(pb.GetStatisticsRequest(filter=f'{text} AND create_time > "1900-01-01T00:00:00Z"'))
        assert (fast.total_runs, fast.completed_runs) == (slow.total_runs, slow.completed_runs)
        assert fast.total_runs >= 2
        assert [a.algorithm for a in fast.algorithms] == ["monte_carlo"]
        (quick,), (scan,) = fast.algorithms, slow.algorithms
        assert (quick.best_run_id, quick.total_runs) == (scan.best_run_id, scan.total_runs)
        for name in ("avg_success_rate", "avg_steps", "avg_reward", "best_success_rate", "best_avg_steps"):
            assert getattr(quick, name) == pytest.approx(getattr(scan, name)), name
        assert [(d.day.seconds, d.runs) for d in fast.daily] == [(d.day.seconds, d.runs) for d in slow.daily]


def test_total_size_is_exact_for_algorithm_filters_and_small_tables(ingest, queries, marker, database_url) -> None:  # noqa: F811
    for _ in range(3):
        make_run(ingest, marker, algorithm="expected_sarsa")
    reply = queries.ListRuns(pb.ListRunsRequest(filter='algorithm = "expected_sarsa"', page_size=1))
    with psycopg.connect(database_url) as conn:
        (count,) = conn.execute("SELECT count(*) FROM training_runs WHERE algorithm = 'expected_sarsa'").fetchone()
    assert reply.total_size == count >= 3
    paged = queries.ListRuns(pb.ListRunsRequest(filter=f'params.marker = "{marker}"', page_size=2))
    assert paged.total_size == 3 and paged.next_page_token


def test_total_size_is_the_planners_estimate_beyond_the_exact_count_limit(ingest, marker, database_url) -> None:  # noqa: F811
    """AIP-158: past REGISTRY_EXACT_COUNT_LIMIT rows, a filter spanning pages reports PostgreSQL's estimate."""
    from registry_service.app import start_registry
    from registry_service.settings import RegistrySettings

    for _ in range(3):
        make_run(ingest, marker, alpha=0.3)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ANALYZE training_runs")
        filter_sql = "SELECT 1 FROM training_runs r WHERE r.params @> %s::jsonb"
        estimate = round(
            conn.execute(f"EXPLAIN (FORMAT JSON) {filter_sql}", [f'{{"marker": "{marker}"}}']).fetchone()[0][0]["Plan"][
                "Plan Rows"
            ]
        )

    async def listed() -> tuple[int, int]:
        app = await start_registry(
            RegistrySettings(address="127.0.0.1:0", database_url=database_url, exact_count_limit=0, pool_min_size=1)
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                stub = registry_grpc.RegistryServiceStub(channel)
                spanning = await stub.ListRuns(pb.ListRunsRequest(filter=f'params.marker = "{marker}"', page_size=1))
                whole = await stub.ListRuns(pb.ListRunsRequest(filter=f'params.marker = "{marker}"', page_size=10))
                return spanning.total_size, whole.total_size
        finally:
            await app.stop(0)

    spanning, whole = asyncio.run(listed())
    assert spanning == estimate
    assert whole == 3  # the first page holds every match: counted, not estimated


def test_the_seeds_search_by_parameters_walks_its_index_and_keeps_containments_meaning(
    ingest,
    queries,
    marker,  # noqa: F811
    database_url: str,
) -> None:
    alpha = 0.123456  # a value no other test's runs carry
    match = make_run(ingest, marker, alpha=alpha, episodes=6)
    make_run(ingest, marker, alpha=alpha, episodes=5)
    make_run(ingest, marker, alpha=0.5, episodes=6)
    seed_search = pb.SearchRunsByParamsRequest(params=struct(alpha=alpha, gamma=0.99, training_runs=6))
    assert [r.run_id for r in queries.SearchRunsByParams(seed_search).runs] == [match]
    # 6 and 6.0 are one number, as with containment.
    again = pb.SearchRunsByParamsRequest(params=struct(alpha=alpha, gamma=0.99, training_runs=6.0))
    assert [r.run_id for r in queries.SearchRunsByParams(again).runs] == [match]
    # Another key: containment, as before.
    marked = pb.SearchRunsByParamsRequest(params=struct(alpha=alpha, marker=marker))
    assert len(queries.SearchRunsByParams(marked).runs) == 2
    ordered = plan(
        database_url,
        "SELECT run_id FROM training_runs r WHERE r.params -> 'alpha' = %s::jsonb AND r.params -> 'gamma' = %s::jsonb"
        " AND r.params -> 'training_runs' = %s::jsonb ORDER BY r.created_at DESC, r.run_id DESC LIMIT 50",
        ["0.1", "0.99", "6000"],
    )
    assert "training_runs_seed_params" in ordered and "Sort" not in ordered
