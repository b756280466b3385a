"""SuggestParams and GetParamImportance over runs stored in the registry (and over a sweep)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import struct_pb2

from taxidriver.errors import status_details
from taxidriver.ingest.v1 import ingest_service_pb2 as ipb
from taxidriver.ingest.v1 import ingest_service_pb2_grpc
from taxidriver.tuner.v1 import tuner_service_pb2 as pb
from taxidriver.tuner.v1 import tuner_service_pb2_grpc
from tests.support import InProcessService, LoopThread
from tests.test_tuner_sweeps import small_spec, start_tuner, wait_done

SPACE = [pb.ParameterRange(name="alpha", low=0.1, high=1.0), pb.ParameterRange(name="gamma", low=0.8, high=1.0)]


@pytest.fixture()
def tuner(loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService) -> Iterator[InProcessService]:
    service = start_tuner(loop_thread, registry, trainer)
    yield service
    service.stop(0.5)


@pytest.fixture()
def stub(tuner: InProcessService) -> Iterator[tuner_service_pb2_grpc.TunerServiceStub]:
    with grpc.insecure_channel(tuner.target) as channel:
        yield tuner_service_pb2_grpc.TunerServiceStub(channel)


def store_run(
    ingest: ingest_service_pb2_grpc.IngestServiceStub,
    env_id: str,
    *,
    alpha: float,
    gamma: float,
    value: float,
    training_time: float = 1.0,
) -> str:
    run_id = str(uuid.uuid4())
    params = struct_pb2.Struct()
    params.update({"alpha": alpha, "gamma": gamma, "epsilon_decay": 0.99, "training_runs": 1000, "seed": 1})
    ingest.RegisterRun(
        ipb.RegisterRunRequest(run_id=run_id, algorithm="sarsa", mode="user", env_id=env_id, params=params)
    )
    test_metrics = struct_pb2.Struct()
    test_metrics.update({"optimal_start_state_fraction": value, "success_rate": 1.0})
    system_metrics = struct_pb2.Struct()
    system_metrics.update({"training_time_s": training_time})
    ingest.CompleteRun(
        ipb.CompleteRunRequest(
            run_id=run_id, episodes_total=0, test_metrics=test_metrics, system_metrics=system_metrics
        )
    )
    return run_id


@pytest.fixture()
def stored(registry: InProcessService) -> tuple[str, dict[str, str]]:
    """40 sarsa runs whose objective depends on alpha only (best at 0.6), under an env_id of their own."""
    env_id = f"Taxi-v3-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(registry.target) as channel:
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        for index in range(40):
            alpha = 0.1 + 0.9 * ((index * 7) % 40) / 39
            gamma = 0.8 + 0.2 * ((index * 13) % 40) / 39
            store_run(ingest, env_id, alpha=alpha, gamma=gamma, value=round(0.9 - abs(alpha - 0.6), 6))
        # Two runs equally best (alpha 0.6, value 0.9): the shorter training wins.
        ids = {
            "slow": store_run(ingest, env_id, alpha=0.6, gamma=0.9, value=0.9, training_time=5.0),
            "fast": store_run(ingest, env_id, alpha=0.6, gamma=0.95, value=0.9, training_time=2.0),
            # Outside the searched space: not learned from.
            "outside": store_run(ingest, env_id, alpha=0.05, gamma=0.9, value=1.0),
        }
    return env_id, ids


def test_suggest_learns_from_the_best_and_the_newest_runs(
    stub: tuner_service_pb2_grpc.TunerServiceStub, stored: tuple[str, dict[str, str]]
) -> None:
    env_id, ids = stored
    # The 5 newest beside the 100 best: with 43 runs the best 100 are all of them (42 in the space).
    reply = stub.SuggestParams(
        pb.SuggestParamsRequest(algorithm="sarsa", search_space=SPACE, env_id=env_id, max_runs=5)
    )
    assert reply.runs_used == 42 and reply.best_run_id == ids["fast"]


def test_suggest_params_learns_from_stored_runs(
    stub: tuner_service_pb2_grpc.TunerServiceStub, stored: tuple[str, dict[str, str]]
) -> None:
    env_id, ids = stored
    reply = stub.SuggestParams(pb.SuggestParamsRequest(algorithm="sarsa", search_space=SPACE, env_id=env_id))
    assert reply.runs_used == 42
    assert reply.best_run_id == ids["fast"]
    assert reply.best_value == pytest.approx(0.9)
    assert dict(reply.best_params) == pytest.approx({"alpha": 0.6, "gamma": 0.95})
    assert set(reply.suggested_params) == {"alpha", "gamma"}
    assert 0.1 <= reply.suggested_params["alpha"] <= 1.0 and 0.8 <= reply.suggested_params["gamma"] <= 1.0
    # TPE proposes from the good region it fitted (its seed is fixed: the same answer every time).
    assert abs(reply.suggested_params["alpha"] - 0.6) < 0.25
    again = stub.SuggestParams(pb.SuggestParamsRequest(algorithm="sarsa", search_space=SPACE, env_id=env_id))
    assert again.suggested_params == reply.suggested_params


def test_param_importance_finds_the_parameter_that_matters(
    stub: tuner_service_pb2_grpc.TunerServiceStub, stored: tuple[str, dict[str, str]]
) -> None:
    env_id, _ = stored
    reply = stub.GetParamImportance(pb.GetParamImportanceRequest(algorithm="sarsa", env_id=env_id))
    assert reply.evaluator == "PedAnovaImportanceEvaluator"
    # The default space (alpha from 0.01) holds the run at alpha 0.05 too.
    assert reply.trials_used == 43
    names = [i.name for i in reply.importances]
    # epsilon_decay and training_episodes never varied: left out.
    assert names[0] == "alpha" and set(names) == {"alpha", "gamma"}
    assert reply.importances[0].importance > reply.importances[1].importance


def test_advice_requests_are_validated(
    stub: tuner_service_pb2_grpc.TunerServiceStub, registry: InProcessService
) -> None:
    def refused(call) -> tuple[grpc.StatusCode, list[str], str]:  # type: ignore[no-untyped-def]
        with pytest.raises(grpc.RpcError) as caught:
            call()
        violations, reason = status_details(caught.value)
        return caught.value.code(), [v.field for v in violations], reason

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert refused(lambda: stub.SuggestParams(pb.SuggestParamsRequest(algorithm="chess")))[:2] == (
        invalid,
        ["algorithm"],
    )
    grid = pb.SuggestParamsRequest(algorithm="sarsa", sampler=pb.SAMPLER_GRID, max_runs=-1)
    assert refused(lambda: stub.SuggestParams(grid))[:2] == (invalid, ["sampler", "max_runs"])
    assert refused(lambda: stub.GetParamImportance(pb.GetParamImportanceRequest()))[:2] == (invalid, ["sweep_id"])
    lonely_env = f"Taxi-v3-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(registry.target) as channel:
        store_run(ingest_service_pb2_grpc.IngestServiceStub(channel), lonely_env, alpha=0.5, gamma=0.9, value=0.5)
    lonely = pb.GetParamImportanceRequest(algorithm="sarsa", env_id=lonely_env)
    assert refused(lambda: stub.GetParamImportance(lonely)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        [],
        "NOT_ENOUGH_TRIALS",
    )


def test_advice_over_a_sweep(stub: tuner_service_pb2_grpc.TunerServiceStub) -> None:
    spec = small_spec(n_trials=4, parallelism=2, seeds_per_trial=1)
    spec.search_space.append(pb.ParameterRange(name="gamma", low=0.8, high=1.0))
    sweep = stub.StartSweep(pb.StartSweepRequest(spec=spec)).sweep
    done = wait_done(stub, sweep.sweep_id)
    assert done.trials_complete == 4
    suggestion = stub.SuggestParams(
        pb.SuggestParamsRequest(algorithm="q_learning", sweep_id=sweep.sweep_id, search_space=spec.search_space)
    )
    assert suggestion.runs_used == 4
    best = done.trials[done.best_trial]
    assert dict(suggestion.best_params) == pytest.approx(dict(best.params))
    assert suggestion.best_value == pytest.approx(best.value)
    importance = stub.GetParamImportance(pb.GetParamImportanceRequest(sweep_id=sweep.sweep_id))
    assert importance.trials_used == 4
    assert {i.name for i in importance.importances} == {"alpha", "gamma"}
    assert sum(i.importance for i in importance.importances) == pytest.approx(1.0)


def test_run_observations_are_the_best_then_the_newest(registry: InProcessService) -> None:
    from taxidriver.ingest.v1 import sweep_store_pb2 as spb
    from taxidriver.ingest.v1 import sweep_store_pb2_grpc

    env_id = f"Taxi-v3-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(registry.target) as channel:
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        # Stored in this order: values 0.5, 0.9, 0.1, 0.8, 0.3, 0.2 (the last is the newest).
        values = [0.5, 0.9, 0.1, 0.8, 0.3, 0.2]
        ids = [store_run(ingest, env_id, alpha=0.1 * (i + 1), gamma=0.9, value=v) for i, v in enumerate(values)]
        store = sweep_store_pb2_grpc.SweepStoreServiceStub(channel)
        request = spb.ListRunObservationsRequest(
            algorithm="sarsa",
            env_id=env_id,
            metric="optimal_start_state_fraction",
            best=2,
            newest=3,
            param_keys=["alpha", "training_runs"],
        )
        reply = store.ListRunObservations(request)
        assert reply.matching == 6
        # The best two (0.9, 0.8), then the three newest not among them (0.2, 0.3, 0.1).
        assert [o.run_id for o in reply.observations] == [ids[1], ids[3], ids[5], ids[4], ids[2]]
        assert [o.value for o in reply.observations] == pytest.approx([0.9, 0.8, 0.2, 0.3, 0.1])
        assert dict(reply.observations[0].params) == pytest.approx({"alpha": 0.2, "training_runs": 1000})
        request.minimize = True
        assert [o.value for o in store.ListRunObservations(request).observations][:2] == pytest.approx([0.1, 0.2])
        with pytest.raises(grpc.RpcError) as caught:
            store.ListRunObservations(spb.ListRunObservationsRequest(algorithm="Chess!", best=-1))
        assert {v.field for v in status_details(caught.value)[0]} == {"algorithm", "metric", "best"}
