"""IngestService: how trainers write runs. Every write is idempotent so trainers can retry blindly."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import duration_pb2
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from registry_service import episodes
from registry_service.artifacts import collect_upload, split_chunks, store_artifact
from registry_service.convert import (
    ARTIFACT_COLUMNS,
    KIND_TO_DB,
    METRIC_GROUPS,
    MODES,
    RUN_COLUMNS,
    STATUS_FROM_DB,
    STATUS_TO_DB,
    TERMINAL_STATUSES,
    artifact_from_row,
    check_text,
    run_from_row,
    struct_to_dict,
    user_struct,
)
from registry_service.db import EVENTS_CHANNEL
from registry_service.settings import RegistrySettings
from taxidriver.errors import (
    ServiceError,
    Violations,
    bad_field,
    failed_precondition,
    not_found,
    parse_uuid,
    request_id_reused,
)
from taxidriver.idempotency import json_fingerprint
from taxidriver.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from taxidriver.metrics import add_episodes_ingested
from taxidriver.registry.v1 import resources_pb2
from taxidriver.vocabulary import STATUS_WORDS, STOPPED_STATUSES, TERMINAL_WORDS, algorithm_name_problem, status_word

log = logging.getLogger(__name__)

MAX_BATCH_EPISODES = 100_000
MAX_NAME_CHARS = 200
# users.username (creator, resumed_by, cancelled_by columns: migration 0013).
MAX_USERNAME_CHARS = 100

SELECT_RUN = f"SELECT {RUN_COLUMNS} FROM training_runs r WHERE r.run_id = %s"

INSERT_RUN = """
INSERT INTO training_runs (
    run_id, request_id, algorithm, mode, env_id, params, episodes_planned, trainer_id,
    request_caller, request_fingerprint, creator
)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULLIF(%s, ''))
ON CONFLICT DO NOTHING
RETURNING run_id
"""

FIND_REGISTERED = """
SELECT run_id, request_caller, request_fingerprint FROM training_runs
WHERE run_id = %s OR (%s::text IS NOT NULL AND request_id = %s)
"""
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

LOCK_RUN = (
    "SELECT status, episodes_recorded, episodes_planned, lease_epoch FROM training_runs WHERE run_id = %s FOR UPDATE"
)

LEASE_EPOCH = "SELECT lease_epoch FROM training_runs WHERE run_id = %s"

CLAIM_RUN = """
UPDATE training_runs SET
    status = 'queued', lease_epoch = lease_epoch + 1, trainer_id = COALESCE(NULLIF(%s, ''), trainer_id),
    lease_expires_at = now() + make_interval(secs => %s), cancel_requested = false,
    stop_reason = '', error_message = '', updated_at = now(),
    resumed_by = COALESCE(NULLIF(%s, ''), resumed_by)
WHERE run_id = %s
RETURNING lease_epoch
"""

HEARTBEAT = """
WITH before AS (
    SELECT run_id, status = 'interrupted' AND stop_reason = 'lease_expired' AS expired
    FROM training_runs WHERE run_id = %(run_id)s FOR UPDATE
)
UPDATE training_runs r SET
    status = CASE WHEN b.expired AND %(back)s::text IS NOT NULL THEN %(back)s ELSE r.status END,
    stop_reason = CASE WHEN b.expired AND %(back)s::text IS NOT NULL THEN '' ELSE r.stop_reason END,
    lease_expires_at = CASE WHEN r.status = ANY(%(live)s) OR (b.expired AND %(back)s::text IS NOT NULL)
        THEN now() + make_interval(secs => %(lease)s) ELSE r.lease_expires_at END,
    trainer_id = COALESCE(NULLIF(%(trainer_id)s, ''), r.trainer_id)
