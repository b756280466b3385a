"""The taxi-driver CLI, driven in-process (main(argv)) against the real services behind the gateway."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from taxidriver.cli import main
from tests.support import ROOT, InProcessService, free_port


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
    assert "episode 300/300 (100%)" in result.err
    assert "ETA" in result.err
    # Not a terminal: plain progress lines, never carriage returns rewriting one line.
    assert "\r" not in result.err
    assert len([line for line in result.err.splitlines() if line.startswith("episode ")]) <= 11
    assert re.search(r"completed: \d+\.\d+s of training, \d+\.\ds in all", result.err)
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
    # The session's database holds every earlier test's runs, many of them better than this short
    # one: rank them all (the registry's cap, 1,000) rather than expect it among the first few.
    ranked = cli(gateway, "--json", "runs", "best", "--algorithm", "q_learning", "--limit", "1000").json()["runs"]
    assert trained["run_id"] in [run["run_id"] for run in ranked]
    assert {(run["algorithm"], run["status"]) for run in ranked} == {("q_learning", "RUN_STATUS_COMPLETED")}
    top = cli(gateway, "--json", "runs", "best", "--algorithm", "q_learning", "--limit", "5").json()["runs"]
    assert 1 <= len(top) <= 5 and {run["algorithm"] for run in top} == {"q_learning"}
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
    # No waiting: the registry renders a completed run's plots on their first read.
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


# A seed just below the trainer's bound (2**53): exact as a double, 16 digits.
BIG_SEED = 2**53 - 12345


@pytest.fixture(scope="module")
def twins(gateway: InProcessService) -> list[dict[str, Any]]:
    """Two runs from the same seed: the second from the seed the first one printed."""
    first = cli(gateway, "--json", "train", "q_learning", *TRAIN_USER, "--seed", str(BIG_SEED))
    assert first.code == 0, first.err
    shown = cli(gateway, "runs", "show", first.json()["run_id"])
    seed = re.search(r"^  seed: (\S+)$", shown.out, re.MULTILINE)
    assert seed, shown.out
    second = cli(gateway, "--json", "train", "q_learning", *TRAIN_USER, "--seed", seed.group(1))
    assert second.code == 0, second.err
    return [first.json(), second.json()]


def test_integers_are_shown_whole_and_a_shown_seed_reproduces_its_run(
    gateway: InProcessService, twins: list[dict[str, Any]]
) -> None:
    first, second = twins
    assert first["params"]["seed"] == BIG_SEED and isinstance(first["params"]["seed"], int)
    assert second["params"]["seed"] == BIG_SEED
    shown = cli(gateway, "runs", "show", first["run_id"])
    assert f"  seed: {BIG_SEED}\n" in shown.out
    assert "  training_runs: 300\n" in shown.out
    assert not re.search(r"\d\.\d+e\+\d+", shown.out), shown.out  # no integer in scientific notation
    curves = [cli(gateway, "--json", "runs", "show", run["run_id"], "--curves").json()["curves"] for run in twins]
    assert curves[0]["rewards"] == curves[1]["rewards"]
    assert curves[0]["steps"] == curves[1]["steps"]


def test_compare_marks_ties_and_never_ranks_resources(gateway: InProcessService, twins: list[dict[str, Any]]) -> None:
    other = cli(gateway, "--json", "train", "q_learning", *TRAIN_USER, "--seed", "5").json()
    table = cli(gateway, "runs", "compare", twins[0]["run_id"], twins[1]["run_id"], other["run_id"])
    assert table.code == 0, table.err
    rows = {line.split()[0]: line.split() for line in table.out.splitlines() if line.strip()}
    # The twins share every outcome: where they hold the best value it is a tie, never one of them.
    best_of = {metric: row[-1] for metric, row in rows.items() if metric.startswith("test_metrics.")}
    assert "test_metrics.success_rate" in best_of
    for metric, best in best_of.items():
        assert best not in (twins[0]["run_id"][:8], twins[1]["run_id"][:8]), (metric, table.out)
    for metric in ("system_metrics.cpu_percent", "system_metrics.peak_rss_mb"):
        if metric in rows:
            assert rows[metric][-1] == "-", table.out
    params = cli(gateway, "runs", "compare", twins[0]["run_id"], other["run_id"])
    seed_row = next(line for line in params.out.splitlines() if line.startswith("seed"))
    assert seed_row.split()[1:] == [str(BIG_SEED), "5"]


def test_seed_outside_the_exact_range_is_a_usage_error(gateway: InProcessService) -> None:
    for seed in ("-1", str(2**53 + 1), "1.5"):
        result = cli(gateway, "train", "q_learning", "--seed", seed)
        assert result.code == 2, (seed, result.err)


def test_runs_list_pages_with_tokens_and_all(gateway: InProcessService, twins: list[dict[str, Any]]) -> None:
    first = cli(gateway, "--json", "runs", "list", "--limit", "1").json()
    assert len(first["runs"]) == 1 and first["next_page_token"]
    second = cli(gateway, "--json", "runs", "list", "--limit", "1", "--page-token", first["next_page_token"]).json()
    assert len(second["runs"]) == 1
    assert second["runs"][0]["run_id"] != first["runs"][0]["run_id"]
    everything = cli(gateway, "--json", "runs", "list", "--all").json()
    ids = [run["run_id"] for run in everything["runs"]]
    assert len(ids) == len(set(ids)) == everything["total_size"]
    assert everything["next_page_token"] == ""
    table = cli(gateway, "runs", "list", "--limit", "1")
    assert "--page-token" in table.err


def test_runs_show_curves_summarises_each_series_and_writes_csv(
    gateway: InProcessService, trained: dict[str, Any], tmp_path: Path
) -> None:
    shown = cli(gateway, "runs", "show", trained["run_id"], "--curves")
    assert shown.code == 0, shown.err
    assert "curves: episodes 0..299 (300)" in shown.out
    for series in ("rewards", "steps", "epsilons", "td_errors", "successes"):
        line = next((row for row in shown.out.splitlines() if row.startswith(series)), "")
        assert any(block in line for block in "▁▂▃▄▅▆▇█"), (series, shown.out)
    target = tmp_path / "curves.csv"
    written = cli(gateway, "runs", "show", trained["run_id"], "--csv", str(target))
    assert written.code == 0, written.err
    lines = target.read_text().splitlines()
    assert lines[0] == "episode,rewards,steps,epsilons,td_errors,successes"
    assert len(lines) == 301
    assert lines[1].startswith("0,") and lines[-1].startswith("299,")


def test_algorithms_shows_the_presets(gateway: InProcessService) -> None:
    table = cli(gateway, "algorithms")
    assert "optimized presets" in table.out
    reply = cli(gateway, "--json", "algorithms").json()
    sarsa = next(a for a in reply["algorithms"] if a["name"] == "sarsa")
    episodes = str(sarsa["optimized_preset"]["training_episodes"])
    preset_row = [line.split() for line in table.out.splitlines() if line.startswith("sarsa ")][-1]
    assert episodes in preset_row


def test_models_help_lists_every_action(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--help"]) == 0
    shown = capsys.readouterr().out
    for action in ("list", "export", "import"):
        assert re.search(rf"^\s+{action}\s+\S", shown, re.MULTILINE), shown


def test_output_into_a_closed_pipe_exits_quietly(gateway: InProcessService, trained: dict[str, Any]) -> None:
    """`taxi-driver --json runs list | head -c 1`: the reader is gone before we write."""
    reader, writer = os.pipe()
    os.close(reader)
    process = subprocess.run(
        [sys.executable, "-m", "taxidriver.cli", "--gateway", gateway.target, "--json", "runs", "list", "--all"],
        cwd=ROOT,
        stdout=writer,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
    )
    os.close(writer)
    assert process.stderr == ""
    assert process.returncode == 141


def test_train_on_a_terminal_draws_a_progress_bar(gateway: InProcessService) -> None:
    """stderr on a pseudo-terminal: rich's bar, redrawn in place; the run's result on stdout."""
    import pty

    controller, terminal = pty.openpty()
    command = ["taxidriver.cli", "--gateway", gateway.target, "--json", "train", "q_learning", *TRAIN_USER]
    process = subprocess.Popen(
        [sys.executable, "-m", *command, "--seed", "13"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        drawn += chunk
    out, _ = process.communicate(timeout=120)
    os.close(controller)
    assert process.returncode == 0, drawn.decode(errors="replace")
    assert json.loads(out)["status"] == "RUN_STATUS_COMPLETED"
    text = drawn.decode(errors="replace")
    assert "300/300" in text and "episodes" in text
    assert "━" in text  # the bar itself


def test_plots_of_a_run_not_completed_yet_say_so(gateway: InProcessService, ingest, tmp_path: Path) -> None:
    """No plots before completion, and a clear answer why (not an empty directory and silence)."""
    from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2

    run_id = str(uuid.uuid4())
    ingest.RegisterRun(ingest_pb2.RegisterRunRequest(run_id=run_id, algorithm="q_learning", episodes_planned=10))
    result = cli(gateway, "plots", run_id, "-o", str(tmp_path))
    assert result.code == 0, result.err
    assert f"run {run_id} has no plots yet: it is QUEUED; plots are made once it is completed" in result.out
    assert cli(gateway, "--json", "plots", run_id, "-o", str(tmp_path)).json() == {"plots": []}
    assert not list(tmp_path.iterdir())
