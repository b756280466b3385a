"""A sweep survives its tuner and its trainers: leases fenced by epochs, restarts, killed trainers."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf import struct_pb2

from taxidriver.errors import status_details
from taxidriver.ingest.v1 import sweep_store_pb2 as spb
from taxidriver.ingest.v1 import sweep_store_pb2_grpc
from taxidriver.tuner.v1 import tuner_service_pb2 as pb
from taxidriver.tuner.v1 import tuner_service_pb2_grpc
from tests.support import InProcessService, LoopThread, free_port, spawn, stop_process, wait_for_health
from tests.test_tuner_sweeps import small_spec, start_tuner, wait_done

TRAINER = "taxidriver.trainer.v1.TrainerService"


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), status_details(caught.value)[1]


@pytest.fixture()
def store(registry: InProcessService) -> Iterator[sweep_store_pb2_grpc.SweepStoreServiceStub]:
    with grpc.insecure_channel(registry.target) as channel:
        yield sweep_store_pb2_grpc.SweepStoreServiceStub(channel)


def test_a_tuner_whose_lease_was_taken_over_is_refused(
    store: sweep_store_pb2_grpc.SweepStoreServiceStub, db: psycopg.Connection
) -> None:
    spec = struct_pb2.Struct()
    spec.update({"algorithm": "q_learning", "n_trials": 3})
    sweep_id = store.CreateSweep(spb.CreateSweepRequest(algorithm="q_learning", spec=spec)).sweep.sweep_id
    first = store.ClaimSweep(spb.ClaimSweepRequest(sweep_id=sweep_id, tuner_id="tuner-a", lease_seconds=1.0))
    # Held: nobody else takes it.
    assert refused(
        lambda: store.ClaimSweep(spb.ClaimSweepRequest(sweep_id=sweep_id, tuner_id="tuner-b", lease_seconds=30))
    ) == (grpc.StatusCode.FAILED_PRECONDITION, "SWEEP_HELD")

    def claim_b() -> spb.ClaimSweepResponse | None:
        try:
            return store.ClaimSweep(spb.ClaimSweepRequest(sweep_id=sweep_id, tuner_id="tuner-b", lease_seconds=30))
        except grpc.RpcError:
            return None

    # tuner-a stops renewing (paused, partitioned): once its lease has run out, tuner-b takes it.
    second = wait_until(claim_b, 30, "tuner-b to take the sweep")
    assert isinstance(second, spb.ClaimSweepResponse)
    assert second.lease_epoch == first.lease_epoch + 1
    stale = first.lease_epoch
    trial = spb.TrialRecord(number=0, state="complete", body=struct_pb2.Struct())
    # tuner-a comes back and still believes it drives the sweep: every write is refused.
    assert refused(
        lambda: store.RecordTrial(spb.RecordTrialRequest(sweep_id=sweep_id, lease_epoch=stale, trial=trial))
    ) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    assert refused(
        lambda: store.RenewSweep(spb.RenewSweepRequest(sweep_id=sweep_id, tuner_id="tuner-a", lease_epoch=stale))
    ) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    assert refused(
        lambda: store.FinishSweep(spb.FinishSweepRequest(sweep_id=sweep_id, lease_epoch=stale, state="failed"))
    ) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    assert db.execute("SELECT count(*) FROM sweep_trials WHERE sweep_id = %s", (sweep_id,)).fetchone() == (0,)
    assert db.execute("SELECT state, tuner_id FROM sweeps WHERE sweep_id = %s", (sweep_id,)).fetchone() == (
        "running",
        "tuner-b",
    )
    # The new holder writes.
    store.RecordTrial(spb.RecordTrialRequest(sweep_id=sweep_id, lease_epoch=second.lease_epoch, trial=trial))
    finished = store.FinishSweep(
        spb.FinishSweepRequest(sweep_id=sweep_id, lease_epoch=second.lease_epoch, state="succeeded")
    )
    assert finished.sweep.state == "succeeded"


def sweep_runs(db: psycopg.Connection, sweep_id: str) -> list[tuple[str, int, str, str]]:
    return db.execute(
        "SELECT run_id::text, sweep_trial, status, trainer_id FROM training_runs WHERE sweep_id = %s",
        (sweep_id,),
    ).fetchall()


def test_a_restarted_tuner_carries_on_the_sweep_with_the_same_runs(
    loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService, db: psycopg.Connection
) -> None:
    spec = small_spec(n_trials=4, parallelism=1, seeds_per_trial=2, fixed_params={"training_episodes": 4000})
    first = start_tuner(loop_thread, registry, trainer)
    try:
        with grpc.insecure_channel(first.target) as channel:
            stub = tuner_service_pb2_grpc.TunerServiceStub(channel)
            sweep_id = stub.StartSweep(pb.StartSweepRequest(spec=spec)).sweep.sweep_id

            def second_trial_started() -> pb.Sweep | None:
                sweep = stub.GetSweep(pb.GetSweepRequest(sweep_id=sweep_id)).sweep
                return sweep if len(sweep.trials) == 2 and len(sweep.trials[1].run_ids) == 2 else None

            before = wait_until(second_trial_started, 120, "trial 1 to start its runs")
            assert isinstance(before, pb.Sweep)
    finally:
        first.stop(0.5)  # the tuner goes away mid-trial; its lease is left to run out
    assert before.trials[0].state == pb.TRIAL_STATE_COMPLETE
    second = start_tuner(loop_thread, registry, trainer)
    try:
        with grpc.insecure_channel(second.target) as channel:
            stub = tuner_service_pb2_grpc.TunerServiceStub(channel)
            done = wait_done(stub, sweep_id, timeout=180)
    finally:
        second.stop(0.5)
    assert done.state == pb.SWEEP_STATE_SUCCEEDED
    assert [t.number for t in done.trials] == [0, 1, 2, 3]
    assert all(t.state == pb.TRIAL_STATE_COMPLETE for t in done.trials)
    # The finished trial is as it was; the interrupted one kept its parameters and its runs.
    assert done.trials[0] == before.trials[0]
    assert done.trials[1].params == before.trials[1].params
    assert list(done.trials[1].run_ids) == list(before.trials[1].run_ids)
    # No run was started twice: 4 trials x 2 seeds, each tagged with its trial.
    runs = sweep_runs(db, sweep_id)
    assert len(runs) == 8
    assert sorted(r[1] for r in runs) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert {r[2] for r in runs} == {"completed"}
    holder = db.execute("SELECT tuner_id, lease_epoch FROM sweeps WHERE sweep_id = %s", (sweep_id,)).fetchone()
    assert holder == (second.app.tuner.settings.tuner_id, 2)


@pytest.fixture()
def short_lease_registry(loop_thread: LoopThread, database_url: str) -> Iterator[InProcessService]:
    """A registry whose run leases expire after 3 s, so a killed trainer's runs are soon INTERRUPTED."""
    from registry_service.app import start_registry
    from registry_service.settings import RegistrySettings

    settings = RegistrySettings(
        address="127.0.0.1:0", database_url=database_url, lease_seconds=3.0, health_interval=0.5
    )
    service = InProcessService(loop_thread, lambda: start_registry(settings))
    yield service
    service.stop(0.5)


