"""The trainer through its gRPC API, against the real registry on a real PostgreSQL."""

from __future__ import annotations

import time
import uuid

import grpc
import numpy as np
import psycopg
import pytest
from google.protobuf import duration_pb2

from taxidriver.errors import status_details
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from taxidriver.vocabulary import STOPPED_STATUSES

# Stopped: terminal or INTERRUPTED (taxidriver.vocabulary, from RunStatus).
TERMINAL = STOPPED_STATUSES


def wait_terminal(
    stub: registry_service_pb2_grpc.RegistryServiceStub, run_id: str, timeout: float = 120.0
) -> resources_pb2.Run:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = stub.GetRun(registry_service_pb2.GetRunRequest(run_id=run_id)).run
        if run.status in TERMINAL:
            return run
        time.sleep(0.05)
    raise TimeoutError(f"run {run_id} not finished after {timeout}s")


def user_request(**overrides: object) -> trainer_service_pb2.StartRunRequest:
    hyperparameters = trainer_service_pb2.Hyperparameters(
        alpha=0.9, gamma=1.0, epsilon=1.0, epsilon_min=0.0, epsilon_decay=0.99, training_episodes=1500, max_steps=200
    )
    request = trainer_service_pb2.StartRunRequest(
        algorithm="q_learning", mode=trainer_service_pb2.TRAINING_MODE_USER, hyperparameters=hyperparameters, seed=7
    )
    for key, value in overrides.items():
        setattr(request, key, value)
    return request


def test_start_run_completes_with_every_episode_stored(
    trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub,
    registry_stub: registry_service_pb2_grpc.RegistryServiceStub,
    db: psycopg.Connection,
) -> None:
    reply = trainer_stub.StartRun(user_request(test_episodes=50))
    assert reply.status == resources_pb2.RUN_STATUS_QUEUED
    assert reply.seed == 7 and reply.hyperparameters.alpha == pytest.approx(0.9)
    run = wait_terminal(registry_stub, reply.run_id)
    assert run.status == resources_pb2.RUN_STATUS_COMPLETED, run.error_message
    assert run.episodes_recorded == 1500
    assert run.params["training_runs"] == 1500 and run.params["alpha"] == pytest.approx(0.9)
    assert run.test_metrics["episodes"] == 50
    assert run.test_metrics["success_rate"] == 1.0
    assert run.test_metrics["optimal_mean_steps"] == pytest.approx(13.07)
    assert 0.9 <= run.test_metrics["optimal_start_state_fraction"] <= 1.0
    assert run.system_metrics["steps_per_second"] > 0
    assert run.brute_force_metrics["random_success_rate"] < run.test_metrics["success_rate"]
    assert run.model_path.startswith("artifacts/")
    row = db.execute(
        "SELECT status, (test_metrics->>'success_rate')::float, params->>'training_runs' FROM training_runs"
        " WHERE run_id = %s",
        (reply.run_id,),
    ).fetchone()
    assert row == ("completed", 1.0, "1500")
    full = registry_stub.GetRun(
        registry_service_pb2.GetRunRequest(run_id=reply.run_id, view=resources_pb2.RUN_VIEW_FULL)
    ).run
    assert full.curves.first_episode == 0 and len(full.curves.rewards) == 1500
    assert list(full.curves.steps[:3]) != [0, 0, 0]
    # Epsilon decays per episode from 1.0 by 0.99.
    assert full.curves.epsilons[0] == pytest.approx(1.0) and full.curves.epsilons[2] == pytest.approx(0.9801)


