"""The names the services share are defined once (taxidriver/vocabulary.py, from the protos),
and the services behave by them: algorithms, statuses, metric directions, error reasons."""

from __future__ import annotations

import ast
import uuid
from typing import Any

import grpc
import pytest

from registry_service.convert import METRIC_GROUPS
from taxidriver import vocabulary
from taxidriver.errors import NOT_FOUND_REASONS, status_details
from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2
from taxidriver.registry.v1 import registry_service_pb2 as pb
from taxidriver.registry.v1 import resources_pb2
from tests.support import ROOT
from tests.test_registry_queries import make_run


def completed_run(ingest, *, algorithm: str = "q_learning", success: float | None = None, **metrics: Any) -> str:
    """A completed run with only the metrics given (test_metrics=..., system_metrics=...)."""
    return make_run(ingest, uuid.uuid4().hex, algorithm=algorithm, success=success, **metrics)


# ---- algorithms: the trainer's registry is the only list ---------------------------------------


def test_registry_stores_an_algorithm_the_trainer_added(ingest, queries) -> None:
    """An algorithm the trainer registers after the registry was built is stored and queried like any."""
    name = f"new_algorithm_{uuid.uuid4().hex[:8]}"
    run_id = completed_run(ingest, algorithm=name, test_metrics={"success_rate": 1.0, "avg_steps": 13.0})
    assert queries.GetRun(pb.GetRunRequest(run_id=run_id)).run.algorithm == name
    best = queries.ListBestRuns(pb.ListBestRunsRequest(algorithm=name))
    assert [run.run_id for run in best.runs] == [run_id]
    listed = queries.ListRuns(pb.ListRunsRequest(filter=f'algorithm = "{name}"'))
    assert [run.run_id for run in listed.runs] == [run_id]


