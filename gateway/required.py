"""REQUIRED fields (google.api.field_behavior, AIP-203) checked at the gateway, from the protos.

Each public request field declares its behaviour next to its definition; this module
reads the REQUIRED ones from the descriptors and refuses a request that leaves one
unset (INVALID_ARGUMENT, a BadRequest field violation per missing field, named by
its path: `spec.n_trials`, `spec.search_space[1].name`) before it is forwarded. A
method whose request declares nothing REQUIRED is forwarded untouched, unparsed.

"Unset" is proto3's zero value: an empty string or list, 0, an unspecified enum,
an absent message (or, for a field with presence, not set at all). Nested messages
are checked where they are present: a REQUIRED field inside an absent OPTIONAL
message is not missing. In a client stream only the first message is checked (the
header of an upload); the service checks what follows as it reads it.

A request that does not parse is forwarded as it is: the service answers it
(MALFORMED_REQUEST), as before the gateway looked at requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from taxidriver.access import method_path
from taxidriver.errors import FieldViolation, abort_call, invalid_argument
from taxidriver.field_behavior import is_required
from taxidriver.handlers import rewrap

MISSING = "is required"


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


@dataclass(frozen=True)
class _Check:
    """One field worth looking at in a request: REQUIRED itself, or a message holding some."""

    name: str
    required: bool
    repeated: bool
    presence: bool
    default: Any
    # The field's message type when REQUIRED fields lie below it.
    below: str | None


class RequiredFields:
    """Which fields of which messages are REQUIRED, worked out once per message type (reading the
    options each time cost ~13x more): a request is then checked on those fields only."""

    def __init__(self) -> None:
        # Message full name -> its fields to check (empty: nothing REQUIRED at or below it).
        self._plans: dict[str, tuple[_Check, ...]] = {}

    def declares(self, message: Descriptor) -> bool:
        return bool(self._plan(message))

    def _plan(self, message: Descriptor) -> tuple[_Check, ...]:
        known = self._plans.get(message.full_name)
        if known is not None:
            return known
        self._plans[message.full_name] = ()  # a recursive type (Struct) counts as nothing below
        checks = []
        for field in message.fields:
            nested = field.message_type
            below = nested is not None and not _is_map(field) and bool(self._plan(nested))
            if is_required(field) or below:
                checks.append(
                    _Check(
                        name=field.name,
                        required=is_required(field),
                        repeated=field.is_repeated,
                        presence=field.has_presence,
                        default=None if field.is_repeated else field.default_value,
                        below=nested.full_name if below and nested is not None else None,
                    )
                )
        plan = tuple(checks)
        self._plans[message.full_name] = plan
        return plan

    def missing(self, message: Message, prefix: str = "") -> list[FieldViolation]:
        """A violation for every REQUIRED field left unset in `message`, with its path."""
        found: list[FieldViolation] = []
        descriptor: Any = message.DESCRIPTOR
        for check in self._plans.get(descriptor.full_name) or self._plan(descriptor):
            value = getattr(message, check.name)
            if check.repeated:
                present = len(value) > 0
            elif check.presence:
                present = message.HasField(check.name)
            else:
                present = bool(value != check.default)
            if check.required and not present:
                found.append(FieldViolation(field=f"{prefix}{check.name}", description=MISSING))
            if check.below is None or not present:
                continue
            if check.repeated:
                for index, item in enumerate(value):
                    found.extend(self.missing(item, f"{prefix}{check.name}[{index}]."))
            else:
                found.extend(self.missing(value, f"{prefix}{check.name}."))
        return found


def required_requests(services: Iterable[ServiceDescriptor], fields: RequiredFields) -> dict[str, type[Message]]:
    """Full method path -> request class, for the methods whose request declares a REQUIRED field."""
    return {
        method_path(method): message_factory.GetMessageClass(method.input_type)
        for service in services
        for method in service.methods
        if fields.declares(method.input_type)
    }


class RequiredFieldsInterceptor(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT naming each REQUIRED field a public request leaves unset."""

    def __init__(self, services: Iterable[ServiceDescriptor]) -> None:
        self.fields = RequiredFields()
        self.requests = required_requests(services, self.fields)

    def violations(self, request_class: type[Message], raw: bytes) -> list[FieldViolation]:
        try:
            request = request_class.FromString(raw)
        except DecodeError:
            return []  # the service refuses it, naming what it could not parse
        return self.fields.missing(request)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        request_class = self.requests.get(handler_call_details.method)
        if handler is None or request_class is None:
            return handler

        def wrap(kind: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            if kind.startswith("stream_"):
                return self._checking_first(request_class, behavior)
            return self._checking(request_class, behavior)

        return rewrap(handler, wrap)

    def _checking(
        self, request_class: type[Message], behavior: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        async def check(request: bytes, context: grpc.aio.ServicerContext) -> Any:
            violations = self.violations(request_class, request)
            if violations:
                await abort_call(context, invalid_argument(violations))
            return await behavior(request, context)

        return check

    def _checking_first(
        self, request_class: type[Message], behavior: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        async def check(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            stream = aiter(requests)
            try:
                first = await anext(stream)
            except StopAsyncIteration:
                return await behavior(stream, context)  # an empty stream: the service says what it lacks
            violations = self.violations(request_class, first)
            if violations:
                await abort_call(context, invalid_argument(violations))
            return await behavior(_prepend(first, stream), context)

        return check


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for item in rest:
        yield item
