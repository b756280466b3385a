"""Wires the trainer: registry client, worker pool, gRPC server."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from taxidriver.server import RunningServer, ServiceBinding, create_server
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from trainer_service.registry_client import RegistryClient
from trainer_service.runs import RunManager
from trainer_service.servicer import TrainerServicer
from trainer_service.settings import TrainerSettings

log = logging.getLogger(__name__)

SERVICE_NAME = trainer_service_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


@dataclass
class TrainerApp:
    settings: TrainerSettings
    running: RunningServer
    runs: RunManager
    client: RegistryClient

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace: float | None = None) -> None:
        """Running runs checkpoint and become INTERRUPTED, then the server drains."""
        grace = self.settings.grace if grace is None else grace
        await self.running.set_serving(False)
        await self.runs.shutdown(grace)
        await self.running.server.stop(grace)
        await self.client.close()


async def start_trainer(settings: TrainerSettings) -> TrainerApp:
    client = RegistryClient(
        settings.registry_target, internal_token=settings.internal_token, retry_for=settings.registry_retry
    )
    runs = RunManager(
        client,
        settings.workers,
        heartbeat_interval=settings.heartbeat_interval,
        spill_dir=Path(settings.spill_dir) if settings.spill_dir else None,
        max_buffered_episodes=settings.max_buffered_episodes,
        max_active_runs_per_caller=settings.max_active_runs_per_caller,
    )
    await runs.start()
    servicer = TrainerServicer(runs)
    running = await create_server(
        address=settings.address,
        services=[
            ServiceBinding(
                name=SERVICE_NAME,
                register=lambda server: trainer_service_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server),
            )
        ],
        internal_token=settings.internal_token,
    )
    log.info("trainer listening on port %d with %d workers", running.port, settings.workers)
    return TrainerApp(settings=settings, running=running, runs=runs, client=client)
