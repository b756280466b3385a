"""`taxi-driver runs watch`: follow a run somebody (or something) else started, live, to its end."""

from __future__ import annotations

import uuid

from taxidriver.client import TaxiDriverClient
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
                "training_episodes": 400,
                "max_steps": 200,
            },
            test_episodes=20,
            seed=5,
        )
    result = cli(gateway, "runs", "watch", started.run_id)
    assert result.code == 0, result.err
    assert "episode 400/400 (100%)" in result.err
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


def test_watch_of_an_unknown_run_is_not_found(gateway: InProcessService) -> None:
    result = cli(gateway, "runs", "watch", str(uuid.uuid4()))
    assert result.code == 1
    assert result.err.startswith("error: NOT_FOUND:")


def test_watch_of_a_malformed_id_names_the_field(gateway: InProcessService) -> None:
    result = cli(gateway, "runs", "watch", "not-a-uuid")
    assert result.code == 1
    assert "INVALID_ARGUMENT" in result.err
    assert "run_id" in result.err
