"""Tuner settings, read once from the environment (declarations: docs/configuration.md)."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from taxidriver.config import TEXT, EnvSettings, Setting, env_field, seconds
from taxidriver.settings import INTERNAL_TOKEN, LOG_LEVEL, REGISTRY_TARGET, TRAINER_TARGETS, TUNER_PORT

TUNER = ("tuner",)

TUNER_ADDRESS = Setting(
    name="TUNER_ADDRESS",
    kind=TEXT,
    default_factory=lambda: f"127.0.0.1:{TUNER_PORT.read()}",
    shown_default="127.0.0.1:TUNER_PORT",
    description="Where the tuner listens (host:port; port 0 picks a free one).",
    read_by=TUNER,
)
TUNER_ID = Setting(
    name="TUNER_ID",
    kind=TEXT,
    default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
    shown_default="host-pid-random",
    description="This tuner's name in sweep leases.",
    read_by=TUNER,
)
TUNER_LEASE_S = seconds(
    "TUNER_LEASE_S", 15.0, "How long a sweep's lease lasts without renewal; renewed every third of it.", TUNER
)
TUNER_ADOPT_S = seconds("TUNER_ADOPT_S", 5.0, "Pause between two looks for sweeps nobody drives.", TUNER)
TUNER_POLL_S = seconds("TUNER_POLL_S", 0.5, "Pause between two polls of a trial's runs.", TUNER)
TUNER_SHUTDOWN_GRACE = seconds(
    "TUNER_SHUTDOWN_GRACE",
    5.0,
    "How long in-flight calls may take to finish after SIGTERM (sweeps are left to their leases).",
    TUNER,
    zero=True,
)


@dataclass(frozen=True, kw_only=True)
class TunerSettings(EnvSettings):
    """Everything the tuner process needs; each field's meaning is its Setting's."""

    address: str = env_field(TUNER_ADDRESS)
    trainer_targets: tuple[str, ...] = env_field(TRAINER_TARGETS)
    registry_target: str = env_field(REGISTRY_TARGET)
    tuner_id: str = env_field(TUNER_ID)
    lease_seconds: float = env_field(TUNER_LEASE_S)
    adopt_interval: float = env_field(TUNER_ADOPT_S)
    poll_interval: float = env_field(TUNER_POLL_S)
    shutdown_grace: float = env_field(TUNER_SHUTDOWN_GRACE)
    log_level: str = env_field(LOG_LEVEL)
    internal_token: str = env_field(INTERNAL_TOKEN, repr=False)
