"""Monte Carlo control, FIRST-VISIT, constant step size, eps-greedy behaviour = target policy.

After each episode, walking backwards G = r + gamma * G, and for the first visit of (s, a):
    Q(s, a) += alpha * (G - Q(s, a))
No bootstrapping: the "TD error" recorded is the mean |G - Q(s, a)| of the updates.
"""

from __future__ import annotations

import numpy as np

from trainer_service.kernels import epsilon_greedy, jit, start_state

NAME = "monte_carlo"
DESCRIPTION = "First-visit Monte Carlo control with a constant step size: learns from complete episode returns."


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
    states = np.empty(max_steps, dtype=np.int64)
    actions = np.empty(max_steps, dtype=np.int64)
    rewards = np.empty(max_steps, dtype=np.float64)
    # first_visit[s * A + a]: first time index of (s, a) in this episode; valid when stamp == episode.
    first_visit = np.zeros(q.shape[0] * n_actions, dtype=np.int64)
    stamp = np.full(q.shape[0] * n_actions, -1, dtype=np.int64)
    for episode in range(out_rewards.shape[0]):
        state = start_state(start_states, rng)
        total, steps, done = 0.0, 0, False
        while steps < max_steps and not done:
            action = epsilon_greedy(q, state, epsilon, rng)
            key = state * n_actions + action
            if stamp[key] != episode:
                stamp[key] = episode
                first_visit[key] = steps
            states[steps], actions[steps] = state, action
            rewards[steps] = reward[state, action]
            done = terminated[state, action]
            total += rewards[steps]
            state = next_state[state, action]
            steps += 1
        ret, err_sum, updates = 0.0, 0.0, 0
        for t in range(steps - 1, -1, -1):
            ret = rewards[t] + gamma * ret
            s, a = states[t], actions[t]
            if first_visit[s * n_actions + a] == t:
                err = ret - q[s, a]
                q[s, a] += alpha * err
                err_sum += abs(err)
                updates += 1
        out_rewards[episode], out_steps[episode], out_epsilons[episode] = total, steps, epsilon
        out_td[episode], out_success[episode] = err_sum / max(updates, 1), done
        epsilon = max(epsilon_min, epsilon * epsilon_decay)
    return epsilon