@pytest.mark.slow
def test_a_trainer_killed_mid_sweep_loses_no_trial(
    loop_thread: LoopThread, short_lease_registry: InProcessService, db: psycopg.Connection, tmp_path: Path
) -> None:
    from trainer_service.app import start_trainer
    from trainer_service.settings import TrainerSettings

    registry = short_lease_registry
    survivor = InProcessService(
        loop_thread,
        lambda: start_trainer(
            TrainerSettings(
                address="127.0.0.1:0",
                registry_target=registry.target,
                workers=2,
                heartbeat_interval=0.5,
                max_active_runs_per_caller=10_000,
            )
        ),
    )
    port = free_port()
    doomed = spawn(
        "trainer_service",
        {
            "TRAINER_ADDRESS": f"127.0.0.1:{port}",
            "REGISTRY_TARGET": registry.target,
            "TRAINER_WORKERS": "2",
            "TRAINER_HEARTBEAT_S": "0.5",
        },
        tmp_path / "trainer.log",
    )
    try:
        wait_for_health(f"127.0.0.1:{port}", TRAINER, timeout=120)
        tuner = start_tuner(loop_thread, registry, survivor, f"127.0.0.1:{port}")
        try:
            # Trials long enough to catch the doomed trainer in the middle of one.
            spec = small_spec(n_trials=3, parallelism=2, seeds_per_trial=2, fixed_params={"training_episodes": 60_000})
            with grpc.insecure_channel(tuner.target) as channel:
                stub = tuner_service_pb2_grpc.TunerServiceStub(channel)
                sweep_id = stub.StartSweep(pb.StartSweepRequest(spec=spec)).sweep.sweep_id
                survivor_id = survivor.app.runs.trainer_id

                def doomed_is_training() -> list[str]:
                    return [
                        run_id
                        for run_id, _, status, trainer_id in sweep_runs(db, sweep_id)
                        if status == "running" and trainer_id != survivor_id
                    ]

                victims = wait_until(doomed_is_training, 120, "a trial run on the doomed trainer")
                doomed.send_signal(signal.SIGKILL)
                doomed.wait(10)
                done = wait_done(stub, sweep_id, timeout=300)
        finally:
            tuner.stop(0.5)
    finally:
        stop_process(doomed)
        survivor.stop(0.5)
    assert done.state == pb.SWEEP_STATE_SUCCEEDED
    assert [t.state for t in done.trials] == [pb.TRIAL_STATE_COMPLETE] * 3
    runs = {run_id: (trial, status, trainer_id) for run_id, trial, status, trainer_id in sweep_runs(db, sweep_id)}
    # No run was started twice (3 trials x 2 seeds), and every one completed.
    assert len(runs) == 6 and {status for _, status, _ in runs.values()} == {"completed"}
    # The killed trainer's runs were resumed by the survivor from their checkpoints.
    assert isinstance(victims, list)
    for run_id in victims:
        assert runs[run_id][2] == survivor_id


