"""Trainer settings, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from taxidriver.config import SettingsError, env_float, env_int, env_str


def _default_workers() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, kw_only=True)
class TrainerSettings:
    # Where the trainer listens (TRAINER_ADDRESS).
    address: str = "127.0.0.1:50052"
    # The registry's ingest API (REGISTRY_TARGET).
    registry_target: str = "127.0.0.1:50053"
    # Worker processes, i.e. runs trained at once (TRAINER_WORKERS).
    workers: int = field(default_factory=_default_workers)
    # Seconds between heartbeats of an active run (TRAINER_HEARTBEAT_S).
    heartbeat_interval: float = 2.0
    # Episodes kept in memory while the registry is unreachable, then spilled to disk
    # (TRAINER_MAX_BUFFERED_EPISODES); spill files go to TRAINER_SPILL_DIR (default: temp dir).
    max_buffered_episodes: int = 200_000
    spill_dir: str = ""
    # Seconds SIGTERM waits for running runs to checkpoint (TRAINER_GRACE_S).
    grace: float = 20.0
    # Queued + running runs one caller may have at once (TRAINER_MAX_ACTIVE_RUNS_PER_CALLER);
    # the caller is the `x-caller` metadata value, else the peer's host.
    max_active_runs_per_caller: int = 8
    # How long a call that does not write a run we hold (registering, reading a run) retries an
    # unreachable registry before the caller gets UNAVAILABLE (TRAINER_REGISTRY_RETRY_S).
    registry_retry: float = 60.0
    log_level: str = "INFO"
    # Shared secret of the internal ports (INTERNAL_TOKEN): required on this server's calls and
    # sent to the registry when set; empty: no check (loopback-only default address).
    internal_token: str = ""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise SettingsError(f"TRAINER_WORKERS must be at least 1, got {self.workers}")
        if self.heartbeat_interval <= 0:
            raise SettingsError("TRAINER_HEARTBEAT_S must be positive")
        if self.max_active_runs_per_caller < 1:
            raise SettingsError("TRAINER_MAX_ACTIVE_RUNS_PER_CALLER must be at least 1")
        if self.registry_retry <= 0:
            raise SettingsError("TRAINER_REGISTRY_RETRY_S must be positive")

    @classmethod
    def from_env(cls) -> TrainerSettings:
        return cls(
            address=env_str("TRAINER_ADDRESS", "127.0.0.1:50052"),
            registry_target=env_str("REGISTRY_TARGET", "127.0.0.1:50053"),
            workers=env_int("TRAINER_WORKERS", _default_workers()),
            heartbeat_interval=env_float("TRAINER_HEARTBEAT_S", 2.0),
            max_buffered_episodes=env_int("TRAINER_MAX_BUFFERED_EPISODES", 200_000),
            spill_dir=env_str("TRAINER_SPILL_DIR", ""),
            grace=env_float("TRAINER_GRACE_S", 20.0),
            max_active_runs_per_caller=env_int("TRAINER_MAX_ACTIVE_RUNS_PER_CALLER", 8),
            registry_retry=env_float("TRAINER_REGISTRY_RETRY_S", 60.0),
            log_level=env_str("LOG_LEVEL", "INFO"),
            internal_token=env_str("INTERNAL_TOKEN", ""),
        )
