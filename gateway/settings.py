"""Gateway settings, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from taxidriver.config import SettingsError, env_bool, env_float, env_str


def _targets(raw: str) -> tuple[str, ...]:
    targets = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not targets:
        raise SettingsError("TRAINER_TARGETS must list at least one trainer address")
    return targets


@dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    """Where the gateway listens and where it forwards."""

    # Public listen address ("host:port"; port 0 picks a free one).
    address: str = "127.0.0.1:50051"
    # Trainer addresses, balanced round robin. Each may be a plain "host:port" or a
    # gRPC target such as "dns:///trainer:50052" whose addresses are balanced too.
    trainer_targets: tuple[str, ...] = ("127.0.0.1:50052",)
    # The registry's address.
    registry_target: str = "127.0.0.1:50053"
    # The tuner's address (TUNER_TARGET): sweeps and recommendations.
    tuner_target: str = "127.0.0.1:50054"
    # Seconds in-flight calls may take to finish after SIGTERM.
    shutdown_grace: float = 10.0
    # Longest pause between two attempts to watch an unreachable upstream's health.
    health_retry_max: float = 5.0
    log_level: str = field(default="INFO")
    # Require an API key (authorization: Bearer <key>) on every public call.
    # Off only for trusted setups such as in-process tests.
    auth_required: bool = True
    # Seconds an API key's answer (user and role, or refusal) is cached; emptied at once when the
    # registry reports a key change (AuthService.WatchKeyChanges), unused while that stream is down.
    auth_cache_seconds: float = 30.0
    # PEM certificate chain and private key: both set -> the public port speaks TLS.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Shared secret sent to the registry and the trainers (INTERNAL_TOKEN), which refuse calls
    # without it when they have it set. Never required from the gateway's own clients.
    internal_token: str = ""

    def __post_init__(self) -> None:
        if not self.trainer_targets:
            raise SettingsError("trainer_targets must list at least one trainer address")
        if self.shutdown_grace < 0:
            raise SettingsError("shutdown_grace must be >= 0")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise SettingsError("GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE must be set together")

    @classmethod
    def from_env(cls) -> GatewaySettings:
        return cls(
            address=env_str("GATEWAY_ADDRESS", "127.0.0.1:50051"),
            trainer_targets=_targets(os.environ.get("TRAINER_TARGETS") or "127.0.0.1:50052"),
            registry_target=env_str("REGISTRY_TARGET", "127.0.0.1:50053"),
            tuner_target=env_str("TUNER_TARGET", "127.0.0.1:50054"),
            shutdown_grace=env_float("GATEWAY_SHUTDOWN_GRACE", 10.0),
            health_retry_max=env_float("GATEWAY_HEALTH_RETRY_MAX", 5.0),
            log_level=env_str("LOG_LEVEL", "INFO"),
            auth_required=env_bool("GATEWAY_AUTH_REQUIRED", True),
            auth_cache_seconds=env_float("GATEWAY_AUTH_CACHE_SECONDS", 30.0),
            tls_cert_file=env_str("GATEWAY_TLS_CERT_FILE", ""),
            tls_key_file=env_str("GATEWAY_TLS_KEY_FILE", ""),
            internal_token=env_str("INTERNAL_TOKEN", ""),
        )
