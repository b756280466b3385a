"""Tuner settings, read once from the environment."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

from taxidriver.config import SettingsError, env_float, env_str


def _targets(raw: str) -> tuple[str, ...]:
    targets = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not targets:
        raise SettingsError("TRAINER_TARGETS must list at least one trainer address")
    return targets


def _default_tuner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, kw_only=True)
class TunerSettings:
    # Where the tuner listens (TUNER_ADDRESS; TUNER_PORT sets the port of the default address).
    address: str = "127.0.0.1:50054"
    # Trainer addresses, balanced like the gateway does (TRAINER_TARGETS): each a "host:port"
    # or a gRPC target such as "dns:///trainer-headless:50052" whose addresses are balanced too.
    trainer_targets: tuple[str, ...] = ("127.0.0.1:50052",)
    # The registry (REGISTRY_TARGET): sweeps are stored there, runs are read from there.
    registry_target: str = "127.0.0.1:50053"
    # This tuner's name in sweep leases (TUNER_ID; default host-pid-random).
    tuner_id: str = field(default_factory=_default_tuner_id)
    # Seconds a sweep's lease lasts without renewal (TUNER_LEASE_S); renewed every third of it.
    lease_seconds: float = 15.0
    # Seconds between looks for sweeps nobody drives (TUNER_ADOPT_S).
    adopt_interval: float = 5.0
    # Seconds between polls of a trial's runs (TUNER_POLL_S).
    poll_interval: float = 0.5
    # Seconds SIGTERM waits for in-flight calls (TUNER_SHUTDOWN_GRACE).
    shutdown_grace: float = 5.0
    log_level: str = "INFO"
    # Shared secret of the internal ports (INTERNAL_TOKEN), sent to the registry and trainers.
    internal_token: str = ""

    def __post_init__(self) -> None:
        if not self.trainer_targets:
            raise SettingsError("trainer_targets must list at least one trainer address")
        if self.lease_seconds <= 0:
            raise SettingsError("TUNER_LEASE_S must be positive")
        if self.adopt_interval <= 0 or self.poll_interval <= 0:
            raise SettingsError("TUNER_ADOPT_S and TUNER_POLL_S must be positive")

    @classmethod
    def from_env(cls) -> TunerSettings:
        port = env_str("TUNER_PORT", "50054")
        return cls(
            address=env_str("TUNER_ADDRESS", f"127.0.0.1:{port}"),
            trainer_targets=_targets(os.environ.get("TRAINER_TARGETS") or "127.0.0.1:50052"),
            registry_target=env_str("REGISTRY_TARGET", "127.0.0.1:50053"),
            tuner_id=env_str("TUNER_ID", "") or _default_tuner_id(),
            lease_seconds=env_float("TUNER_LEASE_S", 15.0),
            adopt_interval=env_float("TUNER_ADOPT_S", 5.0),
            poll_interval=env_float("TUNER_POLL_S", 0.5),
            shutdown_grace=env_float("TUNER_SHUTDOWN_GRACE", 5.0),
            log_level=env_str("LOG_LEVEL", "INFO"),
            internal_token=env_str("INTERNAL_TOKEN", ""),
        )
