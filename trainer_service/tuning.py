"""Measuring hyper-parameters: how often, and how fast, a preset reaches the exact optimum.

Used by bench/sweep_presets.py (to choose presets) and bench/bench_trainer.py (to report them);
the preset notes in params.py quote `bench/bench_trainer.py --presets-only` figures.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from trainer_service.engine import TrainingParams, TrainingState, model_q, train_chunk
from trainer_service.envs import transition_table
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
    table = transition_table(env_id)
    best = optimum(table)
    params = TrainingParams(hp.alpha, hp.gamma, hp.epsilon_min, hp.epsilon_decay, hp.max_steps)
    outcomes = []
    for seed in seeds:
        state = TrainingState.fresh(table, seed, hp.epsilon)
        training, first, first_time = 0.0, None, None
        optimal = False
        while state.episode < hp.training_episodes:
            started = time.perf_counter()
            train_chunk(algorithm, table, params, state, min(CHECK_EVERY, hp.training_episodes - state.episode))
            training += time.perf_counter() - started
            optimal = is_optimal_everywhere(model_q(algorithm, state), table, best)
            if optimal and first is None:
                first, first_time = state.episode, training
        final = policy_optimality(model_q(algorithm, state), table, best)
        outcomes.append(
            SeedOutcome(seed, optimal, first, first_time, final.success_rate, final.optimal_fraction, state.epsilon)
        )
    return Measurement(outcomes)
