"""A sweep belongs to whoever started it, through the real gateway with real keys.

CancelSweep's ownership rule (its access option: a trainer on its own sweeps, an admin on any)
is enforced by the tuner against the registry's record of the sweep's owner; the runs a sweep
starts record the sweep's owner as their creator, like the runs the owner starts itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import grpc
import pytest

from taxidriver.errors import _error_details
from taxidriver.registry.v1 import registry_service_pb2 as rpb
from taxidriver.registry.v1 import registry_service_pb2_grpc as rgrpc
from taxidriver.tuner.v1 import tuner_service_pb2 as pb
from taxidriver.tuner.v1 import tuner_service_pb2_grpc
from tests.support import InProcessService, wait_for_health
from tests.test_ownership import as_, people  # noqa: F401 (a fixture)
from tests.test_tuner_sweeps import small_spec
from tests.web_support import secured_gateway  # noqa: F401 (a fixture: keys required, a tuner behind)

People = dict[str, tuple[str, str]]


def long_sweep() -> pb.StartSweepRequest:
    """One trial of two long runs at a time: still running when it is cancelled."""
    spec = small_spec(
        n_trials=3, parallelism=1, seeds_per_trial=2, test_episodes=1, base_seed=11,
        fixed_params={"training_episodes": 1_000_000, "max_steps": 200},
    )  # fmt: skip
    return pb.StartSweepRequest(request_id=str(uuid.uuid4()), spec=spec)


def first_trial_runs(stub: tuner_service_pb2_grpc.TunerServiceStub, sweep_id: str, keys: People) -> list[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sweep = stub.GetSweep(pb.GetSweepRequest(sweep_id=sweep_id), metadata=as_(keys, "rita"), timeout=10).sweep
        if sweep.trials and len(sweep.trials[0].run_ids) == 2:
            return list(sweep.trials[0].run_ids)
        time.sleep(0.1)
    raise AssertionError(f"sweep {sweep_id} started no runs within 60 s")


def cancel(stub: tuner_service_pb2_grpc.TunerServiceStub, sweep_id: str, keys: People, name: str) -> pb.Sweep:
    """CancelSweep as `name`, then the sweep once it has ended (a sweep whose lease changed hands
    meanwhile is stopped by its new holder, after CancelSweep has answered)."""
    sweep = stub.CancelSweep(pb.CancelSweepRequest(sweep_id=sweep_id), metadata=as_(keys, name), timeout=60).sweep
    deadline = time.monotonic() + 60
    while sweep.state == pb.SWEEP_STATE_RUNNING and time.monotonic() < deadline:
        time.sleep(0.2)
        sweep = stub.GetSweep(pb.GetSweepRequest(sweep_id=sweep_id), metadata=as_(keys, "rita"), timeout=10).sweep
    return sweep


def refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """The refusal's code, reason and ErrorInfo metadata."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    _, reason, metadata = _error_details(caught.value)
    return caught.value.code(), reason, metadata


def test_a_sweeps_runs_record_its_owner_and_only_the_owner_or_an_admin_cancels_it(
    secured_gateway: InProcessService,  # noqa: F811
    people: People,  # noqa: F811
) -> None:
    wait_for_health(secured_gateway.target, "taxidriver.tuner.v1.TunerService", timeout=60)
    with grpc.insecure_channel(secured_gateway.target) as channel:
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
