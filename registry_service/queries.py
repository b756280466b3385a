"""RegistryService: the public query API over every recorded run (the seed's /database/* routes)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc
from psycopg import AsyncConnection, errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from registry_service import episodes
from registry_service.artifacts import collect_upload, list_artifacts, split_chunks, store_artifact
from registry_service.convert import (
    ANNOTATION_COLUMNS,
    ARTIFACT_COLUMNS,
    METRIC_GROUPS,
    MODEL_COLUMNS,
    RUN_COLUMNS,
    annotation_from_row,
    artifact_from_row,
    check_text,
    curves_from_rows,
    model_from_row,
    run_from_row,
    struct_to_dict,
    timestamp,
    user_struct,
    value_to_proto,
)
from registry_service.db import EVENTS_CHANNEL
from registry_service.filters import (
    Compiled,
    Ordering,
    compile_filter,
    decode_page_token,
    encode_page_token,
    filter_fields,
    load_token,
    parse_order_by,
)
from registry_service.grouping import param_groups
from registry_service.settings import RegistrySettings
from taxidriver.access import caller_name, caller_of
from taxidriver.errors import (
    FieldViolation,
    ServiceError,
    Violations,
    bad_field,
    not_found,
    parse_uuid,
    request_id_reused,
)
from taxidriver.registry.v1 import registry_service_pb2 as pb
from taxidriver.registry.v1 import registry_service_pb2_grpc, resources_pb2
from taxidriver.vocabulary import HIGHER, algorithm_name_problem, is_outcome, metric_direction

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
BEST_ORDER = "test_metrics.success_rate desc, test_metrics.avg_steps asc"
MAX_ANNOTATION_CHARS = 10_000
# The keys of the seed's /database/runs/search/params, indexed together (migration 0015).
SEED_SEARCH_KEYS = ("alpha", "gamma", "training_runs")
MAX_TAGS = 32
TAG = re.compile(r"^[a-z0-9_-]{1,64}$")


# Filtered statistics: aggregated over the matching runs, reading the generated metric columns.
STATISTICS_BY_ALGORITHM = """
WITH runs AS MATERIALIZED (
    SELECT r.run_id, r.algorithm, r.status, r.success_rate, r.avg_steps, r.avg_reward, r.execution_time
    FROM training_runs r WHERE {where}
),
ranked AS (
    SELECT DISTINCT ON (algorithm) algorithm, run_id, success_rate AS best_success
    FROM runs WHERE status = 'completed' AND success_rate IS NOT NULL
    ORDER BY algorithm, success_rate DESC, avg_steps ASC NULLS LAST, run_id
),
totals AS (
    SELECT algorithm,
           count(*) AS total_runs,
           count(*) FILTER (WHERE status = 'completed') AS completed_runs,
           avg(success_rate) FILTER (WHERE status = 'completed') AS avg_success_rate,
           avg(avg_steps) FILTER (WHERE status = 'completed') AS avg_steps,
           avg(avg_reward) FILTER (WHERE status = 'completed') AS avg_reward,
           min(avg_steps) FILTER (WHERE status = 'completed') AS best_avg_steps,
           avg(execution_time) FILTER (WHERE status = 'completed') AS avg_execution_time
    FROM runs GROUP BY algorithm
)
SELECT totals.*, ranked.best_success AS best_success_rate, ranked.run_id::text AS best_run_id
FROM totals LEFT JOIN ranked USING (algorithm)
ORDER BY algorithm
"""

STATISTICS_BY_DAY = """
SELECT date_trunc('day', r.created_at AT TIME ZONE 'UTC') AS day,
       count(*) AS runs,
       avg(r.success_rate) AS avg_success_rate,
       avg(r.avg_steps) AS avg_steps
FROM training_runs r WHERE {where}
GROUP BY 1 ORDER BY 1
"""

# Statistics unfiltered or filtered by algorithm and status only: the trigger-maintained
# run_statistics sums (it has both columns, so the compiled filter reads them as `r.`), plus one
# index probe per algorithm for its best run; a few hundred rows read whatever the number of runs.
SUMMARY_FIELDS = frozenset({"algorithm", "status"})

ALL_STATISTICS_BY_ALGORITHM = """
WITH totals AS (
    SELECT algorithm,
           sum(runs)::bigint AS total_runs,
           coalesce(sum(runs) FILTER (WHERE status = 'completed'), 0)::bigint AS completed_runs,
           sum(success_sum) FILTER (WHERE status = 'completed')
               / nullif(sum(success_count) FILTER (WHERE status = 'completed'), 0) AS avg_success_rate,
           sum(steps_sum) FILTER (WHERE status = 'completed')
               / nullif(sum(steps_count) FILTER (WHERE status = 'completed'), 0) AS avg_steps,
           sum(reward_sum) FILTER (WHERE status = 'completed')
               / nullif(sum(reward_count) FILTER (WHERE status = 'completed'), 0) AS avg_reward,
           sum(execution_sum) FILTER (WHERE status = 'completed')
               / nullif(sum(execution_count) FILTER (WHERE status = 'completed'), 0) AS avg_execution_time
    FROM run_statistics r WHERE {where} GROUP BY algorithm HAVING sum(runs) > 0
)
SELECT totals.*, best.success_rate AS best_success_rate, best.run_id::text AS best_run_id,
       (SELECT min(r.avg_steps) FROM training_runs r
        WHERE r.status = 'completed' AND r.algorithm = totals.algorithm AND {where}) AS best_avg_steps
