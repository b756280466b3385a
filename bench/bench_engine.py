"""Engine speed: our jitted table-driven Q-learning vs a textbook loop over gymnasium.make.

Both run the same algorithm (Q-learning, same hyper-parameters, same number of
episodes) in the same process; prints training steps per second of each and the ratio.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quick import size
from trainer_service.engine import TrainingParams, TrainingState, train_chunk
from trainer_service.envs import make_env, transition_table

EPISODES = size(2000, 100)
ALPHA, GAMMA, EPSILON, EPSILON_MIN, DECAY, MAX_STEPS = 0.5, 0.99, 1.0, 0.05, 0.995, 200


def engine_rate() -> float:
    table = transition_table("Taxi-v3")
    params = TrainingParams(ALPHA, GAMMA, EPSILON_MIN, DECAY, MAX_STEPS)
    train_chunk("q_learning", table, params, TrainingState.fresh(table, 0, EPSILON), 10)  # compile / load cache
    best = 0.0
    for repeat in range(5):
        state = TrainingState.fresh(table, repeat, EPSILON)
        started = time.perf_counter()
        columns = train_chunk("q_learning", table, params, state, EPISODES)
        best = max(best, int(columns.steps.sum()) / (time.perf_counter() - started))
    return best


def gymnasium_rate() -> float:
    """The loop a tutorial writes: env.step per transition, numpy Q-table, epsilon-greedy."""
    env = make_env("Taxi-v3")
    q = np.zeros((env.observation_space.n, env.action_space.n))  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    epsilon, steps = EPSILON, 0
    started = time.perf_counter()
    for episode in range(EPISODES):
        state, _ = env.reset(seed=episode)
        for _ in range(MAX_STEPS):
            action = int(rng.integers(6)) if rng.random() < epsilon else int(np.argmax(q[state]))
            nxt, reward, terminated, truncated, _ = env.step(action)
            target = reward if terminated else reward + GAMMA * np.max(q[nxt])
            q[state, action] += ALPHA * (target - q[state, action])
            state = nxt
            steps += 1
            if terminated or truncated:
                break
        epsilon = max(EPSILON_MIN, epsilon * DECAY)
    return steps / (time.perf_counter() - started)


def main() -> None:
    engine = engine_rate()
    gymnasium = gymnasium_rate()
    print(f"bench: engine_steps_per_s = {engine:.0f} steps/s")
    print(f"bench: gymnasium_steps_per_s = {gymnasium:.0f} steps/s")
    print(f"bench: engine_speedup_vs_gymnasium = {engine / gymnasium:.1f} x")


if __name__ == "__main__":
    main()
