"""Gateway settings, read once from the environment (declarations: docs/configuration.md)."""

from __future__ import annotations

from dataclasses import dataclass

from taxidriver.config import BOOLEAN, EnvSettings, Setting, SettingsError, env_field, seconds, text
from taxidriver.settings import INTERNAL_TOKEN, LOG_LEVEL, REGISTRY_TARGET, TRAINER_TARGETS

GATEWAY = ("gateway",)

GATEWAY_ADDRESS = text(
    "GATEWAY_ADDRESS",
    "127.0.0.1:50051",
    "The gateway's public listen address (host:port; port 0 picks a free one).",
    GATEWAY,
)
TUNER_TARGET = text("TUNER_TARGET", "127.0.0.1:50054", "The tuner's address: sweeps and recommendations.", GATEWAY)
GATEWAY_SHUTDOWN_GRACE = seconds(
    "GATEWAY_SHUTDOWN_GRACE", 10.0, "How long in-flight calls may take to finish after SIGTERM.", GATEWAY, zero=True
)
GATEWAY_HEALTH_RETRY_MAX = seconds(
    "GATEWAY_HEALTH_RETRY_MAX",
    5.0,
    "Longest pause between two attempts to watch an unreachable upstream's health.",
    GATEWAY,
)
GATEWAY_AUTH_REQUIRED = Setting(
    name="GATEWAY_AUTH_REQUIRED",
    kind=BOOLEAN,
    default=True,
    description=(
        "Require an API key (authorization: Bearer <key>) on every public call."
        " Off only for trusted setups such as in-process tests."
    ),
    read_by=GATEWAY,
)
GATEWAY_AUTH_CACHE_SECONDS = seconds(
    "GATEWAY_AUTH_CACHE_SECONDS",
    30.0,
    "How long an API key's answer (user and role, or refusal) is cached; emptied at once when the"
    " registry reports a key change (AuthService.WatchKeyChanges), unused while that stream is down.",
    GATEWAY,
    zero=True,
)
GATEWAY_TLS_CERT_FILE = text(
    "GATEWAY_TLS_CERT_FILE",
    "",
    "PEM certificate chain of the public port; with GATEWAY_TLS_KEY_FILE the port speaks TLS.",
    GATEWAY,
)
GATEWAY_TLS_KEY_FILE = text(
    "GATEWAY_TLS_KEY_FILE", "", "PEM private key of the public port (set together with GATEWAY_TLS_CERT_FILE).", GATEWAY
)


@dataclass(frozen=True, kw_only=True)
class GatewaySettings(EnvSettings):
    """Where the gateway listens and where it forwards; each field's meaning is its Setting's."""

    address: str = env_field(GATEWAY_ADDRESS)
    trainer_targets: tuple[str, ...] = env_field(TRAINER_TARGETS)
    registry_target: str = env_field(REGISTRY_TARGET)
    tuner_target: str = env_field(TUNER_TARGET)
    shutdown_grace: float = env_field(GATEWAY_SHUTDOWN_GRACE)
    health_retry_max: float = env_field(GATEWAY_HEALTH_RETRY_MAX)
    log_level: str = env_field(LOG_LEVEL)
    auth_required: bool = env_field(GATEWAY_AUTH_REQUIRED)
    auth_cache_seconds: float = env_field(GATEWAY_AUTH_CACHE_SECONDS)
    tls_cert_file: str = env_field(GATEWAY_TLS_CERT_FILE)
    tls_key_file: str = env_field(GATEWAY_TLS_KEY_FILE)
    internal_token: str = env_field(INTERNAL_TOKEN, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise SettingsError("GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE must be set together")
