"""Streams a run's episode columns to the registry: acked, resumable, never lossy.

Batches wait in order in a bounded in-memory buffer; beyond the bound they spill to a
temporary file (one .npz per batch). One bidi IngestEpisodes stream sends the oldest
unacknowledged episodes and drops them once acked. If the registry goes away, training
goes on, the stream is reopened with backoff and the unacked episodes are replayed:
the registry stores an episode index once, so a replay never duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc._cython import cygrpc

from taxidriver.ingest.v1 import ingest_service_pb2
from taxidriver.retry import STREAM_BROKEN, Delays
from trainer_service.engine import EpisodeColumns
from trainer_service.registry_client import BACKOFF, RegistryClient, lost_reason

log = logging.getLogger(__name__)

MAX_EPISODES_PER_REQUEST = 20_000


class StreamFailed(RuntimeError):
    """The registry refused the episodes for good (e.g. the run is gone)."""


@dataclass
class _Entry:
    first_episode: int
    count: int
    columns: EpisodeColumns | None  # None when spilled
    path: Path | None = None

    @property
    def end(self) -> int:
        return self.first_episode + self.count

    def load(self) -> EpisodeColumns:
        if self.columns is not None:
            return self.columns
        assert self.path is not None
        with np.load(self.path, allow_pickle=False) as archive:
            return EpisodeColumns(
                self.first_episode,
                archive["rewards"],
                archive["steps"],
                archive["epsilons"],
                archive["td_errors"],
                archive["successes"],
            )

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class EpisodeStreamer:
    def __init__(
        self,
        client: RegistryClient,
        run_id: str,
        *,
        max_buffered_episodes: int = 200_000,
        spill_dir: Path | None = None,
        lease_epoch: int = 0,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        # Sent with every batch: the registry refuses the batches of a writer that lost the run.
        self.lease_epoch = lease_epoch
        # Told (with the reason) when the registry says the run is no longer ours.
        self.on_lost = on_lost
        self.max_buffered_episodes = max_buffered_episodes
        self.spill_dir = spill_dir
        self._spill: tempfile.TemporaryDirectory[str] | None = None
        self._entries: deque[_Entry] = deque()
        self._in_memory = 0
        self.acked = 0  # the registry's episodes_recorded, as last acknowledged
        self.sent_until = 0  # end of the episodes handed to add()
        self.spilled_batches = 0
        self.reconnects = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._closed = False
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._guarded_run(), name=f"stream-{self.run_id}")

    async def _guarded_run(self) -> None:
        """A streamer that dies must say so: flush() then fails instead of waiting forever."""
        try:
            await self._run()
        except asyncio.CancelledError:
            await self._fail(StreamFailed("episode stream cancelled"))
            raise
        except Exception as error:
            log.exception("run %s: episode streamer stopped", self.run_id)
            await self._fail(error)

    def add(self, columns: EpisodeColumns) -> None:
        """Queues a batch (never blocks: training must not wait for the registry)."""
        if len(columns) == 0:
            return
        entry = _Entry(columns.first_episode, len(columns), columns)
        if self._in_memory + entry.count > self.max_buffered_episodes:
            entry = self._spill_entry(entry, columns)
        else:
            self._in_memory += entry.count
        self._entries.append(entry)
        self.sent_until = max(self.sent_until, entry.end)
        self._wake.set()

    def _spill_entry(self, entry: _Entry, columns: EpisodeColumns) -> _Entry:
        if self._spill is None:
            self._spill = tempfile.TemporaryDirectory(prefix=f"taxidriver-spill-{self.run_id[:8]}-", dir=self.spill_dir)
        path = Path(self._spill.name) / f"{entry.first_episode:09d}.npz"
        np.savez(
            path,
            rewards=columns.rewards,
            steps=columns.steps,
            epsilons=columns.epsilons,
            td_errors=columns.td_errors,
            successes=columns.successes,
        )
        self.spilled_batches += 1
        return _Entry(entry.first_episode, entry.count, None, path)

    @property
    def buffered_episodes(self) -> int:
        return sum(e.count for e in self._entries)

    async def flush(self, wait_s: float | None = None) -> int:
        """Waits until every added episode is acked; returns the episodes recorded."""

        async def wait() -> None:
            async with self._progress:
                await self._progress.wait_for(lambda: self.error is not None or self.acked >= self.sent_until)

        await asyncio.wait_for(wait(), wait_s)
        if self.error is not None:
            raise StreamFailed(str(self.error)) from self.error
        return self.acked

    async def abandon(self) -> None:
        """The run is no longer ours: drop what is unsent, send nothing more."""
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._entries:
            self._drop_head()
        if self._spill is not None:
            self._spill.cleanup()
            self._spill = None

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._spill is not None:
            self._spill.cleanup()

    def _next_request(self) -> ingest_service_pb2.IngestEpisodesRequest | None:
        while self._entries and self._entries[0].end <= self.acked:
            self._drop_head()
        if not self._entries:
            return None
        parts: list[EpisodeColumns] = []
        count = 0
        for entry in self._entries:
            if count and count + entry.count > MAX_EPISODES_PER_REQUEST:
                break
            parts.append(entry.load())
            count += entry.count
        batch = EpisodeColumns.concat(parts)
        return ingest_service_pb2.IngestEpisodesRequest(
            run_id=self.run_id,
            first_episode=batch.first_episode,
            rewards=batch.rewards.tolist(),
            steps=batch.steps.tolist(),
            epsilons=batch.epsilons.tolist(),
            td_errors=batch.td_errors.tolist(),
            successes=batch.successes.tolist(),
            lease_epoch=self.lease_epoch,
        )

    def _drop_head(self) -> None:
        entry = self._entries.popleft()
        if entry.columns is not None:
            self._in_memory -= entry.count
        entry.discard()

    async def _acknowledge(self, recorded: int) -> None:
        async with self._progress:
            self.acked = max(self.acked, recorded)
            while self._entries and self._entries[0].end <= self.acked:
                self._drop_head()
            self._progress.notify_all()

    async def _fail(self, error: BaseException) -> None:
        async with self._progress:
            self.error = error
            self._progress.notify_all()

    async def _run(self) -> None:
        delays = Delays(BACKOFF)
        call: grpc.aio.StreamStreamCall | None = None
        while True:
            request = self._next_request()
            if request is None:
                if self._closed:
                    break
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                if call is None:
                    call = self.client.stub.IngestEpisodes()
                await call.write(request)
                ack = await call.read()
                if ack is grpc.aio.EOF:
                    raise ConnectionError("ingest stream closed by the registry")
                await self._acknowledge(ack.episodes_recorded)
                delays.reset()
            except (
                grpc.aio.AioRpcError,
                grpc.aio.UsageError,
                ConnectionError,
                asyncio.InvalidStateError,
                cygrpc.BaseError,
            ) as error:
                # write() on a stream whose connection died (the registry was SIGKILLed) raises
                # InvalidStateError "RPC already finished" (or a cygrpc error), not AioRpcError;
                # uncaught, it ended this task silently and the run never completed.
                code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
                if call is not None:
                    call.cancel()
                call = None
                if code is not None and code not in STREAM_BROKEN:
                    log.error("run %s: registry refused episodes: %s %s", self.run_id, code.name, str(error))
                    await self._fail(error)
                    reason = lost_reason(error) if isinstance(error, grpc.aio.AioRpcError) else ""
                    if reason and self.on_lost is not None:
                        self.on_lost(reason)
                    return
                self.reconnects += 1
                delay = delays.next()
                log.warning(
                    "run %s: ingest stream lost (%s); replaying from episode %d in %.2fs",
                    self.run_id,
                    code.name if code else error,
                    self.acked,
                    delay,
                )
                await asyncio.sleep(delay)
        if call is not None:
            # Everything is acknowledged: half-close and let the registry end the stream.
            try:
                await call.done_writing()
                while await call.read() is not grpc.aio.EOF:
                    pass
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, cygrpc.BaseError) as error:
                log.debug("run %s: ingest stream ended with %s after the last ack", self.run_id, error)
