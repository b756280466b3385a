"""Brute force: the random baseline. Acts uniformly at random and learns nothing.

The seed compares every agent with it (brute_force_metrics); as an algorithm of its
own it records what chance achieves on the same episodes.
"""

from __future__ import annotations

import numpy as np

from trainer_service.kernels import jit, randint, start_state

NAME = "brute_force"
DESCRIPTION = "Uniformly random actions, no learning: the baseline every agent is compared with."


@jit
def train_episodes(
    q: np.ndarray,
    q2: np.ndarray,
    next_state: np.ndarray,
    reward: np.ndarray,
    terminated: np.ndarray,
    start_states: np.ndarray,
    alpha: float,
    gamma: float,
    epsilon: float,
    epsilon_min: float,
    epsilon_decay: float,
    max_steps: int,
    rng: np.ndarray,
    out_rewards: np.ndarray,
    out_steps: np.ndarray,
    out_epsilons: np.ndarray,
    out_td: np.ndarray,
    out_success: np.ndarray,
) -> float:
    n_actions = q.shape[1]
    for episode in range(out_rewards.shape[0]):
        state = start_state(start_states, rng)
        total, steps, done = 0.0, 0, False
        while steps < max_steps and not done:
            action = randint(rng, n_actions)
            total += reward[state, action]
            done = terminated[state, action]
            state = next_state[state, action]
            steps += 1
        out_rewards[episode], out_steps[episode], out_epsilons[episode] = total, steps, 1.0
        out_td[episode], out_success[episode] = 0.0, done
    return epsilon
