"""Per-episode curves stored as columnar array chunks.

Arrays go to PostgreSQL in its binary array format, built with numpy, so a
batch of thousands of episodes costs a few memcpy-sized operations rather than
one Python call per value (the ingest path must sustain >= 500k episodes/s).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
from psycopg import AsyncConnection
from psycopg.adapt import Dumper, Loader
from psycopg.pq import Format
from psycopg.rows import dict_row

FLOAT4_ARRAY_OID = 1021
INT4_ARRAY_OID = 1007
BOOL_ARRAY_OID = 1000
_ELEMENTS = {FLOAT4_ARRAY_OID: (700, ">f4", 4), INT4_ARRAY_OID: (23, ">i4", 4), BOOL_ARRAY_OID: (16, "?", 1)}

INSERT_CHUNK = """
INSERT INTO run_episodes (run_id, first_episode, episode_count, rewards, steps, epsilons, td_errors, successes)
VALUES (%s, %s, %s, %b, %b, %b, %b, %b)
ON CONFLICT (run_id, first_episode) DO NOTHING
"""

SELECT_CHUNKS = """
SELECT first_episode, episode_count, rewards, steps, epsilons, td_errors, successes
FROM run_episodes
WHERE run_id = %s AND first_episode + episode_count > %s
ORDER BY first_episode
"""


class PackedArray:
    """A one-dimensional array already encoded in PostgreSQL's binary array format."""

    __slots__ = ("data",)
    oid = 0

    def __init__(self, data: bytes) -> None:
        self.data = data


class Float4Array(PackedArray):
    oid = FLOAT4_ARRAY_OID


class Int4Array(PackedArray):
    oid = INT4_ARRAY_OID


class BoolArray(PackedArray):
    oid = BOOL_ARRAY_OID


_CLASSES: dict[int, type[PackedArray]] = {cls.oid: cls for cls in (Float4Array, Int4Array, BoolArray)}


def _dumper_for(cls: type[PackedArray]) -> type[Dumper]:
    class PackedArrayDumper(Dumper):
        format = Format.BINARY
        oid = cls.oid

        def dump(self, obj: Any) -> bytes:
            return obj.data  # type: ignore[no-any-return]

    return PackedArrayDumper


def pack(values: Sequence[Any] | np.ndarray, oid: int) -> PackedArray:
    element_oid, dtype, width = _ELEMENTS[oid]
    array = np.asarray(values)
    body = np.empty(len(array), dtype=[("len", ">i4"), ("value", dtype)])
    body["len"] = width
    body["value"] = array
    return _CLASSES[oid](struct.pack("!iiIii", 1, 0, element_oid, len(array), 1) + body.tobytes())


def register(adapters: Any) -> None:
    """Teach a connection (or psycopg.adapters) to send PackedArray values as-is."""
    for cls in _CLASSES.values():
        adapters.register_dumper(cls, _dumper_for(cls))


# A batch of episodes in one statement (one round trip, in autocommit: its own transaction).
# The row lock orders concurrent or replayed batches of a run: FOR UPDATE waits for the other
# writer and then reads the row as it committed it, so each episode index is stored once. The
# chunk and the new count are written only if the batch is accepted (a fresh writer, no gap,
# not all stored yet, the run not finished, within the plan); the caller learns why not from
# the run's row, returned either way (no row: no such run). A partly stored batch keeps its
# new tail (arrays slice from 1: the sent arrays are 1-based; typed, since an optional one may be NULL).
STORE_BATCH = """
WITH run AS (
    SELECT status, episodes_recorded, episodes_planned, lease_epoch
    FROM training_runs WHERE run_id = %(run_id)s FOR UPDATE
), accepted AS (
    SELECT episodes_recorded AS recorded, episodes_recorded - %(first)s AS skip FROM run
    WHERE (%(epoch)s = 0 OR lease_epoch = %(epoch)s)
        AND %(first)s <= episodes_recorded AND episodes_recorded < %(end)s
        AND status <> ALL(%(terminal)s)
        AND (episodes_planned = 0 OR %(end)s <= episodes_planned)
), chunk AS (
    INSERT INTO run_episodes (run_id, first_episode, episode_count, rewards, steps, epsilons, td_errors, successes)
    SELECT %(run_id)s, recorded, %(end)s - recorded,
        CASE WHEN skip = 0 THEN %(rewards)b::real[] ELSE (%(rewards)b::real[])[skip + 1:] END,
        CASE WHEN skip = 0 THEN %(steps)b::integer[] ELSE (%(steps)b::integer[])[skip + 1:] END,
        CASE WHEN skip = 0 THEN %(epsilons)b::real[] ELSE (%(epsilons)b::real[])[skip + 1:] END,
        CASE WHEN skip = 0 THEN %(td_errors)b::real[] ELSE (%(td_errors)b::real[])[skip + 1:] END,
        CASE WHEN skip = 0 THEN %(successes)b::boolean[] ELSE (%(successes)b::boolean[])[skip + 1:] END
    FROM accepted
    ON CONFLICT (run_id, first_episode) DO NOTHING
), recorded AS (
    UPDATE training_runs SET episodes_recorded = %(end)s, updated_at = now()
    WHERE run_id = %(run_id)s AND EXISTS (SELECT FROM accepted)
    RETURNING pg_notify(%(channel)s, %(payload)s)
)
SELECT status, episodes_recorded, episodes_planned, lease_epoch, (SELECT count(*) FROM recorded) > 0
FROM run
"""


