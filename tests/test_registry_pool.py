"""The registry pool's check: a connection proved alive within the last second is handed out
without another round trip (RecentCheck, registry_service/db.py), unless psycopg already knows it
broken. PostgreSQL is real: a backend is terminated after its check."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest


def test_the_pool_checks_a_connection_at_most_once_per_window(database_url: str) -> None:
    """RecentCheck: the round trip that proves a connection alive is skipped while the last one is
    fresh, unless psycopg already knows the connection broken."""
    from registry_service.db import RecentCheck

    async def killed_after_check(check: RecentCheck) -> tuple[psycopg.AsyncConnection[Any], str]:
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        await check(conn)
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as other:
            await other.execute("SELECT pg_terminate_backend(%s)", (conn.pgconn.backend_pid,))
        try:
            await check(conn)
        except psycopg.OperationalError:
            return conn, "checked"
        return conn, "trusted"

    async def scenario() -> list[str]:
        fresh = RecentCheck(fresh_for=3600)
        trusted, first = await killed_after_check(fresh)
        checked, second = await killed_after_check(RecentCheck(fresh_for=0))
        with pytest.raises(psycopg.OperationalError):
            await trusted.execute("SELECT 1")  # its next use fails: now psycopg knows
        try:
            await fresh(trusted)
            third = "trusted"
        except psycopg.OperationalError:
            third = "checked"
        await trusted.close()
        await checked.close()
        return [first, second, third]

    assert asyncio.run(scenario()) == ["trusted", "checked", "checked"]
