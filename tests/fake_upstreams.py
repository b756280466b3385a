"""Stand-in upstreams for gateway tests: real grpc.aio servers with the generated servicers.

They answer in ways that make forwarding visible (echoing metadata and the
deadline they saw, counting calls, noticing cancellation), so a gateway test
asserts what crossed the hop without needing the real registry or trainer.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc

from taxidriver.errors import ServiceError, Violations, not_found
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.server import RunningServer, ServiceBinding, create_server
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from tests.support import LoopThread, free_port, wait_for_health

REGISTRY = "taxidriver.registry.v1.RegistryService"
TRAINER = "taxidriver.trainer.v1.TrainerService"


@dataclass
class Observations:
    """What the stand-in upstreams saw, readable from the test thread."""

    calls: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    watch_cancelled: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw(self, label: str, context: grpc.aio.ServicerContext) -> None:
        with self.lock:
            self.calls[label] = self.calls.get(label, 0) + 1
            self.metadata[label] = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class FakeRegistry(registry_service_pb2_grpc.RegistryServiceServicer):
    def __init__(self, seen: Observations) -> None:
        self.seen = seen

    async def GetRun(
        self, request: registry_service_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> registry_service_pb2.GetRunResponse:
        self.seen.saw("GetRun", context)
        if request.run_id == "missing":
            raise not_found("run", request.run_id)
        if request.run_id == "bad":
            violations = Violations()
            violations.add("run_id", "must be a UUID")
            violations.add("view", "unknown view")
            violations.raise_if_any()
        if request.run_id == "overloaded":
            raise ServiceError(code=grpc.StatusCode.UNAVAILABLE, message="database down", reason="DB_DOWN")
        if request.run_id == "slow":
            await asyncio.sleep(30)
        await context.send_initial_metadata((("x-upstream", "registry"),))
        context.set_trailing_metadata((("x-echo-request-id", _value(context, "x-request-id")),))
        remaining = context.time_remaining()
        return registry_service_pb2.GetRunResponse(
            run=resources_pb2.Run(
                run_id=request.run_id,
                algorithm="sarsa",
                status=resources_pb2.RUN_STATUS_COMPLETED,
                # The deadline the upstream saw, so a test can check it travelled.
                execution_time=-1.0 if remaining is None else remaining,
            )
        )

    async def ImportModel(
        self,
        request_iterator: AsyncIterator[registry_service_pb2.ImportModelRequest],
        context: grpc.aio.ServicerContext,
    ) -> registry_service_pb2.ImportModelResponse:
        self.seen.saw("ImportModel", context)
        name = ""
        size = 0
        async for message in request_iterator:
            if message.HasField("header"):
                name = message.header.model_name
            else:
                size += len(message.chunk)
        return registry_service_pb2.ImportModelResponse(
            model=resources_pb2.Model(model_id="m-1", model_name=name, model_size=size)
        )

    async def ExportModel(
        self, request: registry_service_pb2.ExportModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_service_pb2.ExportModelResponse]:
        self.seen.saw("ExportModel", context)
        if request.model_id == "missing":
            raise not_found("model", request.model_id)
        yield registry_service_pb2.ExportModelResponse(model=resources_pb2.Model(model_id=request.model_id))
        for index in range(5):
            yield registry_service_pb2.ExportModelResponse(chunk=bytes([index]) * 1000)

    async def WatchRun(
        self, request: registry_service_pb2.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_service_pb2.WatchRunResponse]:
        self.seen.saw("WatchRun", context)
        yield registry_service_pb2.WatchRunResponse(
            event=resources_pb2.RunEvent(
                run_id=request.run_id, episodes=resources_pb2.EpisodeCurves(first_episode=request.from_episode)
            )
        )
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.seen.watch_cancelled.set()
            raise

    async def WatchRuns(
        self, request_iterator: AsyncIterator[registry_service_pb2.WatchRunsRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_service_pb2.WatchRunsResponse]:
        self.seen.saw("WatchRuns", context)
        async for message in request_iterator:
            for run_id in message.add_run_ids:
                yield registry_service_pb2.WatchRunsResponse(
                    event=resources_pb2.RunEvent(
                        run_id=run_id,
                        status_change=resources_pb2.RunStatusChange(status=resources_pb2.RUN_STATUS_RUNNING),
                    )
                )


class FakeTrainer(trainer_service_pb2_grpc.TrainerServiceServicer):
    def __init__(self, label: str, seen: Observations) -> None:
        self.label = label
        self.seen = seen

    async def ListAlgorithms(
        self, request: trainer_service_pb2.ListAlgorithmsRequest, context: grpc.aio.ServicerContext
    ) -> trainer_service_pb2.ListAlgorithmsResponse:
        self.seen.saw(f"ListAlgorithms@{self.label}", context)
        return trainer_service_pb2.ListAlgorithmsResponse(
            algorithms=[trainer_service_pb2.AlgorithmInfo(name="sarsa", description=self.label)]
        )


def _value(context: grpc.aio.ServicerContext, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key and isinstance(v, str):
            return v
    return ""


async def start_fake_registry(seen: Observations, address: str = "127.0.0.1:0") -> RunningServer:
    servicer = FakeRegistry(seen)
    return await create_server(
        address=address,
        services=[
            ServiceBinding(
                name=REGISTRY,
                register=lambda s: registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, s),
            )
        ],
    )


async def start_fake_trainer(label: str, seen: Observations, address: str = "127.0.0.1:0") -> RunningServer:
    servicer = FakeTrainer(label, seen)
    return await create_server(
        address=address,
        services=[
            ServiceBinding(
                name=TRAINER,
                register=lambda s: trainer_service_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, s),
            )
        ],
    )


@contextlib.contextmanager
def gateway_before_fake_registry(loop: LoopThread, seen: Observations) -> Iterator[tuple[RunningServer, str]]:
    """A real gateway (no keys) in front of a stand-in registry: (the registry, the gateway's
    target). Its trainer target leads nowhere."""
    from gateway.app import start_gateway
    from gateway.settings import GatewaySettings

    upstream = loop.run(start_fake_registry(seen))
    settings = GatewaySettings(
        auth_required=False,
        address="127.0.0.1:0",
        trainer_targets=(f"127.0.0.1:{free_port()}",),
        registry_target=f"127.0.0.1:{upstream.port}",
    )
    app = loop.run(start_gateway(settings))
    target = f"127.0.0.1:{app.port}"
    try:
        wait_for_health(target, REGISTRY, timeout=20)
        yield upstream, target
    finally:
        loop.run(app.stop(0.5))
        loop.run(upstream.server.stop(0.1))
