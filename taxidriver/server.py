"""Server start-up shared by every service: health, reflection, graceful drain, one `main`.

`create_server` binds (port 0 in tests) and returns a RunningServer; each service's
`start_<service>(settings)` builds its app on it, and the app's `stop()` drains it.
`main` is every service's `python -m`: logging, settings, start, then `serve` waits for
SIGTERM/SIGINT and calls the same `app.stop()` the tests call.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
from google.protobuf import descriptor_pool
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from taxidriver.config import EnvSettings, SettingsError, StartupError
from taxidriver.errors import ErrorInterceptor
from taxidriver.internal_auth import InternalTokenInterceptor
from taxidriver.keepalive import MAX_MESSAGE_BYTES, Keepalive
from taxidriver.logs import setup_logging
from taxidriver.metrics import TelemetryInterceptor, metrics_port_from_env, start_metrics_server
from taxidriver.settings import LOG_LEVEL

log = logging.getLogger(__name__)


SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]


class DomainErrorInterceptor(ErrorInterceptor):
    """ErrorInterceptor for our services only: grpc's own services (health,
    reflection) report their statuses themselves and need no mapping."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if handler_call_details.method.startswith(GRPC_INFRA_PREFIX):
            return await continuation(handler_call_details)
        return await super().intercept_service(continuation, handler_call_details)


class ReflectedPool:
    """The default descriptor pool as reflection should see it.

    Only the files of the reflected services (and their imports) are visible,
    so a served-but-internal API cannot be described either. And methods
    resolve as symbols: protobuf's upb pool does not find "pkg.Service.Method"
    with FindFileContainingSymbol, which breaks `grpcurl describe` of a method.
    """

    def __init__(self, service_names: Sequence[str]) -> None:
        self._pool = descriptor_pool.Default()
        self._files: set[str] = set()
        # The rich error details every service sends, so grpcurl can decode them.
        self._add_file(error_details_pb2.DESCRIPTOR)
        for name in service_names:
            try:
                self._add_file(self._pool.FindServiceByName(name).file)
            except KeyError:
                continue

    def _add_file(self, file: Any) -> None:
        if file.name in self._files:
            return
        self._files.add(file.name)
        for dependency in file.dependencies:
            self._add_file(dependency)

    def _visible(self, file: Any, what: str) -> Any:
        if file.name not in self._files:
            raise KeyError(what)
        return file

    def FindFileByName(self, name: str) -> Any:
        return self._visible(self._pool.FindFileByName(name), name)

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        try:
            file = self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service, _, method = symbol.rpartition(".")
            if not service:
                raise
            file = self._pool.FindMethodByName(f"{service}.{method}").containing_service.file
        return self._visible(file, symbol)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


# Health service name that stays SERVING while the process runs (Kubernetes liveness probes).
LIVENESS = "liveness"

# Methods of grpc's own services (grpc.health.v1, grpc.reflection.*).
GRPC_INFRA_PREFIX = "/grpc."


@dataclass(frozen=True, kw_only=True)
class ServiceBinding:
    """One gRPC service to host: its full name and how to add it to a server."""

    name: str
    register: Callable[[grpc.aio.Server], None]
    # Listed by reflection; internal services are served but not advertised.
    reflect: bool = True


@dataclass(kw_only=True)
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str] = field(default_factory=list)

    async def set_serving(self, serving: bool, services: Sequence[str] | None = None) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in [*(services if services is not None else self.service_names), ""]:
            await self.health.set(name, status)


