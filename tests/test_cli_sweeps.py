"""`taxi-driver sweep ...` and `taxi-driver suggest` through a real gateway, tuner and trainer."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.support import InProcessService, LoopThread, wait_for_health
from tests.test_cli_commands import cli
from tests.test_tuner_sweeps import start_tuner


@pytest.fixture(scope="module")
def tuner_gateway(
    loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService
) -> Iterator[InProcessService]:
    from gateway.app import start_gateway
    from gateway.settings import GatewaySettings

    tuner = start_tuner(loop_thread, registry, trainer)
    gateway = InProcessService(
        loop_thread,
        lambda: start_gateway(
            GatewaySettings(
                auth_required=False,
                address="127.0.0.1:0",
                trainer_targets=(trainer.target,),
                registry_target=registry.target,
                tuner_target=tuner.target,
            )
        ),
    )
    wait_for_health(gateway.target, "taxidriver.tuner.v1.TunerService", timeout=30)
    yield gateway
    gateway.stop(0.5)
    tuner.stop(0.5)


def test_sweep_start_watch_show_list_and_suggest(tuner_gateway: InProcessService) -> None:
    started = cli(
        tuner_gateway,
        "sweep",
        "start",
        "q_learning",
        "--param",
        "alpha=0.2:0.9",
        "--param",
        "gamma=0.9,0.99",
        "--fixed",
        "training_episodes=300",
        "--trials",
        "3",
        "--seeds",
        "2",
        "--sampler",
        "random",
        "--test-episodes",
        "3",
        "--watch",
    )
    assert started.code == 0, started.err
    sweep_id = re.search(r"sweep ([0-9a-f-]{36}) started", started.out).group(1)  # type: ignore[union-attr]
    lines = started.out.splitlines()
    assert lines[1].split()[:4] == ["TRIAL", "STATE", "VALUE", "IQM"]
    # One row per trial as it landed, then the end.
    assert sorted(line.split()[0].rstrip("*") for line in lines[2:5]) == ["0", "1", "2"]
    assert all(line.split()[1] == "complete" for line in lines[2:5])
    assert "sweep succeeded" in started.out and "best: trial" in started.out

    shown = cli(tuner_gateway, "--json", "sweep", "show", sweep_id)
    assert shown.code == 0
    sweep = shown.json()
    assert sweep["state"] == "SWEEP_STATE_SUCCEEDED" and len(sweep["trials"]) == 3
    assert all(t["params"]["gamma"] in (0.9, 0.99) for t in sweep["trials"])
    table = cli(tuner_gateway, "sweep", "show", sweep_id)
    assert f"sweep {sweep_id}: q_learning, succeeded, 3/3 trials complete" in table.out
    assert "95% CI" in table.out

    listed = cli(tuner_gateway, "sweep", "list", "--algorithm", "q_learning", "--limit", "100")
    assert sweep_id in listed.out

    suggested = cli(
        tuner_gateway,
        "suggest",
        "q_learning",
        "--sweep-id",
        sweep_id,
        "--param",
        "alpha=0.2:0.9",
        "--param",
        "gamma=0.9,0.99",
    )
    assert suggested.code == 0, suggested.err
    assert "learned from 3 completed runs" in suggested.out
    assert re.search(r"try next: +alpha=[0-9.]+ gamma=0\.99?", suggested.out)

    # Cancelling an ended sweep changes nothing.
    assert "succeeded" in cli(tuner_gateway, "sweep", "cancel", sweep_id).out


def test_sweep_mistakes_are_reported_not_raised(tuner_gateway: InProcessService) -> None:
    usage = cli(tuner_gateway, "sweep", "start", "q_learning", "--param", "alpha=oops")
    assert usage.code == 2 and "--param wants NAME=LOW:HIGH" in usage.err
    # Both mistakes reach the tuner, which names every bad field at once (0 trials would be a
    # REQUIRED field left unset: the gateway refuses that alone, before the tuner sees the rest).
    refused = cli(tuner_gateway, "sweep", "start", "q_learning", "--param", "alpha=0.5:2", "--trials", "100000")
    assert refused.code == 1
    assert "INVALID_ARGUMENT" in refused.err
    assert "spec.search_space[0].high" in refused.err and "spec.n_trials" in refused.err
    missing = cli(tuner_gateway, "sweep", "show", "00000000-0000-0000-0000-000000000000")
    assert missing.code == 1 and "NOT_FOUND" in missing.err


def test_runs_compare_groups_the_seeds_of_a_configuration(tuner_gateway: InProcessService) -> None:
    runs = []
    for seed in (1, 2):
        started = cli(
            tuner_gateway,
            "--json",
            "train",
            "q_learning",
            "--mode",
            "optimized",
            "--episodes",
            "300",
            "--test-episodes",
            "5",
            "--seed",
            str(seed),
            "--no-progress",
        )
        assert started.code == 0, started.err
        runs.append(started.json()["run_id"])
    compared = cli(tuner_gateway, "runs", "compare", *runs)
    assert compared.code == 0
    table = compared.out.split("CONFIG", 1)[1].splitlines()[1:]
    lines = [line for line in table if line.split()[:1] == ["0"]]
    # One configuration, two seeds: a row per summarised metric.
    assert any("test_metrics.optimal_start_state_fraction" in line for line in lines)
    assert all(line.split()[1] == "2" for line in lines)
    assert len(lines) == 5 and "95% CI" in compared.out
