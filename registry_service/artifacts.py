"""Storing and reading binary artifacts (models, checkpoints, plots) and saved_models rows."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from psycopg import AsyncConnection, errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from registry_service import page_tokens
from registry_service.convert import ARTIFACT_COLUMNS, KIND_TO_DB, MODEL_COLUMNS, artifact_from_row, parse_uuid
from taxidriver.errors import bad_field, not_found, resource_exhausted
from taxidriver.registry.v1 import registry_service_pb2, resources_pb2

CHUNK_BYTES = 64 * 1024

UPSERT_ARTIFACT = f"""
INSERT INTO artifacts (artifact_id, run_id, kind, name, content_type, size, sha256, episode, metadata, data, request_id)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (run_id, kind, name) DO UPDATE SET
    content_type = EXCLUDED.content_type, size = EXCLUDED.size, sha256 = EXCLUDED.sha256,
    episode = EXCLUDED.episode, metadata = EXCLUDED.metadata, data = EXCLUDED.data, created_at = now()
RETURNING {ARTIFACT_COLUMNS}
"""

# Imports never replace anything: a name already taken on the run is the caller's conflict.
INSERT_ARTIFACT = f"""
INSERT INTO artifacts (artifact_id, run_id, kind, name, content_type, size, sha256, episode, metadata, data, request_id)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
RETURNING {ARTIFACT_COLUMNS}
"""

UPSERT_SAVED_MODEL = f"""
INSERT INTO saved_models (model_id, run_id, model_name, model_path, model_size, model_metadata, artifact_id)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (artifact_id) DO UPDATE SET
    model_name = EXCLUDED.model_name, model_size = EXCLUDED.model_size,
    model_metadata = EXCLUDED.model_metadata, created_at = now()
