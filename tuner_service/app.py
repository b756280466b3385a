"""Wires the tuner: registry and trainer channels, sweep drivers, the gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import grpc

from taxidriver.errors import ServiceError, Violations, bad_field
from taxidriver.ingest.v1 import sweep_store_pb2, sweep_store_pb2_grpc
from taxidriver.internal_auth import client_interceptors
from taxidriver.keepalive import channel_options
from taxidriver.registry.v1 import registry_service_pb2_grpc
from taxidriver.server import RunningServer, ServiceBinding, create_server
from taxidriver.trainer.v1 import trainer_service_pb2
from taxidriver.tuner.v1 import tuner_service_pb2 as pb
from taxidriver.tuner.v1 import tuner_service_pb2_grpc
from tuner_service import advice, space
from tuner_service.driver import CALL_TIMEOUT_S, Services, SweepDriver, trial_from_record
from tuner_service.servicer import TunerServicer, upstream_errors
from tuner_service.settings import TunerSettings
from tuner_service.trainers import TrainerPool

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TunerService"].full_name


@dataclass(kw_only=True)
class Tuner:
    settings: TunerSettings
    registry_channel: grpc.aio.Channel
    trainers: TrainerPool
    store: sweep_store_pb2_grpc.SweepStoreServiceStub = field(init=False)
    registry: registry_service_pb2_grpc.RegistryServiceStub = field(init=False)
    drivers: dict[str, SweepDriver] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _landed: asyncio.Event = field(default_factory=asyncio.Event)
    _algorithms: dict[str, trainer_service_pb2.AlgorithmInfo] = field(default_factory=dict)
    _specs: dict[str, trainer_service_pb2.ParameterSpec] = field(default_factory=dict)
    _adopter: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.store = sweep_store_pb2_grpc.SweepStoreServiceStub(self.registry_channel)
        self.registry = registry_service_pb2_grpc.RegistryServiceStub(self.registry_channel)

    async def algorithms(
        self,
    ) -> tuple[dict[str, trainer_service_pb2.AlgorithmInfo], dict[str, trainer_service_pb2.ParameterSpec]]:
        """The trainer's algorithms and parameter ranges (asked once; every trainer has the same)."""
        if not self._algorithms:
            async with upstream_errors("asking the trainers for their algorithms"):
                reply = await self.trainers.pick().ListAlgorithms(
                    trainer_service_pb2.ListAlgorithmsRequest(), timeout=CALL_TIMEOUT_S
                )
            self._specs = {spec.name: spec for spec in reply.parameters}
            self._algorithms = {info.name: info for info in reply.algorithms}
        return self._algorithms, self._specs

    def landed_event(self) -> asyncio.Event:
        """An event set the next time a trial of any sweep driven here lands (or a sweep ends)."""
        return self._landed

    def _on_trial(self, sweep_id: str) -> None:
        landed, self._landed = self._landed, asyncio.Event()
        landed.set()

    async def adopt(self, sweep_id: str) -> bool:
        """Takes a sweep (lease, next epoch), rebuilds its state from the registry and drives it."""
        if sweep_id in self.tasks and not self.tasks[sweep_id].done():
            return True
        _, specs = await self.algorithms()
        try:
            claimed = await self.store.ClaimSweep(
                sweep_store_pb2.ClaimSweepRequest(
                    sweep_id=sweep_id, tuner_id=self.settings.tuner_id, lease_seconds=self.settings.lease_seconds
                ),
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                return False  # another tuner holds it, or it ended / was deleted meanwhile
            raise
        # The trials as the registry has them, read after the claim: nobody else writes now.
        record = (
            await self.store.GetSweepRecord(
                sweep_store_pb2.GetSweepRecordRequest(sweep_id=sweep_id), timeout=CALL_TIMEOUT_S
            )
        ).sweep
        services = Services(
            store=self.store,
            registry=self.registry,
            trainers=self.trainers,
            tuner_id=self.settings.tuner_id,
            lease_seconds=self.settings.lease_seconds,
            poll_interval=self.settings.poll_interval,
            specs=specs,
            on_trial=self._on_trial,
        )
        driver = SweepDriver(services=services, record=record, epoch=claimed.lease_epoch)
        self.drivers[sweep_id] = driver
        task = asyncio.create_task(self._drive(driver), name=f"sweep-{sweep_id}")
        self.tasks[sweep_id] = task
        log.info("sweep %s taken (epoch %d, %d trials recorded)", sweep_id, claimed.lease_epoch, len(record.trials))
        return True

    async def _drive(self, driver: SweepDriver) -> None:
        try:
            await driver.run()
        except Exception:
            log.exception("sweep %s: driver failed; another look will adopt it again", driver.sweep_id)
        finally:
            self.drivers.pop(driver.sweep_id, None)
            self.tasks.pop(driver.sweep_id, None)

    async def _adopt_forever(self) -> None:
        """Sweeps nobody drives (their tuner died, or paused past its lease) are taken over."""
        while True:
            try:
                orphans = await self.store.ListOrphanSweeps(
                    sweep_store_pb2.ListOrphanSweepsRequest(), timeout=CALL_TIMEOUT_S
                )
                for record in orphans.sweeps:
                    if record.sweep_id not in self.tasks:
                        await self.adopt(record.sweep_id)
            except (grpc.aio.AioRpcError, ServiceError) as error:
                log.warning("looking for sweeps to adopt failed: %s", error)
            await asyncio.sleep(self.settings.adopt_interval)

    def start(self) -> None:
        self._adopter = asyncio.create_task(self._adopt_forever(), name="tuner-adopt")

    async def cancel_runs_of_unfinished(self, sweep_id: str) -> None:
        record = (await self.store.GetSweepRecord(sweep_store_pb2.GetSweepRecordRequest(sweep_id=sweep_id))).sweep
        for stored in record.trials:
            if stored.state != "running":
                continue
            for run_id in trial_from_record(stored).run_ids:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self.trainers.pick().CancelRun(
                        trainer_service_pb2.CancelRunRequest(run_id=run_id), timeout=CALL_TIMEOUT_S
                    )

    async def suggest(self, request: pb.SuggestParamsRequest) -> pb.SuggestParamsResponse:
        algorithms, specs = await self.algorithms()
        violations = Violations()
        algorithm = algorithms.get(request.algorithm)
        if algorithm is None or request.algorithm == "brute_force":
            names = ", ".join(sorted(name for name in algorithms if name != "brute_force"))
            violations.add("algorithm", f"must be one of {names}")
        if request.sampler not in (pb.SAMPLER_UNSPECIFIED, pb.SAMPLER_TPE, pb.SAMPLER_RANDOM, pb.SAMPLER_CMA_ES):
            violations.add("sampler", "must be TPE, RANDOM or CMA_ES (a grid has nothing to learn)")
        if len(request.env_id) > 100:
            violations.add("env_id", "at most 100 characters")
        advice.check_request_common(request.objective, request.max_runs, violations)
        space.check_space(request.search_space, "search_space", algorithm, specs, violations)
        violations.raise_if_any()
        assert algorithm is not None
        search_space = advice.algorithm_space(algorithm, list(request.search_space))
        dists = space.distributions(search_space, specs)
        if request.sweep_id:
            record = await self._sweep_record(request.sweep_id)
            if record.algorithm != request.algorithm:
                raise bad_field(
                    "sweep_id", f"sweep {request.sweep_id} tuned {record.algorithm}, not {request.algorithm}"
                )
            observations = advice.observations_from_sweep(record, dists)
        else:
            async with upstream_errors("reading stored runs"):
                observations = await advice.stored_observations(
                    self.store,
                    request.algorithm,
                    request.env_id,
                    request.objective,
                    request.max_runs or advice.DEFAULT_MAX_RUNS,
                    dists,
                )
        # Fitting TPE on thousands of runs takes a while: off the event loop.
        return await asyncio.to_thread(advice.suggest, request, observations, dists, search_space)

    async def _sweep_record(self, sweep_id: str) -> sweep_store_pb2.SweepRecord:
        async with upstream_errors("reading the sweep"):
            reply = await self.store.GetSweepRecord(sweep_store_pb2.GetSweepRecordRequest(sweep_id=sweep_id))
        return reply.sweep

    async def importance(self, request: pb.GetParamImportanceRequest) -> pb.GetParamImportanceResponse:
        algorithms, specs = await self.algorithms()
        violations = Violations()
        if not request.sweep_id and not request.algorithm:
            violations.add("sweep_id", "give a sweep_id or an algorithm")
        algorithm = algorithms.get(request.algorithm) if request.algorithm else None
        if request.algorithm and (algorithm is None or request.algorithm == "brute_force"):
            violations.add("algorithm", "must be a tunable algorithm")
        advice.check_request_common(request.objective, request.max_runs, violations)
        violations.raise_if_any()
        if request.sweep_id:
            record = await self._sweep_record(request.sweep_id)
            spec = advice.sweep_space(record)[0]
            objective = request.objective if request.objective.metric else spec.objective
            dists = space.distributions(spec.search_space, specs)
            observations = advice.observations_from_sweep(record, dists)
        else:
            assert algorithm is not None
            objective = request.objective
            dists = space.distributions(space.default_space(algorithm), specs)
            async with upstream_errors("reading stored runs"):
                observations = await advice.stored_observations(
                    self.store,
                    request.algorithm,
                    request.env_id,
                    objective,
                    request.max_runs or advice.DEFAULT_MAX_RUNS,
                    dists,
                )
        return await asyncio.to_thread(advice.importance, observations, dists, objective)

    async def close(self) -> None:
        """Stops driving (leases run out and another tuner takes over); closes the channels."""
        tasks = [t for t in (self._adopter, *self.tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.trainers.close()
        await self.registry_channel.close()


@dataclass(kw_only=True)
class TunerApp:
    settings: TunerSettings
    running: RunningServer
    tuner: Tuner

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace: float | None = None) -> None:
        await self.running.set_serving(False)
        await self.running.server.stop(self.settings.shutdown_grace if grace is None else grace)
        await self.tuner.close()


async def start_tuner(settings: TunerSettings) -> TunerApp:
    registry_channel = grpc.aio.insecure_channel(
        settings.registry_target,
        options=channel_options(),
        interceptors=client_interceptors(settings.internal_token),
    )
    tuner = Tuner(
        settings=settings,
        registry_channel=registry_channel,
        trainers=TrainerPool(settings.trainer_targets, internal_token=settings.internal_token),
    )
    servicer = TunerServicer(tuner)
    running = await create_server(
        address=settings.address,
        services=[
            ServiceBinding(
                name=SERVICE_NAME,
                register=lambda server: tuner_service_pb2_grpc.add_TunerServiceServicer_to_server(servicer, server),
            )
        ],
        internal_token=settings.internal_token,
    )
    tuner.start()
    log.info("tuner %s listening on port %d", settings.tuner_id, running.port)
    return TunerApp(settings=settings, running=running, tuner=tuner)
