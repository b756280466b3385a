"""A pool of spawned worker processes, one run each at a time.

'spawn' (never fork: the parent runs gRPC threads). Each worker has its own inbox and a
shared control word (cancel / interrupt); all post to one outbox, read by a thread that
hands messages to the event loop. Jobs wait in an asyncio queue until a worker is free.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from taxidriver.metrics import set_workers_busy
from trainer_service.messages import RunMessage, WorkerIdle, WorkerMessage, WorkerReady
from trainer_service.worker import CONTROL_CANCEL, CONTROL_INTERRUPT, CONTROL_NONE, Job, worker_main

log = logging.getLogger(__name__)


# prctl(2) option: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1
# How often a worker checks that its parent is still alive (the fallback where prctl is missing).
PARENT_CHECK_S = 1.0


def _worker_entry(parent_pid: int, index: int, inbox: Any, outbox: Any, control: Any) -> None:
    """A spawned worker that dies with the trainer, even when the trainer is SIGKILLed."""
    _die_with_parent(parent_pid)
    worker_main(index, inbox, outbox, control)


def _die_with_parent(parent_pid: int) -> None:
    """Orphaned workers trained on at 100 % CPU and ~450 MB each after a SIGKILL of their parent.

    Linux: PR_SET_PDEATHSIG delivers SIGKILL when the parent goes. Trap: it fires when the
    *thread* that started the child exits, not only the process - the pool starts workers on
    the event loop's thread, which lives as long as the trainer. Everywhere: a daemon thread
    polls getppid() (reparented = orphaned), which also covers a parent that died before prctl.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as exc:
            log.warning("prctl unavailable (%s); relying on the parent watch", exc)
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)  # no clean-up worth doing: the parent that would read our results is gone


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    inbox: Any
    control: Any
    ready: bool = False
    run_id: str | None = None


@dataclass
class WorkerPool:
    size: int
    on_message: Callable[[RunMessage], None]  # called on the event loop
    on_worker_lost: Callable[[str], None]  # run_id whose worker died
    _context: Any = field(default_factory=lambda: multiprocessing.get_context("spawn"))
    _workers: list[_Worker] = field(default_factory=list)
    _jobs: asyncio.Queue[Job] = field(default_factory=asyncio.Queue)
    _queued: dict[str, Job] = field(default_factory=dict)
    _free: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._outbox = self._context.Queue()
        for index in range(self.size):
            self._workers.append(self._spawn(index))
        self._reader = threading.Thread(target=self._read, name="trainer-outbox", daemon=True)
        self._reader.start()
        self._tasks.append(self._loop.create_task(self._dispatch(), name="pool-dispatch"))
        self._tasks.append(self._loop.create_task(self._watch(), name="pool-watch"))

    def _spawn(self, index: int) -> _Worker:
        inbox = self._context.Queue()
        control = self._context.Value("i", CONTROL_NONE, lock=False)
        process = self._context.Process(
            target=_worker_entry,
            args=(os.getpid(), index, inbox, self._outbox, control),
            name=f"trainer-worker-{index}",
            daemon=True,
        )
        process.start()
        return _Worker(index, process, inbox, control)

    def _read(self) -> None:
        while True:
            try:
                message = self._outbox.get()
            except (EOFError, OSError):
                return
            if message is None:
                return
            self._loop.call_soon_threadsafe(self._handle, message)

    def _handle(self, message: WorkerMessage) -> None:
        match message:
            case WorkerReady(worker=index):
                self._workers[index].ready = True
            case WorkerIdle(worker=index):
                self._workers[index].run_id = None
            case _:
                self.on_message(message)
                return
        self._free.set()
        self._report_busy()

    def submit(self, job: Job) -> None:
        self._queued[job.run_id] = job
        self._jobs.put_nowait(job)

    def withdraw(self, run_id: str) -> bool:
        """Removes a run that no worker has taken yet."""
        return self._queued.pop(run_id, None) is not None

    def signal(self, run_id: str, cancel: bool) -> bool:
        """Asks the worker running `run_id` to cancel (or to checkpoint and stop)."""
        for worker in self._workers:
            if worker.run_id == run_id:
                worker.control.value = CONTROL_CANCEL if cancel else CONTROL_INTERRUPT
                return True
        return False

    def _report_busy(self) -> None:
        set_workers_busy(busy=sum(1 for w in self._workers if w.run_id is not None), total=self.ready_workers)

    def running(self) -> list[str]:
        return [w.run_id for w in self._workers if w.run_id is not None]

    @property
    def ready_workers(self) -> int:
        return sum(1 for w in self._workers if w.ready)

    async def _dispatch(self) -> None:
        while True:
            job = await self._jobs.get()
            if job.run_id not in self._queued:
                continue  # withdrawn (cancelled while queued)
            while True:
                free = [w for w in self._workers if w.ready and w.run_id is None and w.process.is_alive()]
                if free or self._stopping:
                    break
                self._free.clear()
                await self._free.wait()
            if self._stopping:
                return
            # The job stays withdrawable until this moment: a cancel (or SIGTERM) that
            # arrives while every worker is busy or still warming up is never lost.
            if self._queued.pop(job.run_id, None) is None:
                continue
            worker = free[0]
            worker.control.value = CONTROL_NONE
            worker.run_id = job.run_id
            worker.inbox.put(job)
            self._report_busy()

    async def _watch(self) -> None:
        """Replaces dead workers; their run is reported lost."""
        while not self._stopping:
            await asyncio.sleep(0.5)
            for index, worker in enumerate(self._workers):
                if worker.process.is_alive() or self._stopping:
                    continue
                log.error("worker %d died (exit code %s)", index, worker.process.exitcode)
                if worker.run_id is not None:
                    self.on_worker_lost(worker.run_id)
                self._workers[index] = self._spawn(index)

    def interrupt_all(self) -> None:
        self._stopping = True
        self._free.set()
        for worker in self._workers:
            if worker.run_id is not None:
                worker.control.value = CONTROL_INTERRUPT

    def queued_jobs(self) -> list[Job]:
        return list(self._queued.values())

    async def stop(self, join_timeout: float = 10.0) -> None:
        self._stopping = True
        self._free.set()
        for task in self._tasks:
            task.cancel()
        for worker in self._workers:
            if worker.process.is_alive():
                worker.inbox.put(None)
        loop = asyncio.get_running_loop()
        for worker in self._workers:
            await loop.run_in_executor(None, worker.process.join, join_timeout)
            if worker.process.is_alive():
                worker.process.terminate()
                await loop.run_in_executor(None, worker.process.join, 2.0)
        self._outbox.put(None)
        await loop.run_in_executor(None, self._reader.join, 2.0)
