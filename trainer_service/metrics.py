"""Metric groups under the seed's JSONB keys, computed in the worker from its numbers.

Every field of a run describes the run's own policy (`test_metrics.policy`): the greedy
policy of its Q-table, or, for brute_force, the uniformly random policy. docs/metrics.md
describes each field.

System metrics are sampled without blocking: os.times() deltas between two instants (never
cpu_percent(interval=...), which sleeps; psutil's cpu_times() parses /proc/<pid>/stat, and
took ~50 ms per call in a loaded worker under cProfile, issue 15) and RSS read at chunk
boundaries.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import psutil

from trainer_service.engine import EpisodeColumns
from trainer_service.evaluation import GREEDY, EnvScore, Optimality, Optimum


class SystemSampler:
    """CPU time, wall time and peak RSS of this worker process over one run."""

    def __init__(self) -> None:
        self.process = psutil.Process(os.getpid())
        self.started_wall = time.perf_counter()
        self.started_cpu = os.times()
        self.peak_rss = self.process.memory_info().rss

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)

    def summary(self, training_seconds: float, training_steps: int) -> dict[str, Any]:
        self.sample()
        wall = time.perf_counter() - self.started_wall
        cpu = os.times()
        user = cpu.user - self.started_cpu.user
        system = cpu.system - self.started_cpu.system
        return {
            "wall_time_s": wall,
            "training_time_s": training_seconds,
            "cpu_user_s": user,
            "cpu_system_s": system,
            "cpu_percent": 100.0 * (user + system) / wall if wall > 0 else 0.0,
            "peak_rss_mb": self.peak_rss / 2**20,
            "training_steps": training_steps,
            "steps_per_second": training_steps / training_seconds if training_seconds > 0 else 0.0,
            "cpu_count": psutil.cpu_count() or 0,
            "pid": self.process.pid,
        }


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window:
        return values.astype(np.float64)
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def training_summary(history: EpisodeColumns) -> dict[str, Any]:
    n = len(history)
    if n == 0:
        return {"episodes": 0}
    last = slice(max(0, n - 100), n)
    return {
        "episodes": n,
        "total_steps": int(history.steps.sum()),
        "avg_reward": float(history.rewards.mean()),
        "avg_steps": float(history.steps.mean()),
        "success_rate": float(history.successes.mean()),
        "last100_avg_reward": float(history.rewards[last].mean()),
        "last100_avg_steps": float(history.steps[last].mean()),
        "last100_success_rate": float(history.successes[last].mean()),
        "best_reward": float(history.rewards.max()),
        "worst_reward": float(history.rewards.min()),
        "final_epsilon": float(history.epsilons[-1]),
        "avg_td_error": float(history.td_errors.mean()),
        "final_td_error": float(history.td_errors[last].mean()),
        # Curves themselves are stored per episode by the registry (RUN_VIEW_FULL).
        "curves": "episodes table",
    }


def learning_stability(
    q: np.ndarray | None,
    acting_states: np.ndarray,
    history: EpisodeColumns,
    convergence_episode: int | None,
    q_changes: list[tuple[int, float]],
) -> dict[str, Any]:
    """`q` is None for a policy without a Q-table (brute_force): no Q statistics then."""
    n = len(history)
    last = history.rewards[max(0, n - 100) :]
    q_stats: dict[str, Any] = {}
    if q is not None:
        # Over the states an agent can act in only: the others' rows are never updated and
        # would add zeros (Taxi: 100 states, 600 entries) to the mean and variance.
        acted = q[acting_states]
        q_stats = {
            "final_q_variance": float(acted.var()),
            "final_q_mean": float(acted.mean()),
            "q_stats_states": len(acting_states),
        }
    return {
        **q_stats,
        # First episode count (checked every chunk) at which the greedy policy was optimal
        # on every start state; null if never.
        "convergence_episode": convergence_episode,
        "reward_std_last100": float(last.std()) if len(last) else 0.0,
        "steps_std_last100": float(history.steps[max(0, n - 100) :].std()) if n else 0.0,
        # Mean |Q_k - Q_{k-1}| between consecutive checkpoints, as (episode, change).
        "q_change_between_checkpoints": [{"episode": e, "mean_abs_change": c} for e, c in q_changes],
    }


def test_metrics(
    score: EnvScore, optimality: Optimality, best: Optimum, seed_set: str, policy: str = GREEDY
) -> dict[str, Any]:
    """The test episodes' scores, and exact scores of the same policy from every start state.

    Greedy policies are rolled out (`greedy_*_all_starts`); the uniformly random policy has
    exact expectations instead (`expected_*_all_starts`): never a field of one policy in a
    run of another.
    """
    prefix = "greedy" if policy == GREEDY else "expected"
    return {
        **score.as_dict(),
        "policy": policy,
        "test_seed_set": seed_set,
        # Exact scores on the transition table, from each of the start states.
        "optimal_start_state_fraction": optimality.optimal_fraction,
        "optimality_gap_steps": optimality.steps_gap,
        "optimality_gap_reward": optimality.reward_gap,
        f"{prefix}_mean_steps_all_starts": optimality.mean_steps,
        f"{prefix}_mean_reward_all_starts": optimality.mean_reward,
        f"{prefix}_success_rate_all_starts": optimality.success_rate,
        "optimal_mean_steps": best.mean_steps,
        "optimal_mean_reward": best.mean_reward,
    }


def brute_force_metrics(agent: EnvScore, random_agent: EnvScore, best: Optimum) -> dict[str, Any]:
    """The seed's comparison with a random agent on the same test seeds (same episodes)."""
    if random_agent.episodes != agent.episodes:
        raise ValueError(f"random agent on {random_agent.episodes} episodes, agent on {agent.episodes}")
    reward_gain = agent.avg_reward - random_agent.avg_reward
    # The optimum on the very same start states: how far the agent got from chance to it.
    optimal_reward = best.mean_reward_from(agent.start_states)
    room = optimal_reward - random_agent.avg_reward
    return {
        "random_success_rate": random_agent.success_rate,
        "random_avg_steps": random_agent.avg_steps,
        "random_avg_reward": random_agent.avg_reward,
        "random_episodes": random_agent.episodes,
        "optimal_avg_reward": optimal_reward,
        # 0 = chance, 100 = optimal on every test episode.
        "gap_closed_percent": 100.0 * reward_gain / room if room > 0 else 0.0,
        # The seed's figure: gain relative to |random reward| (> 100 % whenever the agent's
        # reward is positive, since the random reward is negative).
        "improvement_percent": 100.0 * reward_gain / abs(random_agent.avg_reward) if random_agent.avg_reward else 0.0,
        # How many times fewer steps the agent needs than chance.
        "efficiency_gain": random_agent.avg_steps / agent.avg_steps if agent.avg_steps else 0.0,
        "success_rate_gain": agent.success_rate - random_agent.success_rate,
    }


def improvement_metrics(history: EpisodeColumns) -> dict[str, Any]:
    """How training improved: first vs last tenth of the episodes."""
    n = len(history)
    if n == 0:
        return {}
    tenth = max(1, n // 10)
    first_reward, last_reward = float(history.rewards[:tenth].mean()), float(history.rewards[-tenth:].mean())
    first_steps, last_steps = float(history.steps[:tenth].mean()), float(history.steps[-tenth:].mean())
    smoothed = _moving_average(history.rewards, min(100, n))
    return {
        "window_episodes": tenth,
        "first_window_avg_reward": first_reward,
        "last_window_avg_reward": last_reward,
        "reward_improvement": last_reward - first_reward,
        "first_window_avg_steps": first_steps,
        "last_window_avg_steps": last_steps,
        "steps_reduction": first_steps - last_steps,
        "best_moving_avg_reward_100": float(smoothed.max()),
    }
