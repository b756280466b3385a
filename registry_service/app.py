"""Registry process: migrations, the connection pool, both gRPC services, health tied to the database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg
from psycopg_pool import AsyncConnectionPool

from registry_service import episodes
from registry_service.auth import AuthServicer
from registry_service.db import EVENTS_CHANNEL, apply_migrations, open_pool, wait_for_database
from registry_service.ingest import LIVE_LIST, IngestServicer
from registry_service.plot_rendering import PlotRenderer
from registry_service.queries import RegistryServicer
from registry_service.settings import RegistrySettings
from registry_service.sweeps import SweepStoreServicer
from registry_service.watch import EventHub
from taxidriver.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from taxidriver.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc, sweep_store_pb2, sweep_store_pb2_grpc
from taxidriver.metrics import set_pool_usage
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
from taxidriver.server import RunningServer, ServiceBinding, create_server

log = logging.getLogger(__name__)

REGISTRY_SERVICE = registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
INGEST_SERVICE = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
SWEEP_STORE_SERVICE = sweep_store_pb2.DESCRIPTOR.services_by_name["SweepStoreService"].full_name
AUTH_SERVICE = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name

# Live runs (queued or running) whose holder stopped heart-beating become INTERRUPTED, so
# ResumeRun can take them; one whose cancel was asked becomes CANCELLED (its epoch moves on,
# so a holder that comes back is refused). A run registered but never heart-beaten has no
# lease yet: it counts from its last update.
EXPIRE_LEASES = """
WITH expired AS (
    UPDATE training_runs SET
        status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'interrupted' END,
        stop_reason = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'lease_expired' END,
        lease_epoch = CASE WHEN cancel_requested THEN lease_epoch + 1 ELSE lease_epoch END,
        updated_at = now()
    WHERE status = ANY(%s)
      AND COALESCE(lease_expires_at, updated_at + make_interval(secs => %s)) < now()
    RETURNING run_id
)
SELECT pg_notify(%s, json_build_object('run_id', run_id, 'kind', 'status')::text)
FROM expired
"""


# While the registry was away (stopped, paused, cut off from its database, or its event
# loop starved), trainers could not heartbeat: their leases must not count that time, or
# every live run would be declared INTERRUPTED the moment the registry came back - and a
# second trainer could then take a run the first is still training. A dead trainer is
# still caught one lease after the registry is back.
RENEW_LEASES = """
UPDATE training_runs SET lease_expires_at = now() + make_interval(secs => %s)
WHERE status = ANY(%s)
"""

# After a gap of known length (a pause, a database outage, a starved event loop) live
# leases are pushed back by that length: they resume where they stood, so a trainer that
# was alive has its full margin again and a dead one still expires soon after.
EXTEND_LEASES = """
UPDATE training_runs SET
    lease_expires_at = COALESCE(lease_expires_at, updated_at + make_interval(secs => %s)) + make_interval(secs => %s)
