"""AuthService: resolves an API key's hash to its user and role for the gateway.

The registry owns the users table, so it answers; the gateway caches answers
and enforces roles. Keys never travel: only their SHA-256 does. Revocations
reach the gateway at once through WatchKeyChanges: triggers on `users` and
`api_keys` (migration 0013) NOTIFY every change that can invalidate a key.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import grpc
import psycopg
from psycopg_pool import AsyncConnectionPool

from taxidriver.access import ROLES
from taxidriver.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from taxidriver.errors import ServiceError, bad_field

# Filled by the triggers of migration 0013 with the user id whose keys changed.
KEY_CHANGES_CHANNEL = "taxidriver_key_changes"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

FIND_KEY = """
SELECT u.user_id, u.username, u.role, k.key_id
FROM api_keys k JOIN users u USING (user_id)
WHERE k.key_sha256 = %s AND k.revoked_at IS NULL AND NOT u.disabled
"""
# At most one write a minute per key: reads must not turn into a write storm.
TOUCH_KEY = """
UPDATE api_keys SET last_used_at = now()
WHERE key_id = %s AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
"""


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def Authenticate(
        self, request: auth_service_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.AuthenticateResponse:
        if not _SHA256_HEX.match(request.key_sha256):
            raise bad_field("key_sha256", "must be the lower-case hex SHA-256 of the API key (64 characters)")
        async with self.pool.connection() as conn:
            row = await (await conn.execute(FIND_KEY, (request.key_sha256,))).fetchone()
            if row is None:
                raise ServiceError(
                    code=grpc.StatusCode.UNAUTHENTICATED,
                    message="unknown, revoked or disabled API key",
                    reason="API_KEY_INVALID",
                )
            user_id, username, role, key_id = row
            await conn.execute(TOUCH_KEY, (key_id,))
        return auth_service_pb2.AuthenticateResponse(
            user_id=str(user_id),
            username=username,
            role=ROLES[role],  # type: ignore[arg-type]
            key_id=str(key_id),
        )

    async def WatchKeyChanges(
        self, request: auth_service_pb2.WatchKeyChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[auth_service_pb2.WatchKeyChangesResponse]:
        """One LISTEN connection per subscriber: gateways are few and subscribe once each."""
        conninfo = self.pool.conninfo
        assert isinstance(conninfo, str), "the registry's pool is opened from a URL (db.open_pool)"
        try:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                await conn.execute(f"LISTEN {KEY_CHANGES_CHANNEL}")  # our constant, not input
                yield auth_service_pb2.WatchKeyChangesResponse()
                async for note in conn.notifies():
                    yield auth_service_pb2.WatchKeyChangesResponse(user_id=note.payload)
        except (psycopg.Error, OSError) as exc:
            raise ServiceError(
                code=grpc.StatusCode.UNAVAILABLE,
                message=f"cannot watch key changes: database unreachable ({exc.__class__.__name__})",
                reason="DATABASE_UNAVAILABLE",
            ) from exc
