"""Across-seed statistics (rliable's IQM and stratified bootstrap), against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from taxidriver.seedstats import interquartile_mean, percentile, seed_statistics, stratified_bootstrap_ci


def test_interquartile_mean_cuts_a_quarter_at_each_end() -> None:
    # 8 scores: two cut at each end -> (3 + 4 + 5 + 6) / 4.
    assert interquartile_mean([8, 1, 7, 2, 6, 3, 5, 4]) == 4.5
    # 4 scores: one cut at each end; the outlying seed does not move it.
    assert interquartile_mean([1.0, 2.0, 3.0, 100.0]) == 2.5
    # 3 scores: floor(0.75) = 0 cut, the IQM is the mean (as scipy's trim_mean(x, 0.25)).
    assert interquartile_mean([1.0, 2.0, 6.0]) == 3.0
    assert math.isnan(interquartile_mean([]))


def test_percentile_interpolates_like_numpy() -> None:
    # Position (4 - 1) * 2.5 / 100 = 0.075 between 1 and 2; 97.5 -> 2.925 between 3 and 4.
    assert percentile([4.0, 1.0, 3.0, 2.0], 2.5) == pytest.approx(1.075)
    assert percentile([4.0, 1.0, 3.0, 2.0], 97.5) == pytest.approx(3.925)
    assert percentile([5.0], 50) == 5.0


def test_identical_seeds_have_a_zero_width_interval() -> None:
    assert stratified_bootstrap_ci({"Taxi-v3": [0.7] * 5}) == (pytest.approx(0.7), pytest.approx(0.7))


def test_bootstrap_resamples_within_each_task_only() -> None:
    # Stratified: every resample keeps two seeds of each task, so it is always [0, 0, 1, 1]
    # and its IQM (middle two) is 0.5: the interval has no width. Pooled resampling would
    # draw [0, 0, 0, 0] or [1, 1, 1, 1] and spread it over [0, 1].
    assert stratified_bootstrap_ci({"a": [0.0, 0.0], "b": [1.0, 1.0]}) == (0.5, 0.5)


def test_two_seeds_interval_spans_the_resample_distribution() -> None:
    # Two seeds 0 and 1: a resample's mean is 0 (p 1/4), 0.5 (p 1/2) or 1 (p 1/4); the 2.5th and
    # 97.5th percentiles of 2,000 resamples fall among the ~500 zeros and ~500 ones.
    assert stratified_bootstrap_ci({"Taxi-v3": [0.0, 1.0]}) == (0.0, 1.0)


def test_seed_statistics_of_four_seeds() -> None:
    stats = seed_statistics({"Taxi-v3": [0.2, 0.4, 0.6, 0.8]})
    assert stats.seeds == 4
    assert stats.mean == pytest.approx(0.5)
    # Middle two: (0.4 + 0.6) / 2.
    assert stats.iqm == pytest.approx(0.5)
    # Resampled IQMs lie between the two lowest and the two highest scores' means.
    assert 0.2 <= stats.ci_low < stats.iqm < stats.ci_high <= 0.8
    # The same seed of the bootstrap gives the same interval (GetSweep is reproducible).
    assert seed_statistics({"Taxi-v3": [0.2, 0.4, 0.6, 0.8]}) == stats
