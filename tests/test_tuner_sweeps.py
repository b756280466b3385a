"""Sweeps over real trainers: Optuna asks, two trainer servers train, the registry records."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import grpc
import psycopg
import pytest

from taxidriver.errors import status_details
from taxidriver.tuner.v1 import tuner_service_pb2 as pb
from taxidriver.tuner.v1 import tuner_service_pb2_grpc
from tests.support import InProcessService, LoopThread

# Small trials: a few hundred episodes of Q-learning train in well under a second.
SMALL = {"training_episodes": 300.0, "max_steps": 200.0}


@pytest.fixture()
def second_trainer(loop_thread: LoopThread, registry: InProcessService) -> Iterator[InProcessService]:
    from trainer_service.app import start_trainer
    from trainer_service.settings import TrainerSettings

    settings = TrainerSettings(
        address="127.0.0.1:0", registry_target=registry.target, workers=1, max_active_runs_per_caller=10_000
    )
    service = InProcessService(loop_thread, lambda: start_trainer(settings))
    yield service
    service.stop(1.0)


def start_tuner(
    loop_thread: LoopThread, registry: InProcessService, *trainers: InProcessService | str
) -> InProcessService:
    from tuner_service.app import start_tuner as start
    from tuner_service.settings import TunerSettings

    settings = TunerSettings(
        address="127.0.0.1:0",
        registry_target=registry.target,
        trainer_targets=tuple(t if isinstance(t, str) else t.target for t in trainers),
        poll_interval=0.1,
        lease_seconds=6.0,
        adopt_interval=0.5,
    )
    return InProcessService(loop_thread, lambda: start(settings))


@pytest.fixture()
def tuner(
    loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService, second_trainer: InProcessService
) -> Iterator[InProcessService]:
    service = start_tuner(loop_thread, registry, trainer, second_trainer)
    yield service
    service.stop(0.5)


def small_spec(**overrides: object) -> pb.SweepSpec:
    spec = pb.SweepSpec(
        algorithm="q_learning",
        search_space=[pb.ParameterRange(name="alpha", low=0.2, high=0.9)],
        n_trials=4,
        parallelism=2,
        seeds_per_trial=2,
        test_episodes=3,
        sampler=pb.SAMPLER_RANDOM,
        base_seed=7,
        fixed_params=SMALL,
    )
    for name, value in overrides.items():
        if name == "fixed_params":
            spec.fixed_params.clear()
            spec.fixed_params.update(value)  # type: ignore[arg-type]
        else:
            setattr(spec, name, value)
    return spec


def wait_done(stub: tuner_service_pb2_grpc.TunerServiceStub, sweep_id: str, timeout: float = 120.0) -> pb.Sweep:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sweep = stub.GetSweep(pb.GetSweepRequest(sweep_id=sweep_id)).sweep
        if sweep.state != pb.SWEEP_STATE_RUNNING:
            return sweep
        time.sleep(0.2)
    raise AssertionError(f"sweep {sweep_id} still running after {timeout}s")


def test_sweep_trials_run_on_both_trainers_and_are_recorded(
    tuner: InProcessService,
    trainer: InProcessService,
    second_trainer: InProcessService,
    db: psycopg.Connection,
) -> None:
    with grpc.insecure_channel(tuner.target) as channel:
        stub = tuner_service_pb2_grpc.TunerServiceStub(channel)
        started = stub.StartSweep(pb.StartSweepRequest(request_id=str(uuid.uuid4()), spec=small_spec())).sweep
        assert started.state == pb.SWEEP_STATE_RUNNING
        assert started.spec.objective.metric == "optimal_start_state_fraction"
        watched = list(stub.WatchSweep(pb.WatchSweepRequest(sweep_id=started.sweep_id), timeout=180))
        sweep = stub.GetSweep(pb.GetSweepRequest(sweep_id=started.sweep_id)).sweep

    assert sweep.state == pb.SWEEP_STATE_SUCCEEDED
    assert [t.number for t in sweep.trials] == [0, 1, 2, 3]
    assert sweep.trials_complete == 4
    # WatchSweep: each finished trial once, then the final state.
    assert sorted(m.trial.number for m in watched if m.HasField("trial")) == [0, 1, 2, 3]
    assert watched[-1].sweep_state == pb.SWEEP_STATE_SUCCEEDED and not watched[-1].HasField("trial")
    run_ids = []
    for trial in sweep.trials:
        assert trial.state == pb.TRIAL_STATE_COMPLETE
        assert 0.2 <= trial.params["alpha"] <= 0.9
        assert list(trial.seeds) == [7, 8]
        assert len(trial.run_ids) == 2 and len(trial.values) == 2
        assert trial.value == pytest.approx(sum(trial.values) / 2)
        assert trial.statistics.seeds == 2
        assert trial.statistics.mean == pytest.approx(trial.value)
        assert trial.statistics.ci_low <= trial.statistics.iqm <= trial.statistics.ci_high
        run_ids.extend(trial.run_ids)
    best = max(sweep.trials, key=lambda t: (t.value, -t.training_seconds))
    assert sweep.best_trial == best.number

    # Every trial run is an ordinary run, tagged with its sweep and trial number, with the
    # trial's alpha, the fixed parameters and its seed; the objective is its own metric.
    rows = db.execute(
        """SELECT run_id::text, sweep_id::text, sweep_trial, status, trainer_id, params, test_metrics
           FROM training_runs WHERE run_id = ANY(%s::uuid[])""",
        (run_ids,),
    ).fetchall()
    assert len(rows) == 8
    by_id = {row[0]: row for row in rows}
    for trial in sweep.trials:
        for seed, run_id, value in zip(trial.seeds, trial.run_ids, trial.values, strict=True):
            _, sweep_id, number, status, _, params, test_metrics = by_id[run_id]
            assert (sweep_id, number, status) == (sweep.sweep_id, trial.number, "completed")
            assert params["alpha"] == pytest.approx(trial.params["alpha"])
            assert params["training_runs"] == 300 and params["seed"] == seed
            assert test_metrics["optimal_start_state_fraction"] == pytest.approx(value)
    # Spread over both trainer processes.
    expected = {trainer.app.runs.trainer_id, second_trainer.app.runs.trainer_id}
    assert {row[4] for row in rows} == expected
    # The sweep's spec and state are registry rows.
    state, spec = db.execute("SELECT state, spec FROM sweeps WHERE sweep_id = %s", (sweep.sweep_id,)).fetchone()
    assert state == "succeeded" and spec["n_trials"] == 4 and spec["algorithm"] == "q_learning"
    assert db.execute("SELECT count(*) FROM sweep_trials WHERE sweep_id = %s", (sweep.sweep_id,)).fetchone() == (4,)


def test_start_sweep_with_the_same_request_id_returns_the_same_sweep(tuner: InProcessService) -> None:
    request_id = str(uuid.uuid4())
    spec = small_spec(n_trials=1, parallelism=1, seeds_per_trial=1)
    with grpc.insecure_channel(tuner.target) as channel:
        stub = tuner_service_pb2_grpc.TunerServiceStub(channel)
        first = stub.StartSweep(pb.StartSweepRequest(request_id=request_id, spec=spec)).sweep
        again = stub.StartSweep(pb.StartSweepRequest(request_id=request_id, spec=spec)).sweep
        assert again.sweep_id == first.sweep_id
        other = small_spec(n_trials=2, parallelism=1, seeds_per_trial=1)
        with pytest.raises(grpc.RpcError) as caught:
            stub.StartSweep(pb.StartSweepRequest(request_id=request_id, spec=other))
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        done = wait_done(stub, first.sweep_id)
        assert done.state == pb.SWEEP_STATE_SUCCEEDED and len(done.trials) == 1
        listed = stub.ListSweeps(pb.ListSweepsRequest(page_size=100, algorithm="q_learning"))
        assert first.sweep_id in [s.sweep_id for s in listed.sweeps]


def test_bad_sweep_specs_name_each_field(tuner: InProcessService, db: psycopg.Connection) -> None:
    before = db.execute("SELECT count(*) FROM sweeps").fetchone()
    spec = pb.SweepSpec(
        algorithm="q_learning",
        search_space=[
            pb.ParameterRange(name="alpha", low=0.5, high=2.0),
            pb.ParameterRange(name="warp", low=0, high=1),
            pb.ParameterRange(name="gamma", low=0.0, high=0.9, log=True),
        ],
        n_trials=0,
        parallelism=99,
        fixed_params={"alpha": 0.5},
    )
    with grpc.insecure_channel(tuner.target) as channel:
        stub = tuner_service_pb2_grpc.TunerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.StartSweep(pb.StartSweepRequest(spec=spec))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        fields = {v.field for v in status_details(caught.value)[0]}
        assert fields == {
            "spec.search_space[0].high",
            "spec.search_space[1].name",
            "spec.search_space[2].low",
            "spec.n_trials",
            "spec.parallelism",
            "spec.fixed_params[alpha]",
        }
        with pytest.raises(grpc.RpcError) as caught:
            stub.StartSweep(pb.StartSweepRequest(spec=small_spec(algorithm="brute_force")))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert {v.field for v in status_details(caught.value)[0]} >= {"spec.algorithm"}
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetSweep(pb.GetSweepRequest(sweep_id=str(uuid.uuid4())))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetSweep(pb.GetSweepRequest(sweep_id="nope"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert db.execute("SELECT count(*) FROM sweeps").fetchone() == before


def test_cancel_sweep_stops_its_runs_and_starts_no_more_trials(tuner: InProcessService, db: psycopg.Connection) -> None:
    # Long trials: cancelled long before they could finish.
    spec = small_spec(n_trials=20, parallelism=1, seeds_per_trial=2, fixed_params={"training_episodes": 200_000})
    with grpc.insecure_channel(tuner.target) as channel:
        stub = tuner_service_pb2_grpc.TunerServiceStub(channel)
        started = stub.StartSweep(pb.StartSweepRequest(spec=spec)).sweep
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            sweep = stub.GetSweep(pb.GetSweepRequest(sweep_id=started.sweep_id)).sweep
            if sweep.trials and len(sweep.trials[0].run_ids) == 2:
                break
            time.sleep(0.1)
        run_ids = list(sweep.trials[0].run_ids)
        cancelled = stub.CancelSweep(pb.CancelSweepRequest(sweep_id=started.sweep_id), timeout=60).sweep
    assert cancelled.state == pb.SWEEP_STATE_CANCELLED
    assert [t.state for t in cancelled.trials] == [pb.TRIAL_STATE_CANCELLED]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = {
            r[0] for r in db.execute("SELECT status FROM training_runs WHERE run_id = ANY(%s::uuid[])", (run_ids,))
        }
        if statuses == {"cancelled"}:
            break
        time.sleep(0.2)
    assert statuses == {"cancelled"}


def test_gateway_forwards_the_tuner_service(
    loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService, tuner: InProcessService
) -> None:
    from gateway.app import start_gateway
    from gateway.settings import GatewaySettings
    from tests.support import wait_for_health

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
    try:
        wait_for_health(gateway.target, "taxidriver.tuner.v1.TunerService", timeout=30)
        with grpc.insecure_channel(gateway.target) as channel:
            stub = tuner_service_pb2_grpc.TunerServiceStub(channel)
            started = stub.StartSweep(pb.StartSweepRequest(spec=small_spec(n_trials=1, seeds_per_trial=1))).sweep
            done = wait_done(stub, started.sweep_id)
            assert done.state == pb.SWEEP_STATE_SUCCEEDED and done.trials[0].state == pb.TRIAL_STATE_COMPLETE
            # Rich errors cross the gateway intact (too many trials: the tuner's refusal; none at
            # all would be a REQUIRED field unset, refused by the gateway itself).
            with pytest.raises(grpc.RpcError) as caught:
                stub.StartSweep(pb.StartSweepRequest(spec=small_spec(n_trials=100_000)))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert [v.field for v in status_details(caught.value)[0]] == ["spec.n_trials"]
    finally:
        gateway.stop(0.5)
