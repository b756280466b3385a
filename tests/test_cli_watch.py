"""`taxi-driver runs watch`: follow a run somebody (or something) else started, live, to its end."""

from __future__ import annotations

import io
import uuid

import pytest

from taxidriver.cli import LineProgress
from taxidriver.client import TaxiDriverClient
from taxidriver.registry.v1 import resources_pb2
from tests.support import InProcessService
from tests.test_cli_commands import TRAIN_USER, cli


def test_watch_follows_a_run_started_elsewhere_to_its_end(gateway: InProcessService) -> None:
    with TaxiDriverClient(gateway.target) as client:
        started = client.start_run(
            "q_learning",
            mode="user",
            hyperparameters={
                "alpha": 0.5,
                "gamma": 0.95,
                "epsilon": 1.0,
                "epsilon_min": 0.05,
                "epsilon_decay": 0.99,
                # Long enough (a few seconds) to be still training when the watch attaches.
                "training_episodes": 100_000,
                "max_steps": 200,
            },
            test_episodes=20,
            seed=5,
        )
    result = cli(gateway, "runs", "watch", started.run_id)
    assert result.code == 0, result.err
    assert "episode 100000/100000 (100%)" in result.err
    assert "nothing to follow" not in result.err
    assert "status:          completed" in result.out
    assert started.run_id in result.out


def test_watch_of_a_finished_run_prints_it_at_once(gateway: InProcessService) -> None:
    trained = cli(gateway, "--json", "train", "sarsa", *TRAIN_USER, "--seed", "3")
    assert trained.code == 0, trained.err
    run_id = trained.json()["run_id"]
    result = cli(gateway, "--json", "runs", "watch", run_id)
    assert result.code == 0, result.err
    assert result.json()["run_id"] == run_id
    assert result.json()["status"] == "RUN_STATUS_COMPLETED"
    # Nothing to follow: no replay of the stored episodes with a progress line and an ETA.
    assert "episode " not in result.err
    assert f"run {run_id} is already completed; nothing to follow" in result.err


def test_the_eta_of_a_watch_counts_only_the_episodes_seen_live(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attached at episode 5,000 of 10,000, then 1,000 more in 1 s: 4 s remain (not 0.8 s, as
    when the episodes stored before the watch counted as done in that second)."""
    clock = iter([100.0, 101.0])
    monkeypatch.setattr("taxidriver.cli.time.monotonic", lambda: next(clock))
    stream = io.StringIO()
    progress = LineProgress(stream, planned=10_000, enabled=True, start_episode=5_000)
    curves = resources_pb2.EpisodeCurves(first_episode=5_000, rewards=[1.0] * 1_000, epsilons=[0.1] * 1_000)
    progress.episodes(curves)
    assert "episode 6000/10000 (60%)" in stream.getvalue()
    assert "ETA 4.0s" in stream.getvalue()


def test_watch_of_an_unknown_run_is_not_found(gateway: InProcessService) -> None:
    result = cli(gateway, "runs", "watch", str(uuid.uuid4()))
    assert result.code == 1
    assert result.err.startswith("error: NOT_FOUND:")


def test_watch_of_a_malformed_id_names_the_field(gateway: InProcessService) -> None:
    result = cli(gateway, "runs", "watch", "not-a-uuid")
    assert result.code == 1
    assert "INVALID_ARGUMENT" in result.err
    assert "run_id" in result.err
