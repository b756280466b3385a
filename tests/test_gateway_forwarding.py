"""The gateway forwards every call kind as raw bytes, with metadata, deadlines, cancellation and rich errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.app import start_gateway
from gateway.settings import GatewaySettings
from taxidriver.errors import status_details
from taxidriver.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from tests.fake_upstreams import (
    REGISTRY,
    TRAINER,
    Observations,
    start_fake_registry,
    start_fake_trainer,
)
from tests.support import LoopThread, free_port, wait_for_health


@dataclass
class Stack:
    target: str
    seen: Observations
    channel: grpc.Channel


@pytest.fixture(scope="module")
def stack(loop_thread: LoopThread) -> Iterator[Stack]:
    seen = Observations()
    registry = loop_thread.run(start_fake_registry(seen))
    trainers = [loop_thread.run(start_fake_trainer(label, seen)) for label in ("a", "b")]
    settings = GatewaySettings(
        auth_required=False,
        address="127.0.0.1:0",
        trainer_targets=tuple(f"127.0.0.1:{t.port}" for t in trainers),
        registry_target=f"127.0.0.1:{registry.port}",
    )
    app = loop_thread.run(start_gateway(settings))
    target = f"127.0.0.1:{app.port}"
    wait_for_health(target, REGISTRY, timeout=20)
    wait_for_health(target, TRAINER, timeout=20)
    channel = grpc.insecure_channel(target)
    yield Stack(target=target, seen=seen, channel=channel)
    channel.close()
    loop_thread.run(app.stop(0.5))
    for server in (registry, *trainers):
        loop_thread.run(server.server.stop(0.5))


def registry_stub(stack: Stack) -> registry_service_pb2_grpc.RegistryServiceStub:
    return registry_service_pb2_grpc.RegistryServiceStub(stack.channel)


def test_unary_call_is_forwarded_with_metadata_both_ways(stack: Stack) -> None:
    reply, call = registry_stub(stack).GetRun.with_call(
        registry_service_pb2.GetRunRequest(run_id="r-1"),
        metadata=(("x-request-id", "req-42"), ("x-tenant", "blue")),
        timeout=10,
    )
    assert reply.run.run_id == "r-1"
    assert reply.run.algorithm == "sarsa"
    assert stack.seen.metadata["GetRun"]["x-request-id"] == "req-42"
    assert stack.seen.metadata["GetRun"]["x-tenant"] == "blue"
    assert ("x-upstream", "registry") in call.initial_metadata()
    assert ("x-echo-request-id", "req-42") in call.trailing_metadata()


def test_hop_by_hop_metadata_is_not_forwarded(stack: Stack) -> None:
    registry_stub(stack).GetRun(registry_service_pb2.GetRunRequest(run_id="r-2"), timeout=10)
    forwarded = stack.seen.metadata["GetRun"]
    # The upstream sees its own hop's user-agent (grpc-python's), not a copy of the client's.
    assert not any(key in forwarded for key in ("te", "content-type", "connection"))


def test_deadline_travels_upstream(stack: Stack) -> None:
    for given in (7.0, 2.5):
        reply = registry_stub(stack).GetRun(registry_service_pb2.GetRunRequest(run_id="r-3"), timeout=given)
        # What the upstream saw left of the caller's deadline (the grpc-timeout header
        # rounds up by a few milliseconds).
        assert given - 2 < reply.run.execution_time < given + 0.05


def test_no_deadline_stays_no_deadline(stack: Stack) -> None:
    reply = registry_stub(stack).GetRun(registry_service_pb2.GetRunRequest(run_id="r-4"))
    assert reply.run.execution_time == -1.0 or reply.run.execution_time > 1000


def test_expired_deadline_is_deadline_exceeded(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        registry_stub(stack).GetRun(registry_service_pb2.GetRunRequest(run_id="slow"), timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_rich_error_arrives_intact(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        registry_stub(stack).GetRun(registry_service_pb2.GetRunRequest(run_id="bad"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, reason = status_details(caught.value)
    assert reason == "INVALID_ARGUMENT"
    assert [(v.field, v.description) for v in violations] == [("run_id", "must be a UUID"), ("view", "unknown view")]


def test_not_found_arrives_intact(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        registry_stub(stack).GetRun(registry_service_pb2.GetRunRequest(run_id="missing"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "run 'missing' not found"
    assert status_details(caught.value)[1] == "RUN_NOT_FOUND"


def test_upstream_own_unavailable_keeps_its_message(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        registry_stub(stack).GetRun(registry_service_pb2.GetRunRequest(run_id="overloaded"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "database down"
    assert status_details(caught.value)[1] == "DB_DOWN"


def test_client_stream_is_forwarded(stack: Stack) -> None:
    def requests() -> Iterator[registry_service_pb2.ImportModelRequest]:
        yield registry_service_pb2.ImportModelRequest(
            header=registry_service_pb2.ModelImportHeader(model_name="q_table.npy")
        )
        for _ in range(4):
            yield registry_service_pb2.ImportModelRequest(chunk=b"x" * 3000)

    reply = registry_stub(stack).ImportModel(requests(), timeout=10)
    assert reply.model.model_name == "q_table.npy"
    assert reply.model.model_size == 12_000


def test_server_stream_is_forwarded(stack: Stack) -> None:
    replies = list(
        registry_stub(stack).ExportModel(registry_service_pb2.ExportModelRequest(model_id="m-9"), timeout=10)
    )
    assert replies[0].model.model_id == "m-9"
    assert [r.chunk for r in replies[1:]] == [bytes([i]) * 1000 for i in range(5)]


def test_server_stream_error_arrives_intact(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(registry_stub(stack).ExportModel(registry_service_pb2.ExportModelRequest(model_id="missing"), timeout=10))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert status_details(caught.value)[1] == "MODEL_NOT_FOUND"


def test_bidi_stream_is_forwarded(stack: Stack) -> None:
    requests = [
        registry_service_pb2.WatchRunsRequest(add_run_ids=["r-1", "r-2"]),
        registry_service_pb2.WatchRunsRequest(add_run_ids=["r-3"]),
    ]
    replies = list(registry_stub(stack).WatchRuns(iter(requests), timeout=10))
    assert [r.event.run_id for r in replies] == ["r-1", "r-2", "r-3"]
    assert all(r.event.HasField("status_change") for r in replies)


def test_client_cancel_cancels_upstream_call(stack: Stack) -> None:
    stream = registry_stub(stack).WatchRun(
        registry_service_pb2.WatchRunRequest(run_id="r-5", from_episode=3), timeout=30
    )
    first = next(stream)
    assert first.event.episodes.first_episode == 3
    stream.cancel()
    assert stack.seen.watch_cancelled.wait(10), "the upstream WatchRun was not cancelled"


def test_trainer_calls_are_spread_round_robin(stack: Stack) -> None:
    stub = trainer_service_pb2_grpc.TrainerServiceStub(stack.channel)
    labels = [
        stub.ListAlgorithms(trainer_service_pb2.ListAlgorithmsRequest(), timeout=10).algorithms[0].description
        for _ in range(10)
    ]
    assert sorted(set(labels)) == ["a", "b"]
    assert labels.count("a") == 5


def test_ingest_is_not_routed(stack: Stack) -> None:
    stub = ingest_service_pb2_grpc.IngestServiceStub(stack.channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.RegisterRun(ingest_service_pb2.RegisterRunRequest(run_id="r-1"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "not routed by the gateway" in (caught.value.details() or "")
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.IngestEpisodes(iter([ingest_service_pb2.IngestEpisodesRequest(run_id="r-1")]), timeout=10))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert not any(name.startswith("Register") for name in stack.seen.calls)


def test_reflection_lists_only_public_services(stack: Stack) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(stack.channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = sorted(s.name for reply in replies for s in reply.list_services_response.service)
    assert names == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        REGISTRY,
        TRAINER,
        "taxidriver.tuner.v1.TunerService",
    ]


def test_health_mirrors_upstreams(stack: Stack) -> None:
    stub = health_pb2_grpc.HealthStub(stack.channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", REGISTRY, TRAINER):
        assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == serving


def test_unreachable_upstream_is_unavailable_naming_it(loop_thread: LoopThread) -> None:
    dead = f"127.0.0.1:{free_port()}"
    app = loop_thread.run(
        start_gateway(
            GatewaySettings(address="127.0.0.1:0", trainer_targets=(dead,), registry_target=dead, auth_required=False)
        )
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetRun(registry_service_pb2.GetRunRequest(run_id="r-1"), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"registry upstream {dead} is unavailable" in (caught.value.details() or "")
            health = health_pb2_grpc.HealthStub(channel)
            check = health.Check(health_pb2.HealthCheckRequest(service=REGISTRY), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # The gateway itself is alive.
            overall = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert overall.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        loop_thread.run(app.stop(0.5))


def test_health_follows_an_upstream_that_goes_away(loop_thread: LoopThread) -> None:
    seen = Observations()
    registry = loop_thread.run(start_fake_registry(seen))
    trainer = loop_thread.run(start_fake_trainer("solo", seen))
    app = loop_thread.run(
        start_gateway(
            GatewaySettings(
                auth_required=False,
                address="127.0.0.1:0",
                trainer_targets=(f"127.0.0.1:{trainer.port}",),
                registry_target=f"127.0.0.1:{registry.port}",
                health_retry_max=0.2,
            )
        )
    )
    target = f"127.0.0.1:{app.port}"
    try:
        wait_for_health(target, TRAINER, timeout=20)
        loop_thread.run(trainer.health.enter_graceful_shutdown())
        loop_thread.run(trainer.server.stop(0.1))
        done = threading.Event()
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(100):
                status = stub.Check(health_pb2.HealthCheckRequest(service=TRAINER), timeout=5).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    done.set()
                    break
                done.wait(0.1)
        assert done.is_set(), "trainer stayed SERVING at the gateway after it stopped"
    finally:
        loop_thread.run(app.stop(0.5))
        loop_thread.run(registry.server.stop(0.1))


def test_one_target_with_several_addresses_is_balanced(loop_thread: LoopThread) -> None:
    """A target resolving to several addresses (as dns:/// does for a headless service) is spread by round_robin."""
    seen = Observations()
    trainers = [loop_thread.run(start_fake_trainer(label, seen)) for label in ("x", "y")]
    registry = loop_thread.run(start_fake_registry(seen))
    addresses = ",".join(f"127.0.0.1:{t.port}" for t in trainers)
    app = loop_thread.run(
        start_gateway(
            GatewaySettings(
                auth_required=False,
                address="127.0.0.1:0",
                trainer_targets=(f"ipv4:{addresses}",),
                registry_target=f"127.0.0.1:{registry.port}",
            )
        )
    )
    try:
        target = f"127.0.0.1:{app.port}"
        wait_for_health(target, TRAINER, timeout=20)
        with grpc.insecure_channel(target) as channel:
            stub = trainer_service_pb2_grpc.TrainerServiceStub(channel)
            labels = [
                stub.ListAlgorithms(trainer_service_pb2.ListAlgorithmsRequest(), timeout=10).algorithms[0].description
                for _ in range(20)
            ]
        assert set(labels) == {"x", "y"}
    finally:
        loop_thread.run(app.stop(0.5))
        for server in (registry, *trainers):
            loop_thread.run(server.server.stop(0.1))
