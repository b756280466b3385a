"""Sweeps hyper-parameters per algorithm and prints how often each reaches the exact optimum.

In-process grids (trainer_service.tuning, no services, nothing stored): the first search, which
chose Q-learning's preset. The presets of SARSA, Expected SARSA, Double Q-learning and Monte Carlo
come from the tuner's sweeps, stored in the registry: `make preset-sweeps` (bench/tuner_presets.py).

A configuration qualifies when its greedy policy is optimal on all 300 start states at the
end of training for >= 95% of seeds; among those, the one with the fewest episodes (then
the shortest median time to optimum) is the preset. Each line also says how many seeds deliver
from every start state and the share of start states served optimally (tuning.Measurement.summary),
the figures the preset notes in trainer_service/params.py quote. Run:
    .venv/bin/python bench/sweep_presets.py [algorithm ...] [--seeds N]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer_service.params import Hyperparameters
from trainer_service.tuning import measure

# Zero-initialised Q-tables are pessimistic on Taxi (true values are mostly positive), so
# exploration must come from epsilon: the grid keeps a floor > 0 (a floor of 0 stalls at
# ~85-98% of start states, measured).
_TD = {"alpha": [0.5, 1.0], "gamma": [0.9, 0.99], "decay": [0.99, 0.995], "floor": [0.1, 0.2]}
GRIDS: dict[str, dict[str, list[float]]] = {
    "q_learning": _TD,
    # SARSA's grid includes a floor of 0 and a slow decay (its preset), where epsilon ends near 0.
    "sarsa": {"alpha": [0.3, 1.0], "gamma": [0.9, 0.99], "decay": [0.995, 0.9995], "floor": [0.0, 0.2]},
    "expected_sarsa": _TD,
    "double_q_learning": _TD,
    "monte_carlo": {"alpha": [0.05, 0.1], "gamma": [0.9, 0.95], "decay": [0.999], "floor": [0.1, 0.2]},
}
_EPISODES = [5000, 10000, 20000, 40000]
EPISODES = {
    "q_learning": _EPISODES,
    "sarsa": _EPISODES,
    "expected_sarsa": _EPISODES,
    "double_q_learning": _EPISODES,
    "monte_carlo": [50000, 100000],
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("algorithms", nargs="*", default=list(GRIDS))
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    for algorithm in args.algorithms:
        grid = GRIDS[algorithm]
        best: tuple[int, float, Hyperparameters, float] | None = None
        top_fraction: tuple[float, Hyperparameters | None] = (0.0, None)
        for alpha, gamma, decay, floor in itertools.product(grid["alpha"], grid["gamma"], grid["decay"], grid["floor"]):
            for episodes in EPISODES[algorithm]:
                hp = Hyperparameters(alpha, gamma, 1.0, floor, decay, episodes, 200)
                result = measure(algorithm, hp, range(args.seeds))
                fraction, median = result.optimal_fraction, result.median_time_to_optimal_s
                print(f"{algorithm} {hp} {result.summary()}", flush=True)
                if fraction > top_fraction[0]:
                    top_fraction = (fraction, hp)
                if fraction >= 0.95:
                    key = (episodes, median if median is not None else float("inf"))
                    if best is None or key < (best[0], best[1]):
                        best = (episodes, key[1], hp, fraction)
                    break  # more episodes of the same configuration are not better presets
        if best is None:
            print(f"preset {algorithm}: none reached 95%; best fraction {top_fraction[0]:.2f} with {top_fraction[1]}")
        else:
            print(
                f"preset {algorithm}: {best[2]} optimal_fraction={best[3]:.2f} median_time_to_optimal_s={best[1]:.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
