"""PNG plots of a run's curves (matplotlib Agg): a view of data the registry stores.

The five plots need only stored data: the four curves (rewards, steps, epsilons, TD errors:
run_episodes) and the test-vs-brute-force bars (success_rate, avg_steps and avg_reward of the
agent in test_metrics and of the random agent in brute_force_metrics, `random_*`). The registry
renders them on a run's first read of its artifacts (registry_service/plot_rendering.py), in a
process of its own, so a run's completion never waits for matplotlib.
"""

from __future__ import annotations

import io
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator


class Curves(Protocol):
    """A run's per-episode curves (trainer_service.engine.EpisodeColumns has them)."""

    @property
    def rewards(self) -> np.ndarray: ...
    @property
    def steps(self) -> np.ndarray: ...
    @property
    def epsilons(self) -> np.ndarray: ...
    @property
    def td_errors(self) -> np.ndarray: ...


class Score(Protocol):
    """Test-episode scores of one policy (trainer_service.evaluation.EnvScore has them)."""

    @property
    def success_rate(self) -> float: ...
    @property
    def avg_steps(self) -> float: ...
    @property
    def avg_reward(self) -> float: ...


# Points handed to matplotlib per curve, whatever the number of episodes: a 1,000,000-episode
# run drew every point and convolved a 20,000-wide window (80 s of CPU, issue 10). About one
# point per horizontal pixel of the plot (7 in x 90 dpi x 0.86 = 542 px): beyond that, longer
# curves are drawn as each bucket's min-max envelope, so every spike still reaches the image.
MAX_DRAWN_POINTS = 600

# zlib level of the PNGs: the default (6) was ~12 % of the plots' CPU (cProfile, issue 15); the
# images are flat colours and text, so level 1 costs little size.
PNG_OPTIONS: dict[str, Any] = {"format": "png", "pil_kwargs": {"compress_level": 1}}

# What render_plots returns for a run with at least one episode.
PLOT_NAMES = ("rewards.png", "steps.png", "epsilon.png", "td_error.png", "test_vs_brute_force.png")


def _png(figure: Any) -> bytes:
    """The figure as PNG bytes, its glyphs rasterized without FreeType's hinting.

    Text is most of what a plot still costs; unhinted glyphs were ~17 % of a run's plots
    (0.28/0.31 -> 0.23/0.26 s of CPU for 300/10,000 episodes, alternated, load 3-6).
    """
    buffer = io.BytesIO()
    with matplotlib.rc_context({"text.hinting": "none"}):
        figure.savefig(buffer, **PNG_OPTIONS)
    return buffer.getvalue()


def _fixed_layout(axis: Any) -> None:
    """Titles, axis labels and ticks at fixed places, never measured at draw time.

    Left to itself, matplotlib measures every tick label's box at each draw to move the title
    above the ticks and the axis labels away from them, and `legend(loc="best")` tries every
    position against the data: with the tick labels' text that was most of a plot's CPU
    (cProfile, issue 15). The margins are fixed wide enough for labels such as -5000 or 0.0025.
    """
    axis.yaxis.set_label_coords(-0.09, 0.5)
    axis.xaxis.set_label_coords(0.5, -0.12)
    axis.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    axis.yaxis.set_major_locator(MaxNLocator(nbins=5))


def _moving_average(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Trailing mean over `window` episodes, O(n) through a cumulative sum."""
    window = max(1, min(window, len(values)))
    totals = np.concatenate(([0.0], np.cumsum(values, dtype=np.float64)))
    averaged = (totals[window:] - totals[:-window]) / window
    return np.arange(window - 1, window - 1 + len(averaged)), averaged


def _envelope(values: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Min and max of each of `buckets` consecutive slices, O(n): every spike stays visible."""
    starts = np.unique(np.linspace(0, len(values), num=min(buckets, len(values)), endpoint=False).astype(np.int64))
    return starts, np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)


