"""TrainerService: the public API; validation at the edge, the work in RunManager."""

from __future__ import annotations

import grpc

from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from trainer_service.algorithms import ALGORITHMS
from trainer_service.envs import ENVIRONMENTS
from trainer_service.params import PARAMETERS, PRESETS
from trainer_service.runs import RunManager


class TrainerServicer(trainer_service_pb2_grpc.TrainerServiceServicer):
    def __init__(self, runs: RunManager) -> None:
        self.runs = runs

    async def StartRun(
        self, request: trainer_service_pb2.StartRunRequest, context: grpc.aio.ServicerContext
    ) -> trainer_service_pb2.StartRunResponse:
        return await self.runs.start_run(request)

    async def CancelRun(
        self, request: trainer_service_pb2.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> trainer_service_pb2.CancelRunResponse:
        return await self.runs.cancel_run(request.run_id)

    async def ResumeRun(
        self, request: trainer_service_pb2.ResumeRunRequest, context: grpc.aio.ServicerContext
    ) -> trainer_service_pb2.ResumeRunResponse:
        return await self.runs.resume_run(request.run_id)

    async def ListAlgorithms(
        self, request: trainer_service_pb2.ListAlgorithmsRequest, context: grpc.aio.ServicerContext
    ) -> trainer_service_pb2.ListAlgorithmsResponse:
        return list_algorithms()


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
