"""The web service: a Starlette app in front of one gRPC channel to the gateway."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from taxidriver.client import client_channel_options
from web.api import Transcoder, status_response
from web.rules import load_routes
from web.settings import WebSettings

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


def gateway_channel(settings: WebSettings) -> grpc.aio.Channel:
    if settings.gateway_ca_file:
        credentials = grpc.ssl_channel_credentials(Path(settings.gateway_ca_file).read_bytes())
        return grpc.aio.secure_channel(settings.gateway_target, credentials, options=client_channel_options())
    return grpc.aio.insecure_channel(settings.gateway_target, options=client_channel_options())


@dataclass
class WebState:
    settings: WebSettings
    transcoder: Transcoder


def create_app(settings: WebSettings) -> Starlette:
    routes = load_routes()
    holder: dict[str, WebState] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        channel = gateway_channel(settings)
        transcoder = Transcoder(routes, channel, settings.call_timeout, settings.session_secret)
        holder["state"] = WebState(settings=settings, transcoder=transcoder)
        app.state.web = holder["state"]
        try:
            yield
        finally:
            await channel.close()

    async def api(request):  # type: ignore[no-untyped-def]
        return await holder["state"].transcoder(request)

    async def healthz(request: Request) -> Response:
        """Liveness: the process answers (its dependencies are readiness' business)."""
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        """Readiness: the gateway answers its health check."""
        stub = health_pb2_grpc.HealthStub(holder["state"].transcoder.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError as error:
            return PlainTextResponse(f"gateway: {error.code().name}", status_code=503)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return PlainTextResponse("gateway: not serving", status_code=503)
        return PlainTextResponse("ok")

    async def unexpected(request, exc):  # type: ignore[no-untyped-def]
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return status_response(status_pb2.Status(code=code_pb2.INTERNAL, message="internal error"))

    from web import dashboard, docs

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *docs.routes(routes),
            *dashboard.routes(),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
            Route("/{path:path}", api, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
        ],
        lifespan=lifespan,
        exception_handlers={Exception: unexpected},
    )
