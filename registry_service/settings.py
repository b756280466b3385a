"""Registry settings, read once from the environment (declarations: docs/configuration.md)."""

from __future__ import annotations

from dataclasses import dataclass

from taxidriver.config import (
    EnvSettings,
    SettingsError,
    env_field,
    integer,
    seconds,
    text,
)
from taxidriver.settings import DATABASE_URL, INTERNAL_TOKEN, LOG_LEVEL

REGISTRY = ("registry",)

REGISTRY_ADDRESS = text(
    "REGISTRY_ADDRESS",
    "127.0.0.1:50053",
    "Where the registry listens for gRPC (host:port; port 0 picks a free one).",
    REGISTRY,
)
REGISTRY_POOL_MIN = integer(
    "REGISTRY_POOL_MIN", 2, "Connections the PostgreSQL pool keeps open.", REGISTRY, unit="connections", minimum=0
)
REGISTRY_POOL_MAX = integer(
    "REGISTRY_POOL_MAX", 10, "Most connections the PostgreSQL pool opens.", REGISTRY, unit="connections", minimum=1
)
REGISTRY_CONNECT_TIMEOUT = seconds(
    "REGISTRY_CONNECT_TIMEOUT", 30.0, "How long start-up waits for PostgreSQL before giving up (exit 2).", REGISTRY
)
REGISTRY_HEALTH_INTERVAL = seconds(
    "REGISTRY_HEALTH_INTERVAL", 1.0, "Period of the cheap SELECT 1 health probe and of the lease sweep.", REGISTRY
)
REGISTRY_LEASE_SECONDS = seconds(
    "REGISTRY_LEASE_SECONDS",
    30.0,
    "A trainer's lease on a live run; without a heartbeat for this long the run becomes INTERRUPTED.",
    REGISTRY,
)
REGISTRY_MAX_ARTIFACT_BYTES = integer(
    "REGISTRY_MAX_ARTIFACT_BYTES",
    64 * 1024 * 1024,
    "Largest artifact or imported model accepted.",
    REGISTRY,
    unit="bytes",
    minimum=1,
)
REGISTRY_SHUTDOWN_GRACE = seconds(
    "REGISTRY_SHUTDOWN_GRACE", 10.0, "How long in-flight calls may take to finish after SIGTERM.", REGISTRY, zero=True
)
REGISTRY_MAX_PAGE_BYTES = integer(
    "REGISTRY_MAX_PAGE_BYTES",
    8 * 1024 * 1024,
    "Largest listing page with curves (ListRuns view FULL); a page holds at least one run and stops"
    " before this, with a next_page_token.",
    REGISTRY,
    unit="bytes",
    minimum=1024,
)
REGISTRY_EXACT_COUNT_LIMIT = integer(
    "REGISTRY_EXACT_COUNT_LIMIT",
    10_000,
    "ListRuns' total_size for a filter that spans pages is an exact count while training_runs holds"
    " at most this many rows, and PostgreSQL's estimate beyond (AIP-158; counting every match of a"
    " broad filter costs tens of ms at 100k runs).",
    REGISTRY,
    unit="runs",
    minimum=0,
)


@dataclass(frozen=True, kw_only=True)
class RegistrySettings(EnvSettings):
    """Everything the registry process needs; each field's meaning is its Setting's."""

    database_url: str = env_field(DATABASE_URL, repr=False)
    address: str = env_field(REGISTRY_ADDRESS)
    pool_min_size: int = env_field(REGISTRY_POOL_MIN)
    pool_max_size: int = env_field(REGISTRY_POOL_MAX)
    connect_timeout: float = env_field(REGISTRY_CONNECT_TIMEOUT)
    health_interval: float = env_field(REGISTRY_HEALTH_INTERVAL)
    lease_seconds: float = env_field(REGISTRY_LEASE_SECONDS)
    max_artifact_bytes: int = env_field(REGISTRY_MAX_ARTIFACT_BYTES)
    shutdown_grace: float = env_field(REGISTRY_SHUTDOWN_GRACE)
    max_page_bytes: int = env_field(REGISTRY_MAX_PAGE_BYTES)
    exact_count_limit: int = env_field(REGISTRY_EXACT_COUNT_LIMIT)
    internal_token: str = env_field(INTERNAL_TOKEN, repr=False)
    log_level: str = env_field(LOG_LEVEL)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.database_url:
            raise SettingsError("DATABASE_URL is required: the registry stores every run in PostgreSQL")
