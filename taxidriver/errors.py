"""One domain error type, mapped once to a gRPC status with rich details.

Servicers raise `ServiceError` (or one of its helpers); `ErrorInterceptor`
turns it into `google.rpc.Status` with `ErrorInfo` and, for bad input,
`BadRequest.field_violations` naming each field. Anything else that escapes a
handler is logged and answered INTERNAL without leaking internals.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from taxidriver import DOMAIN
from taxidriver.handlers import rewrap

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FieldViolation:
    field: str
    description: str


@dataclass(kw_only=True)
class ServiceError(Exception):
    """A failure to report to the caller as a gRPC status."""

    code: grpc.StatusCode
    message: str
    # ErrorInfo.reason: one of taxidriver.reasons.v1.ErrorReason (tests/test_vocabulary.py checks).
    reason: str
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_status(self) -> grpc.Status:
        details: list[any_pb2.Any] = []
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        packed = any_pb2.Any()
        packed.Pack(info)
        details.append(packed)
        if self.violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in self.violations
                ]
            )
            packed = any_pb2.Any()
            packed.Pack(bad_request)
            details.append(packed)
        status = status_pb2.Status(code=_CODE_NUMBERS[self.code], message=self.message, details=details)
        return rpc_status.to_status(status)


_CODE_NUMBERS = {code: code.value[0] for code in grpc.StatusCode}
assert _CODE_NUMBERS[grpc.StatusCode.INVALID_ARGUMENT] == code_pb2.INVALID_ARGUMENT


def invalid_argument(violations: Iterable[FieldViolation], message: str | None = None) -> ServiceError:
    items = list(violations)
    text = message or "invalid request: " + "; ".join(f"{v.field}: {v.description}" for v in items)
    return ServiceError(
        code=grpc.StatusCode.INVALID_ARGUMENT, message=text, reason="INVALID_ARGUMENT", violations=items
    )


def bad_field(field_name: str, description: str) -> ServiceError:
    return invalid_argument([FieldViolation(field=field_name, description=description)])


# The reason of each kind of thing a caller may name and we may not have (declared in
# protos/taxidriver/reasons/v1/error_reason.proto, like every reason).
NOT_FOUND_REASONS = {
    "run": "RUN_NOT_FOUND",
    "model": "MODEL_NOT_FOUND",
    "artifact": "ARTIFACT_NOT_FOUND",
    "sweep": "SWEEP_NOT_FOUND",
}


def not_found(what: str, ident: str) -> ServiceError:
    return ServiceError(
        code=grpc.StatusCode.NOT_FOUND,
        message=f"{what} {ident!r} not found",
        reason=NOT_FOUND_REASONS[what],
        metadata={what: ident},
    )


def failed_precondition(message: str, *, reason: str, **metadata: str) -> ServiceError:
    return ServiceError(
        code=grpc.StatusCode.FAILED_PRECONDITION, message=message, reason=reason, metadata=dict(metadata)
    )


def request_id_reused(what: str, ident: str, field_name: str = "request_id") -> ServiceError:
    """AIP-155: a request_id already used by a different request (other fields, or another caller).

    ALREADY_EXISTS, not INVALID_ARGUMENT: the request is well formed, but its id is taken
    by another one. A true retry (same request) gets the first answer instead.
    """
    return ServiceError(
        code=grpc.StatusCode.ALREADY_EXISTS,
        message=f"{field_name} was already used for a different request (it made {what} {ident}); "
        "use a new request_id for a new request",
        reason="REQUEST_ID_REUSED",
        violations=[FieldViolation(field=field_name, description="already used for a different request")],
        metadata={what.replace(" ", "_"): ident},
    )


def unavailable(message: str, *, reason: str, **metadata: str) -> ServiceError:
    return ServiceError(code=grpc.StatusCode.UNAVAILABLE, message=message, reason=reason, metadata=dict(metadata))


def resource_exhausted(message: str, *, reason: str, **metadata: str) -> ServiceError:
    return ServiceError(
        code=grpc.StatusCode.RESOURCE_EXHAUSTED, message=message, reason=reason, metadata=dict(metadata)
    )


def parse_uuid(value: str, field_name: str) -> uuid.UUID:
    """A UUID from user input, or INVALID_ARGUMENT naming the field: the one UUID check."""
    if not value:
        raise bad_field(field_name, "is required")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise bad_field(field_name, f"must be a UUID, got {value[:64]!r}") from None


class Violations:
    """Collects every bad field of a request before raising once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field_name: str, description: str) -> None:
        self.items.append(FieldViolation(field=field_name, description=description))

    def uuid(self, value: str, field_name: str) -> uuid.UUID | None:
        """parse_uuid, collecting the violation instead of raising it (None when bad)."""
        try:
            return parse_uuid(value, field_name)
        except ServiceError as error:
            self.items.extend(error.violations)
            return None

    def raise_if_any(self) -> None:
        if self.items:
            raise invalid_argument(self.items)