def _column(values: Any, oid: int, dtype: Any = None) -> PackedArray | None:
    """A repeated field of the batch, packed (None, SQL NULL, for an optional one left empty)."""
    if len(values) == 0:
        return None
    return pack(np.asarray(values, dtype=dtype), oid)


async def store_batch(
    conn: AsyncConnection[Any], run_id: uuid.UUID, batch: Any, *, terminal: list[str], channel: str, payload: str
) -> tuple[str, int, int, int, bool] | None:
    """Stores the batch if it is accepted (STORE_BATCH); the run's row before, and whether it was.

    `conn` must be in autocommit mode: the statement is the whole transaction.
    """
    cursor = await conn.execute(
        STORE_BATCH,
        {
            "run_id": run_id,
            "first": batch.first_episode,
            "end": batch.first_episode + len(batch.rewards),
            "epoch": batch.lease_epoch,
            "terminal": terminal,
            "rewards": _column(batch.rewards, FLOAT4_ARRAY_OID, np.float32),
            "steps": _column(batch.steps, INT4_ARRAY_OID, np.int32),
            "epsilons": _column(batch.epsilons, FLOAT4_ARRAY_OID, np.float32),
            "td_errors": _column(batch.td_errors, FLOAT4_ARRAY_OID, np.float32),
            "successes": _column(batch.successes, BOOL_ARRAY_OID),
            "channel": channel,
            "payload": payload,
        },
    )
    return await cursor.fetchone()


def unpack(data: bytes | bytearray | memoryview, oid: int) -> np.ndarray:
    """A one-dimensional array in PostgreSQL's binary array format as a numpy array (pack's inverse).

    numpy reads the values straight from the buffer: parsing the text form of a 6,000-episode
    run's five curves (30,000 values) was most of a GetRun with curves (17 ms of its ~20, issue 15).
    """
    dtype = _ELEMENTS[oid][1]
    native = np.dtype(dtype).newbyteorder("=")
    ndim, has_null, _ = struct.unpack_from("!iiI", data)
    if ndim == 0:
        return np.empty(0, dtype=native)
    if ndim != 1 or has_null:
        raise ValueError(f"episode arrays are one-dimensional without NULLs (ndim {ndim}, NULLs {has_null})")
    (count,) = struct.unpack_from("!i", data, 12)
    body = np.frombuffer(data, dtype=[("len", ">i4"), ("value", dtype)], count=count, offset=20)
    return body["value"].astype(native)


def _loader_for(oid: int) -> type[Loader]:
    class PackedArrayLoader(Loader):
        format = Format.BINARY

        def load(self, data: Any) -> np.ndarray:
            return unpack(data, oid)

    return PackedArrayLoader


async def read_chunks(conn: AsyncConnection[Any], run_id: uuid.UUID, from_episode: int = 0) -> list[dict[str, Any]]:
    """The run's chunks from `from_episode` on, in order, each curve a numpy array (binary results)."""
    cursor = conn.cursor(row_factory=dict_row, binary=True)
    for oid in _ELEMENTS:  # on this cursor only: other binary reads of arrays keep psycopg's lists
        cursor.adapters.register_loader(oid, _loader_for(oid))
    await cursor.execute(SELECT_CHUNKS, (run_id, from_episode))
    return await cursor.fetchall()


# A finished run's chunks stay as they were streamed (written once, in their final form) unless
# there are more than this many. Merging every run's chunks into one row left the streamed rows
# dead until autovacuum: 135.6 KB of file growth per 6000-episode run for 51.8 KB of live rows
# (bench_ingest, issue 15). A trainer sends a batch per checkpoint, per 5,000 episodes or per
# 0.2 s, so only long, slow runs have many small chunks, whose merge is worth its dead rows.
COMPACT_ABOVE_CHUNKS = 32

COUNT_CHUNKS = "SELECT count(*) FROM run_episodes WHERE run_id = %s"


async def compact(conn: AsyncConnection[Any], run_id: uuid.UUID) -> None:
    """Merge a finished run's many small chunks into one row (see COMPACT_ABOVE_CHUNKS)."""
    cursor = await conn.execute(COUNT_CHUNKS, (run_id,))
    counted = await cursor.fetchone()
    if counted is None or counted[0] <= COMPACT_ABOVE_CHUNKS:
        return
    chunks = await read_chunks(conn, run_id)
    total = sum(c["episode_count"] for c in chunks)

    def column(name: str, fill: Any, oid: int) -> PackedArray | None:
        if all(c[name] is None for c in chunks):
            return None
        parts = [c[name] if c[name] is not None else np.full(c["episode_count"], fill) for c in chunks]
        return pack(np.concatenate(parts), oid)

    await conn.execute("DELETE FROM run_episodes WHERE run_id = %s", (run_id,))
    await conn.execute(
        INSERT_CHUNK,
        (
            run_id,
            0,
            total,
            column("rewards", 0.0, FLOAT4_ARRAY_OID),
            column("steps", 0, INT4_ARRAY_OID),
            column("epsilons", 0.0, FLOAT4_ARRAY_OID),
            column("td_errors", 0.0, FLOAT4_ARRAY_OID),
            column("successes", False, BOOL_ARRAY_OID),
        ),
    )
