"""SweepStoreService: the tuner's sweeps and trials, kept in the registry (the only store).

A sweep has one driving tuner at a time, fenced like a run: ClaimSweep moves the lease
epoch on whenever the sweep changes hands, and every write carries the writer's epoch;
a stale one is refused (FAILED_PRECONDITION, reason LEASE_LOST).
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from registry_service import page_tokens
from registry_service.convert import (
    check_text,
    dict_to_struct,
    parse_uuid,
    timestamp,
    user_struct,
)
from taxidriver.errors import Violations, bad_field, failed_precondition, not_found, request_id_reused
from taxidriver.idempotency import json_fingerprint
from taxidriver.ingest.v1 import sweep_store_pb2 as pb
from taxidriver.ingest.v1 import sweep_store_pb2_grpc
from taxidriver.vocabulary import algorithm_name_problem

MAX_NAME_CHARS = 200
MAX_TRIALS = 100_000
TRIAL_STATES = frozenset({"running", "complete", "failed", "cancelled"})
FINAL_SWEEP_STATES = frozenset({"succeeded", "cancelled", "failed"})
DEFAULT_LEASE_SECONDS = 15.0

SWEEP_COLUMNS = """
    s.sweep_id, s.request_id, s.algorithm, s.spec, s.state, s.owner, s.tuner_id, s.lease_epoch,
    s.cancel_requested, s.error_message, s.created_at, s.updated_at, s.request_caller
"""

INSERT_SWEEP = """
INSERT INTO sweeps (sweep_id, request_id, request_caller, algorithm, spec, owner)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
RETURNING sweep_id
"""

FIND_SWEEP_BY_REQUEST = f"SELECT {SWEEP_COLUMNS} FROM sweeps s WHERE s.request_id = %s"

SELECT_SWEEP = f"SELECT {SWEEP_COLUMNS} FROM sweeps s WHERE s.sweep_id = %s"

LOCK_SWEEP = """
SELECT state, tuner_id, lease_epoch, lease_expires_at < now() OR lease_expires_at IS NULL AS lease_free
FROM sweeps WHERE sweep_id = %s FOR UPDATE
"""

# A new holder (or the same one coming back after its lease ran out) gets the next epoch, so
# whoever drove the sweep before is refused from now on.
CLAIM_SWEEP = """
UPDATE sweeps SET tuner_id = %s, lease_epoch = lease_epoch + 1,
    lease_expires_at = now() + make_interval(secs => %s), updated_at = now()
WHERE sweep_id = %s
RETURNING lease_epoch
"""

RENEW_SWEEP = """
UPDATE sweeps SET lease_expires_at = now() + make_interval(secs => %s)
WHERE sweep_id = %s AND lease_epoch = %s AND state = 'running'
RETURNING cancel_requested
"""

UPSERT_TRIAL = """
INSERT INTO sweep_trials (sweep_id, trial_number, state, body)
VALUES (%s, %s, %s, %s)
ON CONFLICT (sweep_id, trial_number) DO UPDATE SET state = EXCLUDED.state, body = EXCLUDED.body, updated_at = now()
"""

# Tags a trial's runs (ordinary runs) with their sweep and trial number.
TAG_RUNS = """
UPDATE training_runs SET sweep_id = %s, sweep_trial = %s
WHERE run_id = ANY(%s) AND sweep_id IS DISTINCT FROM %s
"""

TOUCH_SWEEP = "UPDATE sweeps SET updated_at = now() WHERE sweep_id = %s"

FINISH_SWEEP = """
UPDATE sweeps SET state = %s, error_message = %s, lease_expires_at = NULL, updated_at = now()
WHERE sweep_id = %s
"""

SELECT_TRIALS = """
SELECT trial_number, state, body FROM sweep_trials WHERE sweep_id = %s ORDER BY trial_number
"""

TRIAL_RUN_IDS = """
SELECT sweep_trial, array_agg(run_id::text ORDER BY created_at, run_id) AS run_ids
FROM training_runs WHERE sweep_id = %s GROUP BY sweep_trial
"""

LIST_SWEEPS = f"""
SELECT {SWEEP_COLUMNS} FROM sweeps s
WHERE (%(algorithm)s::text IS NULL OR s.algorithm = %(algorithm)s)
  AND (%(after_time)s::timestamptz IS NULL OR (s.created_at, s.sweep_id) < (%(after_time)s, %(after_id)s::uuid))
