"""Web settings, read once from the environment (declarations: docs/configuration.md)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from taxidriver.config import BOOLEAN, TEXT, EnvSettings, Setting, SettingsError, env_field, seconds, text
from taxidriver.settings import LOG_LEVEL, WEB_PORT

WEB = ("web",)

WEB_HOST = text("WEB_HOST", "127.0.0.1", "The HTTP face's listen host (its port: WEB_PORT).", WEB)
GATEWAY_TARGET = text(
    "GATEWAY_TARGET",
    "127.0.0.1:50051",
    "The gateway's public gRPC address: the only thing the HTTP face talks to.",
    WEB,
)
WEB_CALL_TIMEOUT = seconds("WEB_CALL_TIMEOUT", 60.0, "Deadline of one unary call through the gateway.", WEB)
WEB_SESSION_SECRET = Setting(
    name="WEB_SESSION_SECRET",
    kind=TEXT,
    default_factory=lambda: secrets.token_hex(32),
    shown_default="random per process",
    secret=True,
    description=(
        "Signs the CSRF tokens of dashboard sessions (at least 16 characters). Replicas behind one address"
        " must share it."
    ),
    read_by=WEB,
)
WEB_COOKIE_SECURE = Setting(
    name="WEB_COOKIE_SECURE",
    kind=BOOLEAN,
    default=False,
    description=(
        "Mark the session cookie Secure even when the request came over plain HTTP (TLS ended by a proxy"
        " in front). Requests that arrive over https always get it."
    ),
    read_by=WEB,
)
WEB_GATEWAY_CA_FILE = text(
    "WEB_GATEWAY_CA_FILE", "", "CA certificate (PEM) of the gateway's TLS; empty for a plaintext gateway.", WEB
)


@dataclass(frozen=True, kw_only=True)
class WebSettings(EnvSettings):
    """Where the HTTP face listens and which gateway it calls; each field's meaning is its Setting's."""

    host: str = env_field(WEB_HOST)
    port: int = env_field(WEB_PORT)
    gateway_target: str = env_field(GATEWAY_TARGET)
    call_timeout: float = env_field(WEB_CALL_TIMEOUT)
    session_secret: str = env_field(WEB_SESSION_SECRET, repr=False)
    cookie_secure: bool = env_field(WEB_COOKIE_SECURE)
    gateway_ca_file: str = env_field(WEB_GATEWAY_CA_FILE)
    log_level: str = env_field(LOG_LEVEL)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.session_secret) < 16:
            raise SettingsError("WEB_SESSION_SECRET must be at least 16 characters")
