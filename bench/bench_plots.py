"""CPU time of a run's five PNG plots against its number of episodes.

- plots_<episodes>_cpu_s: median process CPU time of `render_plots` for one run (every
  curve and the agent-vs-random bars), over REPEATS renders. 300 episodes is a small run,
  10,000 the optimized Q-learning preset; the plots are drawn before a run completes, so
  they are inside end_to_end_run_s and bound runs_recorded_per_s (issue 15).
- plots_<episodes>_bytes: the five PNGs' total size.

History: a 1,000,000-episode run's plots took ~80 s of CPU (quadratic moving average,
every point drawn; issue 10). In issue 15 a run's five plots took 0.41-0.58 s of CPU at
300 episodes, 0.60-0.70 s at 10,000 (load 2: per-draw layout of titles, labels and a legend
placed by search), 0.22-0.30 / 0.29-0.31 s after fixed layouts, ~one drawn point per pixel,
PNG zlib level 1 and unhinted glyphs (alternated).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from bench.quick import QUICK, size
from registry_service.plots import render_plots
from trainer_service.engine import EpisodeColumns
from trainer_service.evaluation import EnvScore

REPEATS = size(7, 1)


def history(episodes: int, seed: int = 1) -> EpisodeColumns:
    """Synthetic curves of a run of `episodes` (tests/test_trainer_plots.py draws them too)."""
    rng = np.random.default_rng(seed)
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
    for episodes in (300, 10_000) if QUICK else (300, 10_000, 60_000, 1_000_000):
        columns = history(episodes)
        timings = []
        for _ in range(REPEATS if episodes <= 60_000 else 1):
            started = time.process_time()
            rendered = render_plots(columns, score, score)
            timings.append(time.process_time() - started)
        print(f"bench: plots_{episodes}_cpu_s = {statistics.median(timings):.3f} s", flush=True)
        print(f"bench: plots_{episodes}_bytes = {sum(map(len, rendered.values()))} bytes", flush=True)


if __name__ == "__main__":
    main()
