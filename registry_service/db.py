"""Connection pool and schema migrations.

Migrations are numbered SQL files applied in order, each in its own
transaction, under a session advisory lock so that several registry replicas
(or the Kubernetes migration Job) starting together apply each file once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import weakref
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg_pool import AsyncConnectionPool

from taxidriver.retry import Backoff, Delays

log = logging.getLogger(__name__)

# The one LISTEN/NOTIFY channel of run events ({"run_id", "kind"} as JSON): writers notify
# it inside their transaction (delivered only on commit); watch.EventHub listens to it.
EVENTS_CHANNEL = "taxidriver_run_events"

# Arbitrary but fixed: the advisory lock key that serialises migrations.
MIGRATION_LOCK_KEY = 0x7A41D00D
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The packaged migration files, in version order."""
    folder = resources.files("registry_service") / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


async def wait_for_database(database_url: str, *, wait_seconds: float) -> None:
    """Until PostgreSQL accepts a connection, for at most `wait_seconds` (REGISTRY_CONNECT_TIMEOUT).

    A registry may start before its database (a pod, a compose service still booting): a
    refused or failed connection is retried with jittered backoff, said once in the log; after
    `wait_seconds` the last error is raised (start-up then exits 2 with one line).
    """
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + wait_seconds
    delays = Delays(Backoff(first=0.1, cap=2.0))
    said = False
    while True:
        left = give_up_at - loop.time()
        try:
            conn = await psycopg.AsyncConnection.connect(database_url, connect_timeout=max(1, math.ceil(left)))
        except psycopg.OperationalError as error:
            if loop.time() + delays.backoff.first >= give_up_at:
                raise
            if not said:
                where = conninfo.conninfo_to_dict(database_url)
                log.warning(
                    "waiting for PostgreSQL at %s:%s (up to %.0fs, REGISTRY_CONNECT_TIMEOUT): %s",
                    where.get("host") or "localhost",
                    where.get("port") or 5432,
                    wait_seconds,
                    " ".join(str(error).split()),
                )
                said = True
            await asyncio.sleep(min(delays.next(), max(0.0, give_up_at - loop.time())))
            continue
        await conn.close()
        if said:
            log.info("PostgreSQL is reachable")
        return


async def apply_migrations(database_url: str) -> list[str]:
    """Apply every pending migration; returns the names applied (empty when up to date)."""
    applied: list[str] = []
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            await conn.execute(CREATE_MIGRATIONS_TABLE)
            cursor = await conn.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cursor.fetchall()}
            for migration in load_migrations():
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql.encode())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                log.info("applied migration %s", migration.name)
                applied.append(migration.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied


# The pool checks a connection before handing it out with a round trip (an empty query): as much
# CPU as a small ingest statement's own send and receive. A connection that passed the check this
# recently is handed out unchecked (unless psycopg already knows it broken): a PostgreSQL that
# went away within that window fails the calls already using it anyway.
CHECKED_FOR_S = 1.0


class RecentCheck:
    """The pool's `check`: AsyncConnectionPool.check_connection, at most once per CHECKED_FOR_S."""

    def __init__(self, fresh_for: float = CHECKED_FOR_S) -> None:
        self.fresh_for = fresh_for
        self._checked: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def __call__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        now = time.monotonic()
        if not conn.broken and now - self._checked.get(conn, float("-inf")) < self.fresh_for:
            return
        await AsyncConnectionPool.check_connection(conn)
        self._checked[conn] = now


async def open_pool(database_url: str, *, min_size: int, max_size: int, wait_seconds: float) -> AsyncConnectionPool:
    """A ready pool; raises if PostgreSQL cannot be reached within `wait_seconds`."""
    pool = AsyncConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        check=RecentCheck(),
        timeout=wait_seconds,
        name="registry",
    )
    await pool.open()
    try:
        await pool.wait(timeout=wait_seconds)
    except Exception:
        await pool.close()
        raise
    return pool
