"""The four call kinds (unary, server stream, client stream, bidi) dispatched once.

Server side: `rewrap` rebuilds an RpcMethodHandler around a new behavior (errors,
telemetry, authentication wrap behaviors with it) and `make_handler` builds one for a
method of any kind (the gateway's forwarders). Client side: `client_interceptors` turns
one rewrite of a call's details into grpc.aio interceptors for every kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor

# grpc's kind names, and what our metrics call them.
KIND_LABELS = {
    "unary_unary": "unary",
    "stream_unary": "client_stream",
    "unary_stream": "server_stream",
    "stream_stream": "bidi_stream",
}
_FACTORIES: dict[str, Callable[..., grpc.RpcMethodHandler]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}
_KEEP: Any = object()

Behavior = Callable[..., Any]


def kind_of(handler: grpc.RpcMethodHandler) -> str:
    for kind in _FACTORIES:
        if getattr(handler, kind):
            return kind
    raise ValueError("handler has no behavior")


def method_kind(method: MethodDescriptor) -> str:
    """grpc's kind name of a proto method ("unary_stream"...), also a grpc.aio.Channel method name."""
    return f"{'stream' if method.client_streaming else 'unary'}_{'stream' if method.server_streaming else 'unary'}"


def responds_with_stream(kind: str) -> bool:
    return kind.endswith("_stream")


def make_handler(
    kind: str,
    behavior: Behavior,
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
    response_serializer: Callable[[Any], bytes] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of call kind `kind` (no (de)serializers: bytes in, bytes out)."""
    return _FACTORIES[kind](
        behavior, request_deserializer=request_deserializer, response_serializer=response_serializer
    )


def rewrap(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[str, Behavior], Behavior],
    *,
    request_deserializer: Callable[[bytes], Any] | None = _KEEP,
) -> grpc.RpcMethodHandler:
    """The same handler with `wrap(kind, behavior)` as its behavior (deserializer kept unless given)."""
    kind = kind_of(handler)
    return make_handler(
        kind,
        wrap(kind, getattr(handler, kind)),
        request_deserializer=handler.request_deserializer if request_deserializer is _KEEP else request_deserializer,
        response_serializer=handler.response_serializer,
    )


DetailsRewrite = Callable[[grpc.aio.ClientCallDetails], grpc.aio.ClientCallDetails]


class _Rewriting:
    def __init__(self, rewrite: DetailsRewrite) -> None:
        self._rewrite = rewrite

    async def _intercept(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._rewrite(client_call_details), request)


# One class per kind: grpc.aio files a channel interceptor under the first kind it implements only.
class _UnaryUnary(_Rewriting, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _Rewriting._intercept


class _UnaryStream(_Rewriting, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _Rewriting._intercept


class _StreamUnary(_Rewriting, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _Rewriting._intercept


class _StreamStream(_Rewriting, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _Rewriting._intercept


def client_interceptors(rewrite: DetailsRewrite) -> list[grpc.aio.ClientInterceptor]:
    """grpc.aio channel interceptors applying `rewrite` to the details of every call, of every kind."""
    return [kind(rewrite) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]