async def abort_call(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    """Ends a live call with `error`'s rich status, keeping the trailing metadata already set on
    it (the x-request-id echo that TelemetryInterceptor sets at call start)."""
    status = error.to_status()
    kept = tuple(context.trailing_metadata() or ())
    await context.abort(status.code, status.details, (*kept, *status.trailing_metadata))


def refusing(handler: grpc.RpcMethodHandler, error: ServiceError) -> grpc.RpcMethodHandler:
    """`handler`'s method, whatever its call kind, answering `error` at once (its behavior never runs)."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await abort_call(context, error)

    return rewrap(handler, lambda kind, behavior: refuse)


async def _abort(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    await abort_call(context, error)


def _internal(method: str, exc: BaseException) -> ServiceError:
    log.exception("unhandled error in %s", method, exc_info=exc)
    return ServiceError(code=grpc.StatusCode.INTERNAL, message=f"internal error in {method}", reason="INTERNAL")


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request_or_iterator, context)
        except ServiceError as error:
            await _abort(context, error)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place that maps the unexpected
            await _abort(context, _internal(method, exc))

    return wrapped


async def close_stream(stream: Any) -> None:
    """Closes an abandoned handler generator at once (its database connection goes back to the
    pool) rather than whenever the garbage collector finalises it; cleanup errors are only logged."""
    try:
        await stream.aclose()
    except Exception:  # the call is over; nobody is left to tell
        log.warning("error while closing an abandoned stream", exc_info=True)


def _wrap_stream_parsed(
    behavior: Callable[..., Any],
    parsing: Callable[[Callable[..., Any], Callable[[Any], Any]], Callable[..., Any]],
    parse: Callable[[Any], Any],
    method: str,
) -> Callable[..., Any]:
    """_wrap_stream of a parsing behavior, keeping the async-generator-or-coroutine distinction."""
    if not inspect.isasyncgenfunction(behavior):
        return _wrap_unary(parsing(behavior, parse), method)
    inner = parsing(behavior, parse)

    async def generator(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        stream = inner(request_or_iterator, context)
        async for response in stream:
            try:
                yield response
            except BaseException:
                await close_stream(stream)
                raise

    return _wrap_stream(generator, method)


def _wrap_stream(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    # A streaming handler is either an async generator or a coroutine that
    # writes with context.write() (as grpc's own Health.Watch does).
    if not inspect.isasyncgenfunction(behavior):
        return _wrap_unary(behavior, method)

    async def wrapped(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        stream = behavior(request_or_iterator, context)
        try:
            async for response in stream:
                try:
                    yield response
                except BaseException:
                    # Thrown in by our consumer (GeneratorExit, CancelledError): the call has
                    # ended, maybe long ago. Close the handler now; never abort a call that is gone.
                    await close_stream(stream)
                    raise
        except ServiceError as error:
            await _abort(context, error)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place that maps the unexpected
            await _abort(context, _internal(method, exc))

    return wrapped


def _parser(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[Any], Any]:
    """Parses a request inside the handler, so a malformed message is the caller's error.

    Left to grpc, a request that does not parse ends as UNKNOWN or INTERNAL.
    """
    if deserializer is None:
        return lambda raw: raw

    def parse(raw: Any) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError and friends vary by protobuf backend
            raise ServiceError(
                code=grpc.StatusCode.INVALID_ARGUMENT,
                message=f"request is not a valid message for {method}: {exc}",
                reason="MALFORMED_REQUEST",
            ) from exc

    return parse


def _parsing_unary(behavior: Callable[..., Any], parse: Callable[[Any], Any]) -> Callable[..., Any]:
    def call(raw: Any, context: grpc.aio.ServicerContext) -> Any:
        return behavior(parse(raw), context)

    return call


def _parsing_stream(behavior: Callable[..., Any], parse: Callable[[Any], Any]) -> Callable[..., Any]:
    async def parsed(raw_iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for raw in raw_iterator:
            yield parse(raw)

    def call(raw_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return behavior(parsed(raw_iterator), context)

    return call


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps ServiceError (and anything unexpected) to a rich status, once for all methods.

    Requests are parsed inside the wrapped handler (the handler is registered
    without a deserializer), so a message that does not parse is INVALID_ARGUMENT.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        parse = _parser(handler.request_deserializer, method)

        def wrap(kind: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
            parsing = _parsing_stream if kind.startswith("stream_") else _parsing_unary
            if kind.endswith("_unary"):
                return _wrap_unary(parsing(behavior, parse), method)
            return _wrap_stream_parsed(behavior, parsing, parse, method)

        return rewrap(handler, wrap, request_deserializer=None)


def _error_details(error: grpc.aio.AioRpcError | grpc.RpcError) -> tuple[list[FieldViolation], str, dict[str, str]]:
    """Client side: the field violations, ErrorInfo reason and ErrorInfo metadata of an error."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    violations: list[FieldViolation] = []
    reason, metadata = "", {}
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(
                FieldViolation(field=v.field, description=v.description) for v in bad_request.field_violations
            )
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
    return violations, reason, metadata


def status_details(error: grpc.aio.AioRpcError | grpc.RpcError) -> tuple[list[FieldViolation], str]:
    """Client side: the field violations and ErrorInfo reason carried by an error."""
    violations, reason, _ = _error_details(error)
    return violations, reason


def relayed(error: grpc.RpcError, message: str) -> ServiceError:
    """Another service's refusal passed on to our caller as it was: the same code, ErrorInfo
    reason and metadata, and field violations (they name the caller's own fields)."""
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    violations, reason, metadata = _error_details(error)
    return ServiceError(
        code=code, message=message, reason=reason or code.name, violations=violations, metadata=metadata
    )
