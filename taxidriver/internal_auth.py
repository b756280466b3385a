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

from taxidriver.errors import ServiceError, refusing
from taxidriver.handlers import client_interceptors as rewriting_interceptors

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
    return refusing(handler, ServiceError(code=grpc.StatusCode.UNAUTHENTICATED, message=message, reason=reason))


def client_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """aio channel interceptors that send `token` on every call kind; none without a token."""
    if not token:
        return []

    def with_token(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*tuple(details.metadata or ()))
        metadata.add(INTERNAL_TOKEN_KEY, token)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    return rewriting_interceptors(with_token)
