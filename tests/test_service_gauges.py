"""The services' own Prometheus gauges are fed by the services (they read 0 in production
when only a test set them): episodes ingested, the registry's pool, the trainer's workers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import grpc
from prometheus_client import REGISTRY

from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from tests.support import InProcessService


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_ingest_counts_the_episodes_it_stores(registry: InProcessService) -> None:
    run_id = str(uuid.uuid4())
    batch = ingest_pb2.IngestEpisodesRequest(run_id=run_id, first_episode=0, rewards=[1.0] * 7, steps=[3] * 7)
    with grpc.insecure_channel(registry.target) as channel:
        ingest = ingest_grpc.IngestServiceStub(channel)
        ingest.RegisterRun(
            ingest_pb2.RegisterRunRequest(run_id=run_id, algorithm="sarsa", mode="user", episodes_planned=7)
        )
        before = sample("taxidriver_episodes_ingested_total")
        acks = list(ingest.IngestEpisodes(iter([batch, batch])))  # the replay stores nothing
    assert [a.stored for a in acks] == [7, 0]
    assert sample("taxidriver_episodes_ingested_total") == before + 7


def test_registry_reports_its_database_pool(registry: InProcessService) -> None:
    # The health loop samples the pool every REGISTRY_HEALTH_INTERVAL (1 s).
    wait_until(lambda: sample("taxidriver_db_pool_connections", {"state": "size"}) >= 1)


def test_trainer_reports_its_workers(trainer: InProcessService) -> None:
    # The session's trainer has two warm workers (conftest); none needs to be busy now.
    wait_until(lambda: sample("taxidriver_trainer_workers", {"state": "total"}) == 2)
