"""`python -m registry_service.migrate`: apply pending migrations and exit (a Kubernetes Job).

Like every operator command: DATABASE_URL, or the embedded server of a running `make run`.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from registry_service.backup import BackupError, database_url
from registry_service.db import apply_migrations
from taxidriver.logs import setup_logging

log = logging.getLogger("registry_service.migrate")


def main() -> int:
    setup_logging("registry-migrate")
    try:
        url = database_url()
    except BackupError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    applied = asyncio.run(apply_migrations(url))
    log.info("schema up to date (%d migration(s) applied: %s)", len(applied), ", ".join(applied) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
