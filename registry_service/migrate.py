"""`python -m registry_service.migrate`: apply pending migrations and exit (a Kubernetes Job)."""

from __future__ import annotations

import asyncio
import logging
import sys

from registry_service.db import apply_migrations
from taxidriver.config import SettingsError, env_str
from taxidriver.logs import setup_logging

log = logging.getLogger("registry_service.migrate")


def main() -> int:
    setup_logging("registry-migrate")
    try:
        url = env_str("DATABASE_URL")
    except SettingsError as exc:
        log.error("%s", exc)
        return 2
    applied = asyncio.run(apply_migrations(url))
    log.info("schema up to date (%d migration(s) applied: %s)", len(applied), ", ".join(applied) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
