"""The one retry policy: how every service waits out a peer that is away.

Exponential backoff with full jitter: the n-th wait (from 0) is drawn uniformly in
[0, min(cap, first * multiplier**n)], so clients that lost the same server do not come back in
step. A `RetryPolicy` retries a call on the status codes it declares retryable, within a total
budget (seconds from the first attempt; None: for as long as it takes). `Delays` is the same
backoff for loops that reconnect a long-lived stream themselves (reset after each success).

Why not gRPC's own retry (the channel's service config): it caps attempts at 5 and spends them
inside one call's deadline, while a trainer's writes for a run it holds must outlast a registry
outage of any length (RELIABILITY.md) and other calls have a budget of their own
(TRAINER_REGISTRY_RETRY_S); it cannot tell a refusal that means "the run is no longer yours"
(raised at once, by reason) from one worth retrying; and it never retries a stream once a message
went through, where our ingest stream replays from the last acknowledged episode.

The sleep, the clock and the random draw are parameters, so tests check delays and budgets
without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

# The peer was not reached, or did not answer in time: the same call may well succeed later.
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# ... or it is full for now (a trainer's per-caller queue of runs): another try, later or elsewhere.
BUSY = TRANSIENT | {grpc.StatusCode.RESOURCE_EXHAUSTED}
# A long-lived stream cut under us (the peer killed or restarted mid-stream ends it with any of
# these, not only UNAVAILABLE): reopen it and resume from what was acknowledged.
STREAM_BROKEN = TRANSIENT | {grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter (seconds)."""

    first: float = 0.05
    cap: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.first <= self.cap or self.multiplier < 1:
            raise ValueError(f"backoff needs 0 <= first <= cap and multiplier >= 1, got {self}")

    def ceiling(self, attempt: int) -> float:
        """The largest wait after failed attempt number `attempt` (from 0)."""
        # Capped before it can overflow: multiplier**attempt grows without bound.
        grown = self.first
        for _ in range(attempt):
            grown *= self.multiplier
            if grown >= self.cap:
                return self.cap
        return min(grown, self.cap)


class Delays:
    """The waits of one reconnecting loop: `await wait()` after a failure, `reset()` after a success."""

    def __init__(
        self,
        backoff: Backoff,
        *,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.backoff = backoff
        self.attempt = 0
        self._rng = rng
        self._sleep = sleep

    def next(self) -> float:
        delay = self._rng() * self.backoff.ceiling(self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0

    async def wait(self) -> float:
        delay = self.next()
        await self._sleep(delay)
        return delay


@dataclass(frozen=True)
class RetryPolicy:
    """Retries a call while it fails with a retryable code, within `budget` seconds (None: no limit)."""

    backoff: Backoff = Backoff()
    retryable: frozenset[grpc.StatusCode] = TRANSIENT
    budget: float | None = None
    log_level: int = logging.WARNING
    rng: Callable[[], float] = field(default=random.random, compare=False)
    sleep: Callable[[float], Awaitable[object]] = field(default=asyncio.sleep, compare=False)
    clock: Callable[[], float] | None = field(default=None, compare=False)  # None: the running loop's

    def delays(self) -> Delays:
        return Delays(self.backoff, rng=self.rng, sleep=self.sleep)

    async def call(
        self,
        attempt: Callable[[], Awaitable[T]],
        what: str,
        *,
        refused: Callable[[grpc.aio.AioRpcError], None] | None = None,
    ) -> T:
        """`attempt()` until it succeeds; its last error once not retryable or over budget.

        `refused(error)` sees every failure first and may raise something else instead.
        """
        clock = self.clock or asyncio.get_running_loop().time
        give_up_at = None if self.budget is None else clock() + self.budget
        delays = self.delays()
        while True:
            try:
                return await attempt()
            except grpc.aio.AioRpcError as error:
                if refused is not None:
                    refused(error)
                if error.code() not in self.retryable:
                    raise
                delay = delays.next()
                if give_up_at is not None and clock() + delay > give_up_at:
                    raise
                log.log(
                    self.log_level, "%s: %s (%s); retrying in %.2fs", what, error.code().name, error.details(), delay
                )
                await self.sleep(delay)
