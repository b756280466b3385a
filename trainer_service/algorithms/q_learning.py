"""Q-learning (Watkins): off-policy TD control.

Q(s, a) += alpha * (r + gamma * max_a' Q(s', a') * (1 - done) - Q(s, a))
"""

from __future__ import annotations

import numpy as np

from trainer_service.kernels import greedy, jit, randint, start_state, uniform

NAME = "q_learning"
DESCRIPTION = "Off-policy TD control: bootstraps on the greedy value of the next state."


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
        # The target's max over Q(s', .) finds the greedy action of s' too: it is remembered
        # (`known`) and is the next step's greedy action unless this step's update changed that
        # row (s' == s). One scan of a row per step instead of two: 2.3x faster per step
        # (issue 15). The same draws, actions and updates as epsilon_greedy + q[s'].max().
        known, known_action = -1, 0
        while steps < max_steps and not done:
            if uniform(rng) < epsilon:
                action = randint(rng, n_actions)
            elif state == known:
                action = known_action
            else:
                action = greedy(q, state)
            nxt, r, done = next_state[state, action], reward[state, action], terminated[state, action]
            if done:
                target = r
            else:
                known, best = nxt, q[nxt, 0]
                known_action = 0
                for a in range(1, n_actions):
                    if q[nxt, a] > best:
                        known_action, best = a, q[nxt, a]
                target = r + gamma * best
            td = target - q[state, action]
            q[state, action] += alpha * td
            if state == known:
                known = -1
            td_sum += abs(td)
            total += r
            steps += 1
            state = nxt
        out_rewards[episode], out_steps[episode], out_epsilons[episode] = total, steps, epsilon
        out_td[episode], out_success[episode] = td_sum / steps, done
        epsilon = max(epsilon_min, epsilon * epsilon_decay)
    return epsilon
