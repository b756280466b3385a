"""Numba building blocks shared by the algorithms: a checkpointable PRNG and action choice.

The PRNG is splitmix64 over a one-element uint64 array, so the whole random state of
a run is a single integer that a checkpoint saves and restores exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import numba
import numpy as np

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def jit(function: F) -> F:
    """`numba.njit(cache=True)`, or uncached when no cache directory is writable.

    Containers often mount the code read-only; numba then refuses to cache at
    decoration time, and compiling once per process is the right fallback.
    """
    try:
        return numba.njit(cache=True)(function)  # type: ignore[return-value]
    except RuntimeError as exc:  # "cannot cache function ...: no locator available"
        log.info("numba cache unavailable for %s (%s); compiling without cache", function.__name__, exc)
        return numba.njit(function)  # type: ignore[return-value]


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
