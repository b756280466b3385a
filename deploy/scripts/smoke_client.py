"""One real training through the gateway container, from the host (make smoke).

Checks the gateway's health (open), then with an API key lists the algorithms, starts a small Q-learning run in
user mode, follows it with GetRun until it ends, and fails unless it completed with
test_metrics.success_rate. Prints `smoke:` lines with what it measured.
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
    args = parser.parse_args(argv)
    auth = (("authorization", f"Bearer {args.api_key}"),) if args.api_key else ()

    with grpc.insecure_channel(args.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        if health.status != health_pb2.HealthCheckResponse.SERVING:
            return fail(f"gateway health is {health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}")
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


if __name__ == "__main__":
    sys.exit(main())
