"""An optional shared secret on the internal ports (registry, trainer).

The registry and the trainer accept DeleteRun, RegisterRun and every ingest call from
whoever reaches their port: API keys and roles are checked at the gateway only. By default
they listen on loopback (127.0.0.1), which is the protection. A deployment that exposes
them on a network (containers, Kubernetes) sets INTERNAL_TOKEN to the same secret in the
registry, the trainers and the gateway: the servers then refuse any call without it
(UNAUTHENTICATED), and our clients send it as `x-internal-token` metadata. Health and
reflection stay open, for probes (Kubernetes' native gRPC probes send no metadata).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from taxidriver.errors import ServiceError
from taxidriver.handlers import rewrap

INTERNAL_TOKEN_KEY = "x-internal-token"
# grpc's own services (health probes, reflection) never need the token.
OPEN_PREFIX = "/grpc."


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((INTERNAL_TOKEN_KEY, token),) if token else ()


class InternalTokenInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for any call to our services without the shared internal token."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an internal token is required")
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIX):
            return handler
        sent: Any = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == INTERNAL_TOKEN_KEY:
                sent = value
        if sent is None:
            return _refusing(
                handler,
                "missing internal token (x-internal-token): this port is internal",
                reason="INTERNAL_TOKEN_MISSING",
            )
        presented = sent.encode() if isinstance(sent, str) else bytes(sent)
        if not hmac.compare_digest(presented, self._token):
            return _refusing(handler, "wrong internal token (x-internal-token)", reason="INTERNAL_TOKEN_INVALID")
        return handler


def _refusing(handler: grpc.RpcMethodHandler, message: str, *, reason: str) -> grpc.RpcMethodHandler:
    error = ServiceError(code=grpc.StatusCode.UNAUTHENTICATED, message=message, reason=reason)

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort_with_status(error.to_status())

    return rewrap(handler, lambda kind, behavior: refuse)


class _WithToken:
    """Adds the internal token to a call's metadata (one subclass per call kind: grpc.aio
    files a channel interceptor under the first kind it implements only)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*tuple(details.metadata or ()))
        metadata.add(INTERNAL_TOKEN_KEY, self._token)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnary(_WithToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _UnaryStream(_WithToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _StreamUnary(_WithToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _StreamStream(_WithToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def client_interceptors(token: str) -> list[Any]:
    """aio channel interceptors that send `token` on every call kind; none without a token."""
    if not token:
        return []
    return [kind(token) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]