FROM before b
WHERE r.run_id = b.run_id AND (%(epoch)s = 0 OR r.lease_epoch = %(epoch)s)
RETURNING r.cancel_requested, b.expired AND %(back)s::text IS NOT NULL
"""

# The lifecycle tables, in the words RunStatus declares (taxidriver.vocabulary), never a copy.
# Live: a trainer holds the run (its lease runs); every other status is stopped.
LIVE_STATUSES: frozenset[str] = frozenset(STATUS_WORDS[n] for n in STATUS_WORDS if n not in STOPPED_STATUSES)
FAILED = status_word(resources_pb2.RUN_STATUS_FAILED)
# Statuses ClaimRun may take a run from: nobody holds it (a live run is the sweeper's to expire).
CLAIMABLE: frozenset[str] = frozenset({status_word(resources_pb2.RUN_STATUS_INTERRUPTED), FAILED})

NOTIFY = "SELECT pg_notify(%s, %s)"

LATEST_CHECKPOINT = f"""
SELECT {ARTIFACT_COLUMNS}, data FROM artifacts
WHERE run_id = %s AND kind = 'checkpoint'
ORDER BY episode DESC, created_at DESC
LIMIT 1
"""

# Statuses a run may move to through UpdateRunStatus, from each current status: any but
# completed (CompleteRun's) from a run that has not ended; ResumeRun continues a FAILED run
# from its last checkpoint too. Nothing leaves COMPLETED or CANCELLED.
_SETTABLE = frozenset(STATUS_WORDS.values()) - {status_word(resources_pb2.RUN_STATUS_COMPLETED)}
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    **{word: _SETTABLE for word in STATUS_WORDS.values() if word not in TERMINAL_WORDS},
    FAILED: LIVE_STATUSES | {FAILED},
}
# TERMINAL_WORDS as a parameter of the SQL below (a list adapts to a text array).
TERMINAL_LIST = sorted(TERMINAL_WORDS)
LIVE_LIST = sorted(LIVE_STATUSES)


def check_epoch(run_id: uuid.UUID, sent: int, current: int) -> None:
    """Refuses a write from a trainer that no longer holds the run (0 = an unfenced caller)."""
    if sent and sent != current:
        raise failed_precondition(
            f"run {run_id} was taken by another writer (lease epoch {current}); "
            f"this writer's epoch {sent} is stale: stop writing this run",
            reason="LEASE_LOST",
            lease_epoch=str(current),
        )


async def notify(conn: AsyncConnection[Any], run_id: uuid.UUID, kind: str) -> None:
    """Wake WatchRun subscribers; delivered only if the surrounding transaction commits."""
    await conn.execute(NOTIFY, (EVENTS_CHANNEL, json.dumps({"run_id": str(run_id), "kind": kind})))


async def fetch_run(conn: AsyncConnection[Any], run_id: uuid.UUID) -> resources_pb2.Run:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(SELECT_RUN, (run_id,))
    row = await cursor.fetchone()
    if row is None:
        raise not_found("run", str(run_id))
    return run_from_row(row)


def _check_params(params: dict[str, Any], violations: Violations) -> None:
    """Only the seed's well-known keys are checked; others are free-form."""
    for key in ("alpha", "gamma", "epsilon", "epsilon_min", "epsilon_decay"):
        if key in params and not isinstance(params[key], int | float):
            violations.add(f"params.{key}", "must be a number")
    for key in ("training_runs", "max_steps", "test_episodes", "seed"):
        if key in params and not isinstance(params[key], int):
            violations.add(f"params.{key}", "must be an integer")


def _check_test_metrics(test_metrics: dict[str, Any]) -> None:
    """The seed casts these with ::FLOAT (and our indexes too), so they must be numbers."""
    violations = Violations()
    for key in ("success_rate", "avg_steps", "avg_reward"):
        value = test_metrics.get(key)
        if key in test_metrics and (not isinstance(value, int | float) or isinstance(value, bool)):
            violations.add(f"test_metrics.{key}", "must be a number")
    rate = test_metrics.get("success_rate")
    if isinstance(rate, int | float) and not isinstance(rate, bool) and not 0 <= rate <= 1:
        violations.add("test_metrics.success_rate", "must be a fraction in [0, 1]")
    violations.raise_if_any()


