"""TunerService: sweeps (start, read, list, cancel, watch), suggestions and parameter importance."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from google.protobuf import json_format, struct_pb2

from taxidriver import access
from taxidriver.access import caller_name
from taxidriver.errors import (
    ServiceError,
    Violations,
    bad_field,
    status_details,
    unavailable,
)
from taxidriver.ingest.v1 import sweep_store_pb2
from taxidriver.tuner.v1 import tuner_service_pb2 as pb
from taxidriver.tuner.v1 import tuner_service_pb2_grpc
from tuner_service import space
from tuner_service.driver import FINISHED_TRIAL_STATES, best_trial, sweep_from_record

if TYPE_CHECKING:
    from tuner_service.app import Tuner

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 200
WATCH_POLL_S = 1.0
CANCEL_SWEEP = pb.DESCRIPTOR.services_by_name["TunerService"].methods_by_name["CancelSweep"]


@contextlib.asynccontextmanager
async def upstream_errors(what: str) -> AsyncIterator[None]:
    """Registry or trainer failures as our caller should see them (their codes, reasons, fields)."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        code, details = error.code(), error.details() or ""
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise unavailable(f"{what}: {details}", reason="UPSTREAM_UNAVAILABLE") from error
        if code in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ):
            violations, reason = status_details(error)
            raise ServiceError(code=code, message=details, reason=reason or code.name, violations=violations) from error
        raise


def caller_of(context: grpc.aio.ServicerContext) -> str:
    """The gateway's authenticated caller by username (x-caller-name, what runs record as their
    creator); empty for a direct, trusted call or without authentication."""
    return (caller_name(context) or "")[:MAX_NAME_CHARS]


