"""Raw-byte forwarding of public calls to their upstream service.

Handlers are registered without deserializers and upstream multicallables
without serializers, so a message crosses the gateway as the bytes it arrived
as. What a proxy must keep, it keeps: request metadata (minus hop-by-hop and
reserved keys), the remaining deadline, cancellation (a cancelled client call
cancels the upstream call), and the upstream's status code, details and
trailing metadata, including `grpc-status-details-bin` so rich errors
(ErrorInfo, BadRequest field violations) arrive intact.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from gateway.auth import current_principal
from taxidriver.access import CALLER_KEYS
from taxidriver.handlers import make_handler, method_kind, responds_with_stream
from taxidriver.internal_auth import INTERNAL_TOKEN_KEY
from taxidriver.keepalive import channel_options
from taxidriver.logs import request_id_var
from taxidriver.metrics import REQUEST_ID_KEY

log = logging.getLogger(__name__)

# Keys that describe one HTTP/2 hop, not the call: never copied to the next hop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "content-type",
        "host",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
    }
)
# Never forwarded: the API key (checked here), and identity only the gateway may assert.
SECRET_OR_TRUSTED = frozenset({"authorization", *CALLER_KEYS, INTERNAL_TOKEN_KEY})
# The one reserved trailing key a proxy must relay: the rich google.rpc.Status.
STATUS_DETAILS_KEY = "grpc-status-details-bin"

UPSTREAM_OPTIONS: list[tuple[str, Any]] = [
    # A dns:/// (or ipv4:a,b) target with several addresses is balanced per call.
    ("grpc.lb_policy_name", "round_robin"),
    # Fail fast and report UNAVAILABLE rather than hide an outage behind retries.
    ("grpc.enable_retries", 0),
    # An upstream that restarts is reached again within ~2 s (grpc's default backoff
    # grows to 120 s, leaving a recovered trainer unreachable for minutes).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]

Metadata = tuple[tuple[str, str | bytes], ...]


def request_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> Metadata:
    """The caller's metadata that belongs to the call, not to the hop.

    A call without x-request-id gets the one the gateway logged it under, so the
    upstream's log lines carry the same id. The API key stops here; the
    authenticated caller travels as x-caller (a client cannot set it).
    """
    kept = tuple(
        (key, value)
        for key, value in metadata or ()
        if key not in HOP_BY_HOP
        and key not in SECRET_OR_TRUSTED
        and not key.startswith("grpc-")
        and not key.startswith(":")
    )
    principal = current_principal.get()
    if principal is not None:
        kept = (*kept, *principal.metadata())
    if any(key == REQUEST_ID_KEY for key, _ in kept):
        return kept
    request_id = request_id_var.get()
    return (*kept, (REQUEST_ID_KEY, request_id)) if request_id else kept


def response_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> Metadata:
    """Upstream initial/trailing metadata to relay; keeps the rich status details."""
    if not metadata:
        return ()
    return tuple(
        (key, value)
        for key, value in metadata
        if key == STATUS_DETAILS_KEY or (key not in HOP_BY_HOP and not key.startswith("grpc-"))
    )


@dataclass(kw_only=True)
class Upstream:
    """One upstream service behind one or more targets, picked round robin.

    Calls skip targets whose health is known to be bad while at least one is
    healthy; with none healthy every target is still tried, so the caller gets
    the real error (UNAVAILABLE naming the target) rather than a guess.
    """

    name: str
    service: str
    targets: tuple[str, ...]
    # Sent with every forwarded call: the internal token when the deployment sets one.
    extra_metadata: Metadata = ()
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    healthy: list[bool] = field(default_factory=list)
    _counter: itertools.count[int] = field(default_factory=itertools.count)
    _callables: dict[tuple[int, str, str], Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.channels:
            # Keepalive from taxidriver.keepalive, the same setting the upstream servers enforce.
            options = [*channel_options(), *UPSTREAM_OPTIONS]
            self.channels = [grpc.aio.insecure_channel(t, options=options) for t in self.targets]
        if not self.healthy:
            # Optimistic until the health mirror says otherwise.
            self.healthy = [True] * len(self.targets)

    def pick(self) -> int:
        count = len(self.channels)
        if count == 1:
            return 0
        start = next(self._counter)
        for offset in range(count):
            index = (start + offset) % count
            if self.healthy[index]:
                return index
        return start % count

    def multicallable(self, index: int, kind: str, path: str) -> Any:
        key = (index, kind, path)
        found = self._callables.get(key)
        if found is None:
            # A kind's name is also the channel's method for it. No serializers: requests and
            # responses stay bytes.
            found = getattr(self.channels[index], kind)(path)
            self._callables[key] = found
        return found

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


async def _relay_error(
    context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError, upstream: Upstream, index: int
) -> None:
    """Ends the call with the upstream's status; names the upstream when it was unreachable."""
    code = error.code()
    details = error.details() or ""
    trailing = response_metadata(error.trailing_metadata())
    has_rich_status = any(key == STATUS_DETAILS_KEY for key, _ in trailing)
    if code == grpc.StatusCode.UNAVAILABLE and not has_rich_status:
        # The transport failed (the upstream's own UNAVAILABLE carries a rich status,
        # whose message must stay byte-identical for rpc_status.from_call).
        details = f"{upstream.name} upstream {upstream.targets[index]} is unavailable: {details}"
    elif code == grpc.StatusCode.CANCELLED and not has_rich_status and not context.cancelled():
        # Our caller did not cancel: the upstream dropped the call, as a server does with
        # calls that race its shutdown (never processed). That is retryable, not CANCELLED.
        code = grpc.StatusCode.UNAVAILABLE
        details = f"{upstream.name} upstream {upstream.targets[index]} dropped the call (shutting down?): {details}"
    await context.abort(code, details, trailing)


