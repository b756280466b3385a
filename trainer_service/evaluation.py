"""Ground truth and evaluation.

- `optimum`: value iteration on the transition table (undiscounted, so the optimum is the
  best achievable episode reward); Taxi: 13.07 mean steps, 7.93 mean reward over 300 starts.
- `policy_optimality`: greedy rollouts of a Q-table on the table from every start state,
  compared with the optimum (cheap enough to run every K episodes).
- `evaluate_on_env`: greedy (or random) episodes on the REAL Gymnasium environment on a
  fixed, versioned list of test seeds, so two runs are scored on the same episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer_service.envs import TransitionTable, make_env
from trainer_service.kernels import greedy, jit

# Version the seed list: changing the formula changes every score, so it gets a new name.
TEST_SEEDS_VERSION = "test-seeds-v1"
_TEST_SEED_BASE = 1_000_003


def test_seeds(count: int) -> list[int]:
    """The seeds of the first `count` test episodes (same for every run)."""
    return [_TEST_SEED_BASE + 7919 * i for i in range(count)]


@dataclass(frozen=True)
class Optimum:
    values: np.ndarray  # best undiscounted episode reward from each state
    q: np.ndarray  # optimal action values
    steps: np.ndarray  # optimal steps from each start state (aligned with start_states)
    rewards: np.ndarray  # optimal reward from each start state

    @property
    def mean_steps(self) -> float:
        return float(self.steps.mean())

    @property
    def mean_reward(self) -> float:
        return float(self.rewards.mean())


@jit
def _value_iteration(next_state: np.ndarray, reward: np.ndarray, terminated: np.ndarray, sweeps: int) -> np.ndarray:
    n_states, n_actions = next_state.shape
    q = np.zeros((n_states, n_actions))
    values = np.zeros(n_states)
    for _ in range(sweeps):
        changed = False
        for s in range(n_states):
            for a in range(n_actions):
                target = reward[s, a] if terminated[s, a] else reward[s, a] + values[next_state[s, a]]
                q[s, a] = target
            best = q[s].max()
            if best != values[s]:
                changed = True
                values[s] = best
        if not changed:
            break
    return q


@jit
def _rollouts(
    q: np.ndarray,
    next_state: np.ndarray,
    reward: np.ndarray,
    terminated: np.ndarray,
    start_states: np.ndarray,
    max_steps: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = start_states.shape[0]
    steps = np.zeros(n, dtype=np.int64)
    rewards = np.zeros(n)
    success = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        state = start_states[i]
        done = False
        while steps[i] < max_steps and not done:
            action = greedy(q, state)
            rewards[i] += reward[state, action]
            done = terminated[state, action]
            state = next_state[state, action]
            steps[i] += 1
        success[i] = done
    return steps, rewards, success


def optimum(table: TransitionTable) -> Optimum:
    """Exact optimum by value iteration (deterministic, undiscounted, terminating)."""
    # Undiscounted values start at 0 (optimistic: rewards are -1 per step until +20),
    # so synchronous sweeps converge in about as many sweeps as the longest optimal path.
    q = _value_iteration(table.next_state, table.reward, table.terminated, 10_000)
    steps, rewards, success = _rollouts(
        q, table.next_state, table.reward, table.terminated, table.start_states, table.max_episode_steps
    )
    if not success.all():
        raise RuntimeError("value iteration did not yield a terminating policy")
    return Optimum(values=q.max(axis=1), q=q, steps=steps, rewards=rewards)


@dataclass(frozen=True)
class Optimality:
    optimal_fraction: float  # share of start states where the greedy policy is optimal
    mean_steps: float
    mean_reward: float
    success_rate: float
    steps_gap: float  # mean steps minus the optimum's (>= 0)
    reward_gap: float  # optimum's mean reward minus this one's (>= 0)


def policy_optimality(q: np.ndarray, table: TransitionTable, best: Optimum) -> Optimality:
    """Greedy policy of `q` from every start state, scored against the optimum."""
    steps, rewards, success = _rollouts(
        q, table.next_state, table.reward, table.terminated, table.start_states, table.max_episode_steps
    )
    optimal = success & (np.abs(rewards - best.rewards) < 1e-9)
    return Optimality(
        optimal_fraction=float(optimal.mean()),
        mean_steps=float(steps.mean()),
        mean_reward=float(rewards.mean()),
        success_rate=float(success.mean()),
        steps_gap=float(steps.mean() - best.mean_steps),
        reward_gap=float(best.mean_reward - rewards.mean()),
    )


def is_optimal_everywhere(q: np.ndarray, table: TransitionTable, best: Optimum) -> bool:
    _, rewards, success = _rollouts(
        q, table.next_state, table.reward, table.terminated, table.start_states, table.max_episode_steps
    )
    return bool(success.all() and np.all(np.abs(rewards - best.rewards) < 1e-9))


@dataclass(frozen=True)
class EnvScore:
    episodes: int
    success_rate: float
    avg_steps: float
    avg_reward: float
    std_reward: float
    std_steps: float

    def as_dict(self) -> dict[str, float]:
        return {
            "episodes": self.episodes,
            "success_rate": self.success_rate,
            "avg_steps": self.avg_steps,
            "avg_reward": self.avg_reward,
            "std_reward": self.std_reward,
            "std_steps": self.std_steps,
        }


def evaluate_on_env(env_id: str, episodes: int, q: np.ndarray | None) -> EnvScore:
    """Greedy episodes of `q` on the real environment (random actions when q is None).

    Episodes end on termination or the environment's own TimeLimit truncation.
    """
    env = make_env(env_id)
    rewards = np.zeros(episodes)
    steps = np.zeros(episodes, dtype=np.int64)
    successes = np.zeros(episodes, dtype=np.bool_)
    try:
        for index, seed in enumerate(test_seeds(episodes)):
            state, _ = env.reset(seed=seed)
            env.action_space.seed(seed)
            done = False
            while not done:
                action = env.action_space.sample() if q is None else int(np.argmax(q[state]))
                state, reward, terminated, truncated, _ = env.step(action)
                rewards[index] += float(reward)
                steps[index] += 1
                successes[index] = terminated
                done = terminated or truncated
    finally:
        env.close()
    return EnvScore(
        episodes=episodes,
        success_rate=float(successes.mean()),
        avg_steps=float(steps.mean()),
        avg_reward=float(rewards.mean()),
        std_reward=float(rewards.std()),
        std_steps=float(steps.std()),
    )
