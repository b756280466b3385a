"""SARSA: on-policy TD control, bootstrapping on the action actually taken next.

Q(s, a) += alpha * (r + gamma * Q(s', a') * (1 - done) - Q(s, a)),  a' ~ eps-greedy(s')
"""

from __future__ import annotations

import numpy as np

from trainer_service.kernels import epsilon_greedy, jit, start_state

NAME = "sarsa"
DESCRIPTION = "On-policy TD control: bootstraps on the next action chosen by the exploring policy."


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
    for episode in range(out_rewards.shape[0]):
        state = start_state(start_states, rng)
        action = epsilon_greedy(q, state, epsilon, rng)
        total, td_sum, steps, done = 0.0, 0.0, 0, False
        while steps < max_steps and not done:
            nxt, r, done = next_state[state, action], reward[state, action], terminated[state, action]
            next_action = epsilon_greedy(q, nxt, epsilon, rng)
            target = r if done else r + gamma * q[nxt, next_action]
            td = target - q[state, action]
            q[state, action] += alpha * td
            td_sum += abs(td)
            total += r
            steps += 1
            state, action = nxt, next_action
        out_rewards[episode], out_steps[episode], out_epsilons[episode] = total, steps, epsilon
        out_td[episode], out_success[episode] = td_sum / steps, done
        epsilon = max(epsilon_min, epsilon * epsilon_decay)
    return epsilon
