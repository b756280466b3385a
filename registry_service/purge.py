"""`python -m registry_service.purge --older-than-days N`: the seed's retention cleanup (a CronJob).

Like every operator command (`users`, `backup`), it works on DATABASE_URL or,
when that is unset, on the embedded server of a running `make run`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import psycopg

from registry_service.backup import BackupError, database_url
from registry_service.retention import purge_runs
from taxidriver.logs import setup_logging

log = logging.getLogger("registry_service.purge")


async def _purge(url: str, days: int, dry_run: bool) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        purged, cutoff = await purge_runs(conn, days, validate_only=dry_run)
    log.info("%s %d run(s) created before %s", "would purge" if dry_run else "purged", purged, cutoff.isoformat())
    return purged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Delete runs older than N days (never queued or running ones).")
    parser.add_argument("--older-than-days", type=int, default=30)
    parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    args = parser.parse_args(argv)
    setup_logging("registry-purge")
    if args.older_than_days < 1:
        parser.error("--older-than-days must be at least 1")
    try:
        url = database_url()
    except BackupError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_purge(url, args.older_than_days, args.dry_run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
