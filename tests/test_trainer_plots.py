"""Plots cost O(episodes): a 1,000,000-episode run took 80 s of CPU (issue 10).

The moving average was a convolution with a window of n/50 (quadratic), and every point
of every curve was handed to matplotlib. Timings belong in bench/; here the test checks
what makes the cost linear: the moving average keeps its meaning, and what is drawn is
bounded whatever the number of episodes (spied on at matplotlib's drawing calls).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from trainer_service import plots
from trainer_service.engine import EpisodeColumns
from trainer_service.evaluation import EnvScore


def test_moving_average_matches_its_definition() -> None:
    values = np.random.default_rng(7).normal(size=1_000)
    for window in (1, 2, 37, 1_000):
        x, averaged = plots._moving_average(values, window)
        expected = [values[i - window + 1 : i + 1].mean() for i in range(window - 1, len(values))]
        np.testing.assert_allclose(averaged, expected, rtol=1e-9, atol=1e-12)
        assert list(x) == list(range(window - 1, len(values)))


def test_a_million_episode_run_draws_a_bounded_number_of_points(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[int] = []
    real_plot, real_fill = Axes.plot, Axes.fill_between

    def plot(self: Axes, *args: Any, **kwargs: Any) -> Any:
        drawn.append(len(args[0]))
        return real_plot(self, *args, **kwargs)

    def fill_between(self: Axes, x: Any, *args: Any, **kwargs: Any) -> Any:
        drawn.append(len(x))
        return real_fill(self, x, *args, **kwargs)

    def set_data(self: Line2D, *args: Any) -> Any:  # curves are redrawn in place (issue 15)
        drawn.append(len(args[0]))
        return real_set_data(self, *args)

    real_set_data = Line2D.set_data
    monkeypatch.setattr(Axes, "plot", plot)
    monkeypatch.setattr(Axes, "fill_between", fill_between)
    monkeypatch.setattr(Line2D, "set_data", set_data)
    episodes = 1_000_000
    rng = np.random.default_rng(3)
    history = EpisodeColumns(
        0,
        rng.normal(-50, 30, episodes),
        rng.integers(10, 200, episodes).astype(np.int32),
        np.linspace(1.0, 0.01, episodes),
        rng.random(episodes),
        rng.random(episodes) < 0.9,
    )
    history.rewards[123_456] = -5_000.0  # one outlier: a bounded drawing must still show it
    score = EnvScore(episodes=10, success_rate=1.0, avg_steps=13.0, avg_reward=8.0, std_reward=0.0, std_steps=0.0)
    rendered = plots.render_plots(history, score, score)
    assert set(rendered) == {"rewards.png", "steps.png", "epsilon.png", "td_error.png", "test_vs_brute_force.png"}
    assert all(png.startswith(b"\x89PNG") for png in rendered.values())
    assert drawn and max(drawn) <= plots.MAX_DRAWN_POINTS
    assert sum(1 for count in drawn if count > 0) >= 8  # 4 curves: an envelope and an average each


def test_downsampling_keeps_every_extreme() -> None:
    values = np.zeros(1_000_000)
    values[777_777] = 9.0
    values[3] = -4.0
    x, low, high = plots._envelope(values, 1_000)
    assert len(x) <= 1_000
    assert high.max() == 9.0 and low.min() == -4.0
