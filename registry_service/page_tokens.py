"""The one page-token scheme of the registry's keyset listings.

A token is base64url(JSON {"b": binding, "k": [sort values...], "id": "<uuid>"}): the sort
values and the id of the last item shown, and a binding (a digest of the listing's scope, filter
and ordering) so that a token is refused by any other listing. Runs (ListRuns,
SearchRunsByParams) carry one value per sort key (filters.Ordering reads them back, checked
against each key's type); annotations and models carry their creation time.

Tokens are user input: anything that is not a token we issued is INVALID_ARGUMENT naming
`page_token`. Tokens handed out before this scheme was the only one (ListAnnotations and
ListModels had their own, {"s", "t", "id"}) are refused that way too: a client starts its
listing again from the first page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from taxidriver.errors import bad_field

T = TypeVar("T")

# What decoding a token someone made up can raise, besides our own ServiceError.
_FORGED = (ValueError, KeyError, TypeError, OverflowError, RecursionError, binascii.Error, UnicodeDecodeError)


def binding(scope: str, *parts: str) -> str:
    """What a token is valid for: its listing (`scope`) and the request's filter and ordering."""
    return hashlib.sha256(json.dumps([scope, *parts]).encode()).hexdigest()[:16]


def encode(bound: str, values: list[Any], ident: uuid.UUID | str) -> str:
    payload = {"b": bound, "k": values, "id": str(ident)}
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def _load(token: str) -> Any:
    """A token's JSON payload; non-standard constants (NaN, Infinity) are not JSON."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} in a page token")

    return json.loads(base64.urlsafe_b64decode(token.encode()), parse_constant=refuse)


def decode(token: str, bound: str, read: Callable[[list[Any], uuid.UUID], T], *, stale: str = "") -> T | None:
    """`read(values, id)` of a token issued for `bound` (None for no token).

    `stale`: the message for a genuine token of the same listing issued for another binding
    (another filter or order_by); without it, such a token is simply not a token of this listing.
    """
    if not token:
        return None
    try:
        payload = _load(token)
        values, ident = payload["k"], payload["id"]
        if not isinstance(ident, str) or not isinstance(values, list):
            raise TypeError("forged token")
        if payload["b"] != bound:
            if stale:
                raise bad_field("page_token", stale)
            raise ValueError("another listing's token")
        return read(values, uuid.UUID(ident))
    except _FORGED:
        raise bad_field("page_token", "is not a page token of this listing") from None


def _time_key(values: list[Any], ident: uuid.UUID) -> tuple[datetime, uuid.UUID]:
    if len(values) != 1 or not isinstance(values[0], str):
        raise ValueError("one creation time expected")
    moment = datetime.fromisoformat(values[0])
    if moment.tzinfo is None:
        raise ValueError("naive timestamp")
    return moment, ident


def encode_time_key(scope: str, created_at: datetime, ident: uuid.UUID) -> str:
    """A token after (created_at, id), for listings ordered by creation (annotations, models)."""
    return encode(binding(scope), [created_at.isoformat()], ident)


def decode_time_key(scope: str, token: str) -> tuple[datetime, uuid.UUID] | None:
    return decode(token, binding(scope), _time_key)
