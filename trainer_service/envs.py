"""Environments and their transition tables.

gymnasium 1.4 refuses `Taxi-v3` (DeprecatedEnv) and registers `Taxi-v4`, whose default
arguments (is_rainy=False, fickle_passenger=False) give the v3 dynamics; a request for
Taxi-v3 is served by Taxi-v4 (tests/test_trainer_env.py proves the tables identical).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

DEFAULT_ENV_ID = "Taxi-v3"
# Requested id -> (registered id, make kwargs). Only deterministic tables are accepted:
# the engine trains on next_state/reward/terminated arrays.
ENVIRONMENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "Taxi-v3": ("Taxi-v4", {}),
    "Taxi-v4": ("Taxi-v4", {}),
}


@dataclass(frozen=True)
class TransitionTable:
    """The environment's dynamics as arrays indexed [state, action]."""

    env_id: str
    next_state: np.ndarray  # int64
    reward: np.ndarray  # float64
    terminated: np.ndarray  # bool
    start_states: np.ndarray  # int64, the states reset() can return (uniformly)
    max_episode_steps: int

    @functools.cached_property
    def acting_states(self) -> np.ndarray:
        """States an agent can act in: start states and every state a non-terminating step
        leads to from them (Taxi: 400 of 500; the 100 with the passenger already at the
        destination are only ever entered by the terminating drop-off)."""
        seen = np.zeros(self.n_states, dtype=np.bool_)
        seen[self.start_states] = True
        frontier = list(self.start_states)
        while frontier:
            state = frontier.pop()
            for action in range(self.n_actions):
                nxt = int(self.next_state[state, action])
                if not self.terminated[state, action] and not seen[nxt]:
                    seen[nxt] = True
                    frontier.append(nxt)
        states = np.flatnonzero(seen).astype(np.int64)
        states.setflags(write=False)
        return states

    @property
    def n_states(self) -> int:
        return int(self.next_state.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.next_state.shape[1])


def make_env(env_id: str) -> gym.Env:
    """The real Gymnasium environment for a requested id (Taxi-v3 -> Taxi-v4)."""
    registered, kwargs = ENVIRONMENTS[env_id]
    return gym.make(registered, **kwargs)


@functools.cache
def transition_table(env_id: str) -> TransitionTable:
    """Reads env.unwrapped.P into arrays; refuses stochastic transitions."""
    env = make_env(env_id)
    unwrapped = env.unwrapped
    n_states, n_actions = unwrapped.observation_space.n, unwrapped.action_space.n  # type: ignore[attr-defined]
    next_state = np.zeros((n_states, n_actions), dtype=np.int64)
    reward = np.zeros((n_states, n_actions), dtype=np.float64)
    terminated = np.zeros((n_states, n_actions), dtype=np.bool_)
    for state in range(n_states):
        for action in range(n_actions):
            outcomes = unwrapped.P[state][action]  # type: ignore[attr-defined]
            if len(outcomes) != 1 or outcomes[0][0] != 1.0:
                raise ValueError(f"{env_id}: transition ({state}, {action}) is not deterministic")
            _, nxt, r, done = outcomes[0]
            next_state[state, action], reward[state, action], terminated[state, action] = nxt, r, done
    distribution = np.asarray(unwrapped.initial_state_distrib)  # type: ignore[attr-defined]
    start_states = np.flatnonzero(distribution > 0).astype(np.int64)
    if not np.allclose(distribution[start_states], 1.0 / len(start_states)):
        raise ValueError(f"{env_id}: initial state distribution is not uniform")
    limit = env.spec.max_episode_steps if env.spec is not None and env.spec.max_episode_steps else 200
    env.close()
    for array in (next_state, reward, terminated, start_states):
        array.setflags(write=False)
    return TransitionTable(env_id, next_state, reward, terminated, start_states, int(limit))
