"""Web settings, read once from the environment (declarations: docs/configuration.md)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from taxidriver.config import BOOLEAN, NUMBER, TEXT, EnvSettings, Setting, SettingsError, env_field
from taxidriver.settings import LOG_LEVEL, WEB_PORT

WEB = ("web",)

WEB_HOST = Setting(
    name="WEB_HOST",
    kind=TEXT,
    default="127.0.0.1",
    description="The HTTP face's listen host (its port: WEB_PORT).",
    read_by=WEB,
)
GATEWAY_TARGET = Setting(
    name="GATEWAY_TARGET",
    kind=TEXT,
    default="127.0.0.1:50051",
    description="The gateway's public gRPC address: the only thing the HTTP face talks to.",
    read_by=WEB,
)
WEB_CALL_TIMEOUT = Setting(
    name="WEB_CALL_TIMEOUT",
    kind=NUMBER,
    default=60.0,
    unit="seconds",
    minimum=0,
    exclusive_minimum=True,
    description="Deadline of one unary call through the gateway.",
    read_by=WEB,
)
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
WEB_GATEWAY_CA_FILE = Setting(
    name="WEB_GATEWAY_CA_FILE",
    kind=TEXT,
    default="",
    description="CA certificate (PEM) of the gateway's TLS; empty for a plaintext gateway.",
    read_by=WEB,
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
