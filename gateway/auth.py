"""API keys and roles, checked once at the gateway for every public call.

Callers send `authorization: Bearer <key>`. The gateway hashes the key, asks the
registry's internal AuthService who it belongs to (answers cached briefly),
and lets the call through only if the user's role covers the method. Each
method's least role is declared in the protos, next to the method
(`option (taxidriver.options.v1.access) = {least_role: ...}`); the table is
built from the descriptors at start-up and a public method without the option
stops the gateway from starting (taxidriver/access.py). Health and reflection
(grpc's own `/grpc.*` services) stay open: probes and `grpcurl list`. The
caller's identity travels upstream (`x-caller`: user id, `x-caller-name`, `x-caller-role`),
never the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from cachetools import TLRUCache

from taxidriver.access import Caller, role_name
from taxidriver.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from taxidriver.errors import ServiceError, refusing
from taxidriver.handlers import rewrap
from taxidriver.internal_auth import client_interceptors
from taxidriver.keepalive import channel_options
from taxidriver.retry import Backoff, Delays
from taxidriver.server import GRPC_INFRA_PREFIX

# The caller a key belongs to; forwarded upstream as x-caller, x-caller-name, x-caller-role.
Principal = Caller


log = logging.getLogger(__name__)

# The authenticated caller of the current call, read by the forwarding handlers.
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def _unauthenticated(message: str, reason: str) -> ServiceError:
    return ServiceError(code=grpc.StatusCode.UNAUTHENTICATED, message=message, reason=reason)


class KeyAuthenticator:
    """Resolves bearer keys through the registry, caching answers for `ttl` seconds.

    The cache is trusted only while the registry's WatchKeyChanges stream is live:
    every change it reports (a key revoked, a user disabled or given another role)
    empties the cache at once, and while the stream is down nothing is served from
    the cache. So a revocation never waits for the ttl. Each answer expires on its own
    (a refusal after at most 5 s); a full cache drops its least recently used answer.
    """

    def __init__(
        self, registry_target: str, *, ttl: float = 30.0, max_entries: int = 10_000, internal_token: str = ""
    ) -> None:
        self.channel = grpc.aio.insecure_channel(
            registry_target, options=channel_options(), interceptors=client_interceptors(internal_token)
        )
        self.stub = auth_service_pb2_grpc.AuthServiceStub(self.channel)
        self.registry_target = registry_target
        self.ttl = ttl
        self.max_entries = max_entries
        # Key digest -> answer; each answer carries its own expiry (cachetools' time-aware LRU).
        self._cache: TLRUCache[str, Principal | ServiceError] = TLRUCache(
            maxsize=max_entries, ttu=self._expiry, timer=time.monotonic
        )
        # Bumped whenever cached answers may be stale: an answer fetched across a bump is not cached.
        self._generation = 0
        # Set while the key-change stream is live (the cache may be used).
        self.watching = asyncio.Event()
        self._watch_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Subscribe to key changes (nothing to invalidate without a cache)."""
        if self.ttl > 0:
            self._watch_task = asyncio.create_task(self._watch_key_changes(), name="gateway-key-changes")

    def _forget(self) -> None:
        self._generation += 1
        self._cache.clear()

    async def _watch_key_changes(self) -> None:
        delays = Delays(Backoff(first=0.2, cap=2.0))
        while True:
            try:
                async for change in self.stub.WatchKeyChanges(auth_service_pb2.WatchKeyChangesRequest()):
                    # The first message says the stream is live: what was cached before may be stale.
                    self._forget()
                    if not self.watching.is_set():
                        self.watching.set()
                        delays.reset()
                    elif change.user_id:
                        log.info("keys of user %s changed; cached key answers dropped", change.user_id)
                log.warning("key-change stream from %s ended; not caching keys", self.registry_target)
            except grpc.aio.AioRpcError as error:
                if self.watching.is_set():
                    log.warning("key-change stream lost (%s); not caching keys until it is back", error.code().name)
            self.watching.clear()
            self._forget()
            await delays.wait()

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise _unauthenticated("missing API key: send metadata 'authorization: Bearer <key>'", "API_KEY_MISSING")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _unauthenticated("authorization metadata must be 'Bearer <key>'", "API_KEY_MALFORMED")
        digest = hashlib.sha256(key.strip().encode()).hexdigest()
        generation = self._generation
        cached = self._cache.get(digest) if self.watching.is_set() else None
        if isinstance(cached, ServiceError):
            raise cached
        if cached is not None:
            return cached
        try:
            reply = await self.stub.Authenticate(auth_service_pb2.AuthenticateRequest(key_sha256=digest), timeout=5)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                refusal = _unauthenticated("unknown, revoked or disabled API key", "API_KEY_INVALID")
                self._remember(digest, refusal, generation)
                raise refusal from error
            raise ServiceError(
                code=grpc.StatusCode.UNAVAILABLE,
                message=f"cannot check API keys: registry {self.registry_target} answered {error.code().name}",
                reason="AUTH_BACKEND_UNAVAILABLE",
            ) from error
        principal = Principal(user_id=reply.user_id, username=reply.username, role=reply.role)
        self._remember(digest, principal, generation)
        return principal

    def _expiry(self, digest: str, answer: Principal | ServiceError, now: float) -> float:
        """When a cached answer expires: a refusal soon (the key may be created meanwhile)."""
        return now + (min(self.ttl, 5.0) if isinstance(answer, ServiceError) else self.ttl)

    def _remember(self, digest: str, answer: Principal | ServiceError, generation: int) -> None:
        if generation != self._generation or not self.watching.is_set() or self.max_entries <= 0:
            return  # keys changed (or the watch was down) while the registry answered
        self._cache[digest] = answer

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await self.channel.close()


