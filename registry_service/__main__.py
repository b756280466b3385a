"""`python -m registry_service`: serve until SIGTERM, then drain and exit 0."""

from __future__ import annotations

import asyncio
import logging
import sys

import psycopg
from psycopg_pool import PoolTimeout

from registry_service.app import start_registry
from registry_service.settings import RegistrySettings
from taxidriver.config import SettingsError
from taxidriver.logs import setup_logging
from taxidriver.server import serve

log = logging.getLogger("registry_service")


async def _main(settings: RegistrySettings) -> None:
    app = await start_registry(settings)

    async def stop_background() -> None:
        for task in app._tasks:
            task.cancel()

    try:
        await serve(app.running, grace=settings.shutdown_grace, on_shutdown=stop_background)
    finally:
        await app.hub.stop()
        await app.pool.close()


def main() -> int:
    setup_logging("registry")
    try:
        settings = RegistrySettings.from_env()
    except SettingsError as exc:
        log.error("%s", exc)
        return 2
    try:
        asyncio.run(_main(settings))
    except (psycopg.OperationalError, PoolTimeout) as exc:
        log.error("cannot reach PostgreSQL (DATABASE_URL): %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