RETURNING {MODEL_COLUMNS}
"""


async def store_artifact(
    conn: AsyncConnection[Any],
    *,
    run_id: uuid.UUID | None,
    kind: str,
    name: str,
    content_type: str,
    episode: int,
    metadata: dict[str, Any],
    data: bytes,
    request_id: str | None = None,
    replace: bool = True,
) -> tuple[resources_pb2.Artifact, dict[str, Any] | None] | None:
    """Store an artifact; a model also gets its saved_models row (returned).

    With `replace` (the trainer's own uploads, retried blindly) an artifact of the same
    (run_id, kind, name) is replaced. Without it (imports) nothing is replaced: None when
    the name or the request_id is already taken.
    """
    cursor = conn.cursor(row_factory=dict_row)
    try:
        async with conn.transaction():
            await cursor.execute(
                UPSERT_ARTIFACT if replace else INSERT_ARTIFACT,
                (
                    uuid.uuid4(),
                    run_id,
                    kind,
                    name,
                    content_type or "application/octet-stream",
                    len(data),
                    hashlib.sha256(data).hexdigest(),
                    episode,
                    Jsonb(metadata),
                    data,
                    request_id,
                ),
            )
    except errors.UniqueViolation:
        raise bad_field("request_id", "was already used for another upload") from None
    row = await cursor.fetchone()
    if row is None:
        assert not replace
        return None
    artifact = artifact_from_row(row)
    artifact_id = row["artifact_id"]
    model_row = None
    if kind == "model":
        await cursor.execute(
            UPSERT_SAVED_MODEL,
            (uuid.uuid4(), run_id, name[:100], f"artifacts/{artifact_id}", len(data), Jsonb(metadata), artifact_id),
        )
        model_row = await cursor.fetchone()
        if run_id is not None:
            await conn.execute(
                "UPDATE training_runs SET model_path = %s, updated_at = now() WHERE run_id = %s",
                (f"artifacts/{artifact_id}", run_id),
            )
    elif kind == "plot" and run_id is not None:
        await conn.execute(
            "UPDATE training_runs SET plots = plots || jsonb_build_object(%s::text, %s::text),"
            " updated_at = now() WHERE run_id = %s",
            (name, str(artifact_id), run_id),
        )
    return artifact, model_row


async def collect_upload(messages: AsyncIterator[Any], header_field: str, limit: int) -> tuple[Any | None, bytes]:
    """Read `header then chunks` from a client stream, refusing more than `limit` bytes."""
    header = None
    parts: list[bytes] = []
    size = 0
    async for message in messages:
        which = message.WhichOneof("content")
        if header is None:
            if which != "header":
                raise bad_field(header_field, "the first message must carry the header")
            header = getattr(message, "header")  # noqa: B009 - same name on both upload messages
            continue
        if which != "chunk":
            raise bad_field(header_field, "only the first message may carry a header")
        size += len(message.chunk)
        if size > limit:
            raise resource_exhausted(f"upload larger than {limit} bytes", reason="UPLOAD_TOO_LARGE")
        parts.append(message.chunk)
    return header, b"".join(parts)


def split_chunks(data: bytes, size: int = CHUNK_BYTES) -> Sequence[bytes]:
    """At least one chunk, so an empty artifact still sends its metadata."""
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


# ListArtifacts: a run's artifacts in (kind, episode, name) order, unique per run, so the last
# one shown is where the next page starts (keyset paging). Without a page size, all of them.
LIST_ARTIFACTS = f"""
SELECT {ARTIFACT_COLUMNS} FROM artifacts
WHERE run_id = %(run_id)s AND (%(kind)s::text IS NULL OR kind = %(kind)s)
  AND (%(after_kind)s::text IS NULL OR (kind, episode, name) > (%(after_kind)s, %(after_episode)s::int, %(after_name)s))
ORDER BY kind, episode, name
LIMIT %(limit)s
"""
RUN_EXISTS = "SELECT 1 FROM training_runs WHERE run_id = %s"
MAX_ARTIFACT_PAGE = 1000


def _binding(run_id: uuid.UUID, kind: str | None) -> str:
    """What a token is valid for: this run's listing of this kind."""
    return page_tokens.binding("artifacts", str(run_id), kind or "")


def _encode_token(bound: str, row: dict[str, Any]) -> str:
    return page_tokens.encode(bound, [row["kind"], row["episode"], row["name"]], row["artifact_id"])


def _artifact_key(values: list[Any], ident: uuid.UUID) -> tuple[str, int, str]:
    kind, episode, name = values
    if not (isinstance(kind, str) and isinstance(episode, int) and isinstance(name, str)):
        raise ValueError("(kind, episode, name) expected")
    return kind, episode, name


def _decode_token(token: str, bound: str) -> tuple[str, int, str] | None:
    """The (kind, episode, name) a page starts after; INVALID_ARGUMENT `page_token` if not ours."""
    return page_tokens.decode(token, bound, _artifact_key)


async def list_artifacts(
    pool: AsyncConnectionPool,
    request: registry_service_pb2.ListArtifactsRequest,
    ensure_plots: Callable[[uuid.UUID], Awaitable[None]] | None = None,
) -> registry_service_pb2.ListArtifactsResponse:
    """ListArtifacts: every artifact of the run without page_size (as before paging), else a page.

    A listing that may show plots first has `ensure_plots` render a completed run's plots if
    they are not stored yet (registry_service/plot_rendering.py): never NOT_FOUND or an empty
    answer for plots that will exist.
    """
    run_id = parse_uuid(request.run_id, "run_id")
    kind = KIND_TO_DB.get(request.kind) if request.kind else None
    if request.kind and kind is None:
        raise bad_field("kind", "unknown artifact kind")
    if request.page_size < 0:
        raise bad_field("page_size", "must be >= 0 (0: every artifact)")
    size = min(request.page_size, MAX_ARTIFACT_PAGE) or None
    bound = _binding(run_id, kind)
    after = _decode_token(request.page_token, bound)
    if ensure_plots is not None and kind in (None, "plot"):
        await ensure_plots(run_id)
    async with pool.connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(RUN_EXISTS, (run_id,))
        if await cursor.fetchone() is None:
            raise not_found("run", str(run_id))
        after_kind, after_episode, after_name = after or (None, None, None)
        await cursor.execute(
            LIST_ARTIFACTS,
            {
                "run_id": run_id,
                "kind": kind,
                "after_kind": after_kind,
                "after_episode": after_episode,
                "after_name": after_name,
                # One more than asked: whether another page follows.
                "limit": size + 1 if size else None,
            },
        )
        rows = await cursor.fetchall()
    token = ""
    if size and len(rows) > size:
        rows = rows[:size]
        token = _encode_token(bound, rows[-1])
    return registry_service_pb2.ListArtifactsResponse(
        artifacts=[artifact_from_row(r) for r in rows], next_page_token=token
    )
