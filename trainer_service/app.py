"""Wires the trainer: registry client, worker pool, gRPC server.

The server answers at once (liveness), but reports NOT_SERVING until every worker process
has loaded its kernels (compiled by numba on the first start, then read from its on-disk
cache: NUMBA_CACHE_DIR, else __pycache__ beside the sources): a run started on a SERVING
trainer begins at once instead of waiting, queued, on a compiler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from taxidriver.server import RunningServer, ServiceBinding, create_server
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from trainer_service.registry_client import RegistryClient
from trainer_service.runs import RunManager
from trainer_service.servicer import TrainerServicer
from trainer_service.settings import NUMBA_CACHE_DIR, TrainerSettings

log = logging.getLogger(__name__)

SERVICE_NAME = trainer_service_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


@dataclass
class TrainerApp:
    settings: TrainerSettings
    running: RunningServer
    runs: RunManager
    client: RegistryClient
    warming: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace: float | None = None) -> None:
        """Running runs checkpoint and become INTERRUPTED, then the server drains."""
        grace = self.settings.grace if grace is None else grace
        if self.warming is not None:
            self.warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.warming
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
        serving=False,  # until the workers are warm (see _serve_when_warm)
        services=[
            ServiceBinding(
                name=SERVICE_NAME,
                register=lambda server: trainer_service_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server),
            )
        ],
        internal_token=settings.internal_token,
    )
    log.info(
        "trainer listening on port %d; NOT_SERVING while %d workers warm up (numba kernels are compiled on a"
        " first start, then loaded from the cache in %s)",
        running.port,
        settings.workers,
        NUMBA_CACHE_DIR.read() or NUMBA_CACHE_DIR.shown_default,
    )
    app = TrainerApp(settings=settings, running=running, runs=runs, client=client)
    app.warming = asyncio.get_running_loop().create_task(_serve_when_warm(app), name="trainer-warm-up")
    return app


# How often start-up looks at the workers' readiness. The pool exposes it as a count, not an
# event (a worker that dies while warming is replaced and counted when its successor is ready).
WARM_POLL_S = 0.05


async def _serve_when_warm(app: TrainerApp) -> None:
    started = time.perf_counter()
    while app.runs.pool.ready_workers < app.settings.workers:  # noqa: ASYNC110 - see WARM_POLL_S
        await asyncio.sleep(WARM_POLL_S)
    await app.running.set_serving(True)
    log.info("trainer SERVING: %d workers warm after %.2f s", app.settings.workers, time.perf_counter() - started)
