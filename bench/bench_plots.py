"""CPU time of a run's plots against its number of episodes: linear since issue 10.

Before: a 1,000,000-episode run's plots took ~80 s of CPU (quadratic moving average,
every point drawn). Prints `bench: plots_<episodes>_cpu_s = <seconds> s`.
"""

from __future__ import annotations

import time

import numpy as np

from bench.quick import QUICK
from trainer_service.engine import EpisodeColumns
from trainer_service.evaluation import EnvScore
from trainer_service.plots import render_plots


def history(episodes: int) -> EpisodeColumns:
    rng = np.random.default_rng(1)
    return EpisodeColumns(
        0,
        rng.normal(-50, 30, episodes),
        rng.integers(10, 200, episodes).astype(np.int32),
        np.linspace(1.0, 0.01, episodes),
        rng.random(episodes),
        rng.random(episodes) < 0.9,
    )


def main() -> None:
    score = EnvScore(episodes=10, success_rate=1.0, avg_steps=13.0, avg_reward=8.0, std_reward=0.0, std_steps=0.0)
    render_plots(history(1_000), score, score)  # matplotlib's first-use costs
    for episodes in (10_000,) if QUICK else (10_000, 100_000, 1_000_000):
        columns = history(episodes)
        started = time.process_time()
        render_plots(columns, score, score)
        print(f"bench: plots_{episodes}_cpu_s = {time.process_time() - started:.2f} s", flush=True)


if __name__ == "__main__":
    main()
