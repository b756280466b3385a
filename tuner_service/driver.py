"""Driving sweeps: Optuna asks, trainers train, the registry records, Optuna is told.

Nothing here is the only copy of anything. A sweep's spec, its lease and every trial (its
parameters and run ids, then its values) are written to the registry before the next step
depends on them; each run is started with a request_id derived from (sweep, trial, seed), so
a tuner that takes a sweep over re-issues StartRun for an unfinished trial and gets the very
runs that were started before (AIP-155), never a second set. The Optuna study lives in memory
and is rebuilt from the recorded trials whenever a tuner takes a sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import optuna
from google.protobuf import json_format, struct_pb2
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from taxidriver import seedstats as stats
from taxidriver.access import CALLER_KEY, Caller
from taxidriver.errors import status_details
from taxidriver.ingest.v1 import sweep_store_pb2, sweep_store_pb2_grpc
from taxidriver.options.v1 import access_pb2
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.retry import BUSY, Backoff, RetryPolicy
from taxidriver.trainer.v1 import trainer_service_pb2
from taxidriver.tuner.v1 import tuner_service_pb2 as pb
from taxidriver.vocabulary import TERMINAL_STATUSES
from tuner_service import space
from tuner_service.trainers import TrainerPool

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

STATUS = resources_pb2.RunStatus
FINISHED_TRIAL_STATES = (pb.TRIAL_STATE_COMPLETE, pb.TRIAL_STATE_FAILED, pb.TRIAL_STATE_CANCELLED)
TRIAL_STATE_TO_DB = {
    pb.TRIAL_STATE_RUNNING: "running",
    pb.TRIAL_STATE_COMPLETE: "complete",
    pb.TRIAL_STATE_FAILED: "failed",
    pb.TRIAL_STATE_CANCELLED: "cancelled",
}
SWEEP_STATE_FROM_DB = {
    "running": pb.SWEEP_STATE_RUNNING,
    "succeeded": pb.SWEEP_STATE_SUCCEEDED,
    "cancelled": pb.SWEEP_STATE_CANCELLED,
    "failed": pb.SWEEP_STATE_FAILED,
}
# Answers worth another try (elsewhere, or a little later), for as long as we hold the sweep:
# no trainer or registry reachable, a trainer's per-caller queue full.
RETRY = RetryPolicy(backoff=Backoff(first=0.2, cap=2.0), retryable=BUSY)
# A full trainer is an ordinary answer under load, not worth a warning.
TRAINER_RETRY = dataclasses.replace(RETRY, log_level=logging.INFO)
CALL_TIMEOUT_S = 30.0


class LeaseLost(Exception):
    """Another tuner drives the sweep now (or it ended): stop without writing anything more."""


def request_id(sweep_id: str, trial: int, seed_index: int) -> str:
    return f"sweep-{sweep_id}-trial-{trial}-seed-{seed_index}"


def trial_from_record(record: sweep_store_pb2.TrialRecord) -> pb.Trial:
    trial = pb.Trial()
    json_format.ParseDict(json_format.MessageToDict(record.body), trial, ignore_unknown_fields=True)
    return trial


def trial_body(trial: pb.Trial) -> struct_pb2.Struct:
    body = struct_pb2.Struct()
    body.update(json_format.MessageToDict(trial, preserving_proto_field_name=True))
    return body


def spec_from_record(record: sweep_store_pb2.SweepRecord) -> pb.SweepSpec:
    spec = pb.SweepSpec()
    json_format.ParseDict(json_format.MessageToDict(record.spec), spec, ignore_unknown_fields=True)
    return spec


def better(spec: pb.SweepSpec, left: pb.Trial, right: pb.Trial) -> bool:
    """Is `left` a better trial than `right`: its value, then the shorter training."""
    if left.value != right.value:
        if spec.objective.direction == pb.DIRECTION_MINIMIZE:
            return left.value < right.value
        return left.value > right.value
    return left.training_seconds < right.training_seconds


def best_trial(spec: pb.SweepSpec, trials: list[pb.Trial]) -> int:
    best: pb.Trial | None = None
    for trial in trials:
        if trial.state == pb.TRIAL_STATE_COMPLETE and math.isfinite(trial.value):
            if best is None or better(spec, trial, best):
                best = trial
    return best.number if best is not None else -1


def metric_of(run: resources_pb2.Run, metric: str) -> float | None:
    for group in (run.test_metrics, run.system_metrics, run.training_metrics, run.learning_stability):
        if metric in group.fields:
            value = group.fields[metric]
            if value.WhichOneof("kind") == "number_value":
                return float(value.number_value)
            if value.WhichOneof("kind") == "bool_value":
                return float(value.bool_value)
    return None


def sweep_from_record(record: sweep_store_pb2.SweepRecord) -> pb.Sweep:
    spec = spec_from_record(record)
    trials = [trial_from_record(t) for t in record.trials]
    for trial, stored in zip(trials, record.trials, strict=True):
        trial.number = stored.number
    return pb.Sweep(
        sweep_id=record.sweep_id,
        spec=spec,
        state=SWEEP_STATE_FROM_DB.get(record.state, pb.SWEEP_STATE_UNSPECIFIED),
        trials=trials,
        best_trial=best_trial(spec, trials),
        owner=record.owner,
        create_time=record.create_time,
        update_time=record.update_time,
        trials_complete=sum(t.state == pb.TRIAL_STATE_COMPLETE for t in trials),
        error_message=record.error_message,
    )


@dataclass(kw_only=True)
class Services:
    """What a sweep driver talks to."""

    store: sweep_store_pb2_grpc.SweepStoreServiceStub
    registry: registry_service_pb2_grpc.RegistryServiceStub
    trainers: TrainerPool
    tuner_id: str
    lease_seconds: float
    poll_interval: float
    specs: dict[str, trainer_service_pb2.ParameterSpec]
    # Called after every trial recorded as finished (wakes WatchSweep streams).
    on_trial: Callable[[str], None] = lambda sweep_id: None


@dataclass(kw_only=True)
class SweepDriver:
    services: Services
    record: sweep_store_pb2.SweepRecord
    epoch: int
    spec: pb.SweepSpec = field(init=False)
    trials: dict[int, pb.Trial] = field(default_factory=dict)
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    _write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.spec = spec_from_record(self.record)
        for stored in self.record.trials:
            trial = trial_from_record(stored)
            trial.number = stored.number
            self.trials[stored.number] = trial

    @property
    def sweep_id(self) -> str:
        return self.record.sweep_id

    # ---- registry writes, all fenced by the lease epoch ----

    async def _fenced(self, call: Any) -> Any:
        if self.lost.is_set():
            raise LeaseLost()
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            _, reason = status_details(error)
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason in ("LEASE_LOST", "SWEEP_ENDED"):
                self.lost.set()
                raise LeaseLost() from error
            if error.code() == grpc.StatusCode.NOT_FOUND:
                self.lost.set()
                raise LeaseLost() from error
            raise

    async def _record(self, trial: pb.Trial) -> None:
        record = sweep_store_pb2.TrialRecord(
            number=trial.number,
            state=TRIAL_STATE_TO_DB[trial.state],
            body=trial_body(trial),
            run_ids=list(trial.run_ids),
        )
        request = sweep_store_pb2.RecordTrialRequest(sweep_id=self.sweep_id, lease_epoch=self.epoch, trial=record)
        async with self._write_lock:
            await self._retrying(lambda: self._fenced(self.services.store.RecordTrial(request, timeout=CALL_TIMEOUT_S)))
        if trial.state in FINISHED_TRIAL_STATES:
            self.services.on_trial(self.sweep_id)

    async def _retrying(self, attempt: Callable[[], Any]) -> Any:
        """Retries a registry call while the registry is unreachable (and we still hold the sweep)."""
        return await RETRY.call(attempt, f"sweep {self.sweep_id}: registry call")

    async def _renew_forever(self) -> None:
        interval = self.services.lease_seconds / 3
        request = sweep_store_pb2.RenewSweepRequest(
            sweep_id=self.sweep_id,
            tuner_id=self.services.tuner_id,
            lease_epoch=self.epoch,
            lease_seconds=self.services.lease_seconds,
        )
        while True:
            await asyncio.sleep(interval)
            try:
                reply = await self._fenced(self.services.store.RenewSweep(request, timeout=interval))
            except LeaseLost:
                log.warning(
                    "sweep %s: lease lost (epoch %d); stopping without further writes", self.sweep_id, self.epoch
                )
                return
            except grpc.aio.AioRpcError as error:
                log.warning("sweep %s: lease renewal failed: %s", self.sweep_id, error.code().name)
                continue
            if reply.cancel_requested:
                self.cancel_requested.set()

    # ---- the sweep ----

    async def run(self) -> None:
        renewer = asyncio.create_task(self._renew_forever(), name=f"sweep-{self.sweep_id}-lease")
        try:
            state, message = await self._drive()
            if not self.lost.is_set():
                request = sweep_store_pb2.FinishSweepRequest(
                    sweep_id=self.sweep_id, lease_epoch=self.epoch, state=state, error_message=message
                )
                with contextlib.suppress(LeaseLost):
                    await self._retrying(lambda: self._fenced(self.services.store.FinishSweep(request)))
                self.services.on_trial(self.sweep_id)
                log.info("sweep %s %s", self.sweep_id, state)
        except LeaseLost:
            log.warning("sweep %s: another tuner drives it now; this one stops", self.sweep_id)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _drive(self) -> tuple[str, str]:
        dists = space.distributions(self.spec.search_space, self.services.specs)
        study = optuna.create_study(
            direction="minimize" if self.spec.objective.direction == pb.DIRECTION_MINIMIZE else "maximize",
            sampler=space.make_sampler(self.spec.sampler, self.spec.search_space, int(self.spec.base_seed), dists),
        )
        unfinished: list[pb.Trial] = []
        for number in sorted(self.trials):
            trial = self.trials[number]
            if trial.state == pb.TRIAL_STATE_RUNNING:
                unfinished.append(trial)
            else:
                study.add_trial(self._frozen(trial, dists))
        # Trials left running by a previous holder: asked again with the same parameters (the
        # enqueued ones come first), and their runs found again by their request_ids.
        pending: list[tuple[pb.Trial, optuna.trial.Trial]] = []
        for trial in unfinished:
            study.enqueue_trial(dict(_typed(trial.params, dists)), skip_if_exists=False)
            pending.append((trial, study.ask(dists)))
        next_number = max(self.trials, default=-1) + 1
        parallel = max(1, self.spec.parallelism)
        running: set[asyncio.Task[None]] = set()

        def launch(trial: pb.Trial, asked: optuna.trial.Trial) -> None:
            task = asyncio.create_task(self._run_trial(study, trial, asked), name=f"trial-{trial.number}")
            running.add(task)

        for trial, asked in pending:
            launch(trial, asked)
        stop_reason = ""
        stopping = False
        try:
            while True:
                if self.cancel_requested.is_set():
                    stop_reason = "cancelled"
                    break
                if self.lost.is_set():
                    raise LeaseLost()
                while (
                    len(running) < parallel and next_number < self.spec.n_trials and not self.cancel_requested.is_set()
                ):
                    asked = study.ask(dists)
                    trial = pb.Trial(number=next_number, state=pb.TRIAL_STATE_RUNNING)
                    for name, value in asked.params.items():
                        trial.params[name] = float(value)
                    self.trials[next_number] = trial
                    next_number += 1
                    launch(trial, asked)
                if not running:
                    break
                cancel_wait = asyncio.create_task(self.cancel_requested.wait())
                lost_wait = asyncio.create_task(self.lost.wait())
                done, _ = await asyncio.wait({*running, cancel_wait, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
                cancel_wait.cancel()
                lost_wait.cancel()
                for task in done & running:
                    running.discard(task)
                    task.result()  # a trial's LeaseLost (or a bug) ends the sweep here
        except asyncio.CancelledError:
            # This tuner is shutting down: its trials stop here, their runs go on, and whoever
            # takes the sweep next finds them again.
            stopping = True
            raise
        finally:
            if running and (stop_reason or stopping or self.lost.is_set()):
                for task in running:
                    task.cancel()
            if running:
                results = await asyncio.gather(*running, return_exceptions=True)
                for result in results:
                    if isinstance(result, LeaseLost) and not stopping:
                        raise result
        if stop_reason == "cancelled":
            await self._cancel_unfinished()
            return "cancelled", ""
        complete = sum(t.state == pb.TRIAL_STATE_COMPLETE for t in self.trials.values())
        if complete == 0:
            return "failed", "no trial completed"
        return "succeeded", ""

    def _frozen(self, trial: pb.Trial, dists: dict[str, BaseDistribution]) -> optuna.trial.FrozenTrial:
        params = _typed(trial.params, dists)
        if trial.state == pb.TRIAL_STATE_COMPLETE and math.isfinite(trial.value):
            return optuna.trial.create_trial(params=params, distributions=dists, value=trial.value)
        return optuna.trial.create_trial(params=params, distributions=dists, state=TrialState.FAIL)

    async def _cancel_unfinished(self) -> None:
        """Cancels the runs of trials that had not finished, and records those trials as cancelled."""
        for trial in list(self.trials.values()):
            if trial.state != pb.TRIAL_STATE_RUNNING:
                continue
            for run_id in trial.run_ids:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self.services.trainers.pick().CancelRun(
                        trainer_service_pb2.CancelRunRequest(run_id=run_id), timeout=CALL_TIMEOUT_S
                    )
            trial.state = pb.TRIAL_STATE_CANCELLED
            await self._record(trial)

    async def _run_trial(self, study: optuna.Study, trial: pb.Trial, asked: optuna.trial.Trial) -> None:
        try:
            await self._train(trial)
        except asyncio.CancelledError:
            raise
        except LeaseLost:
            raise
        except grpc.aio.AioRpcError as error:
            trial.state = pb.TRIAL_STATE_FAILED
            trial.error_message = f"{error.code().name}: {error.details()}"
        if trial.state == pb.TRIAL_STATE_COMPLETE:
            study.tell(asked, trial.value)
        else:
            study.tell(asked, state=TrialState.FAIL)
        await self._record(trial)
        log.info(
            "sweep %s trial %d %s value %.4f", self.sweep_id, trial.number, TRIAL_STATE_TO_DB[trial.state], trial.value
        )

    def _start_request(self, trial: pb.Trial, seed_index: int) -> trainer_service_pb2.StartRunRequest:
        hyper = trainer_service_pb2.Hyperparameters()
        for name, value in {**dict(self.spec.fixed_params), **dict(trial.params)}.items():
            integer = self.services.specs[name].type == "int32"
            setattr(hyper, name, round(value) if integer else value)
        return trainer_service_pb2.StartRunRequest(
            request_id=request_id(self.sweep_id, trial.number, seed_index),
            algorithm=self.spec.algorithm,
            mode=trainer_service_pb2.TRAINING_MODE_OPTIMIZED,
            hyperparameters=hyper,
            test_episodes=self.spec.test_episodes or space.DEFAULT_TEST_EPISODES,
            seed=int(self.spec.base_seed) + seed_index,
        )

    async def _trainer_call(self, method: str, request: Any, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
        """One trainer call, retried on another trainer (or later) while none can take it."""

        async def attempt() -> Any:
            if self.lost.is_set():
                raise LeaseLost()
            stub = self.services.trainers.pick()
            return await getattr(stub, method)(
                request, timeout=CALL_TIMEOUT_S, metadata=metadata or ((CALLER_KEY, self.caller),)
            )

        return await TRAINER_RETRY.call(attempt, f"sweep {self.sweep_id}: {method}")

    @property
    def caller(self) -> str:
        """Who the trial runs are counted against on the trainers (and the runs' request owner)."""
        return self.record.owner or "tuner"

    @property
    def owner_metadata(self) -> tuple[tuple[str, str], ...]:
        """StartRun on behalf of the sweep's owner, as the gateway asserts a caller: the runs record
        the owner as their creator, like the runs the owner starts through the gateway. The role is
        the least one that starts runs and sweeps (the owner had it when starting the sweep).
        Without an owner (a direct, unauthenticated StartSweep) only the quota key is sent."""
        if not self.record.owner:
            return ((CALLER_KEY, self.caller),)
        return Caller(user_id=self.caller, username=self.record.owner, role=access_pb2.ROLE_TRAINER).metadata()

    async def _train(self, trial: pb.Trial) -> None:
        seeds = max(1, self.spec.seeds_per_trial)
        # The trial's parameters are durable before any run starts: a tuner taking the sweep over
        # asks this trial again with them, so its StartRun requests (same request_ids) are the
        # same requests, answered with the runs already started (other parameters would be a
        # reused request_id, refused).
        await self._record(trial)
        run_ids: list[str] = []
        seed_values: list[int] = []
        for seed_index in range(seeds):
            request = self._start_request(trial, seed_index)
            reply = await self._trainer_call("StartRun", request, self.owner_metadata)
            run_ids.append(reply.run_id)
            seed_values.append(int(request.seed))
        del trial.run_ids[:]
        trial.run_ids.extend(run_ids)
        del trial.seeds[:]
        trial.seeds.extend(seed_values)
        # The runs are tagged with the trial before anything waits on them.
        await self._record(trial)
        runs = await asyncio.gather(*(self._wait_run(run_id) for run_id in run_ids))
        statuses = {run.status for run in runs}
        if statuses != {STATUS.RUN_STATUS_COMPLETED}:
            if STATUS.RUN_STATUS_CANCELLED in statuses:
                trial.state = pb.TRIAL_STATE_CANCELLED
            else:
                trial.state = pb.TRIAL_STATE_FAILED
                failed = [r for r in runs if r.status != STATUS.RUN_STATUS_COMPLETED]
                trial.error_message = (
                    f"run {failed[0].run_id} ended {STATUS.Name(failed[0].status)}: {failed[0].error_message}"
                )
            return
        metric = self.spec.objective.metric or space.DEFAULT_METRIC
        values = [metric_of(run, metric) for run in runs]
        if any(value is None for value in values):
            trial.state = pb.TRIAL_STATE_FAILED
            trial.error_message = f"the runs have no metric {metric!r}"
            return
        scores = [float(v) for v in values if v is not None]
        times = [metric_of(run, space.TIE_BREAK_METRIC) for run in runs]
        del trial.values[:]
        trial.values.extend(scores)
        trial.value = sum(scores) / len(scores)
        trial.training_seconds = sum(t or 0.0 for t in times) / len(times)
        summary = stats.seed_statistics({runs[0].env_id or "Taxi-v3": scores})
        trial.statistics.CopyFrom(
            resources_pb2.SeedStatistics(
                seeds=summary.seeds, mean=summary.mean, iqm=summary.iqm, ci_low=summary.ci_low, ci_high=summary.ci_high
            )
        )
        trial.state = pb.TRIAL_STATE_COMPLETE

    async def _wait_run(self, run_id: str) -> resources_pb2.Run:
        """Polls a run until it ends; a run whose trainer went away (INTERRUPTED) is resumed elsewhere."""
        request = registry_service_pb2.GetRunRequest(run_id=run_id)
        while True:
            if self.lost.is_set():
                raise LeaseLost()
            try:
                reply = await self.services.registry.GetRun(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                if error.code() not in BUSY:
                    raise
                await asyncio.sleep(self.services.poll_interval)
                continue
            run = reply.run
            # A FAILED run failed in training (it would fail again): the trial fails with it.
            if run.status in TERMINAL_STATUSES:
                return run
            if run.status == STATUS.RUN_STATUS_INTERRUPTED:
                if self.cancel_requested.is_set():
                    return run
                await self._resume(run)
            await asyncio.sleep(self.services.poll_interval)

    async def _resume(self, run: resources_pb2.Run) -> None:
        """Continues, on whichever trainer takes it, a run whose trainer went away."""
        try:
            await self._trainer_call("ResumeRun", trainer_service_pb2.ResumeRunRequest(run_id=run.run_id))
        except grpc.aio.AioRpcError as error:
            _, reason = status_details(error)
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason == "RUN_NOT_RESUMABLE":
                return  # someone resumed it already (or it ended meanwhile): keep waiting on it
            raise
        log.info("sweep %s: run %s was INTERRUPTED (its trainer went away); resumed", self.sweep_id, run.run_id)


def _typed(params: Any, dists: dict[str, BaseDistribution]) -> dict[str, Any]:
    """A trial's stored params (doubles) as the distributions hold them (ints stay ints)."""
    typed: dict[str, Any] = {}
    for name, value in dict(params).items():
        dist = dists.get(name)
        if isinstance(dist, optuna.distributions.IntDistribution):
            typed[name] = round(value)
        elif isinstance(dist, optuna.distributions.CategoricalDistribution):
            typed[name] = min(dist.choices, key=lambda choice: abs(float(choice) - value))  # type: ignore[arg-type]
        else:
            typed[name] = float(value)
    return {name: typed[name] for name in dists if name in typed}
