"""Registry process: migrations, the connection pool, both gRPC services, health tied to the database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import grpc
import psycopg
from psycopg_pool import AsyncConnectionPool

from registry_service import episodes
from registry_service.auth import AuthServicer
from registry_service.db import apply_migrations, open_pool
from registry_service.ingest import IngestServicer
from registry_service.queries import RegistryServicer
from registry_service.settings import RegistrySettings
from registry_service.watch import EventHub
from taxidriver.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from taxidriver.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
from taxidriver.server import RunningServer, ServiceBinding, create_server

log = logging.getLogger(__name__)

REGISTRY_SERVICE = registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
INGEST_SERVICE = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
AUTH_SERVICE = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name

# Runs whose trainer stopped heart-beating become INTERRUPTED, so ResumeRun can pick them up.
EXPIRE_LEASES = """
WITH expired AS (
    UPDATE training_runs SET status = 'interrupted', stop_reason = 'lease_expired', updated_at = now()
    WHERE status = 'running' AND lease_expires_at < now()
    RETURNING run_id
)
SELECT pg_notify('taxidriver_run_events', json_build_object('run_id', run_id, 'kind', 'status')::text)
FROM expired
"""


# While the registry (or its database) was away, trainers could not heartbeat: their
# leases must not count that time, or every running run would be declared INTERRUPTED
# the moment the registry came back. A dead trainer is still caught one lease later.
RENEW_LEASES = """
UPDATE training_runs SET lease_expires_at = now() + make_interval(secs => %s)
WHERE status = 'running' AND lease_expires_at IS NOT NULL
"""


@dataclass(kw_only=True)
class RegistryApp:
    settings: RegistrySettings
    running: RunningServer
    pool: AsyncConnectionPool
    hub: EventHub
    serving: bool = True
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.running.port

    async def _watch_database(self) -> None:
        """Cheap periodic probe: health follows the database without a restart."""
        interval = self.settings.health_interval
        while True:
            await asyncio.sleep(interval)
            healthy = True
            try:
                async with self.pool.connection(timeout=max(interval * 2, 2.0)) as conn:
                    if not self.serving:
                        await conn.execute(RENEW_LEASES, (self.settings.lease_seconds,))
                    await conn.execute(EXPIRE_LEASES)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                healthy = False
                if self.serving:
                    log.warning("database unreachable: %s", exc)
            if healthy != self.serving:
                self.serving = healthy
                await self.running.set_serving(healthy)
                log.info("health: %s", "SERVING" if healthy else "NOT_SERVING")

    async def stop(self, grace: float | None = None) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.running.server.stop(self.settings.shutdown_grace if grace is None else grace)
        await self.hub.stop()
        await self.pool.close()


async def start_registry(settings: RegistrySettings) -> RegistryApp:
    """Migrate, open the pool, serve. Fails fast if PostgreSQL is unreachable at start-up."""
    episodes.register(psycopg.adapters)
    applied = await apply_migrations(settings.database_url)
    if applied:
        log.info("migrations applied: %s", ", ".join(applied))
    pool = await open_pool(
        settings.database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        wait_seconds=settings.connect_timeout,
    )
    hub = EventHub(settings.database_url)
    hub.start()
    ingest = IngestServicer(pool, settings)
    queries = RegistryServicer(pool, settings, hub)

    def add_registry(server: grpc.aio.Server) -> None:
        registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(queries, server)

    def add_ingest(server: grpc.aio.Server) -> None:
        ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(ingest, server)

    def add_auth(server: grpc.aio.Server) -> None:
        auth_service_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(pool), server)

    try:
        running = await create_server(
            address=settings.address,
            services=[
                ServiceBinding(name=REGISTRY_SERVICE, register=add_registry),
                ServiceBinding(name=INGEST_SERVICE, register=add_ingest),
                ServiceBinding(name=AUTH_SERVICE, register=add_auth),
            ],
            internal_token=settings.internal_token,
        )
    except Exception:
        await hub.stop()
        await pool.close()
        raise
    async with pool.connection() as conn:
        await conn.execute(RENEW_LEASES, (settings.lease_seconds,))
    app = RegistryApp(settings=settings, running=running, pool=pool, hub=hub)
    app._tasks.append(asyncio.create_task(app._watch_database(), name="registry-db-health"))
    log.info("registry listening on port %d", running.port)
    return app