WHERE status = ANY(%s)
"""

# A sweep that starts later than this after the end of the previous one (beyond its own
# interval) means the registry was not running in between: extend instead of expiring.
# It must stay well below a lease minus a heartbeat, or a pause shorter than the gap
# could still expire a live lease; a false alarm only delays expiries by the gap.
SWEEP_GAP_TOLERANCE_S = 0.5


@dataclass(kw_only=True)
class RegistryApp:
    settings: RegistrySettings
    running: RunningServer
    pool: AsyncConnectionPool
    hub: EventHub
    plots: PlotRenderer | None = None
    serving: bool = True
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.running.port

    async def _watch_database(self) -> None:
        """Cheap periodic probe: health follows the database without a restart; leases are swept.

        Leases expire only while this sweeper has been running continuously and connected:
        after any gap (failed probes, SIGSTOP/SIGCONT, a starved event loop) it pushes every
        live lease back by the gap instead (a restart renews them all at start-up). The gap
        is measured on the monotonic clock, which keeps counting while the process is stopped.
        """
        interval = self.settings.health_interval
        lease = self.settings.lease_seconds
        # The last instant this sweeper knows it was running with its leases up to date; any
        # time after it counts as a gap at the next sweep (start-up renewed every lease).
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            healthy = True
            try:
                async with self.pool.connection(timeout=max(interval * 2, 2.0)) as conn:
                    began = time.monotonic()
                    swept = None
                    if began - last_sweep <= interval + SWEEP_GAP_TOLERANCE_S:
                        swept = await self._expire_leases(conn, began)
                    if swept is None:
                        swept = time.monotonic()
                        gap = swept - last_sweep
                        await conn.execute(EXTEND_LEASES, (lease, gap, LIVE_LIST))
                        log.info("lease sweep: %.1fs since the last one; live leases extended by it", gap)
                last_sweep = swept
            except (psycopg.Error, OSError, TimeoutError) as exc:
                healthy = False
                if self.serving:
                    log.warning("database unreachable: %s", exc)
            stats = self.pool.get_stats()
            set_pool_usage(
                size=stats.get("pool_size", 0),
                in_use=stats.get("pool_size", 0) - stats.get("pool_available", 0),
                waiting=stats.get("requests_waiting", 0),
            )
            if healthy != self.serving:
                self.serving = healthy
                await self.running.set_serving(healthy)
                log.info("health: %s", "SERVING" if healthy else "NOT_SERVING")

    async def _expire_leases(self, conn: psycopg.AsyncConnection[Any], began: float) -> float | None:
        """Expires overdue leases; None (nothing changed) if the sweep itself was interrupted.

        The rows are chosen by the database's clock when the statement runs; the transaction
        commits only if this process did not stop between deciding to expire and the answer,
        so a pause that lands mid-sweep cannot expire leases it kept trainers from renewing.
        Returns the instant of that check: a pause after it is the next sweep's gap.
        """
        async with conn.transaction():
            await conn.execute(EXPIRE_LEASES, (LIVE_LIST, self.settings.lease_seconds, EVENTS_CHANNEL))
            checked = time.monotonic()
            if checked - began > SWEEP_GAP_TOLERANCE_S:
                raise psycopg.Rollback()
            return checked
        return None

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, background tasks stopped, in-flight calls drained, pool closed."""
        await self.running.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.running.server.stop(self.settings.shutdown_grace if grace is None else grace)
        await self.hub.stop()
        if self.plots is not None:
            self.plots.close()
        await self.pool.close()


async def start_registry(settings: RegistrySettings) -> RegistryApp:
    """Wait for PostgreSQL (up to REGISTRY_CONNECT_TIMEOUT), migrate, open the pool, serve."""
    episodes.register(psycopg.adapters)
    await wait_for_database(settings.database_url, wait_seconds=settings.connect_timeout)
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

    def add_sweeps(server: grpc.aio.Server) -> None:
        sweep_store_pb2_grpc.add_SweepStoreServiceServicer_to_server(SweepStoreServicer(pool), server)

    def add_auth(server: grpc.aio.Server) -> None:
        auth_service_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(pool), server)

    try:
        running = await create_server(
            address=settings.address,
            services=[
                ServiceBinding(name=REGISTRY_SERVICE, register=add_registry),
                ServiceBinding(name=INGEST_SERVICE, register=add_ingest),
                ServiceBinding(name=AUTH_SERVICE, register=add_auth),
                ServiceBinding(name=SWEEP_STORE_SERVICE, register=add_sweeps),
            ],
            internal_token=settings.internal_token,
        )
    except Exception:
        await hub.stop()
        await pool.close()
        raise
    async with pool.connection() as conn:
        await conn.execute(RENEW_LEASES, (settings.lease_seconds, LIVE_LIST))
    app = RegistryApp(settings=settings, running=running, pool=pool, hub=hub, plots=queries.plots)
    app._tasks.append(asyncio.create_task(app._watch_database(), name="registry-db-health"))
    log.info("registry listening on port %d", running.port)
    return app