async def create_server(
    *,
    address: str,
    services: Sequence[ServiceBinding],
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    serving: bool = True,
    error_mapping: bool = True,
    telemetry: bool = True,
    credentials: grpc.ServerCredentials | None = None,
    keepalive: Keepalive | None = None,
    internal_token: str = "",
) -> RunningServer:
    """Build and start a server on `address` ("host:port", port 0 for any).

    Interceptors run outermost first: telemetry (metrics + call log, so it sees
    final codes), then the caller's, then error mapping next to the servicers.
    """
    all_interceptors: list[grpc.aio.ServerInterceptor] = [TelemetryInterceptor()] if telemetry else []
    if internal_token:
        # Internal ports with INTERNAL_TOKEN set: refused calls are still counted and logged.
        all_interceptors.append(InternalTokenInterceptor(internal_token))
    all_interceptors.extend(interceptors)
    if error_mapping:
        all_interceptors.append(DomainErrorInterceptor())
    options = [*SERVER_OPTIONS, *(keepalive or Keepalive.from_env()).server_options()]
    server = grpc.aio.server(interceptors=all_interceptors, options=options)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for binding in services:
        binding.register(server)
    reflected = [
        *(b.name for b in services if b.reflect),
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ]
    reflection.enable_server_reflection(reflected, server, pool=ReflectedPool(reflected))
    # TLS when credentials are given (the gateway's public port); plaintext inside the cluster.
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {address}: in use, or not an address of this host") from exc
    if port == 0:
        raise StartupError(f"cannot listen on {address}")
    await server.start()
    mark_listening()
    running = RunningServer(server=server, port=port, health=health_servicer, service_names=[b.name for b in services])
    await running.set_serving(serving)
    # Liveness is the process answering, whatever its dependencies do: a registry whose
    # database is down is NOT_SERVING (not ready) but must not be restarted for it.
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    return running


class App(Protocol):
    """A started service: what `serve` stops (tests call the same `stop`)."""

    async def stop(self) -> None: ...


S = TypeVar("S", bound=EnvSettings)
A = TypeVar("A", bound=App)
# Exceptions a service's start-up may raise that mean "cannot start", with what to say first.
StartupErrors = Mapping[tuple[type[BaseException], ...], str]


class _CannotStart(Exception):
    """Start-up failed; the message is the one line to log before exit 2."""


# Set by create_server (and the web's listener) once the process accepts calls: a stop signal
# before that cancels the start; after it, the start finishes and the app's stop() drains it.
_listening: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar("listening", default=None)


def mark_listening() -> None:
    """Say that this start-up now accepts calls (see `serve`)."""
    listening = _listening.get()
    if listening is not None:
        listening.set()


def stop_signal() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT (the handlers are the running loop's)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(
    start: Callable[[S], Awaitable[A]], settings: S, *, startup_errors: StartupErrors | None = None
) -> A | None:
    """Start the app, run until SIGTERM or SIGINT, then `app.stop()` (the path tests use).

    With METRICS_PORT set, /metrics is served over HTTP for the process's lifetime.
    A failure while starting becomes _CannotStart, with one line that says why. A signal
    before the process accepts calls (a registry waits up to REGISTRY_CONNECT_TIMEOUT for its
    database) cancels the start at once and returns None: nothing was served, nothing to drain.
    A signal once it accepts calls lets the start finish, then stops through `app.stop()`.
    """
    stop = stop_signal()
    listening = asyncio.Event()
    _listening.set(listening)  # seen by the start task, which copies this context
    try:
        metrics_port = metrics_port_from_env()
        if metrics_port:
            try:
                start_metrics_server(metrics_port)
            except OSError as exc:
                raise StartupError(f"cannot serve /metrics on METRICS_PORT {metrics_port}: {exc.strerror}") from exc
        starting = asyncio.ensure_future(start(settings))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done() and listening.is_set():
            await asyncio.wait({starting})
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            log.info("stopped before it started")
            return None
        stopping.cancel()
        app = starting.result()
    except (StartupError, OSError) as exc:
        raise _CannotStart(str(exc)) from exc
    except tuple(kind for kinds in (startup_errors or {}) for kind in kinds) as exc:
        prefix = next(text for kinds, text in (startup_errors or {}).items() if isinstance(exc, kinds))
        raise _CannotStart(f"{prefix}: {' '.join(str(exc).split())}") from exc
    await stop.wait()
    log.info("shutting down")
    await app.stop()
    log.info("stopped")
    return app


def main(
    service: str,
    settings_type: type[S],
    start: Callable[[S], Awaitable[App]],
    *,
    startup_errors: StartupErrors | None = None,
) -> NoReturn:
    """Every service's `python -m <service>`: JSON logs at LOG_LEVEL, settings from the
    environment, `serve`; exit 0 after a requested stop, 2 with one log line when the
    service cannot start (a bad setting, a port in use, its database unreachable)."""
    setup_logging(service)
    try:
        logging.getLogger().setLevel(LOG_LEVEL.read())
        settings = settings_type.from_env()
        asyncio.run(serve(start, settings, startup_errors=startup_errors))
    except (SettingsError, _CannotStart) as exc:
        log.error("cannot start: %s", exc)
        sys.exit(2)
    sys.exit(0)
