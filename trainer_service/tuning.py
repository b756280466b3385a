"""Measuring hyper-parameters: how often, and how fast, a preset reaches the exact optimum.

Used by bench/sweep_presets.py (to choose presets) and bench/bench_trainer.py (to report them);
the preset notes in params.py quote `bench/bench_trainer.py --presets-only` figures.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from trainer_service.engine import TrainingParams, TrainingState, model_q, train_chunk
from trainer_service.envs import TransitionTable, transition_table
from trainer_service.evaluation import is_optimal_everywhere, optimum, policy_optimality
from trainer_service.params import Hyperparameters

# Episodes between optimality checks: the resolution of time_to_optimal (a check costs one greedy
# rollout from each start state, ~300 x 13 table steps, and is not counted as training time).
CHECK_EVERY = 10


@dataclass(frozen=True)
class SeedOutcome:
    seed: int
    optimal_at_end: bool
    first_optimal_episode: int | None
    time_to_optimal_s: float | None  # training time (checks excluded) until first optimal
    # The final greedy policy from all start states: share that deliver, share that are optimal.
    delivery_fraction: float = 0.0
    optimal_start_fraction: float = 0.0
    final_epsilon: float = 0.0


@dataclass(frozen=True)
class Measurement:
    outcomes: list[SeedOutcome]

    @property
    def optimal_fraction(self) -> float:
        return sum(o.optimal_at_end for o in self.outcomes) / len(self.outcomes)

    @property
    def median_time_to_optimal_s(self) -> float | None:
        times = [o.time_to_optimal_s for o in self.outcomes]
        if sum(t is not None for t in times) * 2 <= len(times):
            return None  # the median seed never got there
        return statistics.median([t if t is not None else float("inf") for t in times])

    @property
    def delivers_everywhere(self) -> int:
        """Seeds whose final greedy policy delivers from every start state."""
        return sum(o.delivery_fraction == 1.0 for o in self.outcomes)

    @property
    def min_delivery_fraction(self) -> float:
        return min(o.delivery_fraction for o in self.outcomes)

    @property
    def mean_optimal_start_fraction(self) -> float:
        return statistics.fmean(o.optimal_start_fraction for o in self.outcomes)

    @property
    def min_optimal_start_fraction(self) -> float:
        return min(o.optimal_start_fraction for o in self.outcomes)

    def summary(self) -> str:
        """One line the preset notes quote."""
        n = len(self.outcomes)
        median = self.median_time_to_optimal_s
        return (
            f"seeds={n} exactly_optimal={sum(o.optimal_at_end for o in self.outcomes)}/{n}"
            f" delivers_from_every_start={self.delivers_everywhere}/{n}"
            f" delivery_mean={statistics.fmean(o.delivery_fraction for o in self.outcomes):.3f}"
            f" delivery_min={self.min_delivery_fraction:.3f}"
            f" optimal_starts_mean={self.mean_optimal_start_fraction:.3f}"
            f" optimal_starts_min={self.min_optimal_start_fraction:.3f}"
            f" median_time_to_optimal_s={'never' if median is None else f'{median:.4f}'}"
            f" final_epsilon={self.outcomes[0].final_epsilon:.3g}"
        )


def measure(algorithm: str, hp: Hyperparameters, seeds: range | list[int], env_id: str = "Taxi-v3") -> Measurement:
    """Trains each seed for hp.training_episodes, checking the greedy policy every CHECK_EVERY episodes
    until it is exactly optimal on all start states (first_optimal_episode), then once at the end.

    time_to_optimal_s is the time of training that first optimal episode count again, from
    scratch, in one kernel call (training is deterministic per seed, so it is the same training
    and ends on the same table: tests/test_tuning.py). Summing the timed CHECK_EVERY-episode
    chunks between checks, as before, counted what the checks cost the training: a Python-to-kernel
    call per 10 episodes (a run trains 100 episodes a call) and the caches and branch history each
    check's 300 rollouts leave behind; the preset Q-learning seed 100 (2,300 episodes) timed 0.029 s
    so, 0.015 s in the same chunks without the checks between them, 0.009 s in one call (median of
    10, load 15). And the first seed's first chunk loaded the kernel; it is now loaded before.
    """
    table = transition_table(env_id)
    best = optimum(table)
    params = TrainingParams(hp.alpha, hp.gamma, hp.epsilon_min, hp.epsilon_decay, hp.max_steps)
    train_chunk(algorithm, table, params, TrainingState.fresh(table, 0, hp.epsilon), 1)  # kernel loaded
    outcomes = []
    for seed in seeds:
        state = TrainingState.fresh(table, seed, hp.epsilon)
        first: int | None = None
        while state.episode < hp.training_episodes and first is None:
            train_chunk(algorithm, table, params, state, min(CHECK_EVERY, hp.training_episodes - state.episode))
            if is_optimal_everywhere(model_q(algorithm, state), table, best):
                first = state.episode
        train_chunk(algorithm, table, params, state, hp.training_episodes - state.episode)
        optimal = is_optimal_everywhere(model_q(algorithm, state), table, best)
        final = policy_optimality(model_q(algorithm, state), table, best)
        first_time = None if first is None else training_time(algorithm, table, params, hp.epsilon, seed, first)
        outcomes.append(
            SeedOutcome(seed, optimal, first, first_time, final.success_rate, final.optimal_fraction, state.epsilon)
        )
    return Measurement(outcomes)


def training_time(
    algorithm: str, table: TransitionTable, params: TrainingParams, epsilon: float, seed: int, episodes: int
) -> float:
    """Seconds to train `episodes` episodes of `seed` from scratch in one kernel call."""
    state = TrainingState.fresh(table, seed, epsilon)
    started = time.perf_counter()
    train_chunk(algorithm, table, params, state, episodes)
    return time.perf_counter() - started