def _thin(x: np.ndarray, y: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    stride = max(1, -(-len(x) // points))
    return x[::stride], y[::stride]


class _CurveFigure:
    """One figure per process, redrawn for every curve of every run.

    A new figure, its axes and a tight layout per curve were over half of the plotting CPU, and
    plotting was ~3/4 of a small run's worker CPU (issue 15): the lines are updated in place and
    the margins are fixed (wide enough for tick labels such as -5000 or 0.0025).
    """

    def __init__(self) -> None:
        self.figure, self.axis = plt.subplots(figsize=(7, 3.5), dpi=90)
        self.figure.subplots_adjust(left=0.12, right=0.98, bottom=0.15, top=0.9)
        _fixed_layout(self.axis)
        self.axis.set_xlabel("episode")
        (self.per_episode,) = self.axis.plot([], [], linewidth=0.5, alpha=0.35)
        (self.average,) = self.axis.plot([], [], linewidth=1.5)
        self.envelope: Any = None

    def draw(self, values: np.ndarray, title: str, ylabel: str) -> bytes:
        axis = self.axis
        if self.envelope is not None:
            self.envelope.remove()
            self.envelope = None
        axis.dataLim.set_points(np.array([[np.inf, np.inf], [-np.inf, -np.inf]]))
        axis.ignore_existing_data_limits = True
        values = values.astype(np.float64)
        if len(values) <= MAX_DRAWN_POINTS:
            self.per_episode.set_visible(True)
            self.per_episode.set_data(np.arange(len(values)), values)
            faint = "per episode"
            axis.update_datalim(np.column_stack([np.arange(len(values)), values]))
        else:
            self.per_episode.set_visible(False)
            x, low, high = _envelope(values, MAX_DRAWN_POINTS)
            # Its own colour, the per-episode line's: fill_between takes the next one of the
            # colour cycle at every call, so each run's curves came out in another colour.
            colour = self.per_episode.get_color()
            self.envelope = axis.fill_between(x, low, high, linewidth=0, alpha=0.35, color=colour)
            faint = "per episode (min-max)"
            axis.update_datalim(np.column_stack([np.concatenate([x, x]), np.concatenate([low, high])]))
        window = max(1, len(values) // 50)
        x, averaged = _moving_average(values, window)
        self.average.set_data(*_thin(x, averaged, MAX_DRAWN_POINTS))
        axis.autoscale_view()
        axis.set_title(title, loc="left", y=1.0)
        # The key in one line above the plot's right corner: a legend box was ~1/6 of a curve's
        # CPU, placed by trying every position against the data (cProfile, issue 15).
        axis.set_title(f"faint: {faint}; line: mean of {window}", loc="right", y=1.0, fontsize="small")
        axis.set_ylabel(ylabel)
        return _png(self.figure)


_figures: dict[str, _CurveFigure] = {}


def _curve(values: np.ndarray, title: str, ylabel: str) -> bytes:
    if "curve" not in _figures:
        _figures["curve"] = _CurveFigure()
    return _figures["curve"].draw(values, title, ylabel)


class _ComparisonFigure:
    """The agent-vs-random bars, one figure per process, its bars resized for every run.

    A new three-axes figure with a tight layout per run was two thirds of a small run's plotting
    CPU (cProfile, issue 15: tight_layout draws the figure once more to measure it); as for the
    curves, the margins are fixed and only the bars' heights and the y-limits change.
    """

    MEASURES = (("success rate", "success_rate"), ("avg steps", "avg_steps"), ("avg reward", "avg_reward"))

    def __init__(self) -> None:
        self.figure, axes = plt.subplots(1, 3, figsize=(9, 3), dpi=90)
        self.figure.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.78, wspace=0.4)
        self.figure.suptitle("test episodes: agent vs brute force")
        self.axes = list(axes)
        self.bars = []
        self.values = []
        for axis, (label, _) in zip(self.axes, self.MEASURES, strict=True):
            self.bars.append(axis.bar(["agent", "random"], [0.0, 0.0], color=["tab:blue", "tab:gray"]))
            # Each bar's value written at its end instead of a y axis: two texts instead of six
            # tick labels, and the exact figures readable (cProfile, issue 15: text is the cost).
            self.values.append([axis.text(x, 0.0, "", ha="center", fontsize="small") for x in (0, 1)])
            axis.set_title(label, y=1.0)
            axis.set_yticks([])
            axis.set_ymargin(0.15)
            axis.use_sticky_edges = False  # room for the value labels on both sides of 0
            axis.axhline(0.0, color="black", linewidth=0.5)

    def draw(self, agent: Score, random_agent: Score) -> bytes:
        for axis, bars, values, (_, measure) in zip(self.axes, self.bars, self.values, self.MEASURES, strict=True):
            for bar, value, score in zip(bars, values, (agent, random_agent), strict=True):
                height = float(getattr(score, measure))
                bar.set_height(height)
                value.set_text(f"{height:.3g}")
                value.set_y(height)
                value.set_verticalalignment("bottom" if height >= 0 else "top")
            axis.relim()
            axis.autoscale_view()
        return _png(self.figure)


def _comparison(agent: Score, random_agent: Score) -> bytes:
    if "comparison" not in _comparison_figures:
        _comparison_figures["comparison"] = _ComparisonFigure()
    return _comparison_figures["comparison"].draw(agent, random_agent)


_comparison_figures: dict[str, _ComparisonFigure] = {}


def render_plots(history: Curves, agent: Score, random_agent: Score) -> dict[str, bytes]:
    """name -> PNG bytes (PLOT_NAMES), none for a run without episodes. Deterministic: the same
    data gives the same bytes (no timestamp in the PNGs)."""
    if len(history.rewards) == 0:
        return {}
    return {
        "rewards.png": _curve(history.rewards, "Reward per episode", "reward"),
        "steps.png": _curve(history.steps, "Steps per episode", "steps"),
        "epsilon.png": _curve(history.epsilons, "Exploration rate", "epsilon"),
        "td_error.png": _curve(history.td_errors, "Mean |TD error| per episode", "|TD error|"),
        "test_vs_brute_force.png": _comparison(agent, random_agent),
    }
