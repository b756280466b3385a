"""Across-seed statistics of a configuration, the way rliable reports them (Agarwal et al. 2021).

A handful of seeds gives a noisy mean; the interquartile mean (mean of the middle 50 % of the
scores) is robust to one outlying seed and more efficient than the median, and a percentile
confidence interval from a *stratified* bootstrap (seeds resampled with replacement within
each task, here each environment) says how much the figure can be trusted.

Plain Python on purpose: shared by the registry (CompareRuns) and the tuner (GetSweep), and
imported by every image's build check, including the gateway's, which has no numpy. A sweep
trial has at most 50 seeds: 2,000 resamples cost a few milliseconds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Resamples of the bootstrap: with this many the interval's ends move by a small fraction of
# its width from one random stream to another; rliable's default (50,000) costs 25x more.
BOOTSTRAP_RESAMPLES = 2_000
CONFIDENCE = 0.95


@dataclass(frozen=True, kw_only=True)
class SeedStatistics:
    seeds: int
    mean: float
    iqm: float
    ci_low: float
    ci_high: float


def interquartile_mean(scores: Sequence[float]) -> float:
    """Mean of the scores left after cutting floor(25 %) of them at each end.

    The same cut as rliable's `scipy.stats.trim_mean(scores, 0.25)`: with 4 scores one is
    cut at each end, with 3 none (so IQM = mean), with 8 two.
    """
    ordered = sorted(float(s) for s in scores)
    count = len(ordered)
    if count == 0:
        return math.nan
    cut = int(0.25 * count)
    kept = ordered[cut : count - cut]
    return math.fsum(kept) / len(kept)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation (numpy's default method)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100.0
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def stratified_bootstrap_ci(
    scores_by_task: Mapping[str, Sequence[float]],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the IQM over all tasks' scores, seeds resampled within each task."""
    rng = random.Random(seed)
    tasks = [[float(s) for s in scores_by_task[task]] for task in sorted(scores_by_task)]
    tasks = [scores for scores in tasks if scores]
    if not tasks:
        return math.nan, math.nan
    estimates = []
    for _ in range(resamples):
        sample: list[float] = []
        for scores in tasks:
            sample.extend(rng.choices(scores, k=len(scores)))
        estimates.append(interquartile_mean(sample))
    tail = (1.0 - confidence) / 2.0 * 100.0
    return percentile(estimates, tail), percentile(estimates, 100.0 - tail)


def seed_statistics(scores_by_task: Mapping[str, Sequence[float]], *, seed: int = 0) -> SeedStatistics:
    """Mean, IQM and the 95 % stratified-bootstrap interval of the IQM, over every task's seeds."""
    flat = [float(score) for task in sorted(scores_by_task) for score in scores_by_task[task]]
    if not flat:
        return SeedStatistics(seeds=0, mean=math.nan, iqm=math.nan, ci_low=math.nan, ci_high=math.nan)
    low, high = stratified_bootstrap_ci(scores_by_task, seed=seed)
    return SeedStatistics(
        seeds=len(flat), mean=math.fsum(flat) / len(flat), iqm=interquartile_mean(flat), ci_low=low, ci_high=high
    )
