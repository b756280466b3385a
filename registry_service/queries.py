"""RegistryService: the public query API over every recorded run (the seed's /database/* routes).

The servicer: it checks requests, runs the statements and builds the replies. The composed SQL of
the run queries is in run_sql, page tokens in page_tokens, CompareRuns' layout in compare, the
purge rule in retention.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import grpc
from psycopg import AsyncConnection, Error, errors
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from registry_service import episodes, page_tokens, run_sql
from registry_service.artifacts import collect_upload, list_artifacts, split_chunks, store_artifact
from registry_service.compare import compare, compared_ids
from registry_service.convert import (
    ANNOTATION_COLUMNS,
    ARTIFACT_COLUMNS,
    MODEL_COLUMNS,
    annotation_from_row,
    artifact_from_row,
    check_text,
    curves_from_rows,
    model_from_row,
    run_from_row,
    timestamp,
    user_struct,
)
from registry_service.db import EVENTS_CHANNEL
from registry_service.filters import (
    Compiled,
    Ordering,
    compile_filter,
    decode_page_token,
    encode_page_token,
    parse_order_by,
)
from registry_service.plot_rendering import PlotRenderer
from registry_service.retention import purge_runs
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
from taxidriver.vocabulary import algorithm_name_problem

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
BEST_ORDER = "test_metrics.success_rate desc, test_metrics.avg_steps asc"
MAX_ANNOTATION_CHARS = 10_000
MAX_TAGS = 32
TAG = re.compile(r"^[a-z0-9_-]{1,64}$")


# Statements with fixed text; the composed ones (filters, orderings) are in run_sql.
MODEL_LISTING = f"""
SELECT {MODEL_COLUMNS} FROM saved_models WHERE (%(run_id)s::uuid IS NULL OR run_id = %(run_id)s::uuid)
AND (%(after_time)s::timestamptz IS NULL
     OR (created_at, model_id) > (%(after_time)s::timestamptz, %(after_id)s::uuid))
ORDER BY created_at, model_id LIMIT %(limit)s
"""
MODEL_ROW = """
SELECT m.model_id, m.run_id, m.model_name, m.model_path, m.model_size, m.model_metadata, m.created_at, m.imported_by
FROM saved_models m JOIN artifacts a USING (artifact_id) WHERE m.model_id = %s
"""
MODEL_ROW_WITH_DATA = """
SELECT m.model_id, m.run_id, m.model_name, m.model_path, m.model_size, m.model_metadata, m.created_at, m.imported_by,
       a.data
FROM saved_models m JOIN artifacts a USING (artifact_id) WHERE m.model_id = %s
"""
SET_IMPORTER = f"UPDATE saved_models SET imported_by = %s WHERE model_id = %s RETURNING {MODEL_COLUMNS}"
ANNOTATION_LISTING = f"""
SELECT {ANNOTATION_COLUMNS} FROM run_annotations WHERE run_id = %(run_id)s
AND (%(after_time)s::timestamptz IS NULL
     OR (created_at, annotation_id) > (%(after_time)s::timestamptz, %(after_id)s::uuid))