def _check_artifact(
    header: ingest_service_pb2.ArtifactHeader | ingest_service_pb2.InlineArtifact, field: str, violations: Violations
) -> str | None:
    """An artifact's kind in the database's words (None if unknown); its problems added to `violations`."""
    kind = KIND_TO_DB.get(header.kind)
    if kind is None:
        violations.add(f"{field}.kind", "must be MODEL, CHECKPOINT or PLOT")
    if not header.name or len(header.name) > MAX_NAME_CHARS:
        violations.add(f"{field}.name", f"is required, at most {MAX_NAME_CHARS} characters")
    if len(header.content_type) > 100:
        violations.add(f"{field}.content_type", "at most 100 characters")
    if header.episode < 0:
        violations.add(f"{field}.episode", "must be >= 0")
    return kind


async def _store_sent_artifact(
    conn: AsyncConnection[Any],
    run_id: uuid.UUID,
    kind: str,
    header: ingest_service_pb2.ArtifactHeader | ingest_service_pb2.InlineArtifact,
    data: bytes,
) -> tuple[resources_pb2.Artifact, dict[str, Any] | None]:
    """A trainer's artifact, replacing one of the same (kind, name): its uploads are retried blindly."""
    stored = await store_artifact(
        conn,
        run_id=run_id,
        kind=kind,
        name=header.name,
        content_type=header.content_type,
        episode=header.episode,
        metadata=struct_to_dict(header.metadata),
        data=data,
    )
    assert stored is not None  # replace=True always stores
    return stored


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    def __init__(self, pool: AsyncConnectionPool, settings: RegistrySettings) -> None:
        self.pool = pool
        self.settings = settings

    async def RegisterRun(
        self, request: ingest_service_pb2.RegisterRunRequest, context: grpc.aio.ServicerContext
    ) -> ingest_service_pb2.RegisterRunResponse:
        violations = Violations()
        # An empty run_id: the registry draws one.
        run_id = (violations.uuid(request.run_id, "run_id") if request.run_id else None) or uuid.uuid4()
        if (problem := algorithm_name_problem(request.algorithm)) is not None:
            violations.add("algorithm", problem)
        mode = request.mode or "user"
        if mode not in MODES:
            violations.add("mode", f"must be one of {', '.join(sorted(MODES))}")
        if len(request.env_id) > 100:
            violations.add("env_id", "at most 100 characters")
        if len(request.request_id) > MAX_NAME_CHARS:
            violations.add("request_id", f"at most {MAX_NAME_CHARS} characters")
        if request.episodes_planned < 0:
            violations.add("episodes_planned", "must be >= 0")
        if len(request.caller) > MAX_NAME_CHARS:
            violations.add("caller", f"at most {MAX_NAME_CHARS} characters")
        if request.request_fingerprint and not _SHA256_HEX.fullmatch(request.request_fingerprint):
            violations.add("request_fingerprint", "must be a lower-case hex SHA-256")
        if len(request.creator) > MAX_USERNAME_CHARS:
            violations.add("creator", f"at most {MAX_USERNAME_CHARS} characters")
        for name in ("request_id", "env_id", "trainer_id", "caller", "creator"):
            check_text(violations, name, getattr(request, name))
        params = user_struct(request.params, "params", violations)
        _check_params(params, violations)
        violations.raise_if_any()
        request_id = request.request_id or None
        env_id = request.env_id or "Taxi-v3"
        fingerprint = request.request_fingerprint or json_fingerprint(
            [request.algorithm, mode, env_id, params, request.episodes_planned]
        )
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                INSERT_RUN,
                (
                    run_id,
                    request_id,
                    request.algorithm,
                    mode,
                    env_id,
                    Jsonb(params),
                    request.episodes_planned,
                    request.trainer_id,
                    request.caller or None,
                    fingerprint,
                    request.creator,
                ),
            )
            created = await cursor.fetchone() is not None
            if created:
                await notify(conn, run_id, "status")
            else:
                cursor = await conn.execute(FIND_REGISTERED, (run_id, request_id, request_id))
                existing = await cursor.fetchone()
                if existing is None:  # pragma: no cover - a concurrent delete between the two statements
                    raise failed_precondition(
                        "run was deleted while registering; retry",
                        reason="RUN_DELETED_WHILE_REGISTERING",
                        run_id=str(run_id),
                    )
                run_id, stored_caller, stored_fingerprint = existing
                # AIP-155: a retry is the same request from the same caller; anything else reusing
                # the id is refused (runs registered before fingerprints existed cannot be compared).
                if stored_fingerprint is not None and (
                    stored_fingerprint != fingerprint or (stored_caller or "") != request.caller
                ):
                    raise request_id_reused("run", str(run_id))
            run = await fetch_run(conn, run_id)
            epoch = await _lease_epoch(conn, run_id) if request.run_id == str(run_id) else 0
        return ingest_service_pb2.RegisterRunResponse(run=run, created=created, lease_epoch=epoch)

    async def UpdateRunStatus(
        self, request: ingest_service_pb2.UpdateRunStatusRequest, context: grpc.aio.ServicerContext
    ) -> ingest_service_pb2.UpdateRunStatusResponse:
        run_id = parse_uuid(request.run_id, "run_id")
        target = STATUS_TO_DB.get(request.status)
        if target is None:
            raise bad_field("status", "must be a run status")
        if target == "completed":
            raise bad_field("status", "use CompleteRun to complete a run")
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(LOCK_RUN, (run_id,))
            row = await cursor.fetchone()
            if row is None:
                raise not_found("run", str(run_id))
            current = row[0]
            check_epoch(run_id, request.lease_epoch, row[3])
            if current != target:
                if target not in ALLOWED_TRANSITIONS.get(current, frozenset()):
                    raise failed_precondition(
                        f"run is {current}; it cannot become {target}", reason="RUN_STATUS_TRANSITION", status=current
                    )
                await conn.execute(
                    """
                    UPDATE training_runs SET
                        status = %s,
                        stop_reason = COALESCE(NULLIF(%s, ''), stop_reason),
                        error_message = %s,
                        trainer_id = COALESCE(NULLIF(%s, ''), trainer_id),
                        lease_expires_at = CASE WHEN %s = ANY(%s)
                            THEN now() + make_interval(secs => %s) ELSE lease_expires_at END,
                        updated_at = now()
                    WHERE run_id = %s
                    """,
                    (
                        target,
                        request.stop_reason,
                        request.error_message,
                        request.trainer_id,
                        target,
                        LIVE_LIST,
                        self.settings.lease_seconds,
                        run_id,
                    ),
                )
                await notify(conn, run_id, "status")
            run = await fetch_run(conn, run_id)
        return ingest_service_pb2.UpdateRunStatusResponse(run=run)

    async def IngestEpisodes(
        self,
        request_iterator: AsyncIterator[ingest_service_pb2.IngestEpisodesRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ingest_service_pb2.IngestEpisodesResponse]:
        async for batch in request_iterator:
            yield await self._store_batch(batch)

    async def _store_batch(
        self, batch: ingest_service_pb2.IngestEpisodesRequest
    ) -> ingest_service_pb2.IngestEpisodesResponse:
        run_id = parse_uuid(batch.run_id, "run_id")
        count = len(batch.rewards)
        violations = Violations()
        if batch.first_episode < 0:
            violations.add("first_episode", "must be >= 0")
        if count == 0:
            violations.add("rewards", "a batch needs at least one episode")
        if count > MAX_BATCH_EPISODES:
            violations.add("rewards", f"at most {MAX_BATCH_EPISODES} episodes per batch")
        if len(batch.steps) != count:
            violations.add("steps", f"must have one value per episode ({count})")
        for name in ("epsilons", "td_errors", "successes"):
            if len(getattr(batch, name)) not in (0, count):
                violations.add(name, f"must be empty or have one value per episode ({count})")
        violations.raise_if_any()
        first, end = batch.first_episode, batch.first_episode + count
        payload = json.dumps({"run_id": str(run_id), "kind": "episodes"})
        async with self.pool.connection() as conn:
            await conn.set_autocommit(True)  # the one statement is the transaction: one round trip
            try:
                row = await episodes.store_batch(
                    conn, run_id, batch, terminal=TERMINAL_LIST, channel=EVENTS_CHANNEL, payload=payload
                )
            finally:
                await conn.set_autocommit(False)
        if row is None:
            raise not_found("run", str(run_id))
        status, recorded, planned, epoch, stored = row
        if not stored:  # nothing was written: say why (in the order a writer should hear it)
            check_epoch(run_id, batch.lease_epoch, epoch)
            if first > recorded:
                raise failed_precondition(
                    f"batch starts at episode {first} but only {recorded} are stored: episodes would be missing",
                    reason="EPISODE_GAP",
                    episodes_recorded=str(recorded),
                )
            if end <= recorded:
                return ingest_service_pb2.IngestEpisodesResponse(run_id=str(run_id), episodes_recorded=recorded)
            if status in TERMINAL_STATUSES:
                raise failed_precondition(f"run is {status}; no more episodes are accepted", reason="RUN_FINISHED")
            if planned and end > planned:
                raise failed_precondition(
                    f"episodes {first}..{end - 1} exceed the {planned} planned", reason="EPISODES_BEYOND_PLAN"
                )
            raise AssertionError(f"batch {first}..{end - 1} of run {run_id} refused for no known reason")
        add_episodes_ingested(end - recorded)  # committed: the statement was its own transaction
        return ingest_service_pb2.IngestEpisodesResponse(
            run_id=str(run_id), episodes_recorded=end, stored=end - recorded
        )

    async def CompleteRun(
        self, request: ingest_service_pb2.CompleteRunRequest, context: grpc.aio.ServicerContext
    ) -> ingest_service_pb2.CompleteRunResponse:
        run_id = parse_uuid(request.run_id, "run_id")
        target = STATUS_TO_DB.get(request.status or resources_pb2.RUN_STATUS_COMPLETED)
        if target not in TERMINAL_STATUSES:
            raise bad_field("status", "must be COMPLETED, CANCELLED or FAILED")
        if request.episodes_total < 0:
            raise bad_field("episodes_total", "must be >= 0")
        if request.execution_time < 0:
            raise bad_field("execution_time", "must be >= 0")
        groups = {group: struct_to_dict(getattr(request, group)) for group in METRIC_GROUPS}
        _check_test_metrics(groups["test_metrics"])
        inline = self._check_inline_artifacts(request)
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(LOCK_RUN, (run_id,))
            row = await cursor.fetchone()
            if row is None:
                raise not_found("run", str(run_id))
            status, recorded, _planned, epoch = row
            check_epoch(run_id, request.lease_epoch, epoch)
            if status in TERMINAL_STATUSES:
                if status == target:
                    return ingest_service_pb2.CompleteRunResponse(run=await fetch_run(conn, run_id))
                raise failed_precondition(f"run is already {status}", reason="RUN_FINISHED", status=status)
            if request.episodes_total != recorded:
                raise failed_precondition(
                    f"episodes_total is {request.episodes_total} but {recorded} episodes are stored",
                    reason="EPISODES_MISSING",
                    episodes_recorded=str(recorded),
                )
            await episodes.compact(conn, run_id)
            await conn.execute(
                """
                UPDATE training_runs SET
                    status = %s, training_metrics = %s, test_metrics = %s, system_metrics = %s,
                    learning_stability = %s, brute_force_metrics = %s, improvement_metrics = %s,
                    execution_time = %s, stop_reason = %s, error_message = %s,
                    lease_expires_at = NULL, updated_at = now()
                WHERE run_id = %s
                """,
                (
                    target,
                    *(Jsonb(groups[g]) for g in METRIC_GROUPS),
                    request.execution_time,
                    request.stop_reason or ("episodes_done" if target == "completed" else target),
                    request.error_message,
                    run_id,
                ),
            )
            for kind, artifact in inline:
                # In the completion's transaction: a COMPLETED run always has its model.
                await _store_sent_artifact(conn, run_id, kind, artifact, artifact.data)
            await notify(conn, run_id, "status")
            run = await fetch_run(conn, run_id)
        return ingest_service_pb2.CompleteRunResponse(run=run)

    def _check_inline_artifacts(
        self, request: ingest_service_pb2.CompleteRunRequest
    ) -> list[tuple[str, ingest_service_pb2.InlineArtifact]]:
        """The request's inline artifacts with their kinds; INVALID_ARGUMENT naming each bad field."""
        violations = Violations()
        checked: list[tuple[str, ingest_service_pb2.InlineArtifact]] = []
        seen: set[tuple[int, str]] = set()
        limit = self.settings.max_artifact_bytes
        for index, artifact in enumerate(request.artifacts):
            field = f"artifacts[{index}]"
            kind = _check_artifact(artifact, field, violations)
            if len(artifact.data) > limit:
                violations.add(f"{field}.data", f"larger than {limit} bytes (REGISTRY_MAX_ARTIFACT_BYTES)")
            if (artifact.kind, artifact.name) in seen:
                violations.add(f"{field}.name", "another artifact of the request has the same kind and name")
            seen.add((artifact.kind, artifact.name))
            if kind is not None:
                checked.append((kind, artifact))
        violations.raise_if_any()
        return checked

    async def UploadArtifact(
        self,
        request_iterator: AsyncIterator[ingest_service_pb2.UploadArtifactRequest],
        context: grpc.aio.ServicerContext,
    ) -> ingest_service_pb2.UploadArtifactResponse:
        header, data = await collect_upload(request_iterator, "header", self.settings.max_artifact_bytes)
        if header is None:
            raise bad_field("header", "an upload starts with a header")
        run_id = parse_uuid(header.run_id, "header.run_id")
        violations = Violations()
        kind = _check_artifact(header, "header", violations)
        violations.raise_if_any()
        assert kind is not None
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(LEASE_EPOCH + " FOR SHARE", (run_id,))
            found = await cursor.fetchone()
            if found is None:
                raise not_found("run", str(run_id))
            check_epoch(run_id, header.lease_epoch, found[0])
            stored = await _store_sent_artifact(conn, run_id, kind, header, data)
        return ingest_service_pb2.UploadArtifactResponse(artifact=stored[0])

    async def GetLatestCheckpoint(
        self, request: ingest_service_pb2.GetLatestCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_service_pb2.GetLatestCheckpointResponse]:
        run_id = parse_uuid(request.run_id, "run_id")
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(LATEST_CHECKPOINT, (run_id,))
            row = await cursor.fetchone()
            if row is None:
                await fetch_run(conn, run_id)  # NOT_FOUND for an unknown run
                raise ServiceError(
                    code=grpc.StatusCode.NOT_FOUND,
                    message=f"run {run_id} has no checkpoint yet",
                    reason="CHECKPOINT_NOT_FOUND",
                    metadata={"run_id": str(run_id)},
                )
        artifact = artifact_from_row(row)
        for index, chunk in enumerate(split_chunks(bytes(row["data"]))):
            yield ingest_service_pb2.GetLatestCheckpointResponse(artifact=artifact if index == 0 else None, chunk=chunk)

    async def GetRunSpec(
        self, request: ingest_service_pb2.GetRunSpecRequest, context: grpc.aio.ServicerContext
    ) -> ingest_service_pb2.GetRunSpecResponse:
        run_id = parse_uuid(request.run_id, "run_id")
        async with self.pool.connection() as conn:
            return ingest_service_pb2.GetRunSpecResponse(run=await fetch_run(conn, run_id))

    async def Heartbeat(
        self, request: ingest_service_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> ingest_service_pb2.HeartbeatResponse:
        run_id = parse_uuid(request.run_id, "run_id")
        if request.episodes_done < 0:
            raise bad_field("episodes_done", "must be >= 0")
        # The holder of the current epoch takes back a run whose lease ran out while nobody
        # took it (the registry could not tell a paused or cut-off trainer from a dead one).
        back = STATUS_TO_DB.get(request.status) if request.lease_epoch else None
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                HEARTBEAT,
                {
                    "run_id": run_id,
                    "epoch": request.lease_epoch,
                    "trainer_id": request.trainer_id,
                    "lease": self.settings.lease_seconds,
                    "back": back if back in LIVE_STATUSES else None,
                    "live": LIVE_LIST,
                },
            )
            row = await cursor.fetchone()
            if row is None:  # unknown run (NOT_FOUND), or taken by another writer (LEASE_LOST)
                check_epoch(run_id, request.lease_epoch, await _lease_epoch(conn, run_id))
                raise not_found("run", str(run_id))
            if row[1]:
                log.info("run %s: its trainer is back before anyone took the run; %s again", run_id, back)
                await notify(conn, run_id, "status")
        return ingest_service_pb2.HeartbeatResponse(
            cancel_requested=row[0], lease=duration_pb2.Duration(seconds=int(self.settings.lease_seconds))
        )

    async def RequestCancel(
        self, request: ingest_service_pb2.RequestCancelRequest, context: grpc.aio.ServicerContext
    ) -> ingest_service_pb2.RequestCancelResponse:
        run_id = parse_uuid(request.run_id, "run_id")
        if len(request.requested_by) > MAX_USERNAME_CHARS:
            raise bad_field("requested_by", f"at most {MAX_USERNAME_CHARS} characters")
        async with self.pool.connection() as conn, conn.transaction():
            # A live holder sees the request on its next heartbeat and ends the run itself.
            # A run nobody holds (interrupted, or its lease ran out: a trainer that vanished)
            # would wait for nobody: it is cancelled here, and its epoch moves on so that a
            # holder that comes back after all is refused.
            cursor = await conn.execute(
                """
                UPDATE training_runs SET
                    cancel_requested = true,
                    cancelled_by = COALESCE(NULLIF(%s, ''), cancelled_by),
                    status = CASE WHEN status = 'interrupted' OR lease_expires_at < now()
                        THEN 'cancelled' ELSE status END,
                    stop_reason = CASE WHEN status = 'interrupted' OR lease_expires_at < now()
                        THEN 'cancelled' ELSE stop_reason END,
                    lease_epoch = CASE WHEN status = 'interrupted' OR lease_expires_at < now()
                        THEN lease_epoch + 1 ELSE lease_epoch END,
                    updated_at = now()
                WHERE run_id = %s AND status <> ALL(%s)
                RETURNING 1
                """,
                (request.requested_by, run_id, TERMINAL_LIST),
            )
            if await cursor.fetchone() is not None:
                await notify(conn, run_id, "status")
            run = await fetch_run(conn, run_id)
        return ingest_service_pb2.RequestCancelResponse(run=run)

    async def ClaimRun(
        self, request: ingest_service_pb2.ClaimRunRequest, context: grpc.aio.ServicerContext
    ) -> ingest_service_pb2.ClaimRunResponse:
        """A resume takes the run: one statement under the row lock, so two trainers never both win."""
        run_id = parse_uuid(request.run_id, "run_id")
        if len(request.trainer_id) > MAX_NAME_CHARS:
            raise bad_field("trainer_id", f"at most {MAX_NAME_CHARS} characters")
        if len(request.requested_by) > MAX_USERNAME_CHARS:
            raise bad_field("requested_by", f"at most {MAX_USERNAME_CHARS} characters")
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "SELECT status, trainer_id FROM training_runs WHERE run_id = %s FOR UPDATE", (run_id,)
            )
            row = await cursor.fetchone()
            if row is None:
                raise not_found("run", str(run_id))
            status, holder = row
            if status not in CLAIMABLE:
                name = resources_pb2.RunStatus.Name(STATUS_FROM_DB[status])
                held = f" (held by trainer {holder})" if status in LIVE_STATUSES and holder else ""
                raise failed_precondition(
                    f"only INTERRUPTED or FAILED runs can be resumed; run {run_id} is {name}{held}",
                    reason="RUN_NOT_RESUMABLE",
                    status=name,
                    trainer_id=holder,
                )
            cursor = await conn.execute(
                CLAIM_RUN, (request.trainer_id, self.settings.lease_seconds, request.requested_by, run_id)
            )
            claimed = await cursor.fetchone()
            assert claimed is not None
            await notify(conn, run_id, "status")
            run = await fetch_run(conn, run_id)
        return ingest_service_pb2.ClaimRunResponse(run=run, lease_epoch=claimed[0])


async def _lease_epoch(conn: AsyncConnection[Any], run_id: uuid.UUID) -> int:
    cursor = await conn.execute(LEASE_EPOCH, (run_id,))
    row = await cursor.fetchone()
    if row is None:
        raise not_found("run", str(run_id))
    return int(row[0])
