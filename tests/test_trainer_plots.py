"""Plots cost O(episodes): a 1,000,000-episode run took 80 s of CPU (issue 10).

The moving average was a convolution with a window of n/50 (quadratic), and every point
of every curve was handed to matplotlib. Timings belong in bench/; here the test checks
what makes the cost linear: the moving average keeps its meaning, and what is drawn is
bounded whatever the number of episodes (spied on at matplotlib's drawing calls).
"""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.lines import Line2D
from PIL import Image

from bench.bench_plots import history
from registry_service import plots
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
    columns = history(1_000_000, seed=3)
    columns.rewards[123_456] = -5_000.0  # one outlier: a bounded drawing must still show it
    score = EnvScore(episodes=10, success_rate=1.0, avg_steps=13.0, avg_reward=8.0, std_reward=0.0, std_steps=0.0)
    rendered = plots.render_plots(columns, score, score)
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


def _score(success_rate: float, avg_steps: float, avg_reward: float) -> EnvScore:
    return EnvScore(10, success_rate, avg_steps, avg_reward, std_reward=0.0, std_steps=0.0)


def _png_size(png: bytes) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk, after Pillow has checked the whole file."""
    with Image.open(io.BytesIO(png)) as image:
        image.verify()
    assert png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def test_every_plot_is_a_valid_png_of_its_size_for_small_and_long_runs() -> None:
    score, random_score = _score(0.9, 13.0, 7.5), _score(0.05, 190.0, -700.0)
    for episodes in (1, 300, 60_000):
        rendered = plots.render_plots(history(episodes, seed=episodes), score, random_score)
        sizes = {name: _png_size(png) for name, png in rendered.items()}
        assert sizes == {
            "rewards.png": (630, 315),
            "steps.png": (630, 315),
            "epsilon.png": (630, 315),
            "td_error.png": (630, 315),
            "test_vs_brute_force.png": (810, 270),
        }


def test_a_spike_in_a_long_curve_reaches_the_drawn_envelope() -> None:
    values = np.random.default_rng(5).normal(0.0, 1.0, 60_000)
    values[41_234] = 250.0
    values[17] = -90.0
    plots._curve(values, "Reward per episode", "reward")
    figure = plots._figures["curve"]
    drawn = np.concatenate([path.vertices[:, 1] for path in figure.envelope.get_paths()])
    assert drawn.max() == 250.0 and drawn.min() == -90.0
    low, high = figure.axis.get_ylim()
    assert low < -90.0 and high > 250.0  # and the axes show it
    assert not figure.per_episode.get_visible()
    # a short curve is drawn point by point, and the long one's envelope is gone
    plots._curve(values[:300], "Reward per episode", "reward")
    assert figure.envelope is None and figure.per_episode.get_visible()
    assert np.asarray(figure.per_episode.get_ydata()).tolist() == values[:300].tolist()


def test_the_comparison_writes_each_bars_value() -> None:
    plots._comparison(_score(0.93, 13.2, 7.8), _score(0.03, 190.0, -760.0))
    figure = plots._comparison_figures["comparison"]
    assert [[text.get_text() for text in pair] for pair in figure.values] == [
        ["0.93", "0.03"],
        ["13.2", "190"],
        ["7.8", "-760"],
    ]
    assert [[bar.get_height() for bar in bars] for bars in figure.bars] == [[0.93, 0.03], [13.2, 190.0], [7.8, -760.0]]


def test_the_per_episode_range_keeps_its_colour_from_run_to_run() -> None:
    """fill_between took the next colour of the cycle at every draw: each curve came out in another colour."""
    values = np.random.default_rng(9).normal(0.0, 1.0, 60_000)
    colours = []
    for _ in range(3):
        plots._curve(values, "Reward per episode", "reward")
        figure = plots._figures["curve"]
        colours.append(tuple(np.round(figure.envelope.get_facecolor()[0][:3], 3)))
    expected = tuple(np.round(to_rgba(figure.per_episode.get_color())[:3], 3))
    assert colours == [expected] * 3