def _as(principal: Principal, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    def bind(kind: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            current_principal.set(principal)  # this call's task only
            return await behavior(request, context)

        return run

    return rewrap(handler, bind)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED without a valid key, PERMISSION_DENIED below the method's role.

    `roles` is the complete table of the public methods (taxidriver.access.least_roles).
    grpc's own services (health, reflection) are anonymous on purpose: probes and
    `grpcurl list` carry no key. Any other path is refused UNIMPLEMENTED, whatever
    handler it may have: a method that declares no access is never routed.
    """

    def __init__(self, authenticator: KeyAuthenticator, roles: dict[str, int]) -> None:
        self.authenticator = authenticator
        self.roles = roles

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(GRPC_INFRA_PREFIX):
            return handler  # nothing to call, or health / reflection: anonymous
        required = self.roles.get(handler_call_details.method)
        if required is None:
            # Internal services (refused anyway) and anything else outside the table: deny by default.
            return refusing(
                handler,
                ServiceError(
                    code=grpc.StatusCode.UNIMPLEMENTED,
                    message=f"{handler_call_details.method} is not a public method: not routed by the gateway",
                    reason="NOT_PUBLIC",
                ),
            )
        metadata = {key: value for key, value in handler_call_details.invocation_metadata or ()}
        authorization = metadata.get("authorization")
        try:
            principal = await self.authenticator.authenticate(authorization if isinstance(authorization, str) else None)
        except ServiceError as error:
            return refusing(handler, error)
        if principal.role < required:
            method = handler_call_details.method.rsplit("/", 1)[-1]
            return refusing(
                handler,
                ServiceError(
                    code=grpc.StatusCode.PERMISSION_DENIED,
                    message=(
                        f"{method} needs the {role_name(required)} role; "
                        f"{principal.username} has {role_name(principal.role)}"
                    ),
                    reason="ROLE_TOO_LOW",
                    metadata={"required_role": role_name(required), "method": method},
                ),
            )
        return _as(principal, handler)
