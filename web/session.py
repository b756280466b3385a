"""Whose key goes along with a call: the Authorization header, or the dashboard's session.

The dashboard keeps the API key in an HttpOnly, SameSite=Strict cookie (Secure
under TLS). A state-changing request authenticated by that cookie must also
carry the session's CSRF token (header `X-CSRF-Token` or form field
`csrf_token`): an HMAC of the key under the service's secret, so it needs no
server-side store and is useless without the key itself. Requests that send
their own `Authorization` header are not cookie-borne and need no token.
"""

from __future__ import annotations

import hashlib
import hmac

import grpc
from starlette.requests import Request

from taxidriver.errors import ServiceError

COOKIE = "td_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(secret: str, key: str) -> str:
    return hmac.new(secret.encode(), b"csrf:" + key.encode(), hashlib.sha256).hexdigest()


def session_key(request: Request) -> str:
    return request.cookies.get(COOKIE, "")


def check_csrf(request: Request, secret: str, key: str, submitted: str | None = None) -> None:
    token = submitted if submitted is not None else request.headers.get(CSRF_HEADER, "")
    if not token or not hmac.compare_digest(token, csrf_token(secret, key)):
        raise ServiceError(
            code=grpc.StatusCode.PERMISSION_DENIED,
            message="missing or wrong CSRF token: send the session's X-CSRF-Token header",
            reason="CSRF_TOKEN_INVALID",
        )


def call_metadata(request: Request, secret: str) -> list[tuple[str, str]]:
    """gRPC metadata for the gateway: the caller's key, and its request id if it sent one."""
    metadata: list[tuple[str, str]] = []
    authorization = request.headers.get("authorization")
    if authorization:
        metadata.append(("authorization", authorization))
    else:
        key = session_key(request)
        if key:
            if request.method not in SAFE_METHODS:
                check_csrf(request, secret, key)
            metadata.append(("authorization", f"Bearer {key}"))
    request_id = request.headers.get("x-request-id")
    if request_id and request_id.isprintable() and len(request_id) <= 128:
        metadata.append(("x-request-id", request_id))
    return metadata
