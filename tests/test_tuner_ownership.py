"""A sweep belongs to whoever started it, through the real gateway with real keys.

CancelSweep's ownership rule (its access option: a trainer on its own sweeps, an admin on any)
is enforced by the tuner against the registry's record of the sweep's owner; the runs a sweep
starts record the sweep's owner as their creator, like the runs the owner starts itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import grpc
import psycopg
import pytest

from registry_service import users
from taxidriver.errors import _error_details
from taxidriver.registry.v1 import registry_service_pb2 as rpb
from taxidriver.registry.v1 import registry_service_pb2_grpc as rgrpc
from taxidriver.tuner.v1 import tuner_service_pb2 as pb
from taxidriver.tuner.v1 import tuner_service_pb2_grpc
from tests.support import InProcessService, LoopThread, wait_for_health

People = dict[str, tuple[str, str]]


@pytest.fixture(scope="module")
def tuner(loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService) -> Iterator[InProcessService]:
    from tuner_service.app import start_tuner
    from tuner_service.settings import TunerSettings

    settings = TunerSettings(
        address="127.0.0.1:0",
        registry_target=registry.target,
        trainer_targets=(trainer.target,),
        poll_interval=0.1,
        adopt_interval=0.5,
    )
    service = InProcessService(loop_thread, lambda: start_tuner(settings))
    yield service
    service.stop(0.5)


@pytest.fixture(scope="module")
def gateway(
    loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService, tuner: InProcessService
) -> Iterator[InProcessService]:
    from gateway.app import start_gateway
    from gateway.settings import GatewaySettings

    settings = GatewaySettings(
        address="127.0.0.1:0",
        trainer_targets=(trainer.target,),
        registry_target=registry.target,
        tuner_target=tuner.target,
        auth_required=True,
    )
    service = InProcessService(loop_thread, lambda: start_gateway(settings))
    wait_for_health(service.target, "taxidriver.tuner.v1.TunerService", timeout=30)
    yield service
    service.stop(0.5)


@pytest.fixture(scope="module")
def people(database_url: str, registry: InProcessService) -> People:
    """name -> (username, key): two trainers, an admin, a reader; fresh names per run of the module."""
    suffix = uuid.uuid4().hex[:6]
    roles = {"alice": "trainer", "bob": "trainer", "root": "admin", "rita": "reader"}
    with psycopg.connect(database_url, autocommit=True) as conn:
        return {
            name: (f"{name}-{suffix}", users.ensure_user_with_key(conn, f"{name}-{suffix}", role))
            for name, role in roles.items()
        }


def as_(people: People, name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {people[name][1]}"),)


def long_sweep() -> pb.StartSweepRequest:
    """One trial of two long runs at a time: still running when it is cancelled."""
    spec = pb.SweepSpec(
        algorithm="q_learning",
        search_space=[pb.ParameterRange(name="alpha", low=0.2, high=0.9)],
        n_trials=3,
        parallelism=1,
        seeds_per_trial=2,
        test_episodes=1,
        sampler=pb.SAMPLER_RANDOM,
        base_seed=11,
    )
    spec.fixed_params.update({"training_episodes": 1_000_000, "max_steps": 200})
    return pb.StartSweepRequest(request_id=str(uuid.uuid4()), spec=spec)


def first_trial_runs(stub: tuner_service_pb2_grpc.TunerServiceStub, sweep_id: str, people: People) -> list[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sweep = stub.GetSweep(pb.GetSweepRequest(sweep_id=sweep_id), metadata=as_(people, "rita"), timeout=10).sweep
        if sweep.trials and len(sweep.trials[0].run_ids) == 2:
            return list(sweep.trials[0].run_ids)
        time.sleep(0.1)
    raise AssertionError(f"sweep {sweep_id} started no runs within 60 s")


def cancel(stub: tuner_service_pb2_grpc.TunerServiceStub, sweep_id: str, people: People, name: str) -> pb.Sweep:
    """CancelSweep as `name`, then the sweep once it has ended (a sweep whose lease changed hands
    meanwhile is stopped by its new holder, after CancelSweep has answered)."""
    sweep = stub.CancelSweep(pb.CancelSweepRequest(sweep_id=sweep_id), metadata=as_(people, name), timeout=60).sweep
    deadline = time.monotonic() + 60
    while sweep.state == pb.SWEEP_STATE_RUNNING and time.monotonic() < deadline:
        time.sleep(0.2)
        sweep = stub.GetSweep(pb.GetSweepRequest(sweep_id=sweep_id), metadata=as_(people, "rita"), timeout=10).sweep
    return sweep


def refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """The refusal's code, reason and ErrorInfo metadata."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    _, reason, metadata = _error_details(caught.value)
    return caught.value.code(), reason, metadata


def test_a_sweeps_runs_record_its_owner_and_only_the_owner_or_an_admin_cancels_it(
    gateway: InProcessService, people: People
) -> None:
    with grpc.insecure_channel(gateway.target) as channel:
        tuner = tuner_service_pb2_grpc.TunerServiceStub(channel)
        registry = rgrpc.RegistryServiceStub(channel)
        alice, _ = people["alice"]

        mine = tuner.StartSweep(long_sweep(), metadata=as_(people, "alice"), timeout=30).sweep
        assert mine.owner == alice
        # The runs of its trials are alice's, as if she had started them through the gateway.
        run_ids = first_trial_runs(tuner, mine.sweep_id, people)
        for run_id in run_ids:
            run = registry.GetRun(rpb.GetRunRequest(run_id=run_id), metadata=as_(people, "rita"), timeout=10).run
            assert run.creator == alice

        # Another trainer may not cancel it; a reader may not cancel at all.
        code, reason, info = refused(
            lambda: tuner.CancelSweep(
                pb.CancelSweepRequest(sweep_id=mine.sweep_id), metadata=as_(people, "bob"), timeout=30
            )
        )
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_SWEEP_OWNER")
        assert info["owner"] == alice and info["sweep_id"] == mine.sweep_id
        code, reason, _ = refused(
            lambda: tuner.CancelSweep(
                pb.CancelSweepRequest(sweep_id=mine.sweep_id), metadata=as_(people, "rita"), timeout=30
            )
        )
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_TOO_LOW")
        still = tuner.GetSweep(pb.GetSweepRequest(sweep_id=mine.sweep_id), metadata=as_(people, "rita")).sweep
        assert still.state == pb.SWEEP_STATE_RUNNING

        # Its owner may.
        cancelled = cancel(tuner, mine.sweep_id, people, "alice")
        assert cancelled.state == pb.SWEEP_STATE_CANCELLED

        # An admin may cancel anyone's.
        other = tuner.StartSweep(long_sweep(), metadata=as_(people, "alice"), timeout=30).sweep
        first_trial_runs(tuner, other.sweep_id, people)
        by_admin = cancel(tuner, other.sweep_id, people, "root")
        assert by_admin.state == pb.SWEEP_STATE_CANCELLED and by_admin.owner == alice

        # A sweep that does not exist is NOT_FOUND for a trainer too (not a permission question).
        code, _, _ = refused(
            lambda: tuner.CancelSweep(
                pb.CancelSweepRequest(sweep_id=str(uuid.uuid4())), metadata=as_(people, "bob"), timeout=30
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND
