"""TrainerService: the public API; validation at the edge, the work in RunManager."""

from __future__ import annotations

import grpc
from google.protobuf.descriptor import MethodDescriptor

from taxidriver.access import CALLER_KEY, Caller, caller_of, check_owner, needs_owner
from taxidriver.errors import parse_uuid
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from trainer_service.algorithms import ALGORITHMS
from trainer_service.envs import ENVIRONMENTS
from trainer_service.params import PARAMETERS, PRESETS
from trainer_service.runs import RunManager, registry_errors

_METHODS = trainer_service_pb2.DESCRIPTOR.services_by_name["TrainerService"].methods_by_name


class TrainerServicer(trainer_service_pb2_grpc.TrainerServiceServicer):
    def __init__(self, runs: RunManager) -> None:
        self.runs = runs

    async def StartRun(
        self, request: trainer_service_pb2.StartRunRequest, context: grpc.aio.ServicerContext
    ) -> trainer_service_pb2.StartRunResponse:
        caller = caller_of(context)
        return await self.runs.start_run(request, caller=quota_key(context), creator=_name(caller))

    async def CancelRun(
        self, request: trainer_service_pb2.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> trainer_service_pb2.CancelRunResponse:
        caller = caller_of(context)
        await self._check_owner(_METHODS["CancelRun"], request.run_id, caller)
        return await self.runs.cancel_run(request.run_id, cancelled_by=_name(caller))

    async def ResumeRun(
        self, request: trainer_service_pb2.ResumeRunRequest, context: grpc.aio.ServicerContext
    ) -> trainer_service_pb2.ResumeRunResponse:
        caller = caller_of(context)
        await self._check_owner(_METHODS["ResumeRun"], request.run_id, caller)
        return await self.runs.resume_run(request.run_id, caller=quota_key(context), resumed_by=_name(caller))

    async def ListAlgorithms(
        self, request: trainer_service_pb2.ListAlgorithmsRequest, context: grpc.aio.ServicerContext
    ) -> trainer_service_pb2.ListAlgorithmsResponse:
        return list_algorithms()

    async def _check_owner(self, method: MethodDescriptor, run_id: str, caller: Caller | None) -> None:
        """The method's ownership rule (its access option in the proto), checked against the registry's record."""
        if not needs_owner(method, caller):
            return
        parse_uuid(run_id, "run_id")
        async with registry_errors("reading the run's owner"):
            run = await self.runs.client.get_run(run_id)
        check_owner(method, caller, run_id=run_id, creator=run.creator)


def _name(caller: Caller | None) -> str:
    return caller.username if caller is not None else ""


def quota_key(context: grpc.aio.ServicerContext) -> str:
    """Who a run is counted against: `x-caller` metadata, else the peer's host (not its port)."""
    for key, value in context.invocation_metadata() or ():
        if key == CALLER_KEY and value:
            text = value if isinstance(value, str) else value.decode("utf-8", "replace")
            return text[:200]
    peer = context.peer() or "unknown"
    # "ipv4:127.0.0.1:5555" / "ipv6:[::1]:5555": one caller per host, whatever the connection.
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


def list_algorithms() -> trainer_service_pb2.ListAlgorithmsResponse:
    """The same schema and presets StartRun validates against."""
    return trainer_service_pb2.ListAlgorithmsResponse(
        algorithms=[
            trainer_service_pb2.AlgorithmInfo(
                name=algorithm.name,
                description=algorithm.description,
                parameter_names=list(algorithm.parameters),
                optimized_preset=PRESETS[algorithm.name].hyperparameters.to_proto(),
                preset_note=PRESETS[algorithm.name].note,
            )
            for algorithm in ALGORITHMS.values()
        ],
        parameters=[
            trainer_service_pb2.ParameterSpec(
                name=spec.name,
                description=spec.description,
                type=spec.type,
                minimum=spec.minimum,
                maximum=spec.maximum,
                minimum_exclusive=spec.minimum_exclusive,
                maximum_exclusive=spec.maximum_exclusive,
            )
            for spec in PARAMETERS
        ],
        env_ids=list(ENVIRONMENTS),
    )