ORDER BY created_at, annotation_id LIMIT %(limit)s
"""
ARTIFACT_WITH_DATA = f"SELECT {ARTIFACT_COLUMNS}, data FROM artifacts WHERE artifact_id = %s"
RUN_EXISTS = "SELECT 1 FROM training_runs WHERE run_id = %s"


def page_size(value: int, field_name: str = "page_size", default: int = DEFAULT_PAGE_SIZE) -> int:
    """AIP-158: negative is an error, zero means the default, above the maximum is clamped."""
    if value < 0:
        raise bad_field(field_name, "must be >= 0")
    return min(value or default, MAX_PAGE_SIZE)


def _number(value: Any) -> float:
    return float(value) if value is not None else 0.0


def wants_curves(view: int) -> bool:
    """RunView of a request; UNSPECIFIED is SUMMARY (documented), an unknown number is refused."""
    if view not in (resources_pb2.RUN_VIEW_UNSPECIFIED, resources_pb2.RUN_VIEW_SUMMARY, resources_pb2.RUN_VIEW_FULL):
        raise bad_field("view", f"unknown run view {view}: RUN_VIEW_SUMMARY or RUN_VIEW_FULL")
    return view == resources_pb2.RUN_VIEW_FULL


@asynccontextmanager
async def reading(pool: AsyncConnectionPool) -> AsyncIterator[AsyncConnection[Any]]:
    """A pooled connection for a query RPC's reads, in autocommit.

    A pool connection opens a transaction at its first statement and the pool commits it when the
    connection comes back: two round trips (BEGIN, COMMIT) around the reads. In autocommit a
    pipeline sends every statement of the RPC and reads every answer in one round trip; each
    statement reads its own snapshot (a page and its total_size, or statistics by algorithm and
    by day, may see a run completed between the two).
    """
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            yield conn
        finally:
            with suppress(Error):  # a broken connection: the pool discards it
                await conn.set_autocommit(False)


class RegistryServicer(registry_service_pb2_grpc.RegistryServiceServicer):
    def __init__(self, pool: AsyncConnectionPool, settings: RegistrySettings, hub: Any = None) -> None:
        self.pool = pool
        self.settings = settings
        self.hub = hub
        self.plots = PlotRenderer(pool)

    # ------------------------------------------------------------------ runs

    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.GetRunResponse:
        full = wants_curves(request.view)
        run_id = parse_uuid(request.run_id, "run_id")
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(run_sql.RUN_BY_ID, (run_id,))
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
        filtered: bool = False,
        skip: int = 0,
    ) -> tuple[list[resources_pb2.Run], str, int]:
        """One keyset page of runs; the token is bound to `scope` + `binding_text` + ordering."""
        after = decode_page_token(token, scope, binding_text, ordering)
        statement = run_sql.page(where, after, ordering, limit=size + 1, skip=skip, filtered=filtered)
        counting = run_sql.count_statements(where, binding_text) if count else []
        async with reading(self.pool) as conn:
            cursor = conn.cursor(row_factory=dict_row)
            answers = [conn.cursor() for _ in counting]
            try:
                # One round trip for the page and what total_size is decided from.
                async with conn.pipeline():
                    await cursor.execute(statement.query, statement.params)
                    for answer, counted in zip(answers, counting, strict=True):
                        await answer.execute(counted.query, counted.params)
                rows = await cursor.fetchall()
            except errors.DataError as exc:
                # e.g. a seed-style ::FLOAT cast over a hand-written non-numeric value.
                raise bad_field(
                    where_field, f"cannot be evaluated on the stored data: {exc.diag.message_primary}"
                ) from None
            runs = [run_from_row(row) for row in rows[:size]]
            if full:
                runs = await self._with_curves(conn, runs)
            # A page cut short by its byte budget continues after its last run, like a full one.
            more = len(rows) > len(runs)
            total = 0
            if count:
                total = await run_sql.total_size(
                    conn,
                    where,
                    binding_text,
                    [((await answer.fetchone()) or (None,))[0] for answer in answers],
                    whole=not token and not more,
                    shown=len(runs),
                    exact_limit=self.settings.exact_count_limit,
                )
        next_token = encode_page_token(scope, binding_text, ordering, rows[len(runs) - 1]) if more else ""
        return runs, next_token, total

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
            filtered=bool(request.filter.strip()),
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
        runs, _, _ = await self._page(
            scope="best",
            where=run_sql.best_runs_where(extra, request.algorithm),
            binding_text=request.filter,
            filtered=bool(request.filter.strip()),
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
        by_algorithm, by_day = run_sql.statistics(where, request.filter)
        async with reading(self.pool) as conn:
            algorithms_cursor = conn.cursor(row_factory=dict_row)
            days_cursor = conn.cursor(row_factory=dict_row)
            async with conn.pipeline():  # both statements in one round trip
                await algorithms_cursor.execute(by_algorithm.query, by_algorithm.params)
                await days_cursor.execute(by_day.query, by_day.params)
            algorithms = await algorithms_cursor.fetchall()
            days = await days_cursor.fetchall()
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
        runs, token, _ = await self._page(
            scope="search",
            where=run_sql.search_where(wanted),
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
        ids = compared_ids(request.run_ids)
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(run_sql.RUNS_BY_IDS, (ids,))
            found = {row["run_id"]: run_from_row(row) for row in await cursor.fetchall()}
        for run_id in ids:
            if run_id not in found:
                raise not_found("run", str(run_id))
        return compare([found[run_id] for run_id in ids])

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
        after_time, after_id = page_tokens.decode_time_key(scope, request.page_token) or (None, None)
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(RUN_EXISTS, (run_id,))
            if await cursor.fetchone() is None:
                raise not_found("run", str(run_id))
            await cursor.execute(
                ANNOTATION_LISTING,
                {"run_id": run_id, "after_time": after_time, "after_id": after_id, "limit": size + 1},
            )
            rows = await cursor.fetchall()
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            token = page_tokens.encode_time_key(scope, last["created_at"], last["annotation_id"])
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
        after_time, after_id = page_tokens.decode_time_key(scope, request.page_token) or (None, None)
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                MODEL_LISTING, {"run_id": run_id, "after_time": after_time, "after_id": after_id, "limit": size + 1}
            )
            rows = await cursor.fetchall()
        token = ""
        if len(rows) > size:
            token = page_tokens.encode_time_key(scope, rows[size - 1]["created_at"], rows[size - 1]["model_id"])
        return pb.ListModelsResponse(models=[model_from_row(r) for r in rows[:size]], next_page_token=token)

    async def _model_row(self, conn: AsyncConnection[Any], model_id: uuid.UUID, with_data: bool) -> dict[str, Any]:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(MODEL_ROW_WITH_DATA if with_data else MODEL_ROW, (model_id,))
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
                await models.execute(SET_IMPORTER, (importer, model_row["model_id"]))
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
        return await list_artifacts(self.pool, request, self.plots.ensure)

    async def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DownloadArtifactResponse]:
        artifact_id = parse_uuid(request.artifact_id, "artifact_id")
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(ARTIFACT_WITH_DATA, (artifact_id,))
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
