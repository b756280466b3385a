"""Registry settings, read once from the environment (declarations: docs/configuration.md)."""

from __future__ import annotations

from dataclasses import dataclass

from taxidriver.config import INTEGER, NUMBER, TEXT, EnvSettings, Setting, SettingsError, env_field
from taxidriver.settings import DATABASE_URL, INTERNAL_TOKEN, LOG_LEVEL

REGISTRY = ("registry",)

REGISTRY_ADDRESS = Setting(
    name="REGISTRY_ADDRESS",
    kind=TEXT,
    default="127.0.0.1:50053",
    description="Where the registry listens for gRPC (host:port; port 0 picks a free one).",
    read_by=REGISTRY,
)
REGISTRY_POOL_MIN = Setting(
    name="REGISTRY_POOL_MIN",
    kind=INTEGER,
    default=2,
    unit="connections",
    minimum=0,
    description="Connections the PostgreSQL pool keeps open.",
    read_by=REGISTRY,
)
REGISTRY_POOL_MAX = Setting(
    name="REGISTRY_POOL_MAX",
    kind=INTEGER,
    default=10,
    unit="connections",
    minimum=1,
    description="Most connections the PostgreSQL pool opens.",
    read_by=REGISTRY,
)
REGISTRY_CONNECT_TIMEOUT = Setting(
    name="REGISTRY_CONNECT_TIMEOUT",
    kind=NUMBER,
    default=30.0,
    unit="seconds",
    minimum=0,
    exclusive_minimum=True,
    description="How long start-up waits for PostgreSQL before giving up (exit 2).",
    read_by=REGISTRY,
)
REGISTRY_HEALTH_INTERVAL = Setting(
    name="REGISTRY_HEALTH_INTERVAL",
    kind=NUMBER,
    default=1.0,
    unit="seconds",
    minimum=0,
    exclusive_minimum=True,
    description="Period of the cheap SELECT 1 health probe and of the lease sweep.",
    read_by=REGISTRY,
)
REGISTRY_LEASE_SECONDS = Setting(
    name="REGISTRY_LEASE_SECONDS",
    kind=NUMBER,
    default=30.0,
    unit="seconds",
    minimum=0,
    exclusive_minimum=True,
    description="A trainer's lease on a live run; without a heartbeat for this long the run becomes INTERRUPTED.",
    read_by=REGISTRY,
)
REGISTRY_MAX_ARTIFACT_BYTES = Setting(
    name="REGISTRY_MAX_ARTIFACT_BYTES",
    kind=INTEGER,
    default=64 * 1024 * 1024,
    unit="bytes",
    minimum=1,
    description="Largest artifact or imported model accepted.",
    read_by=REGISTRY,
)
REGISTRY_SHUTDOWN_GRACE = Setting(
    name="REGISTRY_SHUTDOWN_GRACE",
    kind=NUMBER,
    default=10.0,
    unit="seconds",
    minimum=0,
    description="How long in-flight calls may take to finish after SIGTERM.",
    read_by=REGISTRY,
)
REGISTRY_MAX_PAGE_BYTES = Setting(
    name="REGISTRY_MAX_PAGE_BYTES",
    kind=INTEGER,
    default=8 * 1024 * 1024,
    unit="bytes",
    minimum=1024,
    description=(
        "Largest listing page with curves (ListRuns view FULL); a page holds at least one run and stops"
        " before this, with a next_page_token."
    ),
    read_by=REGISTRY,
)
REGISTRY_EXACT_COUNT_LIMIT = Setting(
    name="REGISTRY_EXACT_COUNT_LIMIT",
    kind=INTEGER,
    default=10_000,
    unit="runs",
    minimum=0,
    description=(
        "ListRuns' total_size for a filter that spans pages is an exact count while training_runs holds"
        " at most this many rows, and PostgreSQL's estimate beyond (AIP-158; counting every match of a"
        " broad filter costs tens of ms at 100k runs)."
    ),
    read_by=REGISTRY,
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