class TunerServicer(tuner_service_pb2_grpc.TunerServiceServicer):
    def __init__(self, tuner: Tuner) -> None:
        self.tuner = tuner

    # ---- validation ----

    async def _validated_spec(self, spec: pb.SweepSpec) -> pb.SweepSpec:
        algorithms, specs = await self.tuner.algorithms()
        violations = Violations()
        algorithm = algorithms.get(spec.algorithm)
        if algorithm is None or spec.algorithm == "brute_force":
            names = ", ".join(sorted(name for name in algorithms if name != "brute_force"))
            violations.add("spec.algorithm", f"must be one of {names}")
        resolved = pb.SweepSpec()
        resolved.CopyFrom(spec)
        if not resolved.search_space and algorithm is not None:
            resolved.search_space.extend(space.default_space(algorithm))
        if resolved.sampler == pb.SAMPLER_UNSPECIFIED:
            resolved.sampler = pb.SAMPLER_TPE
        if resolved.sampler not in space.SAMPLER_NAMES:
            violations.add("spec.sampler", "unknown sampler")
        space.check_space(
            resolved.search_space, "spec.search_space", algorithm, specs, violations, sampler=resolved.sampler
        )
        for name, value in spec.fixed_params.items():
            known = specs.get(name)
            if known is None:
                violations.add(f"spec.fixed_params[{name}]", f"must be one of {', '.join(sorted(specs))}")
            elif any(item.name == name for item in resolved.search_space):
                violations.add(f"spec.fixed_params[{name}]", "is also searched")
            else:
                problem = space._violates(known, value)
                if problem:
                    violations.add(f"spec.fixed_params[{name}]", problem)
        if not resolved.objective.metric:
            resolved.objective.metric = space.DEFAULT_METRIC
        if len(resolved.objective.metric) > 100 or not resolved.objective.metric.replace("_", "").isalnum():
            violations.add("spec.objective.metric", "must be a metric name (letters, digits, _), at most 100")
        if resolved.objective.direction == pb.DIRECTION_UNSPECIFIED:
            resolved.objective.direction = pb.DIRECTION_MAXIMIZE
        if resolved.objective.direction not in (pb.DIRECTION_MAXIMIZE, pb.DIRECTION_MINIMIZE):
            violations.add("spec.objective.direction", "unknown direction")
        if not 1 <= resolved.n_trials <= space.MAX_TRIALS:
            violations.add("spec.n_trials", f"must be in [1, {space.MAX_TRIALS}]")
        elif resolved.sampler == pb.SAMPLER_GRID and resolved.search_space:
            size = space.grid_size(resolved.search_space)
            if resolved.n_trials > size:
                violations.add("spec.n_trials", f"the grid has {size} combinations; ask for at most that many")
        resolved.parallelism = resolved.parallelism or 1
        if not 1 <= resolved.parallelism <= space.MAX_PARALLELISM:
            violations.add("spec.parallelism", f"must be in [1, {space.MAX_PARALLELISM}]")
        resolved.seeds_per_trial = resolved.seeds_per_trial or space.DEFAULT_SEEDS
        if not 1 <= resolved.seeds_per_trial <= space.MAX_SEEDS:
            violations.add("spec.seeds_per_trial", f"must be in [1, {space.MAX_SEEDS}]")
        resolved.test_episodes = resolved.test_episodes or space.DEFAULT_TEST_EPISODES
        if not 1 <= resolved.test_episodes <= 100_000:
            violations.add("spec.test_episodes", "must be in [1, 100000]")
        if resolved.base_seed + resolved.seeds_per_trial > 2**53:
            violations.add("spec.base_seed", "must be below 2**53 - seeds_per_trial")
        violations.raise_if_any()
        return resolved

    # ---- sweeps ----

    async def StartSweep(
        self, request: pb.StartSweepRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartSweepResponse:
        if len(request.request_id) > MAX_NAME_CHARS or "\x00" in request.request_id:
            raise bad_field("request_id", f"at most {MAX_NAME_CHARS} characters, no NUL")
        spec = await self._validated_spec(request.spec)
        body = struct_pb2.Struct()
        body.update(json_format.MessageToDict(spec, preserving_proto_field_name=True))
        create = sweep_store_pb2.CreateSweepRequest(
            sweep_id=str(uuid.uuid4()),
            request_id=request.request_id,
            algorithm=spec.algorithm,
            spec=body,
            owner=caller_of(context),
        )
        async with upstream_errors("storing the sweep"):
            reply = await self.tuner.store.CreateSweep(create)
        if reply.created:
            await self.tuner.adopt(reply.sweep.sweep_id)
        return pb.StartSweepResponse(sweep=await self._get(reply.sweep.sweep_id))

    async def _get(self, sweep_id: str) -> pb.Sweep:
        async with upstream_errors("reading the sweep"):
            reply = await self.tuner.store.GetSweepRecord(sweep_store_pb2.GetSweepRecordRequest(sweep_id=sweep_id))
        return sweep_from_record(reply.sweep)

    async def GetSweep(self, request: pb.GetSweepRequest, context: grpc.aio.ServicerContext) -> pb.GetSweepResponse:
        return pb.GetSweepResponse(sweep=await self._get(request.sweep_id))

    async def ListSweeps(
        self, request: pb.ListSweepsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSweepsResponse:
        async with upstream_errors("listing sweeps"):
            reply = await self.tuner.store.ListSweepRecords(
                sweep_store_pb2.ListSweepRecordsRequest(
                    page_size=request.page_size, page_token=request.page_token, algorithm=request.algorithm
                )
            )
        return pb.ListSweepsResponse(
            sweeps=[sweep_from_record(record) for record in reply.sweeps], next_page_token=reply.next_page_token
        )

    async def CancelSweep(
        self, request: pb.CancelSweepRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelSweepResponse:
        # The method's ownership rule (its access option): a trainer cancels only its own sweeps.
        caller = access.caller_of(context)
        if access.needs_owner(CANCEL_SWEEP, caller):
            owner = (await self._get(request.sweep_id)).owner
            access.check_owner(CANCEL_SWEEP, caller, sweep_id=request.sweep_id, creator=owner)
        async with upstream_errors("cancelling the sweep"):
            record = (
                await self.tuner.store.RequestSweepCancel(
                    sweep_store_pb2.RequestSweepCancelRequest(sweep_id=request.sweep_id)
                )
            ).sweep
        driver = self.tuner.drivers.get(record.sweep_id)
        if driver is not None:
            driver.cancel_requested.set()
            task = self.tuner.tasks.get(record.sweep_id)
            if task is not None:
                # The driver cancels the unfinished trials' runs and ends the sweep CANCELLED.
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), timeout=context.time_remaining() or 30.0)
        elif record.state == "cancelled":
            # Nobody drove it: the registry cancelled it at once; its unfinished trials' runs stop too.
            await self.tuner.cancel_runs_of_unfinished(record.sweep_id)
        return pb.CancelSweepResponse(sweep=await self._get(record.sweep_id))

    async def WatchSweep(
        self, request: pb.WatchSweepRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchSweepResponse]:
        sent: set[int] = set()
        while True:
            changed = self.tuner.landed_event()
            sweep = await self._get(request.sweep_id)
            for trial in sweep.trials:
                if trial.state in FINISHED_TRIAL_STATES and trial.number not in sent:
                    sent.add(trial.number)
                    yield pb.WatchSweepResponse(trial=trial, sweep_state=sweep.state, best_trial=sweep.best_trial)
            if sweep.state != pb.SWEEP_STATE_RUNNING:
                yield pb.WatchSweepResponse(
                    sweep_state=sweep.state, best_trial=best_trial(sweep.spec, list(sweep.trials))
                )
                return
            # Woken by a trial this tuner records, or polled (another replica may drive the sweep).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=WATCH_POLL_S)

    # ---- recommendations ----

    async def SuggestParams(
        self, request: pb.SuggestParamsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SuggestParamsResponse:
        return await self.tuner.suggest(request)

    async def GetParamImportance(
        self, request: pb.GetParamImportanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetParamImportanceResponse:
        return await self.tuner.importance(request)
