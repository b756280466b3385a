"""Numba building blocks shared by the algorithms: a checkpointable PRNG and action choice.

The PRNG is splitmix64 over a one-element uint64 array, so the whole random state of
a run is a single integer that a checkpoint saves and restores exactly.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numba
import numpy as np

from trainer_service.settings import NUMBA_CACHE_DIR

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


# False once a kernel could not get an on-disk cache (then every process compiles its own).
disk_cache = True


def jit(function: F) -> F:
    """`numba.njit(cache=True)`, or uncached when no cache directory is writable.

    Containers often mount the code read-only; numba then refuses to cache at
    decoration time, and compiling once per process is the right fallback. The
    containers set NUMBA_CACHE_DIR to their writable /tmp instead.
    """
    global disk_cache
    try:
        return numba.njit(cache=True)(function)  # type: ignore[return-value]
    except RuntimeError as exc:  # "cannot cache function ...: no locator available"
        log.info("numba cache unavailable for %s (%s); compiling without cache", function.__name__, exc)
        disk_cache = False
        return numba.njit(function)  # type: ignore[return-value]


@contextlib.contextmanager
def compiling_alone() -> Iterator[None]:
    """Serialises kernel compilation between the processes of this machine.

    A trainer's workers warm up at the same moment: without this, each compiles every
    kernel on a first start (N times the CPU on a machine that has little). With it, the
    first to arrive warms up alone (compiling into the disk cache, or loading from it);
    those that arrive meanwhile wait until it is done, then all load from the cache at
    once. An advisory lock (flock) beside the cache, released by the kernel if its holder
    dies. Without a disk cache there is nothing to share, and no lock.
    """
    if not disk_cache:
        yield
        return
    directory = Path(NUMBA_CACHE_DIR.read() or tempfile.gettempdir())
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = (directory / "taxidriver-kernels.lock").open("a")
    except OSError as exc:
        log.info("no kernel compile lock (%s); workers may compile the same kernels at once", exc)
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            first = True
        except BlockingIOError:
            first = False
        if not first:
            # Another process is warming up: wait until it is done, then load its cache.
            fcntl.flock(handle, fcntl.LOCK_SH)
            fcntl.flock(handle, fcntl.LOCK_UN)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@jit
def next_u64(rng: np.ndarray) -> np.uint64:
    """splitmix64: advances rng[0] and returns 64 random bits."""
    rng[0] += _GOLDEN
    z = rng[0]
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@jit
def uniform(rng: np.ndarray) -> float:
    """A float in [0, 1) with 53 random bits."""
    return float(next_u64(rng) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@jit
def randint(rng: np.ndarray, n: int) -> int:
    """An integer in [0, n)."""
    return int(uniform(rng) * n)


@jit
def greedy(q: np.ndarray, state: int) -> int:
    """First action of maximal value (deterministic tie-break)."""
    row = q[state]
    best = 0
    for action in range(1, row.shape[0]):
        if row[action] > row[best]:
            best = action
    return best


@jit
def greedy_sum(q: np.ndarray, q2: np.ndarray, state: int) -> int:
    """Greedy on q + q2 (Double Q-learning acts on both estimates)."""
    best = 0
    best_value = q[state, 0] + q2[state, 0]
    for action in range(1, q.shape[1]):
        value = q[state, action] + q2[state, action]
        if value > best_value:
            best = action
            best_value = value
    return best


@jit
def epsilon_greedy(q: np.ndarray, state: int, epsilon: float, rng: np.ndarray) -> int:
    if uniform(rng) < epsilon:
        return randint(rng, q.shape[1])
    return greedy(q, state)


@jit
def start_state(start_states: np.ndarray, rng: np.ndarray) -> int:
    return int(start_states[randint(rng, start_states.shape[0])])


def new_rng(seed: int) -> np.ndarray:
    """A fresh generator state; the seed is scrambled once so nearby seeds diverge."""
    rng = np.array([np.uint64(seed & 0xFFFFFFFFFFFFFFFF)], dtype=np.uint64)
    next_u64(rng)
    return rng
