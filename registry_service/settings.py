"""Registry settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from taxidriver.config import SettingsError, env_float, env_int, env_str


@dataclass(frozen=True, kw_only=True)
class RegistrySettings:
    """Everything the registry process needs; keyword-only so call sites name each value."""

    # PostgreSQL connection string (required: the registry owns the database).
    database_url: str
    # Where to listen for gRPC ("host:port"; port 0 picks a free one).
    address: str = "127.0.0.1:50053"
    # Connection pool bounds.
    pool_min_size: int = 2
    pool_max_size: int = 10
    # How long start-up waits for PostgreSQL before giving up (seconds).
    connect_timeout: float = 30.0
    # Period of the cheap "SELECT 1" health probe and lease sweep (seconds).
    health_interval: float = 1.0
    # A trainer's lease on a running run; without a heartbeat the run becomes INTERRUPTED.
    lease_seconds: float = 30.0
    # Largest artifact or imported model accepted (bytes).
    max_artifact_bytes: int = 64 * 1024 * 1024
    # Seconds given to in-flight calls on SIGTERM.
    shutdown_grace: float = 10.0
    # Largest listing page with curves (ListRuns view FULL), in bytes; a page holds at least
    # one run and stops before this, with a next_page_token (REGISTRY_MAX_PAGE_BYTES).
    max_page_bytes: int = 8 * 1024 * 1024
    # ListRuns' total_size for a filter that spans pages is an exact count while training_runs
    # holds at most this many rows, and PostgreSQL's estimate beyond (AIP-158; counting every
    # match of a broad filter costs tens of ms at 100k runs) (REGISTRY_EXACT_COUNT_LIMIT).
    exact_count_limit: int = 10_000
    # Shared secret every call must carry (x-internal-token) when set (INTERNAL_TOKEN); empty:
    # no check, and the loopback-only default address is the protection (taxidriver.internal_auth).
    internal_token: str = ""

    def __post_init__(self) -> None:
        if not self.database_url:
            raise SettingsError("DATABASE_URL is required: the registry stores every run in PostgreSQL")
        if self.max_page_bytes < 1024:
            raise SettingsError("REGISTRY_MAX_PAGE_BYTES must be at least 1024")

    @classmethod
    def from_env(cls) -> RegistrySettings:
        return cls(
            database_url=env_str("DATABASE_URL"),
            address=env_str("REGISTRY_ADDRESS", "127.0.0.1:50053"),
            pool_min_size=env_int("REGISTRY_POOL_MIN", 2),
            pool_max_size=env_int("REGISTRY_POOL_MAX", 10),
            connect_timeout=env_float("REGISTRY_CONNECT_TIMEOUT", 30.0),
            health_interval=env_float("REGISTRY_HEALTH_INTERVAL", 1.0),
            lease_seconds=env_float("REGISTRY_LEASE_SECONDS", 30.0),
            max_artifact_bytes=env_int("REGISTRY_MAX_ARTIFACT_BYTES", 64 * 1024 * 1024),
            shutdown_grace=env_float("REGISTRY_SHUTDOWN_GRACE", 10.0),
            max_page_bytes=env_int("REGISTRY_MAX_PAGE_BYTES", 8 * 1024 * 1024),
            exact_count_limit=env_int("REGISTRY_EXACT_COUNT_LIMIT", 10_000),
            internal_token=env_str("INTERNAL_TOKEN", ""),
        )
