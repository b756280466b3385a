"""Taxi-v3 is served by Taxi-v4, and the training table is the real environment."""

from __future__ import annotations

import inspect

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.toy_text.taxi import TaxiEnv

from trainer_service.envs import make_env, transition_table
from trainer_service.evaluation import optimum

# Taxi-v3's map and rules, written out from its documentation (v3 had no options).
V3_MAP = ["+---------+", "|R: | : :G|", "| : | : : |", "| : : : : |", "| | : | : |", "|Y| : |B: |", "+---------+"]
V3_LOCS = [(0, 0), (0, 4), (4, 0), (4, 3)]


def v3_transitions() -> dict[int, dict[int, tuple[int, float, bool]]]:
    """P[state][action] = (next_state, reward, terminated) under the v3 rules."""
    table: dict[int, dict[int, tuple[int, float, bool]]] = {}
    for row in range(5):
        for col in range(5):
            for passenger in range(5):
                for destination in range(4):
                    state = ((row * 5 + col) * 5 + passenger) * 4 + destination
                    table[state] = {}
                    for action in range(6):
                        r, c, p = row, col, passenger
                        reward, done = -1.0, False
                        taxi = (row, col)
                        if action == 0:
                            r = min(row + 1, 4)
                        elif action == 1:
                            r = max(row - 1, 0)
                        elif action == 2 and V3_MAP[1 + row][2 * col + 2] == ":":
                            c = min(col + 1, 4)
                        elif action == 3 and V3_MAP[1 + row][2 * col] == ":":
                            c = max(col - 1, 0)
                        elif action == 4:
                            if passenger < 4 and taxi == V3_LOCS[passenger]:
                                p = 4
                            else:
                                reward = -10.0
                        elif action == 5:
                            if taxi == V3_LOCS[destination] and passenger == 4:
                                p, done, reward = destination, True, 20.0
                            elif taxi in V3_LOCS and passenger == 4:
                                p = V3_LOCS.index(taxi)
                            else:
                                reward = -10.0
                        table[state][action] = (((r * 5 + c) * 5 + p) * 4 + destination, reward, done)
    return table


def test_taxi_v3_is_deprecated_and_v4_defaults_are_deterministic() -> None:
    with pytest.raises(gym.error.DeprecatedEnv):
        gym.make("Taxi-v3")
    assert gym.spec("Taxi-v4").kwargs == {}
    defaults = inspect.signature(TaxiEnv.__init__).parameters
    assert defaults["is_rainy"].default is False
    assert defaults["fickle_passenger"].default is False


def test_v4_transitions_equal_v3_for_every_state_and_action() -> None:
    served = make_env("Taxi-v3").unwrapped
    assert served.spec is not None and served.spec.id == "Taxi-v4"
    reference = TaxiEnv().P
    expected = v3_transitions()
    for state in range(500):
        for action in range(6):
            assert served.P[state][action] == reference[state][action]
            ((probability, nxt, reward, done),) = served.P[state][action]
            assert probability == 1.0
            assert (nxt, float(reward), done) == expected[state][action], (state, action)


def test_table_matches_env_step_on_random_rollouts() -> None:
    table = transition_table("Taxi-v3")
    env = make_env("Taxi-v3")
    rng = np.random.default_rng(0)
    checked = 0
    for episode in range(200):
        state, _ = env.reset(seed=episode)
        assert state in set(table.start_states.tolist())
        for _ in range(60):
            action = int(rng.integers(6))
            nxt, reward, terminated, truncated, _ = env.step(action)
            assert (table.next_state[state, action], table.reward[state, action]) == (nxt, reward)
            assert table.terminated[state, action] == terminated
            checked += 1
            state = nxt
            if terminated or truncated:
                break
    assert checked > 10_000
    assert len(table.start_states) == 300


def test_value_iteration_gives_the_known_taxi_optimum() -> None:
    best = optimum(transition_table("Taxi-v3"))
    assert len(best.steps) == 300
    assert best.mean_steps == pytest.approx(13.07, abs=1e-9)
    assert best.mean_reward == pytest.approx(7.93, abs=1e-9)
    # Gymnasium's reward_threshold of 8 is above the true optimum.
    assert best.mean_reward < gym.spec("Taxi-v4").reward_threshold
