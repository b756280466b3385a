"""Settings read by the shared plumbing or by more than one process, declared once.

A service's own settings are declared in its `settings.py`; see taxidriver/config.py for
the mechanism and docs/configuration.md (generated) for the whole list.
"""

from __future__ import annotations

from taxidriver.config import ADDRESSES, LEVEL, Setting, port, seconds, text

GRPC_SERVICES = ("gateway", "trainer", "registry", "tuner")
SERVICES = (*GRPC_SERVICES, "web")

LOG_LEVEL = Setting(
    name="LOG_LEVEL",
    kind=LEVEL,
    default="INFO",
    choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    description="Lowest level of the JSON log lines written to stderr (any case).",
    read_by=SERVICES,
)
INTERNAL_TOKEN = text(
    "INTERNAL_TOKEN",
    "",
    "Shared secret of the internal ports: the registry, trainers and tuner refuse calls without it"
    " (x-internal-token) when set, and the gateway, trainers and tuner send it. Empty: no check, and"
    " the loopback-only default addresses are the protection. Never asked of the gateway's own clients.",
    GRPC_SERVICES,
    secret=True,
)
METRICS_PORT = port("METRICS_PORT", 0, "Port of the Prometheus /metrics HTTP endpoint; 0: not served.", SERVICES)
GRPC_KEEPALIVE_TIME_S = seconds(
    "GRPC_KEEPALIVE_TIME_S",
    30.0,
    "Pause between HTTP/2 pings on an idle connection, by clients and servers; servers accept pings"
    " twice as often (taxidriver/keepalive.py).",
    (*SERVICES, "CLI"),
)
GRPC_KEEPALIVE_TIMEOUT_S = seconds(
    "GRPC_KEEPALIVE_TIMEOUT_S",
    10.0,
    "How long a ping may go unanswered before the connection is declared dead.",
    (*SERVICES, "CLI"),
)
REGISTRY_TARGET = text(
    "REGISTRY_TARGET",
    "127.0.0.1:50053",
    "The registry's gRPC address (host:port or a gRPC target).",
    ("gateway", "trainer", "tuner"),
)
TRAINER_TARGETS = Setting(
    name="TRAINER_TARGETS",
    kind=ADDRESSES,
    default=("127.0.0.1:50052",),
    shown_default="127.0.0.1:50052",
    description=(
        "Trainer addresses, balanced round robin. Each may be a plain host:port or a gRPC target such as"
        " dns:///trainer-headless:50052, whose addresses are balanced too."
    ),
    read_by=("gateway", "tuner"),
)
DATABASE_URL = text(
    "DATABASE_URL",
    "",
    "PostgreSQL connection string. Required by the registry; the operator commands (users, purge,"
    " backup, migrate) and `make run` use the embedded PostgreSQL of `make run` when it is unset.",
    ("registry", "operator commands", "make run"),
    secret=True,
)
TAXI_DRIVER_DATA_DIR = text(
    "TAXI_DRIVER_DATA_DIR",
    ".data",
    "The data folder of `make run` (embedded PostgreSQL, the dev key, the first run), relative to the"
    " working directory; the operator commands find the embedded PostgreSQL there.",
    ("make run", "operator commands"),
)
TUNER_PORT = port(
    "TUNER_PORT",
    50054,
    "Port of the tuner; the tuner's default address is 127.0.0.1:TUNER_PORT (TUNER_ADDRESS wins).",
    ("tuner", "make run"),
)
WEB_PORT = port("WEB_PORT", 8000, "Port of the HTTP face (0 picks a free one).", ("web", "make run"))
GATEWAY_PORT = port(
    "GATEWAY_PORT", 50051, "Port `make run` gives the gateway (--gateway-port wins).", ("make run",), minimum=1
)
TRAINER_PORT = port(
    "TRAINER_PORT", 50052, "Port `make run` gives the trainer (--trainer-port wins).", ("make run",), minimum=1
)
REGISTRY_PORT = port(
    "REGISTRY_PORT", 50053, "Port `make run` gives the registry (--registry-port wins).", ("make run",), minimum=1
)
TAXI_DRIVER_GATEWAY = text(
    "TAXI_DRIVER_GATEWAY",
    "127.0.0.1:50051",
    "The gateway the `taxi-driver` CLI and the Python client call (--gateway wins).",
    ("CLI",),
)
TAXI_DRIVER_API_KEY = text(
    "TAXI_DRIVER_API_KEY",
    "",
    "API key the `taxi-driver` CLI and the Python client send (authorization: Bearer).",
    ("CLI",),
    secret=True,
)
