"""Expected SARSA: bootstraps on the expectation of Q(s', .) under the eps-greedy policy.

Q(s, a) += alpha * (r + gamma * sum_a' pi(a'|s') Q(s', a') * (1 - done) - Q(s, a))
pi = eps / |A| everywhere, plus (1 - eps) on the greedy action
"""

from __future__ import annotations

import numpy as np

from trainer_service.kernels import epsilon_greedy, greedy, jit, start_state

NAME = "expected_sarsa"
DESCRIPTION = "TD control on the expected next value under the exploring policy (lower variance than SARSA)."


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
            action = epsilon_greedy(q, state, epsilon, rng)
            nxt, r, done = next_state[state, action], reward[state, action], terminated[state, action]
            if done:
                target = r
            else:
                expected = (epsilon / n_actions) * q[nxt].sum() + (1.0 - epsilon) * q[nxt, greedy(q, nxt)]
                target = r + gamma * expected
            td = target - q[state, action]
            q[state, action] += alpha * td
            td_sum += abs(td)
            total += r
            steps += 1
            state = nxt
        out_rewards[episode], out_steps[episode], out_epsilons[episode] = total, steps, epsilon
        out_td[episode], out_success[episode] = td_sum / steps, done
        epsilon = max(epsilon_min, epsilon * epsilon_decay)
    return epsilon
