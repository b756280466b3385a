"""Trainer benchmarks: presets' time to the exact optimum, end-to-end StartRun, concurrent runs.

- time_to_optimal_s_<algorithm>: median over seeds of the training time until the greedy
  policy is optimal on all 300 start states (optimized preset; inf when the median seed never is).
- optimal_seed_fraction_<algorithm>: share of seeds whose final policy is exactly optimal.
- end_to_end_run_s: StartRun until the run is completed and persisted (in-process registry and
  trainer on an embedded PostgreSQL, q_learning optimized preset, 100 test episodes).
- concurrent_runs_s: 4 such runs started at once on a 2-worker trainer.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quick import size
from taxidriver.embedded_pg import EmbeddedPostgres
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from tests.support import InProcessService, LoopThread
from trainer_service.params import PRESETS
from trainer_service.tuning import measure

SEEDS = range(100, 100 + size(10, 1))
ROOT = Path(__file__).resolve().parent.parent


def presets() -> None:
    for algorithm, preset in PRESETS.items():
        if algorithm == "brute_force":
            continue
        result = measure(algorithm, preset.hyperparameters, SEEDS)
        median = result.median_time_to_optimal_s
        print(f"bench: time_to_optimal_s_{algorithm} = {median if median is not None else float('inf'):.4f} s")
        print(f"bench: optimal_seed_fraction_{algorithm} = {result.optimal_fraction:.2f} fraction", flush=True)


def wait_completed(stub: registry_service_pb2_grpc.RegistryServiceStub, run_id: str) -> None:
    while True:
        run = stub.GetRun(registry_service_pb2.GetRunRequest(run_id=run_id)).run
        if run.status == resources_pb2.RUN_STATUS_COMPLETED:
            return
        if run.status in (resources_pb2.RUN_STATUS_FAILED, resources_pb2.RUN_STATUS_CANCELLED):
            raise RuntimeError(f"run {run_id} ended {run.status}: {run.error_message}")
        time.sleep(0.005)


def end_to_end() -> None:
    from registry_service.app import start_registry
    from registry_service.settings import RegistrySettings
    from trainer_service.app import start_trainer
    from trainer_service.settings import TrainerSettings

    data_dir = ROOT / ".data" / "bench-trainer-pg"
    postgres = EmbeddedPostgres(data_dir=data_dir, durable=False)
    postgres.start()
    loop = LoopThread()
    try:
        registry = InProcessService(
            loop, lambda: start_registry(RegistrySettings(address="127.0.0.1:0", database_url=postgres.url()))
        )
        trainer = InProcessService(
            loop,
            lambda: start_trainer(TrainerSettings(address="127.0.0.1:0", registry_target=registry.target, workers=2)),
        )
        with grpc.insecure_channel(trainer.target) as tc, grpc.insecure_channel(registry.target) as rc:
            trainer_stub = trainer_service_pb2_grpc.TrainerServiceStub(tc)
            registry_stub = registry_service_pb2_grpc.RegistryServiceStub(rc)
            request = trainer_service_pb2.StartRunRequest(
                algorithm="q_learning", mode=trainer_service_pb2.TRAINING_MODE_OPTIMIZED, test_episodes=100
            )
            # Warm-up: workers spawned and kernels loaded before timing.
            wait_completed(registry_stub, trainer_stub.StartRun(request).run_id)
            timings = []
            for _ in range(size(5, 1)):
                started = time.perf_counter()
                wait_completed(registry_stub, trainer_stub.StartRun(request).run_id)
                timings.append(time.perf_counter() - started)
            print(f"bench: end_to_end_run_s = {statistics.median(timings):.3f} s", flush=True)
            started = time.perf_counter()
            run_ids = [trainer_stub.StartRun(request).run_id for _ in range(4)]
            for run_id in run_ids:
                wait_completed(registry_stub, run_id)
            print(f"bench: concurrent_runs_s = {time.perf_counter() - started:.3f} s (4 runs, 2 workers)")
        trainer.stop()
        registry.stop()
    finally:
        loop.close()
        postgres.stop()


if __name__ == "__main__":
    presets()
    end_to_end()
