"""Rebuilding an RpcMethodHandler around a new behavior, whatever its call kind.

Interceptors that wrap behaviors (errors, telemetry, authentication) share this
so the four-kind dispatch of grpc's handler factories is written once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

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


def rewrap(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[str, Behavior], Behavior],
    *,
    request_deserializer: Callable[[bytes], Any] | None = _KEEP,
) -> grpc.RpcMethodHandler:
    """The same handler with `wrap(kind, behavior)` as its behavior (deserializer kept unless given)."""
    kind = kind_of(handler)
    return _FACTORIES[kind](
        wrap(kind, getattr(handler, kind)),
        request_deserializer=handler.request_deserializer if request_deserializer is _KEEP else request_deserializer,
        response_serializer=handler.response_serializer,
    )
