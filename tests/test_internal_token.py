"""The internal ports (registry, trainer) with INTERNAL_TOKEN set refuse calls without it.

Off by default: the servers listen on loopback only. Deployments that expose the ports on
a network (compose, Kubernetes) set one shared secret in every service; the gateway and the
trainer send it, and nothing else can call DeleteRun, RegisterRun or StartRun directly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.settings import GatewaySettings
from registry_service.settings import RegistrySettings
from taxidriver.errors import status_details
from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from taxidriver.internal_auth import INTERNAL_TOKEN_KEY
from taxidriver.registry.v1 import registry_service_pb2 as pb
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc
from taxidriver.registry.v1 import resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2 as tpb
from taxidriver.trainer.v1 import trainer_service_pb2_grpc as trainer_grpc
from tests.support import InProcessService, LoopThread
from trainer_service.settings import TrainerSettings

TOKEN = "s3cret-internal-token"


@pytest.fixture(scope="module")
def stack(loop_thread: LoopThread, database_url: str) -> Iterator[dict[str, InProcessService]]:
    from gateway.app import start_gateway
    from registry_service.app import start_registry
    from trainer_service.app import start_trainer

    registry = InProcessService(
        loop_thread,
        lambda: start_registry(
            RegistrySettings(address="127.0.0.1:0", database_url=database_url, internal_token=TOKEN)
        ),
    )
    trainer = InProcessService(
        loop_thread,
        lambda: start_trainer(
            TrainerSettings(
                address="127.0.0.1:0",
                registry_target=registry.target,
                workers=1,
                internal_token=TOKEN,
                max_active_runs_per_caller=100,
            )
        ),
    )
    gateway = InProcessService(
        loop_thread,
        lambda: start_gateway(
            GatewaySettings(
                address="127.0.0.1:0",
                trainer_targets=(trainer.target,),
                registry_target=registry.target,
                auth_required=False,
                internal_token=TOKEN,
            )
        ),
    )
    yield {"registry": registry, "trainer": trainer, "gateway": gateway}
    gateway.stop()
    trainer.stop()
    registry.stop()


def refusal(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), status_details(caught.value)[1]


def test_internal_ports_refuse_calls_without_the_token(
    stack: dict[str, InProcessService], db: psycopg.Connection
) -> None:
    before = db.execute("SELECT count(*) FROM training_runs").fetchone()
    with grpc.insecure_channel(stack["registry"].target) as channel:
        ingest = ingest_grpc.IngestServiceStub(channel)
        queries = registry_grpc.RegistryServiceStub(channel)
        register = ingest_pb2.RegisterRunRequest(run_id=str(uuid.uuid4()), algorithm="sarsa")
        assert refusal(lambda: ingest.RegisterRun(register, timeout=10)) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "INTERNAL_TOKEN_MISSING",
        )
        wrong = ((INTERNAL_TOKEN_KEY, "guess"),)
        assert refusal(lambda: ingest.RegisterRun(register, metadata=wrong, timeout=10)) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "INTERNAL_TOKEN_INVALID",
        )
        delete = pb.DeleteRunRequest(run_id=str(uuid.uuid4()))
        assert refusal(lambda: queries.DeleteRun(delete, timeout=10))[0] == grpc.StatusCode.UNAUTHENTICATED
        assert db.execute("SELECT count(*) FROM training_runs").fetchone() == before
        # With the token: served (NOT_FOUND is the registry's own answer for an unknown run).
        right = ((INTERNAL_TOKEN_KEY, TOKEN),)
        assert refusal(lambda: queries.DeleteRun(delete, metadata=right, timeout=10))[0] == grpc.StatusCode.NOT_FOUND
        # Probes send no metadata: health stays open.
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(stack["trainer"].target) as channel:
        trainer = trainer_grpc.TrainerServiceStub(channel)
        code, reason = refusal(lambda: trainer.ListAlgorithms(tpb.ListAlgorithmsRequest(), timeout=10))
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "INTERNAL_TOKEN_MISSING")


def test_a_client_cannot_smuggle_a_token_through_the_gateway(stack: dict[str, InProcessService]) -> None:
    """The gateway drops a client's x-internal-token and sends its own (a wrong one would be refused)."""
    with grpc.insecure_channel(stack["gateway"].target) as channel:
        reply = registry_grpc.RegistryServiceStub(channel).ListRuns(
            pb.ListRunsRequest(page_size=1), metadata=((INTERNAL_TOKEN_KEY, "guess"),), timeout=10
        )
    assert reply.total_size >= 0


def test_a_training_goes_through_with_the_token_everywhere(stack: dict[str, InProcessService]) -> None:
    """Gateway -> trainer -> registry (register, episode stream, model, completion) all carry it."""
    request = tpb.StartRunRequest(
        algorithm="q_learning",
        mode=tpb.TRAINING_MODE_USER,
        hyperparameters=tpb.Hyperparameters(
            alpha=0.5,
            gamma=0.9,
            epsilon=1.0,
            epsilon_min=0.1,
            epsilon_decay=0.99,
            training_episodes=50,
            max_steps=50,
        ),
        test_episodes=2,
        seed=11,
    )
    with grpc.insecure_channel(stack["gateway"].target) as channel:
        started = trainer_grpc.TrainerServiceStub(channel).StartRun(request, timeout=30)
        queries = registry_grpc.RegistryServiceStub(channel)
        final = None
        for reply in queries.WatchRun(pb.WatchRunRequest(run_id=started.run_id, status_only=True), timeout=120):
            final = reply.event.status_change
        assert final is not None and final.status == resources_pb2.RUN_STATUS_COMPLETED
        run = queries.GetRun(pb.GetRunRequest(run_id=started.run_id), timeout=30).run
        assert run.episodes_recorded == 50
        deadline = time.monotonic() + 60
        while not queries.ListModels(pb.ListModelsRequest(run_id=started.run_id), timeout=30).models:
            assert time.monotonic() < deadline, "the trained model never arrived"
            time.sleep(0.2)


def test_the_gateway_checks_api_keys_through_the_token(loop_thread: LoopThread, stack) -> None:
    """With auth on, the gateway's AuthService channel carries the token: an unknown key is
    API_KEY_INVALID (the registry's answer), not a refused internal call."""
    from gateway.app import start_gateway

    gateway = InProcessService(
        loop_thread,
        lambda: start_gateway(
            GatewaySettings(
                address="127.0.0.1:0",
                trainer_targets=(stack["trainer"].target,),
                registry_target=stack["registry"].target,
                internal_token=TOKEN,
            )
        ),
    )
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            stub = registry_grpc.RegistryServiceStub(channel)
            code, reason = refusal(
                lambda: stub.ListRuns(pb.ListRunsRequest(), metadata=(("authorization", "Bearer nope"),), timeout=10)
            )
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")
    finally:
        gateway.stop()


def test_internal_ports_are_loopback_only_by_default() -> None:
    assert RegistrySettings(database_url="postgresql://x").address.startswith("127.0.0.1:")
    assert TrainerSettings().address.startswith("127.0.0.1:")
    assert GatewaySettings().address.startswith("127.0.0.1:")
    assert RegistrySettings(database_url="postgresql://x").internal_token == ""
