"""The parent side of a run: register, queue, stream, checkpoint, complete, cancel, resume.

Each active run has one task that consumes its worker's messages in order, so the
registry always sees: episodes (streamed concurrently by the EpisodeStreamer), then
CompleteRun carrying the model, stored in the completion's own transaction (one round trip;
UploadArtifact remains for checkpoints; the registry renders the plots on first read). A run
is completed only once everything it promises is stored: a trainer killed at any moment
leaves either a completed run with its model or a non-terminal one that its lease turns
interrupted (resumable; the resumed run sends everything again). Every write carries the
lease epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from taxidriver.errors import failed_precondition, parse_uuid, relayed, resource_exhausted, unavailable
from taxidriver.idempotency import message_fingerprint
from taxidriver.ingest.v1 import ingest_service_pb2
from taxidriver.logs import run_id_var
from taxidriver.registry.v1 import resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2
from trainer_service.engine import EpisodeColumns, load_checkpoint
from trainer_service.messages import (
    CheckpointTaken,
    EpisodesTrained,
    RunCancelled,
    RunDone,
    RunFailed,
    RunInterrupted,
    RunMessage,
    RunResult,
    RunStarted,
)
from trainer_service.params import RunSpec, resolve
from trainer_service.pool import WorkerPool
from trainer_service.registry_client import RegistryClient, RunLost, to_struct
from trainer_service.streamer import EpisodeStreamer, StreamFailed
from trainer_service.worker import Job

log = logging.getLogger(__name__)

STATUS = resources_pb2
# The registry's refusals our caller gets as they are (code, reason, metadata, violations).
RELAYED_CODES = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


@contextlib.asynccontextmanager
async def registry_errors(what: str) -> AsyncIterator[None]:
    """Registry failures as the caller should see them (never INTERNAL for NOT_FOUND etc.)."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        code, details = error.code(), error.details() or ""
        if code in RELAYED_CODES:
            # The registry's reason (RUN_NOT_FOUND, RUN_NOT_RESUMABLE, REQUEST_ID_REUSED...), its
            # metadata and field violations (they name the caller's own fields): callers branch on them.
            raise relayed(error, details if code == grpc.StatusCode.NOT_FOUND else f"{what}: {details}") from error
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise unavailable(
                f"{what}: the registry is unreachable ({details})", reason="REGISTRY_UNAVAILABLE"
            ) from error
        raise


def struct_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message)


@dataclass
class ActiveRun:
    run_id: str
    spec: RunSpec
    streamer: EpisodeStreamer
    messages: asyncio.Queue[RunMessage] = field(default_factory=asyncio.Queue)
    episodes_done: int = 0
    status: resources_pb2.RunStatus = STATUS.RUN_STATUS_QUEUED
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    heartbeat: asyncio.Task[None] | None = None
    caller: str = ""
    # The lease epoch this trainer holds the run under; every write carries it.
    lease_epoch: int = 0
    # Set when the registry refused us the run (taken by another trainer, deleted, ended):
    # from then on the worker is stopped and nothing more is written.
    lost: bool = False
    # Messages queued behind the one being handled: a checkpoint with a newer checkpoint or the
    # run's completion behind it is superseded, and not uploaded (only the last one resumes).
    checkpoints_queued: int = 0
    done_queued: bool = False
    checkpoints_skipped: int = 0
    # Checkpoints upload in the background, one at a time, the newest waiting its turn: the
    # run's messages are not held behind a 350 KB upload (issue 15: ~50-90 ms each, and its
    # completion waited for the one in flight). The completion cancels it (superseded); an
    # interruption waits for it (the run resumes from it).
    checkpoint_uploads: asyncio.Task[None] | None = None
    next_checkpoint: CheckpointTaken | None = None


