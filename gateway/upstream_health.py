"""Mirrors each upstream's health into the gateway's own health service.

A public service is SERVING at the gateway while at least one of its targets
reports SERVING for it; the gateway's overall status ("") is its own liveness
and stays SERVING while it runs, so an upstream outage does not get the
gateway itself restarted. Each target is watched with Health.Watch and
re-watched with a capped backoff when it is unreachable.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.forwarding import Upstream, cancel_quietly
from taxidriver.retry import Backoff, Delays

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthMirror:
    def __init__(
        self, servicer: health.aio.HealthServicer, upstreams: list[Upstream], *, retry_max: float = 5.0
    ) -> None:
        self.servicer = servicer
        self.upstreams = upstreams
        self.retry_max = retry_max
        self._tasks: list[asyncio.Task[None]] = []
        self._published: dict[str, bool] = {}

    async def start(self) -> None:
        for upstream in self.upstreams:
            # Nothing is known yet: the service is not served until a target says so.
            upstream.healthy = [False] * len(upstream.channels)
            await self._publish(upstream)
            for index in range(len(upstream.channels)):
                task = asyncio.create_task(self._watch(upstream, index), name=f"health-{upstream.name}-{index}")
                self._tasks.append(task)

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_quietly(task)
        self._tasks.clear()

    async def _watch(self, upstream: Upstream, index: int) -> None:
        stub = health_pb2_grpc.HealthStub(upstream.channels[index])
        delays = Delays(Backoff(first=min(0.1, self.retry_max), cap=self.retry_max))
        while True:
            try:
                call = stub.Watch(health_pb2.HealthCheckRequest(service=upstream.service))
                async for reply in call:
                    await self._mark(upstream, index, reply.status == SERVING)
                    delays.reset()
                # The upstream ended the watch (it is shutting down).
                await self._mark(upstream, index, False)
            except grpc.aio.AioRpcError as error:
                if upstream.healthy[index]:
                    log.warning(
                        "%s upstream %s health lost: %s %s",
                        upstream.name,
                        upstream.targets[index],
                        error.code().name,
                        error.details(),
                    )
                await self._mark(upstream, index, False)
            await delays.wait()

    async def _mark(self, upstream: Upstream, index: int, serving: bool) -> None:
        upstream.healthy[index] = serving
        await self._publish(upstream)

    async def _publish(self, upstream: Upstream) -> None:
        serving = any(upstream.healthy)
        if self._published.get(upstream.service) == serving:
            return
        self._published[upstream.service] = serving
        log.info("%s is %s at the gateway", upstream.service, "SERVING" if serving else "NOT_SERVING")
        await self.servicer.set(upstream.service, SERVING if serving else NOT_SERVING)
