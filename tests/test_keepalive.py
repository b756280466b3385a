"""Client keepalive and server ping enforcement agree (taxidriver.keepalive).

Before issue 10's fix the gateway pinged its upstreams every 30 s while the servers kept
gRPC's 5-minute minimum: after two strikes the server sent GOAWAY ENHANCE_YOUR_CALM and
calls failed with UNAVAILABLE "Too many pings". Here the same mismatch is scaled down
(pings every 0.2 s) so that the strike window passes within seconds.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from taxidriver.keepalive import MAX_PING_STRIKES, Keepalive, channel_options
from taxidriver.server import create_server

FAST = Keepalive(time=0.2, timeout=2.0)
# Long enough for several times the strikes a mismatched server would count.
PINGS = 6 * (MAX_PING_STRIKES + 1)


async def _idle_watch_survives(server_keepalive: Keepalive) -> grpc.StatusCode | None:
    """Hold an idle Health.Watch while the client pings; the code it ended with, None if alive."""
    running = await create_server(address="127.0.0.1:0", services=[], keepalive=server_keepalive)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=channel_options(FAST)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            # No data flows on the watch: only keepalive pings cross the connection.
            ended: grpc.StatusCode | None = None
            try:
                await asyncio.wait_for(watch.read(), timeout=PINGS * FAST.time)
            except TimeoutError:
                pass  # still open: what we want
            except grpc.aio.AioRpcError as error:
                ended = error.code()
            if ended is None:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            return ended
    finally:
        await running.server.stop(0)


def test_servers_accept_the_pings_clients_send(loop_thread) -> None:
    assert loop_thread.run(_idle_watch_survives(FAST)) is None


def test_a_server_stricter_than_its_clients_drops_them(loop_thread) -> None:
    """The control: the mismatch of issue 10 (server minimum far above the client interval) is caught."""
    strict = Keepalive(time=600.0, timeout=2.0)
    assert loop_thread.run(_idle_watch_survives(strict)) == grpc.StatusCode.UNAVAILABLE


def test_keepalive_is_one_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_KEEPALIVE_TIME_S", "45")
    keepalive = Keepalive.from_env()
    client = dict(keepalive.client_options())
    server = dict(keepalive.server_options())
    assert client["grpc.keepalive_time_ms"] == 45_000
    assert server["grpc.http2.min_ping_interval_without_data_ms"] <= client["grpc.keepalive_time_ms"]
    assert server["grpc.keepalive_permit_without_calls"] == client["grpc.keepalive_permit_without_calls"] == 1
