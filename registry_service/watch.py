"""Live watching of runs: one LISTEN connection per registry process fans out to every watcher.

Notifications are only wake-ups ("run X changed"); a woken watcher reads what
it has not yet sent from its own cursor. That makes coalesced or duplicated
notifications harmless, and a watcher never polls: with nothing happening, it
waits on an asyncio.Event. After the LISTEN connection is re-established every
watcher is woken once, so nothing committed while it was down is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from registry_service import episodes
from registry_service.convert import STATUS_FROM_DB, TERMINAL_STATUSES, curves_from_rows
from registry_service.db import EVENTS_CHANNEL
from taxidriver.errors import ServiceError, bad_field, not_found
from taxidriver.registry.v1 import resources_pb2

log = logging.getLogger(__name__)

CHANNEL = EVENTS_CHANNEL
# Episodes per event when replaying, so one message stays far below the gRPC size limit.
MAX_EPISODES_PER_EVENT = 10_000

RUN_STATE = """
SELECT status, stop_reason, error_message, episodes_recorded, episodes_planned
FROM training_runs WHERE run_id = %s
"""


class EventHub:
    """Owns the process's LISTEN connection and the per-run sets of waiting watchers."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="registry-listen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def subscribe(self, run_id: uuid.UUID) -> Iterator[asyncio.Event]:
        wake = asyncio.Event()
        key = str(run_id)
        self._watchers.setdefault(key, set()).add(wake)
        try:
            yield wake
        finally:
            waiting = self._watchers.get(key)
            if waiting is not None:
                waiting.discard(wake)
                if not waiting:
                    del self._watchers[key]

    def _wake_all(self) -> None:
        for waiting in self._watchers.values():
            for wake in waiting:
                wake.set()

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")  # CHANNEL is our constant
                    self.listening.set()
                    self._wake_all()
                    async for note in conn.notifies():
                        try:
                            run_id = json.loads(note.payload)["run_id"]
                        except (ValueError, KeyError, TypeError):
                            continue
                        for wake in self._watchers.get(run_id, ()):
                            wake.set()
            except (psycopg.Error, OSError) as exc:
                self.listening.clear()
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
                await asyncio.sleep(1.0)


def _status_event(run_id: uuid.UUID, state: tuple[Any, ...]) -> resources_pb2.RunEvent:
    status, stop_reason, error_message, recorded, planned = state
    return resources_pb2.RunEvent(
        run_id=str(run_id),
        status_change=resources_pb2.RunStatusChange(
            status=STATUS_FROM_DB[status],  # type: ignore[arg-type]
            stop_reason=stop_reason,
            error_message=error_message,
            episodes_recorded=recorded,
            episodes_planned=planned,
        ),
    )


async def watch_one(
    pool: AsyncConnectionPool, hub: EventHub, run_id: uuid.UUID, from_episode: int, status_only: bool
) -> AsyncIterator[resources_pb2.RunEvent]:
    """Stored episodes from `from_episode`, then live ones and status changes, ending after a terminal status."""
    cursor = from_episode
    last_status: tuple[Any, ...] | None = None
    first = True
    with hub.subscribe(run_id) as wake:
        while True:
            wake.clear()
            async with pool.connection() as conn:
                row = await (await conn.execute(RUN_STATE, (run_id,))).fetchone()
                if row is None:
                    if first:
                        raise not_found("run", str(run_id))
                    return  # deleted while watched
                recorded = row[3]
                chunks = []
                if not status_only and cursor < recorded:
                    chunks = await episodes.read_chunks(conn, run_id, cursor)
            first = False
            if chunks:
                curves = curves_from_rows(chunks, cursor)
                available = min(len(curves.rewards), recorded - cursor)
                for start in range(0, available, MAX_EPISODES_PER_EVENT):
                    end = min(start + MAX_EPISODES_PER_EVENT, available)
                    yield resources_pb2.RunEvent(
                        run_id=str(run_id),
                        episodes=resources_pb2.EpisodeCurves(
                            first_episode=cursor + start,
                            rewards=curves.rewards[start:end],
                            steps=curves.steps[start:end],
                            epsilons=curves.epsilons[start:end],
                            td_errors=curves.td_errors[start:end],
                            successes=curves.successes[start:end],
                        ),
                    )
                cursor += available
            state = tuple(row)
            # Episode progress travels as episode events; a status event marks a change of status.
            if last_status is None or state[:3] != last_status[:3]:
                yield _status_event(run_id, state)
                last_status = state
            if state[0] in TERMINAL_STATUSES:
                return
            await wake.wait()


class _RunEnded:
    pass


class _ReaderEnded:
    pass


async def watch_many(pool: AsyncConnectionPool, hub: EventHub, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """WatchRuns: each request adds or removes runs; events of all watched runs are interleaved.

    The stream ends once the client has half-closed and every watched run has ended.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue()
    watches: dict[uuid.UUID, asyncio.Task[None]] = {}

    async def pump(run_id: uuid.UUID, from_episode: int, status_only: bool) -> None:
        try:
            async for event in watch_one(pool, hub, run_id, from_episode, status_only):
                queue.put_nowait(event)
        except ServiceError as error:
            queue.put_nowait(error)

    async def read_requests() -> None:
        try:
            async for request in requests:
                if request.from_episode < 0:
                    raise bad_field("from_episode", "must be >= 0")
                for index, text in enumerate(request.remove_run_ids):
                    try:
                        task = watches.pop(uuid.UUID(text), None)
                    except ValueError:
                        raise bad_field(f"remove_run_ids[{index}]", "must be a UUID") from None
                    if task is not None:
                        task.cancel()
                for index, text in enumerate(request.add_run_ids):
                    try:
                        run_id = uuid.UUID(text)
                    except ValueError:
                        raise bad_field(f"add_run_ids[{index}]", "must be a UUID") from None
                    if run_id not in watches or watches[run_id].done():
                        queue.put_nowait(_RunStarted())
                        task = asyncio.create_task(pump(run_id, request.from_episode, request.status_only))
                        # A callback, not `finally`: a task cancelled before it starts never runs its body.
                        task.add_done_callback(lambda _: queue.put_nowait(_RunEnded()))
                        watches[run_id] = task
        except ServiceError as error:
            queue.put_nowait(error)
        finally:
            queue.put_nowait(_ReaderEnded())

    reader = asyncio.create_task(read_requests())
    open_runs = 0
    reading = True
    try:
        while reading or open_runs:
            item = await queue.get()
            if isinstance(item, ServiceError):
                raise item
            if isinstance(item, _RunStarted):
                open_runs += 1
            elif isinstance(item, _RunEnded):
                open_runs -= 1
            elif isinstance(item, _ReaderEnded):
                reading = False
            else:
                yield item
    finally:
        reader.cancel()
        for task in watches.values():
            task.cancel()


class _RunStarted:
    pass
