"""Prometheus metrics and a per-call JSON log, shared by every service.

`TelemetryInterceptor` wraps each call once and records both: a counter and a
latency histogram by method and status code, and one structured log line
(method, code, duration_ms, request_id from x-request-id, peer). One wrapper
rather than two keeps the per-call cost down on the gateway's hot path.

Services update their own gauges through the small functions below
(`add_episodes_ingested`: the registry's ingest; `set_pool_usage`: the registry's
health loop; `set_workers_busy`: the trainer's worker pool) and never touch prometheus_client directly; `serve()`
exposes everything over HTTP when METRICS_PORT is set (0 or unset: off).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from taxidriver.errors import close_stream
from taxidriver.handlers import KIND_LABELS, rewrap
from taxidriver.logs import request_id_var
from taxidriver.settings import METRICS_PORT

log = logging.getLogger("taxidriver.calls")

REQUEST_ID_KEY = "x-request-id"
# grpc's own services (health probes every few seconds, reflection) log at DEBUG.
QUIET_PREFIX = "/grpc."

CALLS = Counter(
    "taxidriver_grpc_server_handled",
    "gRPC calls completed by the server, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
LATENCY = Histogram(
    "taxidriver_grpc_server_handling_seconds",
    "Time from the start of a call to its status, by method.",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
EPISODES_INGESTED = Counter("taxidriver_episodes_ingested", "Episodes newly stored by the registry's ingest.")
POOL_CONNECTIONS = Gauge(
    "taxidriver_db_pool_connections", "Database pool connections by state (size, in_use, waiting).", ["state"]
)
WORKERS = Gauge("taxidriver_trainer_workers", "Trainer worker processes by state (total, busy).", ["state"])


def add_episodes_ingested(count: int) -> None:
    """Registry: episodes durably stored by one ingest batch (0 for a replay)."""
    if count > 0:
        EPISODES_INGESTED.inc(count)


def set_pool_usage(*, size: int, in_use: int, waiting: int = 0) -> None:
    """Registry: connection pool occupancy (psycopg_pool's get_stats() has these numbers)."""
    POOL_CONNECTIONS.labels(state="size").set(size)
    POOL_CONNECTIONS.labels(state="in_use").set(in_use)
    POOL_CONNECTIONS.labels(state="waiting").set(waiting)


def set_workers_busy(*, busy: int, total: int) -> None:
    """Trainer: worker processes running a training vs available."""
    WORKERS.labels(state="busy").set(busy)
    WORKERS.labels(state="total").set(total)


def metrics_port_from_env() -> int:
    """METRICS_PORT, 0 (off) when unset, so in-process test servers never clash on a port."""
    return METRICS_PORT.read()


def start_metrics_server(port: int, addr: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> int:
    """Serves /metrics on a daemon thread; returns the bound port (port 0 picks one)."""
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    bound = int(server.server_port)
    logging.getLogger(__name__).info("metrics on http://%s:%d/metrics", addr, bound)
    return bound


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service or "unknown", name or method


def _code_name(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> str:
    code: Any = context.code()
    if code is None:
        return default.name
    if isinstance(code, grpc.StatusCode):
        return code.name
    for candidate in grpc.StatusCode:
        if candidate.value[0] == code:
            return candidate.name
    return str(code)


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            return value
    return ""


class _MethodStats:
    """Label children of one method, resolved once: `labels()` per call is not free."""

    __slots__ = ("by_code", "kind", "latency", "level", "method", "name", "service")

    def __init__(self, method: str, kind: str) -> None:
        self.method = method
        self.service, self.name = _split(method)
        self.kind = kind
        self.latency = LATENCY.labels(self.service, self.name, kind)
        self.by_code: dict[str, Any] = {}
        self.level = logging.DEBUG if method.startswith(QUIET_PREFIX) else logging.INFO

    def counter(self, code: str) -> Any:
        child = self.by_code.get(code)
        if child is None:
            child = self.by_code[code] = CALLS.labels(self.service, self.name, self.kind, code)
        return child


# Codes a call can end with only because it was still running when its deadline passed:
# whatever the handler did then, its client saw DEADLINE_EXCEEDED.
_OVERTAKEN_BY_DEADLINE = frozenset({"OK", "CANCELLED", "UNKNOWN"})
# A client's deadline also reaches us as a cancel (its RST_STREAM), which can beat our own
# timer by about one network delay: a cancel this close to the deadline is the deadline.
# (GetRun through the gateway on loopback, deadlines of 2 .. 119 ms, every call DEADLINE_EXCEEDED
# for its client: without the slack 6 of 151 call lines said CANCELLED, with it 1 of 323.)
_DEADLINE_CANCEL_SLACK_S = 0.005
# The deadline of the call running in this task: never reset, so that grpc's own log lines
# about the call's last batch (written after our wrapper returned) can be judged by it.
_deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar("call_deadline", default=None)


class _CallRecord:
    """One call's log line and metrics: what they need is read while the call is live, and they
    are written once, when the call has ended, with the outcome its client saw.

    A handler's own outcome is not always the call's: a response produced after the deadline
    (or whose sending the deadline interrupted) never reaches the client, and a handler that
    the deadline cancelled sees a cancellation. The deadline decides those (the client's own
    timer fires no later than ours), so the record waits for the end of the call, signalled by
    grpc's done callback, which never touches the ended call.

    Nothing here reads the context after the call has ended either: a streaming call's
    generator may be closed long after (the client stopped reading, the connection dropped),
    when cygrpc has released the call and `context.peer()` reads freed memory. That killed
    the registry with SIGSEGV (issue 10).
    """

    __slots__ = ("code", "deadline", "ended", "peer", "request_id", "started", "stats")

    def __init__(self, stats: _MethodStats, context: grpc.aio.ServicerContext) -> None:
        self.stats = stats
        self.started = time.perf_counter()
        remaining = context.time_remaining()
        self.deadline = None if remaining is None else self.started + remaining
        _deadline_var.set(self.deadline)
        # A caller without an id gets one, so the gateway's and the upstream's lines correlate.
        self.request_id = _request_id(context) or new_request_id()
        self.peer = context.peer()
        # Echoed on every outcome: errors sent by abort() keep it (taxidriver.errors.abort_call).
        context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id),))
        self.code: str | None = None
        self.ended: float | None = None
        add_done_callback = getattr(context, "add_done_callback", None)
        if add_done_callback is None:
            self.ended = 0.0  # no end signal: write at settle()
        else:
            add_done_callback(self._on_done)

    def settle(self, code: str, context: grpc.aio.ServicerContext | None = None) -> None:
        """The handler's outcome; `context` only while the call is live (the echo is kept)."""
        if context is not None and code == "OK":
            trailing = tuple(context.trailing_metadata() or ())
            if not any(key == REQUEST_ID_KEY for key, _ in trailing):
                context.set_trailing_metadata((*trailing, (REQUEST_ID_KEY, self.request_id)))
        if self.code is None:
            self.code = code
            if self.ended is not None:
                self._write()

    def _on_done(self, _context: Any) -> None:
        self.ended = time.perf_counter()
        if self.code is not None:
            self._write()

    def _write(self) -> None:
        code = self.code or "UNKNOWN"
        ended = self.ended or time.perf_counter()
        if self.deadline is not None and code in _OVERTAKEN_BY_DEADLINE:
            slack = _DEADLINE_CANCEL_SLACK_S if code == "CANCELLED" else 0.0
            if ended >= self.deadline - slack:
                code = grpc.StatusCode.DEADLINE_EXCEEDED.name
        elapsed = ended - self.started
        stats = self.stats
        stats.counter(code).inc()
        stats.latency.observe(elapsed)
        if log.isEnabledFor(stats.level):
            log.log(
                stats.level,
                "%s %s",
                stats.method,
                code,
                extra={
                    "method": stats.method,
                    "code": code,
                    "duration_ms": round(elapsed * 1000, 3),
                    "request_id": self.request_id,
                    "peer": self.peer,
                },
            )


