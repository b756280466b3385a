"""What a completed run reports: every field about the run's own policy, on the same episodes.

Real trainer and registry on a real PostgreSQL; expected values are recomputed here
independently (the real Gymnasium environment stepped by hand, the saved model exported).
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format

from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from taxidriver.vocabulary import STOPPED_STATUSES
from trainer_service import evaluation
from trainer_service.envs import make_env, transition_table
from trainer_service.evaluation import evaluate_model, optimum, random_policy_optimality

# Stopped: terminal or INTERRUPTED (taxidriver.vocabulary, from RunStatus).
TERMINAL = STOPPED_STATUSES


def run_to_completion(
    trainer: trainer_service_pb2_grpc.TrainerServiceStub,
    registry: registry_service_pb2_grpc.RegistryServiceStub,
    request: trainer_service_pb2.StartRunRequest,
) -> resources_pb2.Run:
    run_id = trainer.StartRun(request).run_id
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        run = registry.GetRun(registry_service_pb2.GetRunRequest(run_id=run_id)).run
        if run.status in TERMINAL:
            assert run.status == resources_pb2.RUN_STATUS_COMPLETED, run.error_message
            return run
        time.sleep(0.05)
    raise TimeoutError(f"run {run_id} not finished")


def group(run: resources_pb2.Run, name: str) -> dict[str, Any]:
    return json_format.MessageToDict(getattr(run, name))


def exported_model(
    registry: registry_service_pb2_grpc.RegistryServiceStub, run_id: str
) -> tuple[resources_pb2.Model, np.ndarray]:
    models = registry.ListModels(registry_service_pb2.ListModelsRequest(run_id=run_id)).models
    assert len(models) == 1
    data = b"".join(
        reply.chunk
        for reply in registry.ExportModel(registry_service_pb2.ExportModelRequest(model_id=models[0].model_id))
    )
    return models[0], np.load(io.BytesIO(data), allow_pickle=False)


def random_agent_by_hand(episodes: int) -> tuple[float, float, list[int]]:
    """The random agent stepped on the real environment: success rate, mean reward, start states."""
    env = make_env("Taxi-v3")
    successes, rewards, starts = 0, 0.0, []
    for seed in evaluation.test_seeds(episodes):
        state, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        starts.append(int(state))
        done = False
        while not done:
            state, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            rewards += float(reward)
            successes += bool(terminated)
            done = terminated or truncated
    env.close()
    return successes / episodes, rewards / episodes, starts


def brute_force_request(test_episodes: int) -> trainer_service_pb2.StartRunRequest:
    return trainer_service_pb2.StartRunRequest(
        algorithm="brute_force", mode=trainer_service_pb2.TRAINING_MODE_OPTIMIZED, test_episodes=test_episodes, seed=3
    )


def q_learning_request(test_episodes: int) -> trainer_service_pb2.StartRunRequest:
    hyperparameters = trainer_service_pb2.Hyperparameters(
        alpha=0.9, gamma=1.0, epsilon=1.0, epsilon_min=0.0, epsilon_decay=0.99, training_episodes=1500, max_steps=200
    )
    return trainer_service_pb2.StartRunRequest(
        algorithm="q_learning",
        mode=trainer_service_pb2.TRAINING_MODE_USER,
        hyperparameters=hyperparameters,
        seed=7,
        test_episodes=test_episodes,
    )


def test_brute_force_model_exported_and_evaluated_gives_the_reported_scores(
    trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub,
    registry_stub: registry_service_pb2_grpc.RegistryServiceStub,
) -> None:
    run = run_to_completion(trainer_stub, registry_stub, brute_force_request(200))
    model, policy_table = exported_model(registry_stub, run.run_id)
    metadata = json_format.MessageToDict(model.model_metadata)
    assert metadata["policy"] == "uniform_random"
    assert model.model_name == "policy.npy"
    assert policy_table.shape == (500, 6)
    assert np.all(policy_table == 1.0 / 6)
    score = evaluate_model("Taxi-v3", 200, policy_table, metadata["policy"])
    reported = group(run, "test_metrics")
    assert score.success_rate == reported["success_rate"]
    assert score.avg_reward == reported["avg_reward"]
    assert score.avg_steps == reported["avg_steps"]
    # ... and those are the random agent's scores on the real environment.
    success_rate, avg_reward, _ = random_agent_by_hand(200)
    assert reported["success_rate"] == pytest.approx(success_rate, abs=1e-12)
    assert reported["avg_reward"] == pytest.approx(avg_reward, abs=1e-9)


def test_q_learning_model_exported_and_evaluated_gives_the_reported_scores(
    trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub,
    registry_stub: registry_service_pb2_grpc.RegistryServiceStub,
) -> None:
    run = run_to_completion(trainer_stub, registry_stub, q_learning_request(100))
    model, q = exported_model(registry_stub, run.run_id)
    metadata = json_format.MessageToDict(model.model_metadata)
    assert (model.model_name, metadata["policy"]) == ("q_table.npy", "greedy")
    score = evaluate_model("Taxi-v3", 100, q, metadata["policy"])
    reported = group(run, "test_metrics")
    assert (score.success_rate, score.avg_reward) == (reported["success_rate"], reported["avg_reward"])


def test_brute_force_test_metrics_all_describe_the_random_policy(
    trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub,
    registry_stub: registry_service_pb2_grpc.RegistryServiceStub,
) -> None:
    run = run_to_completion(trainer_stub, registry_stub, brute_force_request(100))
    test = group(run, "test_metrics")
    table = transition_table("Taxi-v3")
    best = optimum(table)
    exact = random_policy_optimality(table, best)
    assert test["policy"] == "uniform_random"
    # No field of the greedy policy of a Q-table the random agent does not have.
    assert [key for key in test if key.startswith("greedy_")] == []
    assert test["expected_success_rate_all_starts"] == pytest.approx(exact.success_rate, abs=1e-12)
    assert test["expected_mean_reward_all_starts"] == pytest.approx(exact.mean_reward, abs=1e-9)
    # About 4.7 % of random episodes deliver within 200 steps, about -771 reward: never optimal.
    assert 0.03 < exact.success_rate < 0.07
    assert -800 < exact.mean_reward < -740
    assert test["optimal_start_state_fraction"] == 0.0
    assert test["optimality_gap_reward"] == pytest.approx(best.mean_reward - exact.mean_reward, abs=1e-9)
    assert test["optimality_gap_steps"] == pytest.approx(exact.mean_steps - best.mean_steps, abs=1e-9)
    # Its test scores and its own baseline are the same episodes of the same policy.
    comparison = group(run, "brute_force_metrics")
    assert comparison["random_success_rate"] == test["success_rate"]
    assert comparison["random_avg_reward"] == test["avg_reward"]
    assert comparison["gap_closed_percent"] == 0.0
    # No Q-table: no Q statistics.
    stability = group(run, "learning_stability")
    assert "final_q_mean" not in stability and "final_q_variance" not in stability


def test_random_baseline_plays_the_same_episodes_as_the_test(
    trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub,
    registry_stub: registry_service_pb2_grpc.RegistryServiceStub,
) -> None:
    # More than the 1000 episodes the baseline used to be capped at.
    run = run_to_completion(trainer_stub, registry_stub, q_learning_request(1500))
    test, comparison = group(run, "test_metrics"), group(run, "brute_force_metrics")
    assert test["episodes"] == 1500
    assert comparison["random_episodes"] == 1500
    success_rate, avg_reward, _ = random_agent_by_hand(1500)
    assert comparison["random_success_rate"] == pytest.approx(success_rate, abs=1e-12)
    assert comparison["random_avg_reward"] == pytest.approx(avg_reward, abs=1e-9)


def test_gap_closed_percent_is_the_share_of_the_way_from_chance_to_the_optimum(
    trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub,
    registry_stub: registry_service_pb2_grpc.RegistryServiceStub,
) -> None:
    run = run_to_completion(trainer_stub, registry_stub, q_learning_request(100))
    test, comparison = group(run, "test_metrics"), group(run, "brute_force_metrics")
    _, random_reward, starts = random_agent_by_hand(100)
    # The optimum on the same 100 start states, from value iteration's values.
    optimal_reward = float(optimum(transition_table("Taxi-v3")).values[starts].mean())
    assert comparison["optimal_avg_reward"] == pytest.approx(optimal_reward, abs=1e-9)
    expected = 100 * (test["avg_reward"] - random_reward) / (optimal_reward - random_reward)
    assert comparison["gap_closed_percent"] == pytest.approx(expected, abs=1e-9)
    assert 0 < comparison["gap_closed_percent"] <= 100
    # The seed's improvement_percent stays, > 100 % against a negative baseline.
    assert comparison["improvement_percent"] == pytest.approx(
        100 * (test["avg_reward"] - random_reward) / abs(random_reward), abs=1e-9
    )


def test_q_statistics_cover_only_the_states_an_agent_can_act_in(
    trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub,
    registry_stub: registry_service_pb2_grpc.RegistryServiceStub,
) -> None:
    run = run_to_completion(trainer_stub, registry_stub, q_learning_request(10))
    _, q = exported_model(registry_stub, run.run_id)
    taxi = make_env("Taxi-v3").unwrapped
    # Passenger already at the destination (and not in the taxi): only a finished episode gets there.
    acting = [s for s in range(500) if (lambda _r, _c, p, d: p != d)(*taxi.decode(s))]  # type: ignore[attr-defined]
    assert len(acting) == 400
    assert not q[[s for s in range(500) if s not in set(acting)]].any()
    stability = group(run, "learning_stability")
    assert stability["q_stats_states"] == 400
    assert stability["final_q_mean"] == pytest.approx(float(q[acting].mean()), abs=1e-12)
    assert stability["final_q_variance"] == pytest.approx(float(q[acting].var()), abs=1e-9)
