"""One module per algorithm; each exposes NAME, DESCRIPTION and a jitted `train_episodes`.

Every `train_episodes` has the same signature so the engine drives them alike: it trains
`len(out_rewards)` episodes in place on the Q-table(s) and PRNG state, fills the
per-episode columns, and returns epsilon after the last episode's decay.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

from trainer_service.algorithms import (
    brute_force,
    double_q_learning,
    expected_sarsa,
    monte_carlo,
    q_learning,
    sarsa,
)


@dataclass(frozen=True)
class Algorithm:
    name: str
    description: str
    train_episodes: Any
    # Hyper-parameters the update rule reads (validation asks only for these in user mode).
    parameters: tuple[str, ...]
    learns: bool = True


_TD = ("alpha", "gamma", "epsilon", "epsilon_min", "epsilon_decay", "training_episodes", "max_steps")


def _algorithm(module: ModuleType, parameters: tuple[str, ...] = _TD, learns: bool = True) -> Algorithm:
    return Algorithm(module.NAME, module.DESCRIPTION, module.train_episodes, parameters, learns)


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        _algorithm(brute_force, ("training_episodes", "max_steps"), learns=False),
        _algorithm(q_learning),
        _algorithm(sarsa),
        _algorithm(expected_sarsa),
        _algorithm(double_q_learning),
        _algorithm(monte_carlo),
    )
}
