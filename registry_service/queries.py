"""RegistryService: the public query API over every recorded run (the seed's /database/* routes)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from registry_service import episodes
from registry_service.convert import RUN_COLUMNS, curves_from_rows, parse_uuid, run_from_row
from registry_service.settings import RegistrySettings
from taxidriver.errors import ServiceError, bad_field, not_found
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def unimplemented(method: str) -> ServiceError:
    return ServiceError(
        code=grpc.StatusCode.UNIMPLEMENTED,
        message=f"{method} is not built yet in this registry version",
        reason="NOT_BUILT",
    )


def page_size(value: int, field_name: str = "page_size") -> int:
    if value < 0:
        raise bad_field(field_name, "must be >= 0")
    if value > MAX_PAGE_SIZE:
        raise bad_field(field_name, f"must be at most {MAX_PAGE_SIZE}")
    return value or DEFAULT_PAGE_SIZE


class RegistryServicer(registry_service_pb2_grpc.RegistryServiceServicer):
    def __init__(self, pool: AsyncConnectionPool, settings: RegistrySettings, hub: Any = None) -> None:
        self.pool = pool
        self.settings = settings
        self.hub = hub

    async def GetRun(
        self, request: registry_service_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> registry_service_pb2.GetRunResponse:
        run_id = parse_uuid(request.run_id, "run_id")
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(f"SELECT {RUN_COLUMNS} FROM training_runs r WHERE r.run_id = %s", (run_id,))
            row = await cursor.fetchone()
            if row is None:
                raise not_found("run", str(run_id))
            run = run_from_row(row)
            if request.view == resources_pb2.RUN_VIEW_FULL:
                run.curves.CopyFrom(curves_from_rows(await episodes.read_chunks(conn, run_id)))
        return registry_service_pb2.GetRunResponse(run=run)

    async def ListRuns(
        self, request: registry_service_pb2.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> registry_service_pb2.ListRunsResponse:
        size = page_size(request.page_size)
        if request.filter or request.order_by or request.page_token:
            raise unimplemented("ListRuns filter/order_by/page_token")
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                f"SELECT {RUN_COLUMNS} FROM training_runs r ORDER BY r.created_at DESC, r.run_id DESC LIMIT %s",
                (size,),
            )
            rows = await cursor.fetchall()
            total = await (await conn.execute("SELECT count(*) FROM training_runs")).fetchone()
        return registry_service_pb2.ListRunsResponse(
            runs=[run_from_row(r) for r in rows], total_size=total[0] if total else 0
        )

    async def ListBestRuns(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise unimplemented("ListBestRuns")

    async def GetStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise unimplemented("GetStatistics")

    async def SearchRunsByParams(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise unimplemented("SearchRunsByParams")

    async def CompareRuns(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise unimplemented("CompareRuns")

    async def CreateAnnotation(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise unimplemented("CreateAnnotation")

    async def ListAnnotations(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise unimplemented("ListAnnotations")

    async def DeleteRun(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise unimplemented("DeleteRun")

    async def PurgeRuns(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise unimplemented("PurgeRuns")

    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise unimplemented("ListModels")

    async def GetModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise unimplemented("GetModel")

    async def ExportModel(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        raise unimplemented("ExportModel")
        yield  # pragma: no cover

    async def ImportModel(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        raise unimplemented("ImportModel")

    async def ListArtifacts(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise unimplemented("ListArtifacts")

    async def DownloadArtifact(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        raise unimplemented("DownloadArtifact")
        yield  # pragma: no cover

    async def WatchRun(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        raise unimplemented("WatchRun")
        yield  # pragma: no cover

    async def WatchRuns(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        raise unimplemented("WatchRuns")
        yield  # pragma: no cover
