"""The query RPCs read in autocommit: a page of runs and its total_size, or statistics, in one round
trip to PostgreSQL (a transaction's BEGIN and COMMIT were two more per RPC; issue 15)."""

from __future__ import annotations

import asyncio

import psycopg


def last_query(database_url: str, pid: int) -> str:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        assert row is not None
        return str(row[0])


def test_query_rpcs_read_without_begin_and_commit(database_url: str, registry) -> None:
    """A page of runs and its total_size, or statistics: their statements in one round trip, in
    autocommit (a transaction's BEGIN and COMMIT were two more round trips per RPC)."""
    from registry_service.db import open_pool
    from registry_service.queries import RegistryServicer
    from registry_service.settings import RegistrySettings
    from taxidriver.registry.v1 import registry_service_pb2 as pb

    async def last_queries() -> list[str]:
        pool = await open_pool(database_url, min_size=1, max_size=1, wait_seconds=10)
        try:
            servicer = RegistryServicer(pool, RegistrySettings(address="127.0.0.1:0", database_url=database_url))
            seen = []
            for call in (
                servicer.ListRuns(pb.ListRunsRequest(filter='tags:"x"', page_size=1), None),  # type: ignore[arg-type]
                servicer.GetStatistics(pb.GetStatisticsRequest(), None),  # type: ignore[arg-type]
            ):
                await call
                async with pool.connection() as conn:
                    pid = conn.info.backend_pid
                seen.append(last_query(database_url, pid))
            return seen
        finally:
            await pool.close()

    for query in asyncio.run(last_queries()):
        assert query.split()[0] in ("SELECT", "EXPLAIN"), query
