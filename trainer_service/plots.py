"""PNG plots of a run's curves (matplotlib Agg), rendered in the worker after the run."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from trainer_service.engine import EpisodeColumns
from trainer_service.evaluation import EnvScore


def _moving_average(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    window = max(1, min(window, len(values)))
    averaged = np.convolve(values, np.ones(window) / window, mode="valid")
    return np.arange(window - 1, window - 1 + len(averaged)), averaged


def _curve(values: np.ndarray, title: str, ylabel: str) -> bytes:
    figure, axis = plt.subplots(figsize=(7, 3.5), dpi=90)
    episodes = np.arange(len(values))
    axis.plot(episodes, values, linewidth=0.5, alpha=0.35, label="per episode")
    x, averaged = _moving_average(values.astype(np.float64), max(1, len(values) // 50))
    axis.plot(x, averaged, linewidth=1.5, label="moving average")
    axis.set_title(title)
    axis.set_xlabel("episode")
    axis.set_ylabel(ylabel)
    axis.legend(loc="best", fontsize="small")
    figure.tight_layout()
    return _png(figure)


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _comparison(agent: EnvScore, random_agent: EnvScore) -> bytes:
    figure, axes = plt.subplots(1, 3, figsize=(9, 3), dpi=90)
    for axis, (label, ours, theirs) in zip(
        axes,
        [
            ("success rate", agent.success_rate, random_agent.success_rate),
            ("avg steps", agent.avg_steps, random_agent.avg_steps),
            ("avg reward", agent.avg_reward, random_agent.avg_reward),
        ],
        strict=True,
    ):
        axis.bar(["agent", "random"], [ours, theirs], color=["tab:blue", "tab:gray"])
        axis.set_title(label)
    figure.suptitle("test episodes: agent vs brute force")
    figure.tight_layout()
    return _png(figure)


def render_plots(history: EpisodeColumns, agent: EnvScore, random_agent: EnvScore) -> dict[str, bytes]:
    """name -> PNG bytes, uploaded as PLOT artifacts once the run is completed."""
    if len(history) == 0:
        return {}
    return {
        "rewards.png": _curve(history.rewards, "Reward per episode", "reward"),
        "steps.png": _curve(history.steps, "Steps per episode", "steps"),
        "epsilon.png": _curve(history.epsilons, "Exploration rate", "epsilon"),
        "td_error.png": _curve(history.td_errors, "Mean |TD error| per episode", "|TD error|"),
        "test_vs_brute_force.png": _comparison(agent, random_agent),
    }