def _outcome(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    """The call's status code. Reads the context only while the call is live (returned or aborted)."""
    if isinstance(exc, GeneratorExit | asyncio.CancelledError):
        # The client went away (cancel, deadline, dropped connection): the call is over.
        return grpc.StatusCode.CANCELLED.name
    if exc is None:
        return _code_name(context, grpc.StatusCode.OK)
    if isinstance(exc, grpc.aio.AbortError):
        return _code_name(context, grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.UNKNOWN.name


def _ended_outcome(exc: BaseException) -> str:
    """The code of a call whose consumer threw `exc` into it: never read from the (gone) context."""
    return grpc.StatusCode.CANCELLED.name if isinstance(exc, GeneratorExit | asyncio.CancelledError) else "UNKNOWN"


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], stats: _MethodStats) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        record = _CallRecord(stats, context)
        token = request_id_var.set(record.request_id)
        try:
            response = await behavior(request, context)
        except BaseException as exc:
            record.settle(_outcome(context, exc))
            raise
        finally:
            _reset(token)
        record.settle(_outcome(context, None), context)
        return response

    return wrapped


def _wrap_stream(behavior: Callable[..., Any], stats: _MethodStats) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behavior):
        # Coroutine-style streaming handlers (context.write), e.g. grpc's Health.Watch
        # and the gateway's forwarders.
        return _wrap_unary(behavior, stats)

    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        record = _CallRecord(stats, context)
        token = request_id_var.set(record.request_id)
        stream = behavior(request, context)
        try:
            async for response in stream:
                try:
                    yield response
                except BaseException as exc:
                    # Thrown in by our consumer: the call has ended (possibly long ago).
                    record.settle(_ended_outcome(exc))
                    await close_stream(stream)
                    raise
        except BaseException as exc:
            record.settle(_outcome(context, exc))
            raise
        finally:
            _reset(token)
        record.settle(_outcome(context, None), context)

    return wrapped