@pytest.mark.parametrize("name", ["Q-Learning", "sarsa; DROP TABLE training_runs", "", "x" * 65, "1sarsa"])
def test_registry_refuses_a_malformed_algorithm_name(ingest, name: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        ingest.RegisterRun(
            ingest_pb2.RegisterRunRequest(
                run_id=str(uuid.uuid4()), algorithm=name, mode="user", env_id="Taxi-v3", episodes_planned=1
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in status_details(caught.value)[0]] == ["algorithm"]


def test_list_best_runs_of_a_malformed_algorithm_name_is_invalid(queries) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        queries.ListBestRuns(pb.ListBestRunsRequest(algorithm="Not An Algorithm"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in status_details(caught.value)[0]] == ["algorithm"]


# ---- statuses: one definition, from RunStatus -------------------------------------------------


def test_status_sets_come_from_the_run_status_enum() -> None:
    status = resources_pb2
    assert vocabulary.TERMINAL_STATUSES == {
        status.RUN_STATUS_COMPLETED,
        status.RUN_STATUS_FAILED,
        status.RUN_STATUS_CANCELLED,
    }
    assert vocabulary.STOPPED_STATUSES == vocabulary.TERMINAL_STATUSES | {status.RUN_STATUS_INTERRUPTED}
    assert vocabulary.STATUS_WORDS[status.RUN_STATUS_COMPLETED] == "completed"
    assert set(vocabulary.STATUS_WORDS) == {v.number for v in status.RunStatus.DESCRIPTOR.values} - {0}


# ---- metric directions: CompareRuns ranks outcomes only, and never a tie ----------------------


def comparisons(queries, run_ids: list[str]) -> dict[str, pb.MetricComparison]:
    reply = queries.CompareRuns(pb.CompareRunsRequest(run_ids=run_ids))
    return {m.metric: m for m in reply.metrics}


def test_compare_runs_marks_no_best_on_a_tie(ingest, queries) -> None:
    first = completed_run(ingest, test_metrics={"success_rate": 1.0, "avg_steps": 13.0})
    second = completed_run(ingest, test_metrics={"success_rate": 1.0, "avg_steps": 14.0})
    third = completed_run(ingest, test_metrics={"success_rate": 0.5, "avg_steps": 13.0})
    metrics = comparisons(queries, [first, second, third])
    success = metrics["test_metrics.success_rate"]
    assert success.best_run_id == ""
    assert list(success.tied_run_ids) == [first, second]
    assert success.direction == pb.METRIC_DIRECTION_HIGHER_IS_BETTER and success.higher_is_better
    steps = metrics["test_metrics.avg_steps"]
    assert (steps.best_run_id, list(steps.tied_run_ids)) == ("", [first, third])
    assert steps.direction == pb.METRIC_DIRECTION_LOWER_IS_BETTER and not steps.higher_is_better


def test_compare_runs_never_ranks_resources(ingest, queries) -> None:
    lean = completed_run(ingest, system_metrics={"peak_rss_mb": 100.0, "cpu_percent": 50.0, "steps_per_second": 9.0})
    heavy = completed_run(ingest, system_metrics={"peak_rss_mb": 400.0, "cpu_percent": 99.0, "steps_per_second": 3.0})
    metrics = comparisons(queries, [lean, heavy])
    for resource in ("system_metrics.peak_rss_mb", "system_metrics.cpu_percent"):
        assert metrics[resource].direction == pb.METRIC_DIRECTION_NOT_AN_OUTCOME, resource
        assert (metrics[resource].best_run_id, list(metrics[resource].tied_run_ids)) == ("", []), resource
    assert metrics["system_metrics.steps_per_second"].best_run_id == lean


def test_compare_runs_ranks_the_trainers_newer_metrics(ingest, queries) -> None:
    closer = completed_run(ingest, test_metrics={"optimal_start_state_fraction": 1.0, "optimality_gap_steps": 0.0})
    farther = completed_run(ingest, test_metrics={"optimal_start_state_fraction": 0.9, "optimality_gap_steps": 0.4})
    metrics = comparisons(queries, [farther, closer])
    assert metrics["test_metrics.optimal_start_state_fraction"].best_run_id == closer
    assert metrics["test_metrics.optimality_gap_steps"].best_run_id == closer


def test_an_undeclared_metric_is_never_ranked(ingest, queries) -> None:
    first = completed_run(ingest, test_metrics={"made_up_score": 1.0})
    second = completed_run(ingest, test_metrics={"made_up_score": 2.0})
    made_up = comparisons(queries, [first, second])["test_metrics.made_up_score"]
    assert (made_up.direction, made_up.best_run_id) == (pb.METRIC_DIRECTION_UNSPECIFIED, "")


# ---- error reasons: every reason the code raises is declared in the protos -------------------

SERVICE_PACKAGES = ("registry_service", "trainer_service", "gateway", "taxidriver", "tuner_service", "web")
# Helpers that take the reason as their second positional argument.
REASON_SECOND = {"failed_precondition", "unavailable", "resource_exhausted", "_unauthenticated", "_refusing_token"}


def raised_reasons() -> dict[str, list[str]]:
    """Every reason literal at a raise site of our services, with where it is."""
    found: dict[str, list[str]] = {}

    def note(value: Any, where: str) -> None:
        if isinstance(value, str):
            found.setdefault(value, []).append(where)

    for package in SERVICE_PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.Call):
                    func = node.func
                    name = getattr(func, "id", "") or getattr(func, "attr", "")
                    for keyword in node.keywords:
                        if keyword.arg == "reason" and isinstance(keyword.value, ast.Constant):
                            note(keyword.value.value, where)
                        elif keyword.arg == "reason" and isinstance(keyword.value, ast.JoinedStr):
                            pytest.fail(f"{where}: a reason assembled at run time cannot be checked; spell it out")
                    if name in REASON_SECOND and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                        note(node.args[1].value, where)
                    if name == "not_found" and node.args and isinstance(node.args[0], ast.Constant):
                        note(
                            NOT_FOUND_REASONS.get(node.args[0].value, f"(no reason for {node.args[0].value!r})"), where
                        )
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    arguments = node.args
                    positional = arguments.args[len(arguments.args) - len(arguments.defaults) :]
                    pairs = [
                        *zip(positional, arguments.defaults, strict=True),
                        *zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True),
                    ]
                    for argument, default in pairs:
                        if argument.arg == "reason" and isinstance(default, ast.Constant):
                            note(default.value, where)
    for known in NOT_FOUND_REASONS.values():
        note(known, "taxidriver/errors.py: NOT_FOUND_REASONS")
    return found


def test_every_error_reason_raised_is_declared_in_the_protos() -> None:
    found = raised_reasons()
    assert {"LEASE_LOST", "RUN_NOT_FOUND", "CHECKPOINT_NOT_FOUND", "INVALID_ARGUMENT"} <= set(found), found
    undeclared = {reason: where for reason, where in found.items() if reason not in vocabulary.REASONS}
    assert not undeclared, f"declare these in protos/taxidriver/reasons/v1/error_reason.proto: {undeclared}"


# ---- metrics: every numeric metric a real run reports has a declared direction ---------------


class _Outbox(list):
    put = list.append


class _Control:
    value = 0


@pytest.mark.parametrize("algorithm", ["brute_force", "q_learning"])
def test_every_metric_a_run_reports_is_declared(algorithm: str) -> None:
    """A short real run in this process (the worker's own code): brute_force reports the
    uniform random policy's fields, a learner the greedy policy's."""
    from dataclasses import replace

    from trainer_service.messages import RunDone
    from trainer_service.params import PRESETS, RunSpec
    from trainer_service.worker import Job, execute

    hyperparameters = replace(PRESETS[algorithm].hyperparameters, training_episodes=200)
    spec = RunSpec(algorithm, "optimized", "Taxi-v3", hyperparameters, 20, 7, 100, 0.0)
    outbox = _Outbox()
    execute(Job(run_id="r", spec=spec), outbox, _Control())
    done = [m for m in outbox if isinstance(m, RunDone)]
    assert len(done) == 1, [type(m).__name__ for m in outbox]
    result = done[0].result
    reported = {"execution_time"}
    for group in METRIC_GROUPS:
        reported |= {f"{group}.{k}" for k, v in getattr(result, group).items() if isinstance(v, int | float)}
    # The parent adds these two when it completes the run (runs.py).
    reported |= {"system_metrics.stream_reconnects", "system_metrics.stream_spilled_batches"}
    undeclared = sorted(m for m in reported if m not in vocabulary.METRICS)
    assert not undeclared, f"give these a direction in taxidriver/vocabulary.py METRICS: {undeclared}"
    for newer in ("brute_force_metrics.gap_closed_percent", "test_metrics.optimal_start_state_fraction"):
        assert vocabulary.is_outcome(vocabulary.metric_direction(newer)), newer


# ---- the trainer passes the registry's refusals on as they are -------------------------------


def error_info(error: grpc.RpcError) -> tuple[str, dict[str, str]]:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, dict(info.metadata)
    return "", {}


@pytest.mark.parametrize("method", ["ResumeRun", "CancelRun"])
def test_the_trainer_relays_the_registrys_not_found_with_its_metadata(trainer, method: str) -> None:
    from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc

    run_id = str(uuid.uuid4())
    request = getattr(trainer_service_pb2, f"{method}Request")(run_id=run_id)
    with grpc.insecure_channel(trainer.target) as channel, pytest.raises(grpc.RpcError) as caught:
        getattr(trainer_service_pb2_grpc.TrainerServiceStub(channel), method)(request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value) == ("RUN_NOT_FOUND", {"run": run_id})
