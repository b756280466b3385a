"""One real training through the gateway container, from the host (make smoke).

Checks the gateway's health (open), then with an API key lists the algorithms, starts a small Q-learning run in
user mode, follows it with GetRun until it ends, and fails unless it completed with
test_metrics.success_rate. With --sweep, instead: a tiny sweep through the tuner container (StartSweep,
then GetSweep until it ends), which must succeed with a complete trial whose runs record the key's user
(--owner) as their creator. Prints `smoke:` lines with what it measured.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from taxidriver.tuner.v1 import tuner_service_pb2, tuner_service_pb2_grpc

FINAL = {
    resources_pb2.RUN_STATUS_COMPLETED,
    resources_pb2.RUN_STATUS_FAILED,
    resources_pb2.RUN_STATUS_CANCELLED,
}


def fail(message: str) -> int:
    print(f"smoke: FAILED: {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="gateway address, e.g. 127.0.0.1:50051")
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the run")
    parser.add_argument(
        "--api-key", default=os.environ.get("TAXI_DRIVER_API_KEY", ""), help="bearer key (trainer role or above)"
    )
    parser.add_argument("--sweep", action="store_true", help="a tiny sweep through the tuner instead of a run")
    parser.add_argument("--owner", default="", help="with --sweep: the key's username, expected as the runs' creator")
    args = parser.parse_args(argv)
    auth = (("authorization", f"Bearer {args.api_key}"),) if args.api_key else ()

    with grpc.insecure_channel(args.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        if health.status != health_pb2.HealthCheckResponse.SERVING:
            return fail(f"gateway health is {health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}")
        if args.sweep:
            return sweep(channel, auth, args.timeout, args.owner)
        trainer = trainer_service_pb2_grpc.TrainerServiceStub(channel)
        registry = registry_service_pb2_grpc.RegistryServiceStub(channel)

        algorithms = trainer.ListAlgorithms(trainer_service_pb2.ListAlgorithmsRequest(), timeout=30, metadata=auth)
        names = sorted(a.name for a in algorithms.algorithms)
        print(f"smoke: algorithms = {','.join(names)}")
        if "q_learning" not in names:
            return fail("q_learning is not offered by the trainer")

        started = time.monotonic()
        response = trainer.StartRun(
            trainer_service_pb2.StartRunRequest(
                request_id=f"smoke-{uuid.uuid4()}",
                algorithm="q_learning",
                mode=trainer_service_pb2.TRAINING_MODE_USER,
                hyperparameters=trainer_service_pb2.Hyperparameters(
                    alpha=0.1,
                    gamma=0.99,
                    epsilon=1.0,
                    epsilon_min=0.05,
                    epsilon_decay=0.995,
                    training_episodes=args.episodes,
                    max_steps=200,
                ),
                test_episodes=50,
                seed=7,
            ),
            timeout=60,
            metadata=auth,
        )
        print(f"smoke: run_id = {response.run_id}")

        run = None
        while time.monotonic() - started < args.timeout:
            run = registry.GetRun(
                registry_service_pb2.GetRunRequest(run_id=response.run_id), timeout=30, metadata=auth
            ).run
            if run.status in FINAL:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        if run is None or run.status not in FINAL:
            return fail(f"run {response.run_id} did not finish within {args.timeout:.0f} s")
        status = resources_pb2.RunStatus.Name(run.status)
        if run.status != resources_pb2.RUN_STATUS_COMPLETED:
            return fail(f"run {response.run_id} ended {status}: {run.error_message}")
        metrics = dict(run.test_metrics)
        if "success_rate" not in metrics:
            return fail(f"run {response.run_id} completed without test_metrics.success_rate: {sorted(metrics)}")
        print(
            f"smoke: run {status} episodes_recorded={run.episodes_recorded} "
            f"success_rate={metrics['success_rate']:.3f} avg_steps={metrics.get('avg_steps')}"
        )
        print(f"smoke: training_through_gateway = {elapsed:.1f} s")
    return 0


def sweep(channel: grpc.Channel, auth: tuple[tuple[str, str], ...], timeout: float, owner: str) -> int:
    """Two trials of one small Q-learning run each, through the gateway to the tuner container."""
    tuner = tuner_service_pb2_grpc.TunerServiceStub(channel)
    registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
    spec = tuner_service_pb2.SweepSpec(
        algorithm="q_learning",
        search_space=[tuner_service_pb2.ParameterRange(name="alpha", choices=[0.5, 1.0])],
        sampler=tuner_service_pb2.SAMPLER_GRID,
        n_trials=2,
        parallelism=2,
        seeds_per_trial=1,
        test_episodes=20,
        base_seed=7,
    )
    spec.fixed_params.update({"training_episodes": 2000, "max_steps": 200})
    started = time.monotonic()
    sweep_id = tuner.StartSweep(
        tuner_service_pb2.StartSweepRequest(request_id=f"smoke-sweep-{uuid.uuid4()}", spec=spec),
        timeout=60,
        metadata=auth,
    ).sweep.sweep_id
    print(f"smoke: sweep_id = {sweep_id}")
    found = None
    while time.monotonic() - started < timeout:
        found = tuner.GetSweep(tuner_service_pb2.GetSweepRequest(sweep_id=sweep_id), timeout=30, metadata=auth).sweep
        if found.state != tuner_service_pb2.SWEEP_STATE_RUNNING:
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    if found is None or found.state == tuner_service_pb2.SWEEP_STATE_RUNNING:
        return fail(f"sweep {sweep_id} did not finish within {timeout:.0f} s")
    state = tuner_service_pb2.SweepState.Name(found.state)
    complete = [t for t in found.trials if t.state == tuner_service_pb2.TRIAL_STATE_COMPLETE]
    if found.state != tuner_service_pb2.SWEEP_STATE_SUCCEEDED or len(complete) != spec.n_trials:
        return fail(f"sweep {sweep_id} ended {state} with {len(complete)} complete trial(s): {found.error_message}")
    for trial in complete:
        for run_id in trial.run_ids:
            run = registry.GetRun(registry_service_pb2.GetRunRequest(run_id=run_id), timeout=30, metadata=auth).run
            if owner and run.creator != owner:
                return fail(f"run {run_id} of sweep {sweep_id} has creator {run.creator!r}, not {owner!r}")
    best = found.trials[found.best_trial]
    print(
        f"smoke: sweep {state} trials={len(complete)} best alpha={best.params['alpha']:g} value={best.value:.3f}"
        f" owner={found.owner}"
    )
    print(f"smoke: sweep_through_gateway = {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
