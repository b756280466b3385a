"""Settings read by the shared plumbing or by more than one process, declared once.

A service's own settings are declared in its `settings.py`; see taxidriver/config.py for
the mechanism and docs/configuration.md (generated) for the whole list.
"""

from __future__ import annotations

from taxidriver.config import ADDRESSES, INTEGER, LEVEL, NUMBER, TEXT, Setting

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
INTERNAL_TOKEN = Setting(
    name="INTERNAL_TOKEN",
    kind=TEXT,
    default="",
    secret=True,
    description=(
        "Shared secret of the internal ports: the registry, trainers and tuner refuse calls without it"
        " (x-internal-token) when set, and the gateway, trainers and tuner send it. Empty: no check, and"
        " the loopback-only default addresses are the protection. Never asked of the gateway's own clients."
    ),
    read_by=GRPC_SERVICES,
)
METRICS_PORT = Setting(
    name="METRICS_PORT",
    kind=INTEGER,
    default=0,
    minimum=0,
    maximum=65535,
    description="Port of the Prometheus /metrics HTTP endpoint; 0: not served.",
    read_by=SERVICES,
)
GRPC_KEEPALIVE_TIME_S = Setting(
    name="GRPC_KEEPALIVE_TIME_S",
    kind=NUMBER,
    default=30.0,
    unit="seconds",
    minimum=0,
    exclusive_minimum=True,
    description=(
        "Pause between HTTP/2 pings on an idle connection, by clients and servers; servers accept pings"
        " twice as often (taxidriver/keepalive.py)."
    ),
    read_by=(*SERVICES, "CLI"),
)
GRPC_KEEPALIVE_TIMEOUT_S = Setting(
    name="GRPC_KEEPALIVE_TIMEOUT_S",
    kind=NUMBER,
    default=10.0,
    unit="seconds",
    minimum=0,
    exclusive_minimum=True,
    description="How long a ping may go unanswered before the connection is declared dead.",
    read_by=(*SERVICES, "CLI"),
)
REGISTRY_TARGET = Setting(
    name="REGISTRY_TARGET",
    kind=TEXT,
    default="127.0.0.1:50053",
    description="The registry's gRPC address (host:port or a gRPC target).",
    read_by=("gateway", "trainer", "tuner"),
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
DATABASE_URL = Setting(
    name="DATABASE_URL",
    kind=TEXT,
    default="",
    secret=True,
    description=(
        "PostgreSQL connection string. Required by the registry; the operator commands (users, purge,"
        " backup, migrate) and `make run` use the embedded PostgreSQL of `make run` when it is unset."
    ),
    read_by=("registry", "operator commands", "make run"),
)
TAXI_DRIVER_DATA_DIR = Setting(
    name="TAXI_DRIVER_DATA_DIR",
    kind=TEXT,
    default=".data",
    description=(
        "The data folder of `make run` (embedded PostgreSQL, the dev key, the first run), relative to the"
        " working directory; the operator commands find the embedded PostgreSQL there."
    ),
    read_by=("make run", "operator commands"),
)
TUNER_PORT = Setting(
    name="TUNER_PORT",
    kind=INTEGER,
    default=50054,
    minimum=0,
    maximum=65535,
    description="Port of the tuner; the tuner's default address is 127.0.0.1:TUNER_PORT (TUNER_ADDRESS wins).",
    read_by=("tuner", "make run"),
)
WEB_PORT = Setting(
    name="WEB_PORT",
    kind=INTEGER,
    default=8000,
    minimum=0,
    maximum=65535,
    description="Port of the HTTP face (0 picks a free one).",
    read_by=("web", "make run"),
)
GATEWAY_PORT = Setting(
    name="GATEWAY_PORT",
    kind=INTEGER,
    default=50051,
    minimum=1,
    maximum=65535,
    description="Port `make run` gives the gateway (--gateway-port wins).",
    read_by=("make run",),
)
TRAINER_PORT = Setting(
    name="TRAINER_PORT",
    kind=INTEGER,
    default=50052,
    minimum=1,
    maximum=65535,
    description="Port `make run` gives the trainer (--trainer-port wins).",
    read_by=("make run",),
)
REGISTRY_PORT = Setting(
    name="REGISTRY_PORT",
    kind=INTEGER,
    default=50053,
    minimum=1,
    maximum=65535,
    description="Port `make run` gives the registry (--registry-port wins).",
    read_by=("make run",),
)
TAXI_DRIVER_GATEWAY = Setting(
    name="TAXI_DRIVER_GATEWAY",
    kind=TEXT,
    default="127.0.0.1:50051",
    description="The gateway the `taxi-driver` CLI and the Python client call (--gateway wins).",
    read_by=("CLI",),
)
TAXI_DRIVER_API_KEY = Setting(
    name="TAXI_DRIVER_API_KEY",
    kind=TEXT,
    default="",
    secret=True,
    description="API key the `taxi-driver` CLI and the Python client send (authorization: Bearer).",
    read_by=("CLI",),
)
