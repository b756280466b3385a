"""taxidriver.retry: jittered exponential backoff within a budget, on a fake clock (nothing waits)."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from taxidriver.retry import BUSY, STREAM_BROKEN, TRANSIENT, Backoff, Delays, RetryPolicy


class FakeTime:
    """A clock that only the injected sleep moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=f"test {code.name}")


class Flaky:
    """A call that fails `times` times with `code`, then answers "ok"."""

    def __init__(self, times: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.times, self.code, self.calls = times, code, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise rpc_error(self.code)
        return "ok"


def test_each_delay_is_drawn_between_zero_and_its_exponential_ceiling() -> None:
    backoff = Backoff(first=0.05, cap=2.0)
    assert [backoff.ceiling(n) for n in range(8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert backoff.ceiling(10_000) == 2.0  # no overflow however long the outage
    draws = random.Random(12)
    delays = Delays(backoff, rng=draws.random)
    for attempt in range(40):
        delay = delays.next()
        assert 0.0 <= delay <= backoff.ceiling(attempt)
    # Full jitter: the highest draw is the ceiling, the lowest is no wait at all.
    assert [Delays(backoff, rng=lambda: 1.0).next() for _ in range(2)] == [0.05, 0.05]
    top = Delays(backoff, rng=lambda: 1.0)
    assert [top.next() for _ in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert Delays(backoff, rng=lambda: 0.0).next() == 0.0


def test_delays_are_jittered_and_start_over_after_a_success() -> None:
    backoff = Backoff(first=0.1, cap=5.0)
    draws = random.Random(3)
    spread = set()
    for _ in range(50):
        delays = Delays(backoff, rng=draws.random)
        for _ in range(4):
            delays.next()
        spread.add(delays.next())  # the fifth wait of 50 clients that lost the same server
    assert len(spread) == 50  # no two clients come back in step
    assert all(0.0 <= delay <= 1.6 for delay in spread)
    delays = Delays(backoff, rng=lambda: 1.0)
    assert [delays.next() for _ in range(3)] == [0.1, 0.2, 0.4]
    delays.reset()
    assert delays.next() == 0.1


def test_delays_wait_with_the_injected_sleep() -> None:
    fake = FakeTime()
    delays = Delays(Backoff(first=0.5, cap=1.0), rng=lambda: 0.5, sleep=fake.sleep)
    assert asyncio.run(delays.wait()) == 0.25
    assert asyncio.run(delays.wait()) == 0.5
    assert fake.slept == [0.25, 0.5]


def test_a_call_is_retried_until_it_succeeds_without_a_budget() -> None:
    fake = FakeTime()
    policy = RetryPolicy(backoff=Backoff(first=0.05, cap=2.0), rng=lambda: 1.0, sleep=fake.sleep, clock=fake.clock)
    call = Flaky(60)
    assert asyncio.run(policy.call(call, "test")) == "ok"
    assert call.calls == 61
    assert len(fake.slept) == 60
    assert fake.now - 1000.0 > 60  # far past any budget: an outage of any length is waited out


def test_the_budget_is_never_overrun_and_the_last_error_is_raised() -> None:
    fake = FakeTime()
    policy = RetryPolicy(
        backoff=Backoff(first=0.05, cap=2.0), budget=10.0, rng=lambda: 1.0, sleep=fake.sleep, clock=fake.clock
    )
    call = Flaky(1_000, grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        asyncio.run(policy.call(call, "test"))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # 0.05 + 0.1 + ... + 1.6 = 3.15 s, then 2 s waits while they fit: 3.15 + 3 * 2 = 9.15 <= 10.
    assert fake.slept == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    assert call.calls == len(fake.slept) + 1
    assert sum(fake.slept) <= 10.0 < sum(fake.slept) + 2.0


def test_jittered_retries_stay_within_the_budget() -> None:
    for seed in range(20):
        fake = FakeTime()
        policy = RetryPolicy(budget=5.0, rng=random.Random(seed).random, sleep=fake.sleep, clock=fake.clock)
        call = Flaky(10_000)
        with pytest.raises(grpc.aio.AioRpcError):
            asyncio.run(policy.call(call, "test"))
        assert fake.now - 1000.0 <= 5.0
        assert call.calls == len(fake.slept) + 1


def test_a_code_that_is_not_retryable_is_raised_at_once() -> None:
    fake = FakeTime()
    policy = RetryPolicy(sleep=fake.sleep, clock=fake.clock)
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED):
        call = Flaky(1, code)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            asyncio.run(policy.call(call, "test"))
        assert caught.value.code() == code
        assert call.calls == 1
    assert fake.slept == []
    busy = RetryPolicy(retryable=BUSY, sleep=fake.sleep, clock=fake.clock)
    call = Flaky(2, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert asyncio.run(busy.call(call, "test")) == "ok"
    assert len(fake.slept) == 2


def test_a_refusal_can_be_turned_into_another_error_before_any_retry() -> None:
    fake = FakeTime()
    policy = RetryPolicy(sleep=fake.sleep, clock=fake.clock)

    def refused(error: grpc.aio.AioRpcError) -> None:
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
            raise LookupError("lost")

    call = Flaky(1, grpc.StatusCode.FAILED_PRECONDITION)
    with pytest.raises(LookupError):
        asyncio.run(policy.call(call, "test", refused=refused))
    call = Flaky(3)  # UNAVAILABLE passes the hook and is retried
    assert asyncio.run(policy.call(call, "test", refused=refused)) == "ok"
    assert len(fake.slept) == 3


def test_the_retryable_sets_nest() -> None:
    assert TRANSIENT == {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert TRANSIENT < BUSY and TRANSIENT < STREAM_BROKEN
    assert grpc.StatusCode.RESOURCE_EXHAUSTED not in STREAM_BROKEN


def test_a_backoff_must_make_sense() -> None:
    with pytest.raises(ValueError):
        Backoff(first=3.0, cap=2.0)
    with pytest.raises(ValueError):
        Backoff(first=-1.0)
    with pytest.raises(ValueError):
        Backoff(multiplier=0.5)