class RunManager:
    def __init__(
        self,
        client: RegistryClient,
        workers: int,
        *,
        heartbeat_interval: float = 2.0,
        spill_dir: Path | None = None,
        max_buffered_episodes: int = 200_000,
        max_active_runs_per_caller: int = 8,
    ) -> None:
        self.client = client
        self.trainer_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.heartbeat_interval = heartbeat_interval
        self.spill_dir = spill_dir
        self.max_buffered_episodes = max_buffered_episodes
        self.max_active_runs_per_caller = max_active_runs_per_caller
        # Runs being registered (between the quota check and _launch), per caller.
        self._reserved: dict[str, int] = {}
        self.active: dict[str, ActiveRun] = {}
        self.pool = WorkerPool(size=workers, on_message=self._on_message, on_worker_lost=self._on_worker_lost)
        self._background: set[asyncio.Task[Any]] = set()
        # Runs given up because the registry refused them: their worker's last messages are dropped quietly.
        self._lost: set[str] = set()

    async def start(self) -> None:
        await self.pool.start()

    # ---- RPC behaviours -------------------------------------------------------------

    def _check_caller_quota(self, caller: str) -> None:
        """A bounded queue per caller: one client cannot fill every worker for hours."""
        active = self._reserved.get(caller, 0) + sum(
            1 for run in self.active.values() if run.caller == caller and not run.finished.is_set()
        )
        limit = self.max_active_runs_per_caller
        if active >= limit:
            raise resource_exhausted(
                f"caller {caller!r} already has {active} active runs (queued or running); "
                f"the limit is {limit} (TRAINER_MAX_ACTIVE_RUNS_PER_CALLER): wait for one to finish or cancel one",
                reason="TOO_MANY_ACTIVE_RUNS",
                caller=caller,
                limit=str(limit),
            )

    async def start_run(
        self, request: trainer_service_pb2.StartRunRequest, *, caller: str = "", creator: str = ""
    ) -> trainer_service_pb2.StartRunResponse:
        """`creator`: the username the gateway asserted, recorded as the run's owner ("" unknown)."""
        spec = resolve(request, random_seed=secrets.randbits(52))
        self._check_caller_quota(caller)
        self._reserved[caller] = self._reserved.get(caller, 0) + 1
        try:
            return await self._start_run(request, spec, caller, creator)
        finally:
            self._reserved[caller] -= 1
            if not self._reserved[caller]:
                del self._reserved[caller]

    async def _start_run(
        self, request: trainer_service_pb2.StartRunRequest, spec: RunSpec, caller: str, creator: str = ""
    ) -> trainer_service_pb2.StartRunResponse:
        run_id = str(uuid.uuid4())
        register = ingest_service_pb2.RegisterRunRequest(
            run_id=run_id,
            request_id=request.request_id,
            algorithm=spec.algorithm,
            mode=spec.mode,
            env_id=spec.env_id,
            params=to_struct(spec.to_params()),
            episodes_planned=spec.hyperparameters.training_episodes,
            trainer_id=self.trainer_id,
            # AIP-155: the registry refuses this request_id reused by another caller or request.
            caller=caller,
            request_fingerprint=message_fingerprint(request),
            creator=creator,
        )
        async with registry_errors("registering the run"):
            reply = await self.client.register_run(register)
        # created is False also when our own RegisterRun was stored but its answer was lost and
        # the retry found it: the same run_id (we drew it), so it is ours to train. Only a run
        # found under another run_id is an earlier StartRun's.
        if not reply.created and reply.run.run_id != run_id:
            # A retry of an earlier StartRun: answer with that run, do not train twice.
            existing = reply.run
            resolved = RunSpec.from_params(
                existing.algorithm, existing.mode, existing.env_id, struct_dict(existing.params)
            )
            return trainer_service_pb2.StartRunResponse(
                run_id=existing.run_id,
                status=existing.status,
                hyperparameters=resolved.hyperparameters.to_proto(),
                seed=resolved.seed,
            )
        self._launch(run_id, spec, checkpoint=None, recorded=0, caller=caller, lease_epoch=reply.lease_epoch)
        log.info("run %s queued: %s %s", run_id, spec.algorithm, spec.mode, extra={"run_id": run_id})
        return trainer_service_pb2.StartRunResponse(
            run_id=run_id,
            status=STATUS.RUN_STATUS_QUEUED,
            hyperparameters=spec.hyperparameters.to_proto(),
            seed=spec.seed,
        )

    async def cancel_run(self, run_id: str, *, cancelled_by: str = "") -> trainer_service_pb2.CancelRunResponse:
        parse_uuid(run_id, "run_id")
        run = self.active.get(run_id)
        if run is None:
            # Not here: another replica may run it; it sees the request on its next heartbeat.
            async with registry_errors("cancelling the run"):
                remote = await self.client.request_cancel(run_id, requested_by=cancelled_by)
            return trainer_service_pb2.CancelRunResponse(run_id=run_id, status=remote.status)
        if cancelled_by:
            # Who asked is recorded with the request at the registry; a local cancel does not wait for it.
            # Bounded: the client's retries would hold a local cancel for a minute while the registry is away.
            try:
                await asyncio.wait_for(self.client.request_cancel(run_id, requested_by=cancelled_by), 5.0)
            except (grpc.aio.AioRpcError, TimeoutError) as error:
                log.warning("run %s: cancel by %s not recorded (%s)", run_id, cancelled_by, error)
        if self.pool.withdraw(run_id):
            run.messages.put_nowait(RunCancelled(run_id, run.episodes_done))
        else:
            self.pool.signal(run_id, cancel=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.finished.wait(), 10.0)
        return trainer_service_pb2.CancelRunResponse(run_id=run_id, status=run.status)

    async def resume_run(
        self, run_id: str, *, caller: str = "", resumed_by: str = ""
    ) -> trainer_service_pb2.ResumeRunResponse:
        parse_uuid(run_id, "run_id")
        if run_id in self.active:
            raise failed_precondition(f"run {run_id} is already active on this trainer", reason="RUN_ACTIVE")
        if run_id in self.pool.running():
            # A run this trainer lost is still stopping on a worker: the worker's last messages
            # carry only the run id, and must not reach the resumed run.
            raise failed_precondition(
                f"run {run_id} is still stopping on this trainer; retry in a moment", reason="RUN_ACTIVE"
            )
        self._check_caller_quota(caller)
        async with registry_errors("reading the run"):
            registered = await self.client.get_run(run_id)
        if registered.status not in (STATUS.RUN_STATUS_INTERRUPTED, STATUS.RUN_STATUS_FAILED):
            name = STATUS.RunStatus.Name(registered.status)
            raise failed_precondition(
                f"only INTERRUPTED or FAILED runs can be resumed; run {run_id} is {name}",
                reason="RUN_NOT_RESUMABLE",
                status=name,
            )
        # Taking the run is one atomic step in the registry: of two trainers resuming at once,
        # or one resuming a run its first trainer still holds, exactly one wins; the epoch it
        # gets fences out every earlier writer before we read the checkpoint.
        async with registry_errors("taking the run"):
            claim = await self.client.claim_run(run_id, self.trainer_id, requested_by=resumed_by)
        registered = claim.run
        try:
            spec = RunSpec.from_params(
                registered.algorithm, registered.mode, registered.env_id, struct_dict(registered.params)
            )
            async with registry_errors("reading the latest checkpoint"):
                latest = await self.client.latest_checkpoint(run_id)
        except Exception:
            # Hand the run back at once rather than leave it QUEUED until its lease runs out; if
            # even that fails, the lease sweeper does it. The first error is the caller's answer.
            try:
                await self.client.update_status(
                    run_id, STATUS.RUN_STATUS_INTERRUPTED, lease_epoch=claim.lease_epoch, stop_reason="resume_failed"
                )
            except (grpc.aio.AioRpcError, RunLost) as hand_back:
                log.warning("run %s: could not hand the run back after a failed resume: %s", run_id, hand_back)
            raise
        data = latest[1] if latest is not None else None
        history = load_checkpoint(data)[1] if data is not None else EpisodeColumns.empty(0, 0)
        self._launch(
            run_id,
            spec,
            checkpoint=data,
            recorded=registered.episodes_recorded,
            history=history,
            caller=caller,
            lease_epoch=claim.lease_epoch,
        )
        log.info("run %s resumed from episode %d", run_id, len(history), extra={"run_id": run_id})
        return trainer_service_pb2.ResumeRunResponse(
            run_id=run_id, resumed_from_episode=len(history), status=STATUS.RUN_STATUS_QUEUED
        )

    # ---- run lifecycle --------------------------------------------------------------

    def _launch(
        self,
        run_id: str,
        spec: RunSpec,
        *,
        checkpoint: bytes | None,
        recorded: int,
        history: EpisodeColumns | None = None,
        caller: str = "",
        lease_epoch: int,
    ) -> None:
        streamer = EpisodeStreamer(
            self.client,
            run_id,
            max_buffered_episodes=self.max_buffered_episodes,
            spill_dir=self.spill_dir,
            lease_epoch=lease_epoch,
            on_lost=lambda reason: self._lose_soon(run_id, reason),
        )
        streamer.acked = recorded
        streamer.sent_until = recorded
        if history is not None and len(history) > recorded:
            # Episodes the checkpoint holds but the registry never acknowledged.
            streamer.add(
                EpisodeColumns(
                    recorded,
                    history.rewards[recorded:],
                    history.steps[recorded:],
                    history.epsilons[recorded:],
                    history.td_errors[recorded:],
                    history.successes[recorded:],
                )
            )
        run = ActiveRun(
            run_id=run_id,
            spec=spec,
            streamer=streamer,
            episodes_done=len(history or ()),
            caller=caller,
            lease_epoch=lease_epoch,
        )
        self.active[run_id] = run
        streamer.start()
        run.task = asyncio.get_running_loop().create_task(self._drive(run), name=f"run-{run_id}")
        run.heartbeat = asyncio.get_running_loop().create_task(self._heartbeats(run), name=f"heartbeat-{run_id}")
        self.pool.submit(Job(run_id=run_id, spec=spec, checkpoint=checkpoint))

    def _on_message(self, message: RunMessage) -> None:
        run = self.active.get(message.run_id)
        if run is None:
            if message.run_id not in self._lost:
                log.warning("%s for unknown run %s", type(message).__name__, message.run_id)
            return
        if isinstance(message, EpisodesTrained):
            # Straight to the streamer: ordering with the rest does not matter, latency does.
            run.streamer.add(message.columns)
            run.episodes_done = message.columns.first_episode + len(message.columns)
            return
        if isinstance(message, CheckpointTaken):
            run.checkpoints_queued += 1
        elif isinstance(message, RunDone):
            run.done_queued = True
        run.messages.put_nowait(message)

    def _on_worker_lost(self, run_id: str) -> None:
        run = self.active.get(run_id)
        if run is not None:
            run.messages.put_nowait(RunFailed(run_id, "worker process died"))

    async def _drive(self, run: ActiveRun) -> None:
        run_id_var.set(run.run_id)
        completed = False
        try:
            while True:
                match await run.messages.get():
                    case RunStarted():
                        await self._set_status(run, STATUS.RUN_STATUS_RUNNING)
                    case CheckpointTaken() as checkpoint:
                        run.checkpoints_queued -= 1
                        if run.checkpoints_queued > 0 or run.done_queued:
                            # Superseded while queued: a run trains faster than 350 KB checkpoints
                            # upload, and the upload of all of them held its completion back.
                            run.checkpoints_skipped += 1
                        else:
                            self._queue_checkpoint(run, checkpoint)
                    case RunDone(result=result):
                        self._drop_checkpoints(run)
                        await self._complete(run, result)
                        completed = True
                        return
                    case RunCancelled(episodes=episodes):
                        await self._finish(run, STATUS.RUN_STATUS_CANCELLED, episodes, "cancelled")
                        return
                    case RunInterrupted():
                        if run.checkpoint_uploads is not None:
                            await run.checkpoint_uploads  # the checkpoint the run resumes from
                        await run.streamer.flush(wait_s=30.0)
                        await self._set_status(run, STATUS.RUN_STATUS_INTERRUPTED, stop_reason="interrupted")
                        return
                    case RunFailed(error=error):
                        if completed:
                            log.error("run %s: after completion: %s", run.run_id, error)
                            return
                        await self._fail(run, error)
                        return
        except Exception as exc:
            if run.lost or isinstance(exc, RunLost):
                # Not ours any more: stop the worker; write nothing (a stale writer is refused anyway).
                await self._lose(run, exc.reason if isinstance(exc, RunLost) else "refused")
                return
            log.exception("run %s: could not report to the registry", run.run_id)
            if not completed:
                try:
                    await self._fail(run, f"trainer could not report the run: {type(exc).__name__}: {exc}")
                except (grpc.aio.AioRpcError, RunLost) as unreported:
                    # The registry is unreachable or refuses: the lease sweeper will interrupt the run.
                    log.error("run %s: could not record the failure either: %s", run.run_id, unreported)
        finally:
            self._drop_checkpoints(run)
            run.finished.set()
            if run.heartbeat is not None:
                run.heartbeat.cancel()
            await run.streamer.close()
            self.active.pop(run.run_id, None)

    def _queue_checkpoint(self, run: ActiveRun, checkpoint: CheckpointTaken) -> None:
        if run.next_checkpoint is not None:
            run.checkpoints_skipped += 1  # superseded before its turn came
        run.next_checkpoint = checkpoint
        if run.checkpoint_uploads is None or run.checkpoint_uploads.done():
            run.checkpoint_uploads = asyncio.create_task(self._upload_checkpoints(run))

    async def _upload_checkpoints(self, run: ActiveRun) -> None:
        while run.next_checkpoint is not None:
            checkpoint, run.next_checkpoint = run.next_checkpoint, None
            try:
                await self._upload_checkpoint(run, checkpoint)
            except RunLost:
                return  # the run's next write learns it too, and stops the run
            except Exception:
                log.exception("run %s: checkpoint %d not stored", run.run_id, checkpoint.episode)

    def _drop_checkpoints(self, run: ActiveRun) -> None:
        """The run ended: checkpoints not stored yet are of no use any more."""
        run.next_checkpoint = None
        if run.checkpoint_uploads is not None and not run.checkpoint_uploads.done():
            run.checkpoint_uploads.cancel()

    async def _upload_checkpoint(self, run: ActiveRun, checkpoint: CheckpointTaken) -> None:
        episode = checkpoint.episode
        try:
            await self.client.upload_artifact(
                run.run_id,
                STATUS.ARTIFACT_KIND_CHECKPOINT,
                f"episode-{episode:09d}",
                checkpoint.data,
                content_type="application/x-npz",
                lease_epoch=run.lease_epoch,
                episode=episode,
                metadata={"epsilon": checkpoint.epsilon, "format": 1},
            )
        except grpc.aio.AioRpcError as error:
            # A missed checkpoint only costs recomputation on resume; the run goes on.
            log.warning("run %s: checkpoint %d not stored: %s", run.run_id, episode, error.details())

    async def _complete(self, run: ActiveRun, result: RunResult) -> None:
        """One round trip once the episodes are acknowledged: CompleteRun carries the model,
        stored in the completion's transaction (a COMPLETED run always has it). The plots are
        the registry's: rendered from the stored run on first read."""
        recorded = await run.streamer.flush()
        if recorded != result.episodes:
            raise RuntimeError(f"{recorded} episodes acknowledged, {result.episodes} trained")
        artifacts = [
            ingest_service_pb2.InlineArtifact(
                kind=STATUS.ARTIFACT_KIND_MODEL,
                name=result.model_name,  # q_table.npy, or policy.npy for the random agent
                content_type="application/x-npy",
                episode=result.episodes,
                metadata=to_struct(
                    {"algorithm": run.spec.algorithm, "env_id": run.spec.env_id, **result.model_metadata}
                ),
                data=result.model,
            ),
        ]
        request = ingest_service_pb2.CompleteRunRequest(
            run_id=run.run_id,
            status=STATUS.RUN_STATUS_COMPLETED,
            episodes_total=result.episodes,
            training_metrics=to_struct(result.training_metrics),
            test_metrics=to_struct(result.test_metrics),
            system_metrics=to_struct(
                {
                    **result.system_metrics,
                    "stream_reconnects": run.streamer.reconnects,
                    "stream_spilled_batches": run.streamer.spilled_batches,
                }
            ),
            learning_stability=to_struct(result.learning_stability),
            brute_force_metrics=to_struct(result.brute_force_metrics),
            improvement_metrics=to_struct(result.improvement_metrics),
            execution_time=result.execution_time,
            stop_reason=result.stop_reason,
            lease_epoch=run.lease_epoch,
            artifacts=artifacts,
        )
        await self.client.complete_run(request)
        run.status = STATUS.RUN_STATUS_COMPLETED
        log.info("run %s completed", run.run_id, extra={"run_id": run.run_id})

    async def _finish(
        self, run: ActiveRun, status: STATUS.RunStatus, episodes: int, reason: str, error: str = ""
    ) -> None:
        recorded = await run.streamer.flush(wait_s=60.0)
        await self.client.complete_run(
            ingest_service_pb2.CompleteRunRequest(
                run_id=run.run_id,
                status=status,
                episodes_total=recorded,
                stop_reason=reason,
                error_message=error,
                training_metrics=to_struct({"episodes": episodes, "stop_reason": reason}),
                lease_epoch=run.lease_epoch,
            )
        )
        run.status = status

    async def _fail(self, run: ActiveRun, error: str) -> None:
        log.error("run %s failed: %s", run.run_id, error, extra={"run_id": run.run_id})
        # Episodes the registry has not acknowledged yet: best effort, the failure is recorded anyway.
        try:
            await run.streamer.flush(wait_s=10.0)
        except (TimeoutError, StreamFailed) as unflushed:
            log.warning("run %s: episodes not all stored before the failure: %s", run.run_id, unflushed)
        if run.lost:
            return
        await self._set_status(run, STATUS.RUN_STATUS_FAILED, error_message=error[:2000])

    async def _set_status(
        self, run: ActiveRun, status: STATUS.RunStatus, *, stop_reason: str = "", error_message: str = ""
    ) -> None:
        """Records the run's new status in the registry: a write under the run's lease."""
        run.status = status
        await self.client.update_status(
            run.run_id,
            status,
            lease_epoch=run.lease_epoch,
            trainer_id=self.trainer_id,
            stop_reason=stop_reason,
            error_message=error_message,
        )

    async def _heartbeats(self, run: ActiveRun) -> None:
        """Keeps the lease; a cancel asked through the registry (any replica) stops the run."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                cancel = await self.client.heartbeat(
                    run.run_id, self.trainer_id, run.episodes_done, run.lease_epoch, run.status
                )
            except RunLost as lost:
                self._lose_soon(run.run_id, lost.reason)
                return
            except grpc.aio.AioRpcError as error:
                log.warning("run %s: heartbeat failed: %s", run.run_id, error.code().name)
                continue
            if cancel:
                log.info("run %s: cancel requested through the registry", run.run_id)
                if self.pool.withdraw(run.run_id):
                    run.messages.put_nowait(RunCancelled(run.run_id, run.episodes_done))
                else:
                    self.pool.signal(run.run_id, cancel=True)
                return

    # ---- a run taken away ----------------------------------------------------------

    def _lose_soon(self, run_id: str, reason: str) -> None:
        """From a heartbeat or the streamer: stop the run from a task of its own."""
        run = self.active.get(run_id)
        if run is None or run.lost:
            return
        run.lost = True
        task = asyncio.get_running_loop().create_task(self._lose(run, reason), name=f"lose-{run_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _lose(self, run: ActiveRun, reason: str) -> None:
        """The registry refused us the run (another trainer took it, it was deleted or ended).

        Stops its worker (a queued run is withdrawn, a running one cancelled between chunks),
        drops its unsent episodes and ends its task, all without another write: a paused
        trainer that wakes up must never become a second writer.
        """
        if run.run_id in self._lost:
            return  # already given up (by the heartbeat, the streamer or the run's own task)
        run.lost = True
        self._lost.add(run.run_id)
        log.warning(
            "run %s: no longer ours (%s); stopping its worker, writing nothing more",
            run.run_id,
            reason,
            extra={"run_id": run.run_id},
        )
        if not self.pool.withdraw(run.run_id):
            self.pool.signal(run.run_id, cancel=True)
        if run.heartbeat is not None:
            run.heartbeat.cancel()
        await run.streamer.abandon()
        current = asyncio.current_task()
        if run.task is not None and run.task is not current and not run.task.done():
            run.task.cancel()
        run.finished.set()
        self.active.pop(run.run_id, None)

    # ---- shutdown -------------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """SIGTERM: running runs checkpoint and become INTERRUPTED; queued ones too."""
        for job in self.pool.queued_jobs():
            if self.pool.withdraw(job.run_id):
                run = self.active.get(job.run_id)
                if run is not None:
                    run.messages.put_nowait(RunInterrupted(job.run_id, run.episodes_done))
        self.pool.interrupt_all()
        runs = list(self.active.values())
        if runs:
            _, pending = await asyncio.wait([asyncio.ensure_future(r.finished.wait()) for r in runs], timeout=grace)
            for waiter in pending:
                waiter.cancel()
        # Run tasks still finishing (a completion's last writes): give them a moment, then stop.
        tasks = [r.task for r in runs if r.task is not None and not r.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        await self.pool.stop()