def test_same_request_id_returns_the_same_run(
    trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub,
    registry_stub: registry_service_pb2_grpc.RegistryServiceStub,
) -> None:
    request_id = str(uuid.uuid4())
    first = trainer_stub.StartRun(user_request(request_id=request_id))
    second = trainer_stub.StartRun(user_request(request_id=request_id))
    assert second.run_id == first.run_id
    assert second.seed == first.seed
    run = wait_terminal(registry_stub, first.run_id)
    assert run.status == resources_pb2.RUN_STATUS_COMPLETED
    assert run.episodes_recorded == 1500  # trained once: a second run would have failed on the plan


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"algorithm": "dqn"}, "algorithm"),
        ({"env_id": "CartPole-v1"}, "env_id"),
        ({"test_episodes": 100_001}, "test_episodes"),
        ({"checkpoint_every": -1}, "checkpoint_every"),
    ],
)
def test_bad_request_field_is_named(
    trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub, change: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        trainer_stub.StartRun(user_request(**change))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, _ = status_details(caught.value)
    assert [v.field for v in violations] == [field]


def test_bad_hyperparameters_are_each_named(trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub) -> None:
    request = user_request()
    request.hyperparameters.alpha = 0.0
    request.hyperparameters.gamma = 1.5
    request.hyperparameters.max_steps = 10_001
    with pytest.raises(grpc.RpcError) as caught:
        trainer_stub.StartRun(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, _ = status_details(caught.value)
    assert {v.field for v in violations} == {
        "hyperparameters.alpha",
        "hyperparameters.gamma",
        "hyperparameters.max_steps",
    }


def test_user_mode_names_missing_hyperparameters(trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub) -> None:
    request = user_request()
    request.hyperparameters.ClearField("gamma")
    request.hyperparameters.ClearField("epsilon_decay")
    with pytest.raises(grpc.RpcError) as caught:
        trainer_stub.StartRun(request)
    violations, _ = status_details(caught.value)
    assert {v.field for v in violations} == {"hyperparameters.gamma", "hyperparameters.epsilon_decay"}


def test_epsilon_floor_above_epsilon_is_rejected(trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub) -> None:
    request = user_request()
    request.hyperparameters.epsilon = 0.1
    request.hyperparameters.epsilon_min = 0.2
    with pytest.raises(grpc.RpcError) as caught:
        trainer_stub.StartRun(request)
    violations, _ = status_details(caught.value)
    assert [v.field for v in violations] == ["hyperparameters.epsilon_min"]


def test_time_budget_is_required_in_time_budget_mode(trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub) -> None:
    request = trainer_service_pb2.StartRunRequest(
        algorithm="q_learning", mode=trainer_service_pb2.TRAINING_MODE_TIME_BUDGET
    )
    with pytest.raises(grpc.RpcError) as caught:
        trainer_stub.StartRun(request)
    violations, _ = status_details(caught.value)
    assert [v.field for v in violations] == ["time_budget"]


def test_time_budget_run_stops_when_optimal(
    trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub,
    registry_stub: registry_service_pb2_grpc.RegistryServiceStub,
) -> None:
    reply = trainer_stub.StartRun(
        trainer_service_pb2.StartRunRequest(
            algorithm="q_learning",
            mode=trainer_service_pb2.TRAINING_MODE_TIME_BUDGET,
            time_budget=duration_pb2.Duration(seconds=30),
            seed=3,
        )
    )
    run = wait_terminal(registry_stub, reply.run_id)
    assert run.status == resources_pb2.RUN_STATUS_COMPLETED, run.error_message
    assert run.stop_reason == "converged", (run.stop_reason, run.episodes_recorded, dict(run.training_metrics))
    assert run.test_metrics["optimal_start_state_fraction"] == 1.0
    assert run.learning_stability["convergence_episode"] == run.episodes_recorded
    assert run.episodes_recorded < 1_000_000


def test_unknown_run_cannot_be_resumed(trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        trainer_stub.ResumeRun(trainer_service_pb2.ResumeRunRequest(run_id=str(uuid.uuid4())))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_model_artifact_is_the_trained_q_table(
    trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub,
    registry_stub: registry_service_pb2_grpc.RegistryServiceStub,
) -> None:
    import io

    reply = trainer_stub.StartRun(user_request(test_episodes=10))
    run = wait_terminal(registry_stub, reply.run_id)
    assert run.status == resources_pb2.RUN_STATUS_COMPLETED, run.error_message
    artifact_id = run.model_path.removeprefix("artifacts/")
    data = b"".join(
        message.chunk
        for message in registry_stub.DownloadArtifact(
            registry_service_pb2.DownloadArtifactRequest(artifact_id=artifact_id)
        )
    )
    q = np.load(io.BytesIO(data))
    assert q.shape == (500, 6)
    assert np.abs(q).max() > 1.0
