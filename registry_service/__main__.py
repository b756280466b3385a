"""`python -m registry_service`: serve until SIGTERM, then drain and exit 0."""

from __future__ import annotations

import psycopg
from psycopg_pool import PoolTimeout

from registry_service.app import start_registry
from registry_service.settings import RegistrySettings
from taxidriver.server import main

if __name__ == "__main__":
    main(
        "registry",
        RegistrySettings,
        start_registry,
        startup_errors={(psycopg.OperationalError, PoolTimeout): "cannot reach PostgreSQL (DATABASE_URL)"},
    )
