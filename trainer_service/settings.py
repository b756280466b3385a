"""Trainer settings, read once from the environment (declarations: docs/configuration.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from taxidriver.config import INTEGER, EnvSettings, Setting, env_field, integer, seconds, text
from taxidriver.settings import INTERNAL_TOKEN, LOG_LEVEL, REGISTRY_TARGET

TRAINER = ("trainer",)

TRAINER_ADDRESS = text(
    "TRAINER_ADDRESS", "127.0.0.1:50052", "Where the trainer listens (host:port; port 0 picks a free one).", TRAINER
)
TRAINER_WORKERS = Setting(
    name="TRAINER_WORKERS",
    kind=INTEGER,
    default_factory=lambda: os.cpu_count() or 1,
    shown_default="the CPU count",
    unit="processes",
    minimum=1,
    description="Worker processes, i.e. runs trained at once.",
    read_by=TRAINER,
)
TRAINER_HEARTBEAT_S = seconds(
    "TRAINER_HEARTBEAT_S",
    2.0,
    "Pause between two heartbeats of an active run (they renew its lease in the registry).",
    TRAINER,
)
TRAINER_MAX_BUFFERED_EPISODES = integer(
    "TRAINER_MAX_BUFFERED_EPISODES",
    200_000,
    "Episodes kept in memory while the registry is unreachable, then spilled to disk.",
    TRAINER,
    unit="episodes",
    minimum=0,
)
TRAINER_SPILL_DIR = text(
    "TRAINER_SPILL_DIR",
    "",
    "Where episodes beyond TRAINER_MAX_BUFFERED_EPISODES are spilled.",
    TRAINER,
    shown_default="the temporary folder",
)
TRAINER_GRACE_S = seconds(
    "TRAINER_GRACE_S",
    20.0,
    "How long SIGTERM waits for running runs to checkpoint (they become INTERRUPTED) and calls to end.",
    TRAINER,
    zero=True,
)
TRAINER_MAX_ACTIVE_RUNS_PER_CALLER = integer(
    "TRAINER_MAX_ACTIVE_RUNS_PER_CALLER",
    8,
    "Queued plus running runs one caller may have at once (the x-caller metadata value, else the peer).",
    TRAINER,
    unit="runs",
    minimum=1,
)
TRAINER_REGISTRY_RETRY_S = seconds(
    "TRAINER_REGISTRY_RETRY_S",
    60.0,
    "How long a call that writes no run this trainer holds (registering, reading a run) retries an"
    " unreachable registry before the caller gets UNAVAILABLE.",
    TRAINER,
)
NUMBA_CACHE_DIR = text(
    "NUMBA_CACHE_DIR",
    "",
    "numba's own cache of compiled kernels (read by numba in every worker); the trainer logs it and"
    " keeps its cache lock there (else in the temporary folder).",
    TRAINER,
    shown_default="__pycache__ beside the sources",
)


@dataclass(frozen=True, kw_only=True)
class TrainerSettings(EnvSettings):
    """Everything the trainer process needs; each field's meaning is its Setting's."""

    address: str = env_field(TRAINER_ADDRESS)
    registry_target: str = env_field(REGISTRY_TARGET)
    workers: int = env_field(TRAINER_WORKERS)
    heartbeat_interval: float = env_field(TRAINER_HEARTBEAT_S)
    max_buffered_episodes: int = env_field(TRAINER_MAX_BUFFERED_EPISODES)
    spill_dir: str = env_field(TRAINER_SPILL_DIR)
    grace: float = env_field(TRAINER_GRACE_S)
    max_active_runs_per_caller: int = env_field(TRAINER_MAX_ACTIVE_RUNS_PER_CALLER)
    registry_retry: float = env_field(TRAINER_REGISTRY_RETRY_S)
    log_level: str = env_field(LOG_LEVEL)
    internal_token: str = env_field(INTERNAL_TOKEN, repr=False)