def _reset(token: contextvars.Token[str]) -> None:
    try:
        request_id_var.reset(token)
    except ValueError:
        # A stream closed from another context (cancellation): nothing to restore there.
        pass


class _EndedCallBatchFilter(logging.Filter):
    """grpc logs "ExecuteBatchError raised in core by servicer method" at ERROR, with a
    traceback, when a call's last batch fails because the call had already ended: the
    client's deadline passed, or the client went away (a killed `grpcurl ... WatchRun`, a
    `| head`) while the answer or status was on its way. Neither is a server error. After the
    deadline the line is kept at INFO (our call line says DEADLINE_EXCEEDED); before it, the
    client left, which we cannot tell apart from a dropped connection: WARNING. Never the
    traceback, which points into grpc's core and says nothing about our code."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith("ExecuteBatchError raised in core"):
            deadline = _deadline_var.get()
            if deadline is not None and time.perf_counter() >= deadline:
                record.levelno, record.levelname = logging.INFO, "INFO"
            else:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def _judge_ended_call_batches() -> None:
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, _EndedCallBatchFilter) for f in grpc_log.filters):
        grpc_log.addFilter(_EndedCallBatchFilter())


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Counts, times and logs every call; install it outermost to see final status codes.

    The handler is re-wrapped per call (inner interceptors may answer per call),
    but each method's label children are resolved once.
    """

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], _MethodStats] = {}
        _judge_ended_call_batches()

    def _stats_for(self, method: str, kind: str) -> _MethodStats:
        stats = self._stats.get((method, kind))
        if stats is None:
            stats = self._stats[(method, kind)] = _MethodStats(method, kind)
        return stats

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method

        def wrap(kind: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
            stats = self._stats_for(method, KIND_LABELS[kind])
            return (_wrap_unary if kind.endswith("_unary") else _wrap_stream)(behavior, stats)

        return rewrap(handler, wrap)


def new_request_id() -> str:
    return uuid.uuid4().hex
