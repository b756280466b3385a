"""Retention: which runs the seed's 30-day cleanup deletes (PurgeRuns and the purge command)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql

# Live runs are never purged under a trainer - unless no trainer has renewed their lease
# since before the cutoff (the registry that should have expired them was not running):
# skipping those forever would keep them, and their episodes, for good.
PURGEABLE = sql.SQL("""
created_at < now() - make_interval(days => %(days)s)
AND (status NOT IN ('running', 'queued')
     OR COALESCE(lease_expires_at, updated_at) < now() - make_interval(days => %(days)s))
""")
PURGE_COUNT = sql.SQL(
    "SELECT count(*), now() - make_interval(days => %(days)s) FROM training_runs WHERE {purgeable}"
).format(purgeable=PURGEABLE)
PURGE_DELETE = sql.SQL("""
WITH gone AS (
    DELETE FROM training_runs WHERE {purgeable}
    RETURNING 1
)
SELECT count(*), now() - make_interval(days => %(days)s) FROM gone
""").format(purgeable=PURGEABLE)


async def purge_runs(conn: AsyncConnection[Any], older_than_days: int, *, validate_only: bool) -> tuple[int, datetime]:
    """The seed's 30-day cleanup; runs still queued or running are never purged under a live trainer.

    Returns how many runs were deleted (would be, with `validate_only`) and the cutoff time.
    """
    cursor = await conn.execute(PURGE_COUNT if validate_only else PURGE_DELETE, {"days": older_than_days})
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0]), row[1]