@pytest.mark.slow
def test_a_paused_tuner_that_comes_back_writes_nothing_more(
    loop_thread: LoopThread,
    registry: InProcessService,
    trainer: InProcessService,
    db: psycopg.Connection,
    tmp_path: Path,
) -> None:
    port = free_port()
    paused = spawn(
        "tuner_service",
        {
            "TUNER_ADDRESS": f"127.0.0.1:{port}",
            "REGISTRY_TARGET": registry.target,
            "TRAINER_TARGETS": trainer.target,
            "TUNER_ID": "tuner-paused",
            "TUNER_LEASE_S": "2",
            "TUNER_POLL_S": "0.1",
        },
        tmp_path / "tuner.log",
    )
    try:
        wait_for_health(f"127.0.0.1:{port}", "taxidriver.tuner.v1.TunerService", timeout=60)
        spec = small_spec(n_trials=6, parallelism=1, seeds_per_trial=2, fixed_params={"training_episodes": 3000})
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = tuner_service_pb2_grpc.TunerServiceStub(channel)
            sweep_id = stub.StartSweep(pb.StartSweepRequest(spec=spec), timeout=30).sweep.sweep_id

            def trial_one_started() -> bool:
                sweep = stub.GetSweep(pb.GetSweepRequest(sweep_id=sweep_id), timeout=30).sweep
                return len(sweep.trials) >= 2

            wait_until(trial_one_started, 120, "the paused tuner's second trial")
        # SIGSTOP: the process still believes it drives the sweep when it wakes up.
        paused.send_signal(signal.SIGSTOP)
        taker = start_tuner(loop_thread, registry, trainer)
        try:
            with grpc.insecure_channel(taker.target) as channel:
                stub = tuner_service_pb2_grpc.TunerServiceStub(channel)

                def taken_over_and_progressed() -> bool:
                    holder = db.execute("SELECT tuner_id FROM sweeps WHERE sweep_id = %s", (sweep_id,)).fetchone()
                    sweep = stub.GetSweep(pb.GetSweepRequest(sweep_id=sweep_id)).sweep
                    return holder == (taker.app.tuner.settings.tuner_id,) and sweep.trials_complete >= 3

                wait_until(taken_over_and_progressed, 120, "the other tuner to take the sweep and finish a trial")
                paused.send_signal(signal.SIGCONT)
                done = wait_done(stub, sweep_id, timeout=240)
        finally:
            taker.stop(0.5)
    finally:
        paused.send_signal(signal.SIGCONT)
        stop_process(paused)
    assert done.state == pb.SWEEP_STATE_SUCCEEDED
    assert [t.number for t in done.trials] == list(range(6))
    assert all(t.state == pb.TRIAL_STATE_COMPLETE for t in done.trials)
    # The woken tuner started nothing: 6 trials x 2 seeds, each run once.
    runs = sweep_runs(db, sweep_id)
    assert len(runs) == 12 and sorted(r[1] for r in runs) == sorted(list(range(6)) * 2)
    log = (tmp_path / "tuner.log").read_text()
    assert "lease lost" in log or "another tuner drives it now" in log


@pytest.mark.slow
def test_trials_are_spread_over_two_trainer_processes(
    loop_thread: LoopThread,
    registry: InProcessService,
    trainer: InProcessService,
    db: psycopg.Connection,
    tmp_path: Path,
) -> None:
    ports = [free_port(), free_port()]
    processes = [
        spawn(
            "trainer_service",
            {
                "TRAINER_ADDRESS": f"127.0.0.1:{port}",
                "REGISTRY_TARGET": registry.target,
                "TRAINER_WORKERS": "1",
                "TRAINER_MAX_ACTIVE_RUNS_PER_CALLER": "100",
            },
            tmp_path / f"trainer-{port}.log",
        )
        for port in ports
    ]
    try:
        for port in ports:
            wait_for_health(f"127.0.0.1:{port}", TRAINER, timeout=120)
        tuner = start_tuner(loop_thread, registry, *(f"127.0.0.1:{port}" for port in ports))
        try:
            with grpc.insecure_channel(tuner.target) as channel:
                stub = tuner_service_pb2_grpc.TunerServiceStub(channel)
                sweep_id = stub.StartSweep(
                    pb.StartSweepRequest(spec=small_spec(n_trials=4, parallelism=2, seeds_per_trial=1))
                ).sweep.sweep_id
                done = wait_done(stub, sweep_id, timeout=180)
        finally:
            tuner.stop(0.5)
    finally:
        for process in processes:
            stop_process(process)
    assert done.state == pb.SWEEP_STATE_SUCCEEDED and done.trials_complete == 4
    trainers = {r[3] for r in sweep_runs(db, sweep_id)}
    # Both processes trained trials (round robin over the two targets), the session's trainer none.
    assert len(trainers) == 2 and trainer.app.runs.trainer_id not in trainers
