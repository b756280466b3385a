"""Web settings, read once from the environment."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from taxidriver.config import SettingsError, env_bool, env_float, env_int, env_str


@dataclass(frozen=True, kw_only=True)
class WebSettings:
    """Where the HTTP face listens and which gateway it calls."""

    # Listen host and port (WEB_HOST, WEB_PORT; port 0 picks a free one).
    host: str = "127.0.0.1"
    port: int = 8000
    # The gateway's public gRPC address: the only thing this service talks to.
    gateway_target: str = "127.0.0.1:50051"
    # Deadline of one unary call through the gateway, seconds.
    call_timeout: float = 60.0
    # Signs the CSRF tokens of dashboard sessions. Replicas behind one address must share
    # it (WEB_SESSION_SECRET); when unset each process draws its own.
    session_secret: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    # Mark the session cookie Secure even when the request itself came over plain HTTP
    # (TLS ended by a proxy in front). Requests that arrive over https always get it.
    cookie_secure: bool = False
    # CA certificate (PEM) of the gateway's TLS; empty for a plaintext gateway.
    gateway_ca_file: str = ""
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"WEB_PORT must be a port number, got {self.port}")
        if self.call_timeout <= 0:
            raise SettingsError("WEB_CALL_TIMEOUT must be > 0")
        if len(self.session_secret) < 16:
            raise SettingsError("WEB_SESSION_SECRET must be at least 16 characters")

    @classmethod
    def from_env(cls) -> WebSettings:
        secret = env_str("WEB_SESSION_SECRET", "")
        return cls(
            host=env_str("WEB_HOST", "127.0.0.1"),
            port=env_int("WEB_PORT", 8000),
            gateway_target=env_str("GATEWAY_TARGET", "127.0.0.1:50051"),
            call_timeout=env_float("WEB_CALL_TIMEOUT", 60.0),
            cookie_secure=env_bool("WEB_COOKIE_SECURE", False),
            gateway_ca_file=env_str("WEB_GATEWAY_CA_FILE", ""),
            log_level=env_str("LOG_LEVEL", "INFO"),
            **({"session_secret": secret} if secret else {}),
        )