async def _relay_initial(context: grpc.aio.ServicerContext, call: Any) -> None:
    initial = response_metadata(await call.initial_metadata())
    if initial:
        await context.send_initial_metadata(initial)


async def _relay_trailing(context: grpc.aio.ServicerContext, call: Any) -> None:
    trailing = response_metadata(await call.trailing_metadata())
    if trailing:
        context.set_trailing_metadata(trailing)


def _forward_to_one_response(upstream: Upstream, path: str, kind: str) -> grpc.RpcMethodHandler:
    """Unary and client-streaming methods: the request (or the request stream) up, one answer back."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> bytes:
        index = upstream.pick()
        call = upstream.multicallable(index, kind, path)(
            request,
            timeout=context.time_remaining(),
            metadata=request_metadata(context.invocation_metadata()) + upstream.extra_metadata,
        )
        try:
            response: bytes = await call
        except grpc.aio.AioRpcError as error:
            await _relay_error(context, error, upstream, index)
            raise  # abort() raised already; keeps type checkers honest
        finally:
            if not call.done():
                call.cancel()
        await _relay_initial(context, call)
        await _relay_trailing(context, call)
        return response

    return make_handler(kind, handle)


READ_AHEAD = 64


async def _pipe_responses(call: Any, context: grpc.aio.ServicerContext, upstream: Upstream, index: int) -> None:
    """Relays the upstream's responses with read()/write(): no generator layer per message."""
    # Read ahead while writing: the upstream read and the downstream write overlap
    # instead of alternating (bounded, so a slow client still slows the upstream).
    ahead: asyncio.Queue[Any] = asyncio.Queue(maxsize=READ_AHEAD)

    async def read_upstream() -> None:
        try:
            while True:
                response = await call.read()
                await ahead.put(response)
                if response is grpc.aio.EOF:
                    return
        except grpc.aio.AioRpcError as error:
            await ahead.put(error)

    reader: asyncio.Task[None] | None = None
    try:
        await _relay_initial(context, call)
        reader = asyncio.ensure_future(read_upstream())
        while True:
            item = await ahead.get()
            if item is grpc.aio.EOF:
                break
            if isinstance(item, grpc.aio.AioRpcError):
                await _relay_error(context, item, upstream, index)  # aborts the call
            await context.write(item)
    except grpc.aio.AioRpcError as error:
        await _relay_error(context, error, upstream, index)
    finally:
        if reader is not None and not reader.done():
            reader.cancel()
        # Client cancelled, or its deadline passed: stop the upstream work too.
        if not call.done():
            call.cancel()
    await _relay_trailing(context, call)


def _forward_to_response_stream(upstream: Upstream, path: str, kind: str) -> grpc.RpcMethodHandler:
    """Server-streaming and bidi methods: the responses piped back as they come."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> None:
        index = upstream.pick()
        call = upstream.multicallable(index, kind, path)(
            request,
            timeout=context.time_remaining(),
            metadata=request_metadata(context.invocation_metadata()) + upstream.extra_metadata,
        )
        await _pipe_responses(call, context, upstream, index)

    return make_handler(kind, handle)


def _forwarder(upstream: Upstream, path: str, kind: str) -> grpc.RpcMethodHandler:
    forward = _forward_to_response_stream if responds_with_stream(kind) else _forward_to_one_response
    return forward(upstream, path, kind)


def forwarding_handler(service: ServiceDescriptor, upstream: Upstream) -> grpc.GenericRpcHandler:
    """Every method of `service`, each of its own call kind, forwarded to `upstream`."""
    handlers = {
        method.name: _forwarder(upstream, f"/{service.full_name}/{method.name}", method_kind(method))
        for method in service.methods
    }
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def refusing_handler(service: ServiceDescriptor, reason: str) -> grpc.GenericRpcHandler:
    """Every method of `service` answered UNIMPLEMENTED with `reason`: internal APIs stay internal."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        # A coroutine serves every kind: it ends the call before any response.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, reason)

    handlers = {method.name: make_handler(method_kind(method), refuse) for method in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


async def cancel_quietly(task: asyncio.Task[Any]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
