"""HTTP/2 keepalive, defined once for both ends of every connection between our processes.

A client pings an idle connection every `time` seconds; a server sends GOAWAY
(ENHANCE_YOUR_CALM, "Too many pings") to a client that pings more often than its
`grpc.http2.min_ping_interval_without_data_ms` allows, after `max_ping_strikes` strikes.
gRPC's server default is 5 minutes, so the gateway's 30 s pings had its upstream
connections torn down about two minutes after each was opened (issue 10). Both sides now
derive their options from this one setting; the server accepts pings twice as often as
clients send them (timer jitter must never cost a strike).
"""

from __future__ import annotations

from dataclasses import dataclass

from taxidriver.config import EnvSettings, env_field
from taxidriver.settings import GRPC_KEEPALIVE_TIME_S, GRPC_KEEPALIVE_TIMEOUT_S

# Generous but bounded: artifacts stream in chunks well below this.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# A strike is a ping earlier than the server allows; this many strikes close the connection.
MAX_PING_STRIKES = 2


@dataclass(frozen=True, kw_only=True)
class Keepalive(EnvSettings):
    # Seconds between pings on an idle connection, by clients and servers.
    time: float = env_field(GRPC_KEEPALIVE_TIME_S)
    # Seconds a ping may go unanswered before the connection is declared dead.
    timeout: float = env_field(GRPC_KEEPALIVE_TIMEOUT_S)

    def client_options(self) -> list[tuple[str, int]]:
        """Channel options: ping every `time` seconds, even with no call in flight."""
        return [
            ("grpc.keepalive_time_ms", int(self.time * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def server_options(self) -> list[tuple[str, int]]:
        """Server options: accept the clients' pings (and ping idle clients the same way)."""
        return [
            ("grpc.keepalive_time_ms", int(self.time * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", int(self.time * 1000 / 2)),
            ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ]


def channel_options(keepalive: Keepalive | None = None) -> list[tuple[str, int]]:
    """Every channel between our processes (gateway -> upstreams, trainer -> registry, CLI -> gateway):
    message limits, and client keepalive that the servers' enforcement accepts."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        *(keepalive or Keepalive.from_env()).client_options(),
    ]
