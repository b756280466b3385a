"""Double Q-learning (van Hasselt 2010): two estimates, one picks the action, the other values it.

    with probability 1/2:  Q1(s, a) += alpha * (r + gamma * Q2(s', argmax Q1(s', .)) - Q1(s, a))
    otherwise the same with Q1 and Q2 swapped; the agent acts eps-greedily on Q1 + Q2.
The model saved is (Q1 + Q2) / 2.
"""

from __future__ import annotations

import numpy as np

from trainer_service.kernels import greedy, greedy_sum, jit, randint, start_state, uniform

NAME = "double_q_learning"
DESCRIPTION = "Two Q-tables that evaluate each other's greedy action, removing Q-learning's maximisation bias."


@jit
def _update(
    q_select: np.ndarray,
    q_value: np.ndarray,
    state: int,
    action: int,
    r: float,
    nxt: int,
    done: bool,
    alpha: float,
    gamma: float,
) -> float:
    target = r if done else r + gamma * q_value[nxt, greedy(q_select, nxt)]
    td = target - q_select[state, action]
    q_select[state, action] += alpha * td
    return abs(td)


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
        total, td_sum, steps, done = 0.0, 0.0, 0, False
        while steps < max_steps and not done:
            if uniform(rng) < epsilon:
                action = randint(rng, n_actions)
            else:
                action = greedy_sum(q, q2, state)
            nxt, r, done = next_state[state, action], reward[state, action], terminated[state, action]
            if uniform(rng) < 0.5:
                td_sum += _update(q, q2, state, action, r, nxt, done, alpha, gamma)
            else:
                td_sum += _update(q2, q, state, action, r, nxt, done, alpha, gamma)
            total += r
            steps += 1
            state = nxt
        out_rewards[episode], out_steps[episode], out_epsilons[episode] = total, steps, epsilon
        out_td[episode], out_success[episode] = td_sum / steps, done
        epsilon = max(epsilon_min, epsilon * epsilon_decay)
    return epsilon