ORDER BY s.created_at DESC, s.sweep_id DESC
LIMIT %(limit)s
"""

LIST_ORPHANS = f"""
SELECT {SWEEP_COLUMNS} FROM sweeps s
WHERE s.state = 'running' AND (s.lease_expires_at IS NULL OR s.lease_expires_at < now())
ORDER BY s.created_at
LIMIT 1000
"""

# A sweep nobody drives (lease free or run out) is cancelled at once and its epoch moves on,
# so a tuner that comes back is refused; a driven one is stopped by its holder.
REQUEST_CANCEL = """
UPDATE sweeps SET
    cancel_requested = true,
    state = CASE WHEN lease_expires_at IS NULL OR lease_expires_at < now() THEN 'cancelled' ELSE state END,
    lease_epoch = CASE WHEN lease_expires_at IS NULL OR lease_expires_at < now() THEN lease_epoch + 1
                       ELSE lease_epoch END,
    lease_expires_at = CASE WHEN lease_expires_at < now() THEN NULL ELSE lease_expires_at END,
    updated_at = now()
WHERE sweep_id = %s AND state = 'running'
"""


# Completed runs with the metric, scored; the best and the newest of them (a TPE sampler's
# "good" group is at most 25 trials: the best of everything stored keeps it exact, the newest
# keep the rest of the picture current). Non-numeric values are skipped, never cast.
RUN_OBSERVATIONS = """
WITH scored AS (
    SELECT r.run_id, r.created_at, r.params,
           CASE WHEN jsonb_typeof(r.test_metrics -> %(metric)s) = 'number'
                THEN (r.test_metrics ->> %(metric)s)::float8
                WHEN jsonb_typeof(r.system_metrics -> %(metric)s) = 'number'
                THEN (r.system_metrics ->> %(metric)s)::float8 END AS value,
           CASE WHEN jsonb_typeof(r.system_metrics -> 'training_time_s') = 'number'
                THEN (r.system_metrics ->> 'training_time_s')::float8 ELSE 0 END AS training_seconds
    FROM training_runs r
    WHERE r.algorithm = %(algorithm)s AND r.status = 'completed'
      AND (%(env_id)s::text IS NULL OR r.env_id = %(env_id)s)
), valued AS (
    SELECT * FROM scored WHERE value IS NOT NULL AND value NOT IN ('NaN', 'Infinity', '-Infinity')
), best AS (
    SELECT run_id, params, value, training_seconds, 0 AS part,
           row_number() OVER (ORDER BY CASE WHEN %(minimize)s THEN value ELSE -value END, training_seconds) AS rank
    FROM valued ORDER BY rank LIMIT %(best)s
), newest AS (
    SELECT run_id, params, value, training_seconds, 1 AS part,
           row_number() OVER (ORDER BY created_at DESC, run_id DESC) AS rank
    FROM valued WHERE run_id NOT IN (SELECT run_id FROM best) ORDER BY rank LIMIT %(newest)s
)
SELECT run_id::text, params, value, training_seconds, (SELECT count(*) FROM valued) AS matching
FROM (SELECT * FROM best UNION ALL SELECT * FROM newest) picked
ORDER BY part, rank
"""
MAX_OBSERVATIONS = 100_000


def record_from_row(row: dict[str, Any]) -> pb.SweepRecord:
    return pb.SweepRecord(
        sweep_id=str(row["sweep_id"]),
        request_id=row["request_id"] or "",
        algorithm=row["algorithm"],
        spec=dict_to_struct(row["spec"]),
        state=row["state"],
        owner=row["owner"],
        tuner_id=row["tuner_id"],
        lease_epoch=row["lease_epoch"],
        cancel_requested=row["cancel_requested"],
        error_message=row["error_message"],
        create_time=timestamp(row["created_at"]),
        update_time=timestamp(row["updated_at"]),
    )


def _lease_lost(sweep_id: uuid.UUID, current: int) -> Exception:
    return failed_precondition(
        f"sweep {sweep_id} is driven by another tuner now (lease epoch {current})",
        reason="LEASE_LOST",
        lease_epoch=str(current),
    )


class SweepStoreServicer(sweep_store_pb2_grpc.SweepStoreServiceServicer):
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def _fetch(self, conn: AsyncConnection[Any], sweep_id: uuid.UUID) -> pb.SweepRecord:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(SELECT_SWEEP, (sweep_id,))
        row = await cursor.fetchone()
        if row is None:
            raise not_found("sweep", str(sweep_id))
        return record_from_row(row)

    async def _check_epoch(self, conn: AsyncConnection[Any], sweep_id: uuid.UUID, epoch: int) -> str:
        """Locks the sweep; refuses a writer whose epoch is not the current one."""
        cursor = await conn.execute(LOCK_SWEEP, (sweep_id,))
        row = await cursor.fetchone()
        if row is None:
            raise not_found("sweep", str(sweep_id))
        state, _holder, current, _free = row
        if epoch != current:
            raise _lease_lost(sweep_id, current)
        return str(state)

    async def CreateSweep(
        self, request: pb.CreateSweepRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSweepResponse:
        violations = Violations()
        sweep_id = uuid.uuid4()
        if request.sweep_id:
            try:
                sweep_id = uuid.UUID(request.sweep_id)
            except ValueError:
                violations.add("sweep_id", "must be a UUID")
        if (problem := algorithm_name_problem(request.algorithm)) is not None:
            violations.add("algorithm", problem)
        for name in ("request_id", "owner"):
            value = getattr(request, name)
            if len(value) > MAX_NAME_CHARS:
                violations.add(name, f"at most {MAX_NAME_CHARS} characters")
            check_text(violations, name, value)
        spec = user_struct(request.spec, "spec", violations)
        violations.raise_if_any()
        request_id = request.request_id or None
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                INSERT_SWEEP,
                (sweep_id, request_id, request.owner, request.algorithm, Jsonb(spec), request.owner),
            )
            created = await cursor.fetchone() is not None
            if created:
                return pb.CreateSweepResponse(sweep=await self._fetch(conn, sweep_id), created=True)
            dict_cursor = conn.cursor(row_factory=dict_row)
            await dict_cursor.execute(FIND_SWEEP_BY_REQUEST, (request_id,))
            row = await dict_cursor.fetchone()
            if row is None:
                await dict_cursor.execute(SELECT_SWEEP, (sweep_id,))
                row = await dict_cursor.fetchone()
            if row is None:  # pragma: no cover - deleted between the two statements
                raise failed_precondition(
                    "sweep was deleted while creating it; retry", reason="SWEEP_DELETED_WHILE_CREATING"
                )
            # AIP-155: the same request_id is a retry only for the same caller and spec.
            if row["request_caller"] != request.owner or json_fingerprint(row["spec"]) != json_fingerprint(spec):
                raise request_id_reused("sweep", str(row["sweep_id"]))
            return pb.CreateSweepResponse(sweep=record_from_row(row), created=False)

    async def ClaimSweep(
        self, request: pb.ClaimSweepRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClaimSweepResponse:
        sweep_id = parse_uuid(request.sweep_id, "sweep_id")
        if not request.tuner_id or len(request.tuner_id) > MAX_NAME_CHARS:
            raise bad_field("tuner_id", f"is required, at most {MAX_NAME_CHARS} characters")
        lease = request.lease_seconds or DEFAULT_LEASE_SECONDS
        if not 0 < lease <= 3600:
            raise bad_field("lease_seconds", "must be in (0, 3600]")
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(LOCK_SWEEP, (sweep_id,))
            row = await cursor.fetchone()
            if row is None:
                raise not_found("sweep", str(sweep_id))
            state, holder, _epoch, lease_free = row
            if state != "running":
                raise failed_precondition(
                    f"sweep {sweep_id} has ended ({state})", reason="SWEEP_ENDED", state=str(state)
                )
            if not lease_free and holder != request.tuner_id:
                raise failed_precondition(
                    f"sweep {sweep_id} is driven by tuner {holder}", reason="SWEEP_HELD", tuner_id=str(holder)
                )
            cursor = await conn.execute(CLAIM_SWEEP, (request.tuner_id, lease, sweep_id))
            claimed = await cursor.fetchone()
            assert claimed is not None
            return pb.ClaimSweepResponse(sweep=await self._fetch(conn, sweep_id), lease_epoch=claimed[0])

    async def RenewSweep(
        self, request: pb.RenewSweepRequest, context: grpc.aio.ServicerContext
    ) -> pb.RenewSweepResponse:
        sweep_id = parse_uuid(request.sweep_id, "sweep_id")
        lease = request.lease_seconds or DEFAULT_LEASE_SECONDS
        if not 0 < lease <= 3600:
            raise bad_field("lease_seconds", "must be in (0, 3600]")
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(RENEW_SWEEP, (lease, sweep_id, request.lease_epoch))
            row = await cursor.fetchone()
            if row is None:
                cursor = await conn.execute(LOCK_SWEEP, (sweep_id,))
                found = await cursor.fetchone()
                if found is None:
                    raise not_found("sweep", str(sweep_id))
                state, _holder, current, _free = found
                if current != request.lease_epoch:
                    raise _lease_lost(sweep_id, current)
                raise failed_precondition(f"sweep {sweep_id} has ended ({state})", reason="SWEEP_ENDED")
            return pb.RenewSweepResponse(cancel_requested=bool(row[0]))

    async def RecordTrial(
        self, request: pb.RecordTrialRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordTrialResponse:
        sweep_id = parse_uuid(request.sweep_id, "sweep_id")
        trial = request.trial
        violations = Violations()
        if not 0 <= trial.number < MAX_TRIALS:
            violations.add("trial.number", f"must be in [0, {MAX_TRIALS})")
        if trial.state not in TRIAL_STATES:
            violations.add("trial.state", f"must be one of {', '.join(sorted(TRIAL_STATES))}")
        run_ids: list[uuid.UUID] = []
        for index, raw in enumerate(trial.run_ids):
            try:
                run_ids.append(uuid.UUID(raw))
            except ValueError:
                violations.add(f"trial.run_ids[{index}]", "must be a UUID")
        body = user_struct(trial.body, "trial.body", violations)
        violations.raise_if_any()
        async with self.pool.connection() as conn, conn.transaction():
            state = await self._check_epoch(conn, sweep_id, request.lease_epoch)
            if state != "running":
                raise failed_precondition(f"sweep {sweep_id} has ended ({state})", reason="SWEEP_ENDED")
            await conn.execute(UPSERT_TRIAL, (sweep_id, trial.number, trial.state, Jsonb(body)))
            if run_ids:
                await conn.execute(TAG_RUNS, (sweep_id, trial.number, run_ids, sweep_id))
            await conn.execute(TOUCH_SWEEP, (sweep_id,))
        return pb.RecordTrialResponse()

    async def FinishSweep(
        self, request: pb.FinishSweepRequest, context: grpc.aio.ServicerContext
    ) -> pb.FinishSweepResponse:
        sweep_id = parse_uuid(request.sweep_id, "sweep_id")
        if request.state not in FINAL_SWEEP_STATES:
            raise bad_field("state", f"must be one of {', '.join(sorted(FINAL_SWEEP_STATES))}")
        violations = Violations()
        check_text(violations, "error_message", request.error_message)
        violations.raise_if_any()
        async with self.pool.connection() as conn, conn.transaction():
            state = await self._check_epoch(conn, sweep_id, request.lease_epoch)
            if state == "running":
                await conn.execute(FINISH_SWEEP, (request.state, request.error_message[:10_000], sweep_id))
            return pb.FinishSweepResponse(sweep=await self._fetch(conn, sweep_id))

    async def GetSweepRecord(
        self, request: pb.GetSweepRecordRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSweepRecordResponse:
        sweep_id = parse_uuid(request.sweep_id, "sweep_id")
        async with self.pool.connection() as conn:
            record = await self._fetch(conn, sweep_id)
            cursor = await conn.execute(TRIAL_RUN_IDS, (sweep_id,))
            tagged = {number: list(ids) for number, ids in await cursor.fetchall()}
            cursor = await conn.execute(SELECT_TRIALS, (sweep_id,))
            for number, state, body in await cursor.fetchall():
                record.trials.append(
                    pb.TrialRecord(
                        number=number, state=state, body=dict_to_struct(body), run_ids=tagged.get(number, [])
                    )
                )
        return pb.GetSweepRecordResponse(sweep=record)

    async def ListSweepRecords(
        self, request: pb.ListSweepRecordsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSweepRecordsResponse:
        if request.page_size < 0 or request.page_size > 100:
            raise bad_field("page_size", "must be in [0, 100] (0: 20)")
        size = request.page_size or 20
        # The registry's one page-token scheme; a token is bound to the algorithm it was listed for.
        scope = f"sweeps:{request.algorithm}"
        after_time, after_id = page_tokens.decode_time_key(scope, request.page_token) or (None, None)
        params = {
            "algorithm": request.algorithm or None,
            "after_time": after_time,
            "after_id": after_id,
            "limit": size + 1,
        }
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(LIST_SWEEPS, params)
            rows = await cursor.fetchall()
        more = len(rows) > size
        rows = rows[:size]
        return pb.ListSweepRecordsResponse(
            sweeps=[record_from_row(row) for row in rows],
            next_page_token=page_tokens.encode_time_key(scope, rows[-1]["created_at"], rows[-1]["sweep_id"])
            if more
            else "",
        )

    async def ListOrphanSweeps(
        self, request: pb.ListOrphanSweepsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListOrphanSweepsResponse:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(LIST_ORPHANS)
            rows = await cursor.fetchall()
        return pb.ListOrphanSweepsResponse(sweeps=[record_from_row(row) for row in rows])

    async def RequestSweepCancel(
        self, request: pb.RequestSweepCancelRequest, context: grpc.aio.ServicerContext
    ) -> pb.RequestSweepCancelResponse:
        """Records the cancel; a held sweep is stopped by its holder at its next renewal."""
        sweep_id = parse_uuid(request.sweep_id, "sweep_id")
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(REQUEST_CANCEL, (sweep_id,))
            return pb.RequestSweepCancelResponse(sweep=await self._fetch(conn, sweep_id))

    async def ListRunObservations(
        self, request: pb.ListRunObservationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRunObservationsResponse:
        violations = Violations()
        if (problem := algorithm_name_problem(request.algorithm)) is not None:
            violations.add("algorithm", problem)
        if not request.metric or len(request.metric) > 100:
            violations.add("metric", "is required, at most 100 characters")
        for name in ("best", "newest"):
            if not 0 <= getattr(request, name) <= MAX_OBSERVATIONS:
                violations.add(name, f"must be in [0, {MAX_OBSERVATIONS}]")
        for name in ("algorithm", "env_id", "metric"):
            check_text(violations, name, getattr(request, name))
        violations.raise_if_any()
        params = {
            "algorithm": request.algorithm,
            "env_id": request.env_id or None,
            "metric": request.metric,
            "minimize": request.minimize,
            "best": request.best,
            "newest": request.newest,
        }
        keys = list(request.param_keys)
        reply = pb.ListRunObservationsResponse()
        async with self.pool.connection() as conn:
            cursor = await conn.execute(RUN_OBSERVATIONS, params)
            for run_id, run_params, value, training_seconds, matching in await cursor.fetchall():
                reply.matching = matching
                observation = pb.RunObservation(run_id=run_id, value=value, training_seconds=training_seconds)
                for key in keys:
                    found = (run_params or {}).get(key)
                    if isinstance(found, int | float) and not isinstance(found, bool):
                        observation.params[key] = float(found)
                reply.observations.append(observation)
        return reply
