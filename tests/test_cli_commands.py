"""The taxi-driver CLI, driven in-process (main(argv)) against the real services behind the gateway."""

from __future__ import annotations

import io
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from taxidriver.cli import main
from tests.support import InProcessService, free_port


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli(gateway: InProcessService | str, *argv: str) -> Result:
    target = gateway if isinstance(gateway, str) else gateway.target
    out, err = io.StringIO(), io.StringIO()
    code = main(["--gateway", target, *argv], stdout=out, stderr=err)
    return Result(code, out.getvalue(), err.getvalue())


TRAIN_USER = [
    "--mode",
    "user",
    "--alpha",
    "0.5",
    "--gamma",
    "0.95",
    "--epsilon",
    "1.0",
    "--epsilon-min",
    "0.05",
    "--epsilon-decay",
    "0.99",
    "--episodes",
    "300",
    "--max-steps",
    "200",
    "--test-episodes",
    "20",
]


@pytest.fixture(scope="module")
def trained(gateway: InProcessService) -> dict[str, Any]:
    result = cli(gateway, "--json", "train", "q_learning", *TRAIN_USER, "--seed", "7")
    assert result.code == 0, result.err
    return result.json()


def test_train_follows_the_run_and_prints_test_metrics(gateway: InProcessService) -> None:
    result = cli(gateway, "train", "sarsa", *TRAIN_USER, "--seed", "11")
    assert result.code == 0, result.err
    assert "episode 300/300" in result.err
    assert "ETA" in result.err
    assert "status:          completed" in result.out
    assert "success_rate:" in result.out
    assert "avg_steps:" in result.out


def test_train_json_is_the_completed_run(trained: dict[str, Any]) -> None:
    assert trained["status"] == "RUN_STATUS_COMPLETED"
    assert trained["algorithm"] == "q_learning"
    assert trained["params"]["alpha"] == 0.5
    assert trained["params"]["training_runs"] == 300
    assert 0.0 <= trained["test_metrics"]["success_rate"] <= 1.0
    assert trained["episodes_recorded"] == 300


def test_runs_list_shows_the_run(gateway: InProcessService, trained: dict[str, Any]) -> None:
    listed = cli(gateway, "--json", "runs", "list", "--algorithm", "q_learning", "--limit", "100").json()
    assert trained["run_id"] in [run["run_id"] for run in listed["runs"]]
    assert all(run["algorithm"] == "q_learning" for run in listed["runs"])
    table = cli(gateway, "runs", "list")
    assert table.code == 0
    assert table.out.splitlines()[0].split()[:3] == ["RUN_ID", "ALGORITHM", "STATUS"]
    assert trained["run_id"] in table.out


def test_runs_show_prints_every_metric_group(gateway: InProcessService, trained: dict[str, Any]) -> None:
    shown = cli(gateway, "runs", "show", trained["run_id"])
    assert shown.code == 0
    assert f"run_id:          {trained['run_id']}" in shown.out
    for group in ("params:", "test_metrics:", "training_metrics:", "system_metrics:"):
        assert group in shown.out
    full = cli(gateway, "--json", "runs", "show", trained["run_id"], "--curves").json()
    assert len(full["curves"]["rewards"]) == 300


def test_runs_best_and_stats(gateway: InProcessService, trained: dict[str, Any]) -> None:
    best = cli(gateway, "--json", "runs", "best", "--algorithm", "q_learning", "--limit", "5").json()
    assert trained["run_id"] in [run["run_id"] for run in best["runs"]]
    stats = cli(gateway, "--json", "runs", "stats").json()
    by_algorithm = {row["algorithm"]: row for row in stats["algorithms"]}
    assert int(by_algorithm["q_learning"]["completed_runs"]) >= 1
    table = cli(gateway, "runs", "stats")
    assert "q_learning" in table.out and "AVG_SUCCESS" in table.out


def test_runs_search_by_params(gateway: InProcessService, trained: dict[str, Any]) -> None:
    found = cli(gateway, "--json", "runs", "search", "--param", "alpha=0.5", "--param", "training_runs=300").json()
    assert trained["run_id"] in [run["run_id"] for run in found["runs"]]
    none = cli(gateway, "--json", "runs", "search", "--param", "alpha=0.123456").json()
    assert none["runs"] == []


def test_runs_compare_side_by_side(gateway: InProcessService, trained: dict[str, Any]) -> None:
    other = cli(
        gateway, "--json", "train", "q_learning", *TRAIN_USER[:2], *TRAIN_USER[4:], "--alpha", "0.2", "--seed", "3"
    )
    assert other.code == 0, other.err
    other_id = other.json()["run_id"]
    compared = cli(gateway, "--json", "runs", "compare", trained["run_id"], other_id).json()
    assert [run["run_id"] for run in compared["runs"]] == [trained["run_id"], other_id]
    alpha = [d for d in compared["param_differences"] if d["key"] == "alpha"]
    assert alpha and alpha[0]["values"] == [0.5, 0.2]
    table = cli(gateway, "runs", "compare", trained["run_id"], other_id)
    assert "test_metrics.success_rate" in table.out
    assert "alpha" in table.out


def test_annotate_then_list(gateway: InProcessService, trained: dict[str, Any]) -> None:
    added = cli(gateway, "--json", "runs", "annotate", trained["run_id"], "--text", "bon résultat", "--tag", "best")
    assert added.code == 0, added.err
    notes = cli(gateway, "--json", "runs", "annotations", trained["run_id"]).json()["annotations"]
    assert any(n["annotation"] == "bon résultat" and n["tags"] == ["best"] for n in notes)


def test_models_export_and_import(gateway: InProcessService, trained: dict[str, Any], tmp_path: Path) -> None:
    models = cli(gateway, "--json", "models", "list", "--run-id", trained["run_id"]).json()["models"]
    assert len(models) >= 1
    target = tmp_path / "q_table.npy"
    exported = cli(gateway, "--json", "models", "export", models[0]["model_id"], "-o", str(target)).json()
    assert target.read_bytes()[:6] == b"\x93NUMPY"
    assert exported["bytes"] == int(models[0]["model_size"])
    imported = cli(gateway, "--json", "models", "import", str(target), "--name", "imported.npy", "--meta", "source=cli")
    assert imported.code == 0, imported.err
    model = imported.json()
    assert model["model_name"] == "imported.npy"
    assert int(model["model_size"]) == target.stat().st_size


def test_plots_are_downloaded_as_png(gateway: InProcessService, trained: dict[str, Any], tmp_path: Path) -> None:
    # Plots are rendered after the run completes, off its critical path: wait for them.
    deadline = time.monotonic() + 120
    while not cli(gateway, "--json", "runs", "show", trained["run_id"]).json().get("plots"):
        assert time.monotonic() < deadline, "the run's plots never arrived"
        time.sleep(0.5)
    result = cli(gateway, "--json", "plots", trained["run_id"], "-o", str(tmp_path))
    assert result.code == 0, result.err
    plots = result.json()["plots"]
    assert plots, "the run has no plot artifacts"
    for plot in plots:
        assert Path(plot["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_algorithms_lists_all_six(gateway: InProcessService) -> None:
    reply = cli(gateway, "--json", "algorithms").json()
    names = {a["name"] for a in reply["algorithms"]}
    assert names == {"brute_force", "q_learning", "sarsa", "expected_sarsa", "double_q_learning", "monte_carlo"}
    table = cli(gateway, "algorithms")
    assert "expected_sarsa" in table.out


def test_bad_input_prints_code_and_fields_not_a_traceback(gateway: InProcessService) -> None:
    result = cli(gateway, "train", "sarsa", "--mode", "user", "--alpha", "5", "--episodes", "10")
    assert result.code == 1
    assert result.err.startswith("error: INVALID_ARGUMENT:")
    assert "alpha" in result.err
    assert "Traceback" not in result.err
    as_json = json.loads(cli(gateway, "--json", "runs", "show", "not-a-uuid").err)
    assert as_json["error"]["code"] == "INVALID_ARGUMENT"
    assert as_json["error"]["field_violations"][0]["field"] == "run_id"


def test_unknown_run_is_not_found(gateway: InProcessService) -> None:
    result = cli(gateway, "runs", "show", str(uuid.uuid4()))
    assert result.code == 1
    assert result.err.startswith("error: NOT_FOUND:")


def test_unreachable_gateway_says_so(gateway: InProcessService) -> None:
    result = cli(f"127.0.0.1:{free_port()}", "--timeout", "3", "algorithms")
    assert result.code == 1
    assert "UNAVAILABLE" in result.err
    assert "TAXI_DRIVER_GATEWAY" in result.err


def test_usage_errors_exit_2(gateway: InProcessService) -> None:
    assert cli(gateway, "runs", "search").code == 2
    assert cli(gateway, "runs", "search", "--param", "alpha").code == 2


def test_delete_removes_the_run(gateway: InProcessService) -> None:
    made = cli(gateway, "--json", "train", "brute_force", "--mode", "optimized", "--test-episodes", "5", "--seed", "1")
    assert made.code == 0, made.err
    run_id = made.json()["run_id"]
    deleted = cli(gateway, "--json", "runs", "delete", run_id).json()
    assert deleted["run_id"] == run_id
    assert cli(gateway, "runs", "show", run_id).code == 1