FROM totals
LEFT JOIN LATERAL (
    SELECT r.run_id, r.success_rate FROM training_runs r
    WHERE r.status = 'completed' AND r.algorithm = totals.algorithm AND r.success_rate IS NOT NULL AND {where}
    ORDER BY r.success_rate DESC NULLS LAST, r.avg_steps ASC NULLS LAST, r.run_id ASC
    LIMIT 1
) best ON true
ORDER BY algorithm
"""

ALL_STATISTICS_BY_DAY = """
SELECT day::timestamp AS day, sum(runs)::bigint AS runs,
       sum(success_sum) / nullif(sum(success_count), 0) AS avg_success_rate,
       sum(steps_sum) / nullif(sum(steps_count), 0) AS avg_steps
FROM run_statistics r WHERE {where} GROUP BY day HAVING sum(runs) > 0 ORDER BY day
"""

COUNT_SUMMARY = "SELECT coalesce(sum(runs), 0)::bigint FROM run_statistics r WHERE {where}"
# pg_class's row estimate (-1 before the first ANALYZE or VACUUM: a new table counts as small).
TABLE_ROWS_ESTIMATE = "SELECT reltuples FROM pg_class WHERE oid = 'training_runs'::regclass"


def page_size(value: int, field_name: str = "page_size", default: int = DEFAULT_PAGE_SIZE) -> int:
    """AIP-158: negative is an error, zero means the default, above the maximum is clamped."""
    if value < 0:
        raise bad_field(field_name, "must be >= 0")
    return min(value or default, MAX_PAGE_SIZE)


def _number(value: Any) -> float:
    return float(value) if value is not None else 0.0


async def _fetch_runs(conn: AsyncConnection[Any], ids: list[uuid.UUID]) -> dict[uuid.UUID, resources_pb2.Run]:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(f"SELECT {RUN_COLUMNS} FROM training_runs r WHERE r.run_id = ANY(%s)", (ids,))
    return {row["run_id"]: run_from_row(row) for row in await cursor.fetchall()}


class SimpleToken:
    """Keyset tokens over (created_at, id) for annotation and model listings."""

    @staticmethod
    def encode(scope: str, created_at: datetime, ident: uuid.UUID) -> str:
        payload = {"s": hashlib.sha256(scope.encode()).hexdigest()[:16], "t": created_at.isoformat(), "id": str(ident)}
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()

    @staticmethod
    def decode(scope: str, token: str) -> tuple[datetime, uuid.UUID] | None:
        if not token:
            return None
        try:
            payload = load_token(token)
            if payload["s"] != hashlib.sha256(scope.encode()).hexdigest()[:16]:
                raise ValueError("other listing")
            if not isinstance(payload["t"], str) or not isinstance(payload["id"], str):
                raise TypeError("forged token")
            moment = datetime.fromisoformat(payload["t"])
            if moment.tzinfo is None:
                raise ValueError("naive")
            return moment, uuid.UUID(payload["id"])
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError, binascii.Error, UnicodeDecodeError):
            raise bad_field("page_token", "is not a page token of this listing") from None


def wants_curves(view: int) -> bool:
    """RunView of a request; UNSPECIFIED is SUMMARY (documented), an unknown number is refused."""
    if view not in (resources_pb2.RUN_VIEW_UNSPECIFIED, resources_pb2.RUN_VIEW_SUMMARY, resources_pb2.RUN_VIEW_FULL):
        raise bad_field("view", f"unknown run view {view}: RUN_VIEW_SUMMARY or RUN_VIEW_FULL")
    return view == resources_pb2.RUN_VIEW_FULL


class RegistryServicer(registry_service_pb2_grpc.RegistryServiceServicer):
    def __init__(self, pool: AsyncConnectionPool, settings: RegistrySettings, hub: Any = None) -> None:
        self.pool = pool
        self.settings = settings
        self.hub = hub

    # ------------------------------------------------------------------ runs

    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.GetRunResponse:
        full = wants_curves(request.view)
        run_id = parse_uuid(request.run_id, "run_id")
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(f"SELECT {RUN_COLUMNS} FROM training_runs r WHERE r.run_id = %s", (run_id,))
            row = await cursor.fetchone()
            if row is None:
                raise not_found("run", str(run_id))
            run = run_from_row(row)
            if full:
                run.curves.CopyFrom(curves_from_rows(await episodes.read_chunks(conn, run_id)))
        return pb.GetRunResponse(run=run)

    async def _page(
        self,
        *,
        scope: str,
        where: Compiled,
        binding_text: str,
        ordering: Ordering,
        token: str,
        size: int,
        full: bool,
        count: bool,
        where_field: str = "filter",
        skip: int = 0,
    ) -> tuple[list[resources_pb2.Run], str, int]:
        """One keyset page of runs; the token is bound to `scope` + `binding_text` + ordering."""
        after = decode_page_token(token, scope, binding_text, ordering) or Compiled("TRUE")
        select = ordering.select_sql()
        order = ordering.order_sql()
        query = (
            f"SELECT {RUN_COLUMNS}, {select.sql} FROM training_runs r"
            f" WHERE ({where.sql}) AND ({after.sql}) ORDER BY {order.sql} LIMIT %s OFFSET %s"
        )
        params = [*select.params, *where.params, *after.params, *order.params, size + 1, skip]
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            try:
                await cursor.execute(query, params)
            except errors.DataError as exc:
                # e.g. a seed-style ::FLOAT cast over a hand-written non-numeric value.
                raise bad_field(
                    where_field, f"cannot be evaluated on the stored data: {exc.diag.message_primary}"
                ) from None
            rows = await cursor.fetchall()
            runs = [run_from_row(row) for row in rows[:size]]
            if full:
                runs = await self._with_curves(conn, runs)
            # A page cut short by its byte budget continues after its last run, like a full one.
            more = len(rows) > len(runs)
            total = 0
            if count:
                total = await self._total_size(conn, where, binding_text, whole=not token and not more, shown=len(runs))
        next_token = encode_page_token(scope, binding_text, ordering, rows[len(runs) - 1]) if more else ""
        return runs, next_token, total

    async def _total_size(
        self, conn: AsyncConnection[Any], where: Compiled, filter_text: str, *, whole: bool, shown: int
    ) -> int:
        """ListRuns' total_size (AIP-158 lets it be an estimate; README "total_size" says when it is).

        Exact when the filter reads only algorithm and status (the run_statistics sums), when the
        first page holds every match, or while the table is small; otherwise PostgreSQL's estimate
        of the matching rows, one planning step instead of counting tens of thousands of rows.
        """
        if filter_fields(filter_text) <= SUMMARY_FIELDS:
            counted = await (await conn.execute(COUNT_SUMMARY.replace("{where}", where.sql), where.params)).fetchone()
            return int(counted[0]) if counted else 0
        if whole:
            return shown
        size = await (await conn.execute(TABLE_ROWS_ESTIMATE)).fetchone()
        if size is None or size[0] <= self.settings.exact_count_limit:
            counted = await (
                await conn.execute(f"SELECT count(*) FROM training_runs r WHERE {where.sql}", where.params)
            ).fetchone()
            return int(counted[0]) if counted else 0
        plan = await (
            await conn.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM training_runs r WHERE {where.sql}", where.params)
        ).fetchone()
        return round(plan[0][0]["Plan"]["Plan Rows"]) if plan else 0

    async def _with_curves(self, conn: AsyncConnection[Any], runs: list[resources_pb2.Run]) -> list[resources_pb2.Run]:
        """Runs with their curves, as many as fit the page's byte budget (at least one).

        Curves are ~15 bytes per episode: two 1,000,000-episode runs already exceed the
        16 MiB message limit, so a FULL page is bounded by size as well as count.
        """
        budget = self.settings.max_page_bytes
        kept: list[resources_pb2.Run] = []
        used = 0
        for run in runs:
            chunks = await episodes.read_chunks(conn, uuid.UUID(run.run_id))
            run.curves.CopyFrom(curves_from_rows(chunks))
            size = run.ByteSize() + 8  # + field tag and length prefix
            if kept and used + size > budget:
                break
            kept.append(run)
            used += size
        return kept

    async def ListRuns(self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext) -> pb.ListRunsResponse:
        if request.skip < 0:
            raise bad_field("skip", "must be >= 0")
        full = wants_curves(request.view)
        size = page_size(request.page_size)
        where = compile_filter(request.filter)
        ordering = parse_order_by(request.order_by)
        runs, token, total = await self._page(
            scope="runs",
            where=where,
            binding_text=request.filter,
            ordering=ordering,
            token=request.page_token,
            size=size,
            full=full,
            count=True,
            skip=request.skip,
        )
        return pb.ListRunsResponse(runs=runs, next_page_token=token, total_size=total)

    async def ListBestRuns(
        self, request: pb.ListBestRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListBestRunsResponse:
        violations = Violations()
        if request.algorithm and (problem := algorithm_name_problem(request.algorithm)) is not None:
            violations.add("algorithm", problem)
        if request.limit < 0:
            violations.add("limit", "must be >= 0")
        violations.raise_if_any()
        size = page_size(request.limit, "limit", default=10)
        extra = compile_filter(request.filter)
        ordering = parse_order_by(request.order_by, default=BEST_ORDER)
        parts = ["r.status = 'completed'", f"({extra.sql})"]
        params = list(extra.params)
        if request.algorithm:
            parts.append("r.algorithm = %s")
            params.append(request.algorithm)
        runs, _, _ = await self._page(
            scope="best",
            where=Compiled(" AND ".join(parts), params),
            binding_text=request.filter,
            ordering=ordering,
            token="",
            size=size,
            full=False,
            count=False,
        )
        return pb.ListBestRunsResponse(runs=runs)

    async def GetStatistics(
        self, request: pb.GetStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatisticsResponse:
        where = compile_filter(request.filter)
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            if filter_fields(request.filter) <= SUMMARY_FIELDS:
                # The placeholder appears three times in the per-algorithm statement.
                await cursor.execute(ALL_STATISTICS_BY_ALGORITHM.replace("{where}", where.sql), where.params * 3)
                algorithms = await cursor.fetchall()
                await cursor.execute(ALL_STATISTICS_BY_DAY.replace("{where}", where.sql), where.params)
                days = await cursor.fetchall()
            else:
                await cursor.execute(STATISTICS_BY_ALGORITHM.replace("{where}", where.sql), where.params)
                algorithms = await cursor.fetchall()
                await cursor.execute(STATISTICS_BY_DAY.replace("{where}", where.sql), where.params)
                days = await cursor.fetchall()
        response = pb.GetStatisticsResponse(
            total_runs=sum(a["total_runs"] for a in algorithms),
            completed_runs=sum(a["completed_runs"] for a in algorithms),
        )
        for row in algorithms:
            response.algorithms.append(
                pb.AlgorithmStatistics(
                    algorithm=row["algorithm"],
                    total_runs=row["total_runs"],
                    completed_runs=row["completed_runs"],
                    avg_success_rate=_number(row["avg_success_rate"]),
                    avg_steps=_number(row["avg_steps"]),
                    avg_reward=_number(row["avg_reward"]),
                    best_success_rate=_number(row["best_success_rate"]),
                    best_avg_steps=_number(row["best_avg_steps"]),
                    best_run_id=row["best_run_id"] or "",
                    avg_execution_time=_number(row["avg_execution_time"]),
                )
            )
        for row in days:
            day = row["day"].replace(tzinfo=None)
            response.daily.append(
                pb.DailyStatistics(
                    day=timestamp(day),
                    runs=row["runs"],
                    avg_success_rate=_number(row["avg_success_rate"]),
                    avg_steps=_number(row["avg_steps"]),
                )
            )
        return response

    async def SearchRunsByParams(
        self, request: pb.SearchRunsByParamsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchRunsByParamsResponse:
        wanted = user_struct(request.params, "params")
        if not wanted:
            raise bad_field("params", "give at least one parameter to match")
        size = page_size(request.page_size)
        binding = json.dumps(wanted, sort_keys=True)
        where = Compiled("r.params @> %s", [Jsonb(wanted)])
        if wanted.keys() <= set(SEED_SEARCH_KEYS) and all(_is_scalar(v) for v in wanted.values()):
            # The seed's search: containment of scalars is equality of each key (numbers compare
            # numerically in both; a nested or missing value matches neither), and equalities walk
            # training_runs_seed_params newest first (0.4 ms instead of 48 ms at 100k runs, when
            # containment read ~3,800 runs per page). Both forms at once misled the planner.
            where = Compiled(
                " AND ".join(f"r.params -> '{key}' = %s" for key in wanted),  # keys from SEED_SEARCH_KEYS
                [Jsonb(value) for value in wanted.values()],
            )
        runs, token, _ = await self._page(
            scope="search",
            where=where,
            binding_text=binding,
            ordering=parse_order_by(""),
            token=request.page_token,
            size=size,
            full=False,
            count=False,
            where_field="params",
        )
        return pb.SearchRunsByParamsResponse(runs=runs, next_page_token=token)

    async def CompareRuns(
        self, request: pb.CompareRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompareRunsResponse:
        if not 2 <= len(request.run_ids) <= 20:
            raise bad_field("run_ids", "compare two to twenty runs")
        violations = Violations()
        parsed = [violations.uuid(text, f"run_ids[{index}]") for index, text in enumerate(request.run_ids)]
        violations.raise_if_any()
        ids = [run_id for run_id in parsed if run_id is not None]
        if len(set(ids)) != len(ids):
            raise bad_field("run_ids", "each run may appear once")
        async with self.pool.connection() as conn:
            found = await _fetch_runs(conn, ids)
        for run_id in ids:
            if run_id not in found:
                raise not_found("run", str(run_id))
        runs = [found[run_id] for run_id in ids]
        response = pb.CompareRunsResponse(runs=runs)
        params = [struct_to_dict(run.params) for run in runs]
        for key in sorted({k for p in params for k in p}):
            values = [p.get(key) for p in params]
            if any(v != values[0] for v in values[1:]):
                response.param_differences.append(
                    pb.ParamDifference(key=key, values=[value_to_proto(v) for v in values])
                )
        metric_values: dict[str, list[Any]] = {}
        groups = [{g: struct_to_dict(getattr(run, g)) for g in METRIC_GROUPS} for run in runs]
        for group in METRIC_GROUPS:
            keys = sorted({k for g in groups for k, v in g[group].items() if _is_number(v)})
            for key in keys:
                metric_values[f"{group}.{key}"] = [g[group].get(key) for g in groups]
        metric_values["execution_time"] = [run.execution_time for run in runs]
        for metric, values in metric_values.items():
            response.metrics.append(_comparison(metric, values, runs))
        response.param_groups.extend(param_groups(runs))
        return response

    # ------------------------------------------------------------------ annotations

    async def CreateAnnotation(
        self, request: pb.CreateAnnotationRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateAnnotationResponse:
        violations = Violations()
        run_id: uuid.UUID | None = None
        try:
            run_id = parse_uuid(request.run_id, "run_id")
        except Exception:  # noqa: BLE001 - collected with the other violations
            violations.add("run_id", "must be a UUID")
        if not request.annotation.strip():
            violations.add("annotation", "is required")
        if len(request.annotation) > MAX_ANNOTATION_CHARS:
            violations.add("annotation", f"at most {MAX_ANNOTATION_CHARS} characters")
        if len(request.tags) > MAX_TAGS:
            violations.add("tags", f"at most {MAX_TAGS} tags")
        for index, tag in enumerate(request.tags):
            if not TAG.match(tag):
                violations.add(f"tags[{index}]", "lower-case [a-z0-9_-], 1 to 64 characters")
        if len(request.request_id) > 200:
            violations.add("request_id", "at most 200 characters")
        check_text(violations, "annotation", request.annotation)
        check_text(violations, "request_id", request.request_id)
        violations.raise_if_any()
        assert run_id is not None
        tags = list(dict.fromkeys(request.tags))
        request_id = request.request_id or None
        async with self.pool.connection() as conn, conn.transaction():
            cursor = conn.cursor(row_factory=dict_row)
            if request_id is not None:
                await cursor.execute(FIND_ANNOTATION, (request_id,))
                existing = await cursor.fetchone()
                if existing is not None:
                    return _annotation_retry(existing, run_id, request.annotation, tags)
            # NO KEY UPDATE, not SHARE: the insert's trigger updates the run's tags column, and two
            # annotations holding SHARE locks on one run would deadlock upgrading them.
            await cursor.execute("SELECT 1 FROM training_runs WHERE run_id = %s FOR NO KEY UPDATE", (run_id,))
            if await cursor.fetchone() is None:
                raise not_found("run", str(run_id))
            # Concurrent first tries of one request_id: one inserts, the others wait for it and read it.
            await cursor.execute(
                INSERT_ANNOTATION, (uuid.uuid4(), run_id, request.annotation, tags, request_id, caller_name(context))
            )
            row = await cursor.fetchone()
            if row is None:
                await cursor.execute(FIND_ANNOTATION, (request_id,))
                existing = await cursor.fetchone()
                assert existing is not None  # the conflicting row is committed: ON CONFLICT waited for it
                return _annotation_retry(existing, run_id, request.annotation, tags)
        return pb.CreateAnnotationResponse(annotation=annotation_from_row(row))

    async def ListAnnotations(
        self, request: pb.ListAnnotationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAnnotationsResponse:
        run_id = parse_uuid(request.run_id, "run_id")
        size = page_size(request.page_size)
        scope = f"annotations:{run_id}"
        after = SimpleToken.decode(scope, request.page_token)
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute("SELECT 1 FROM training_runs WHERE run_id = %s", (run_id,))
            if await cursor.fetchone() is None:
                raise not_found("run", str(run_id))
            await cursor.execute(
                f"SELECT {ANNOTATION_COLUMNS} FROM run_annotations WHERE run_id = %s"
                " AND (%s::timestamptz IS NULL OR (created_at, annotation_id) > (%s::timestamptz, %s::uuid))"
                " ORDER BY created_at, annotation_id LIMIT %s",
                (run_id, *(2 * [after[0] if after else None]), after[1] if after else None, size + 1),
            )
            rows = await cursor.fetchall()
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            token = SimpleToken.encode(scope, last["created_at"], last["annotation_id"])
        return pb.ListAnnotationsResponse(
            annotations=[annotation_from_row(r) for r in rows[:size]], next_page_token=token
        )

    # ------------------------------------------------------------------ deletion

    async def DeleteRun(self, request: pb.DeleteRunRequest, context: grpc.aio.ServicerContext) -> pb.DeleteRunResponse:
        run_id = parse_uuid(request.run_id, "run_id")
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                """
                SELECT
                    (SELECT coalesce(sum(episode_count), 0) FROM run_episodes WHERE run_id = r.run_id),
                    (SELECT count(*) FROM run_annotations WHERE run_id = r.run_id),
                    (SELECT count(*) FROM saved_models WHERE run_id = r.run_id),
                    (SELECT count(*) FROM artifacts WHERE run_id = r.run_id)
                FROM training_runs r WHERE r.run_id = %s FOR UPDATE
                """,
                (run_id,),
            )
            counts = await cursor.fetchone()
            if counts is None:
                raise not_found("run", str(run_id))
            # A live run is cancelled by its deletion: once the row is gone every write of its
            # trainer (heartbeat, episodes, status, artifacts) is NOT_FOUND, and the trainer
            # stops the run's worker at the first one (at most one heartbeat later) and writes
            # nothing more. Nothing can re-create the row: only RegisterRun inserts runs.
            await conn.execute("DELETE FROM training_runs WHERE run_id = %s", (run_id,))
            await conn.execute(
                "SELECT pg_notify(%s, %s)",
                (EVENTS_CHANNEL, json.dumps({"run_id": str(run_id), "kind": "deleted"})),
            )
        return pb.DeleteRunResponse(
            run_id=str(run_id),
            episodes_deleted=counts[0],
            annotations_deleted=counts[1],
            models_deleted=counts[2],
            artifacts_deleted=counts[3],
        )

    async def PurgeRuns(self, request: pb.PurgeRunsRequest, context: grpc.aio.ServicerContext) -> pb.PurgeRunsResponse:
        if not 1 <= request.older_than_days <= 36_500:
            # Above ~100 years the cutoff leaves datetime's range (year < 1): INTERNAL before.
            raise bad_field("older_than_days", "must be between 1 and 36500")
        async with self.pool.connection() as conn:
            purged, cutoff = await purge_runs(conn, request.older_than_days, validate_only=request.validate_only)
        return pb.PurgeRunsResponse(purged_runs=purged, cutoff_time=timestamp(cutoff))

    # ------------------------------------------------------------------ models and artifacts

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        run_id = parse_uuid(request.run_id, "run_id") if request.run_id else None
        size = page_size(request.page_size)
        scope = f"models:{run_id or ''}"
        after = SimpleToken.decode(scope, request.page_token)
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                f"SELECT {MODEL_COLUMNS} FROM saved_models WHERE (%s::uuid IS NULL OR run_id = %s::uuid)"
                " AND (%s::timestamptz IS NULL OR (created_at, model_id) > (%s::timestamptz, %s::uuid))"
                " ORDER BY created_at, model_id LIMIT %s",
                (
                    run_id,
                    run_id,
                    *(2 * [after[0] if after else None]),
                    after[1] if after else None,
                    size + 1,
                ),
            )
            rows = await cursor.fetchall()
        token = ""
        if len(rows) > size:
            token = SimpleToken.encode(scope, rows[size - 1]["created_at"], rows[size - 1]["model_id"])
        return pb.ListModelsResponse(models=[model_from_row(r) for r in rows[:size]], next_page_token=token)

    async def _model_row(self, conn: AsyncConnection[Any], model_id: uuid.UUID, with_data: bool) -> dict[str, Any]:
        cursor = conn.cursor(row_factory=dict_row)
        columns = ", ".join(f"m.{c.strip()}" for c in MODEL_COLUMNS.split(","))
        data = ", a.data" if with_data else ""
        await cursor.execute(
            f"SELECT {columns}{data} FROM saved_models m JOIN artifacts a USING (artifact_id) WHERE m.model_id = %s",
            (model_id,),
        )
        row = await cursor.fetchone()
        if row is None:
            raise not_found("model", str(model_id))
        return row

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.GetModelResponse:
        model_id = parse_uuid(request.model_id, "model_id")
        async with self.pool.connection() as conn:
            row = await self._model_row(conn, model_id, with_data=False)
        return pb.GetModelResponse(model=model_from_row(row))

    async def ExportModel(
        self, request: pb.ExportModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportModelResponse]:
        model_id = parse_uuid(request.model_id, "model_id")
        async with self.pool.connection() as conn:
            row = await self._model_row(conn, model_id, with_data=True)
        model = model_from_row(row)
        for index, chunk in enumerate(split_chunks(bytes(row["data"]))):
            yield pb.ExportModelResponse(model=model if index == 0 else None, chunk=chunk)

    async def ImportModel(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> pb.ImportModelResponse:
        header, data = await collect_upload(request_iterator, "header", self.settings.max_artifact_bytes)
        if header is None:
            raise bad_field("header", "an import starts with a header")
        violations = Violations()
        # Empty: a model that belongs to no run.
        run_id = violations.uuid(header.run_id, "header.run_id") if header.run_id else None
        if not header.model_name or len(header.model_name) > 100:
            violations.add("header.model_name", "is required, at most 100 characters")
        if len(header.request_id) > 200:
            violations.add("header.request_id", "at most 200 characters")
        check_text(violations, "header.model_name", header.model_name)
        check_text(violations, "header.request_id", header.request_id)
        metadata = user_struct(header.model_metadata, "header.model_metadata", violations)
        if not data:
            violations.add("chunk", "a model needs at least one byte")
        violations.raise_if_any()
        request_id = header.request_id or None
        digest = hashlib.sha256(data).hexdigest()
        async with self.pool.connection() as conn, conn.transaction():
            if request_id is not None:
                retried = await self._imported(conn, request_id, run_id, header.model_name, metadata, digest)
                if retried is not None:
                    return retried
            if run_id is not None:
                cursor = await conn.execute("SELECT 1 FROM training_runs WHERE run_id = %s FOR SHARE", (run_id,))
                if await cursor.fetchone() is None:
                    raise not_found("run", str(run_id))
            stored = await store_artifact(
                conn,
                run_id=run_id,
                kind="model",
                name=header.model_name,
                content_type="application/x-npy",
                episode=0,
                metadata=metadata,
                data=data,
                request_id=request_id,
                replace=False,
            )
            if stored is None:
                # Taken meanwhile by a concurrent first try of this request_id, or the name is taken.
                if request_id is not None:
                    retried = await self._imported(conn, request_id, run_id, header.model_name, metadata, digest)
                    if retried is not None:
                        return retried
                raise ServiceError(
                    code=grpc.StatusCode.ALREADY_EXISTS,
                    message=f"run {run_id} already has a model named {header.model_name!r}; "
                    "imports never replace a model: choose another model_name",
                    reason="MODEL_NAME_TAKEN",
                    violations=[FieldViolation(field="header.model_name", description="already used on this run")],
                    metadata={"run_id": str(run_id), "model_name": header.model_name},
                )
            model_row = stored[1]
            assert model_row is not None
            importer = caller_name(context)
            if importer is not None:
                models = conn.cursor(row_factory=dict_row)
                await models.execute(
                    f"UPDATE saved_models SET imported_by = %s WHERE model_id = %s RETURNING {MODEL_COLUMNS}",
                    (importer, model_row["model_id"]),
                )
                model_row = await models.fetchone()
        assert model_row is not None
        return pb.ImportModelResponse(model=model_from_row(model_row))

    async def _imported(
        self,
        conn: AsyncConnection[Any],
        request_id: str,
        run_id: uuid.UUID | None,
        name: str,
        metadata: dict[str, Any],
        digest: str,
    ) -> pb.ImportModelResponse | None:
        """AIP-155 for imports: the first answer for a retry, an error for another request, None if new."""
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            "SELECT m.model_id, a.run_id, a.name, a.metadata, a.sha256 FROM saved_models m"
            " JOIN artifacts a USING (artifact_id) WHERE a.request_id = %s",
            (request_id,),
        )
        existing = await cursor.fetchone()
        if existing is None:
            return None
        same = (existing["run_id"], existing["name"], existing["metadata"], existing["sha256"]) == (
            run_id,
            name,
            metadata,
            digest,
        )
        if not same:
            raise request_id_reused("model", str(existing["model_id"]), "header.request_id")
        return pb.ImportModelResponse(model=model_from_row(await self._model_row(conn, existing["model_id"], False)))

    async def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListArtifactsResponse:
        return await list_artifacts(self.pool, request)

    async def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DownloadArtifactResponse]:
        artifact_id = parse_uuid(request.artifact_id, "artifact_id")
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                f"SELECT {ARTIFACT_COLUMNS}, data FROM artifacts WHERE artifact_id = %s", (artifact_id,)
            )
            row = await cursor.fetchone()
        if row is None:
            raise not_found("artifact", str(artifact_id))
        artifact = artifact_from_row(row)
        for index, chunk in enumerate(split_chunks(bytes(row["data"]))):
            yield pb.DownloadArtifactResponse(artifact=artifact if index == 0 else None, chunk=chunk)

    # ------------------------------------------------------------------ watching

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchRunResponse]:
        from registry_service.watch import watch_one

        run_id = parse_uuid(request.run_id, "run_id")
        if request.from_episode < 0:
            raise bad_field("from_episode", "must be >= 0")
        async for event in watch_one(self.pool, self.hub, run_id, request.from_episode, request.status_only):
            yield pb.WatchRunResponse(event=event)

    async def WatchRuns(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        from registry_service.watch import watch_many

        async for event in watch_many(self.pool, self.hub, request_iterator):
            yield pb.WatchRunsResponse(event=event)

    async def GetCurrentUser(
        self, request: pb.GetCurrentUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCurrentUserResponse:
        caller = caller_of(context)
        if caller is None:
            return pb.GetCurrentUserResponse()
        return pb.GetCurrentUserResponse(username=caller.username, role=caller.role)  # type: ignore[arg-type]


FIND_ANNOTATION = f"SELECT {ANNOTATION_COLUMNS} FROM run_annotations WHERE request_id = %s"
INSERT_ANNOTATION = f"""
INSERT INTO run_annotations (annotation_id, run_id, annotation, tags, request_id, author)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (request_id) DO NOTHING
RETURNING {ANNOTATION_COLUMNS}
"""


def _annotation_retry(
    existing: dict[str, Any], run_id: uuid.UUID, text: str, tags: list[str]
) -> pb.CreateAnnotationResponse:
    """AIP-155: a retry gets the first answer; the same request_id on another request is an error."""
    if existing["run_id"] != run_id or existing["annotation"] != text or list(existing["tags"]) != tags:
        raise request_id_reused("annotation", str(existing["annotation_id"]))
    return pb.CreateAnnotationResponse(annotation=annotation_from_row(existing))


def _is_scalar(value: Any) -> bool:
    """A JSON string, number or boolean (null and nested values keep the containment test)."""
    return isinstance(value, str | int | float | bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _comparison(metric: str, values: list[Any], runs: list[resources_pb2.Run]) -> pb.MetricComparison:
    """One metric side by side: a best run only for an outcome, and only when one run holds it alone."""
    direction = metric_direction(metric)
    comparison = pb.MetricComparison(
        metric=metric,
        values=[value_to_proto(v if _is_number(v) else None) for v in values],
        higher_is_better=direction == HIGHER,
        direction=direction,  # type: ignore[arg-type]
    )
    numbers = [(v, i) for i, v in enumerate(values) if _is_number(v)]
    if is_outcome(direction) and numbers:
        best = max(v for v, _ in numbers) if direction == HIGHER else min(v for v, _ in numbers)
        holders = [runs[i].run_id for v, i in numbers if v == best]
        if len(holders) == 1:
            comparison.best_run_id = holders[0]
        else:
            comparison.tied_run_ids.extend(holders)
    return comparison


# Live runs are never purged under a trainer - unless no trainer has renewed their lease
# since before the cutoff (the registry that should have expired them was not running):
# skipping those forever would keep them, and their episodes, for good.
PURGEABLE = """
created_at < now() - make_interval(days => %s)
AND (status NOT IN ('running', 'queued') OR COALESCE(lease_expires_at, updated_at) < now() - make_interval(days => %s))
"""
PURGE_COUNT = f"SELECT count(*), now() - make_interval(days => %s) FROM training_runs WHERE {PURGEABLE}"
PURGE_DELETE = f"""
WITH gone AS (
    DELETE FROM training_runs WHERE {PURGEABLE}
    RETURNING 1
)
SELECT count(*), now() - make_interval(days => %s) FROM gone
"""


async def purge_runs(conn: AsyncConnection[Any], older_than_days: int, *, validate_only: bool) -> tuple[int, datetime]:
    """The seed's 30-day cleanup; runs still queued or running are never purged under a live trainer."""
    days = older_than_days  # every placeholder of both statements is the number of days
    cursor = await conn.execute(PURGE_COUNT if validate_only else PURGE_DELETE, (days, days, days))
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0]), row[1]
