"""Trainer benchmarks: presets' time to the exact optimum, end-to-end StartRun, concurrent runs.

- time_to_optimal_s_<algorithm>: median over seeds of the training time until the greedy
  policy is optimal on all 300 start states (optimized preset; inf when the median seed never is).
  Checked every 10 episodes; the training up to the first optimal check is then timed again in
  one kernel call, the kernel loaded before (trainer_service.tuning.measure says why).
- optimal_seed_fraction_<algorithm>: share of seeds whose final policy is exactly optimal.
- preset <algorithm>: the line each preset note in trainer_service/params.py quotes (seeds
  100-119: exactly optimal, delivering from every start state, worst delivery, optimal starts).
- end_to_end_run_s: StartRun until the run is completed and persisted (in-process registry and
  trainer on an embedded PostgreSQL, q_learning optimized preset, 100 test episodes): episodes
  acknowledged, then one CompleteRun carrying the model. The plots are not part of it since
  issue 15 (the registry renders them on a run's first read): 2.69-3.00 -> 0.54-0.66 s at load
  12-15, 0.74-1.27 -> 0.34-0.37 s at load 5-10, alternated with main's code.
- concurrent_runs_s: 4 such runs started at once on a 2-worker trainer.
- runs_recorded_per_s: small completed runs (300 episodes) persisted per second, StartRun
  through the gateway, on the same warm trainer (MLflow 3 records 55-60 runs/s): 0.6-1.8 ->
  4.4-16.3 runs/s with plots rendered on read (same alternated runs as above).
- trainer_ready_s_<cache>, first_run_queued_s_<cache>, first_run_s_after_start_<cache>: a fresh
  2-worker trainer started as `make run` starts it (wait until its health says SERVING, then the
  devstack's first training: SARSA optimized, 250 test episodes): seconds until SERVING, seconds
  the first run sat queued, seconds from its StartRun to completed. cold_cache = an empty
  NUMBA_CACHE_DIR (first start on a machine), warm_cache = the same directory again.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quick import size
from taxidriver.embedded_pg import EmbeddedPostgres
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from tests.support import InProcessService, LoopThread, wait_for_health
from trainer_service.params import PRESETS
from trainer_service.tuning import measure

SEEDS = range(100, 100 + size(20, 1))
ROOT = Path(__file__).resolve().parent.parent


def presets() -> None:
    for algorithm, preset in PRESETS.items():
        if algorithm == "brute_force":
            continue
        result = measure(algorithm, preset.hyperparameters, SEEDS)
        median = result.median_time_to_optimal_s
        print(f"bench: time_to_optimal_s_{algorithm} = {median if median is not None else float('inf'):.4f} s")
        print(f"bench: optimal_seed_fraction_{algorithm} = {result.optimal_fraction:.2f} fraction")
        print(f"preset {algorithm}: {result.summary()}", flush=True)


def wait_completed(stub: registry_service_pb2_grpc.RegistryServiceStub, run_id: str) -> None:
    while True:
        run = stub.GetRun(registry_service_pb2.GetRunRequest(run_id=run_id)).run
        if run.status == resources_pb2.RUN_STATUS_COMPLETED:
            return
        if run.status in (resources_pb2.RUN_STATUS_FAILED, resources_pb2.RUN_STATUS_CANCELLED):
            raise RuntimeError(f"run {run_id} ended {run.status}: {run.error_message}")
        time.sleep(0.005)


def wait_running_then_completed(stub: registry_service_pb2_grpc.RegistryServiceStub, run_id: str) -> float:
    """Seconds until the run left QUEUED; returns once it is completed."""
    started, left_queue = time.perf_counter(), None
    while left_queue is None:
        run = stub.GetRun(registry_service_pb2.GetRunRequest(run_id=run_id)).run
        if run.status != resources_pb2.RUN_STATUS_QUEUED:
            left_queue = time.perf_counter() - started
        else:
            time.sleep(0.005)
    wait_completed(stub, run_id)
    return left_queue


def first_run() -> None:
    from registry_service.app import start_registry
    from registry_service.settings import RegistrySettings
    from trainer_service.app import start_trainer
    from trainer_service.settings import TrainerSettings

    postgres = EmbeddedPostgres(data_dir=ROOT / ".data" / "bench-trainer-pg", durable=False)
    postgres.start()
    loop = LoopThread()
    previous = os.environ.get("NUMBA_CACHE_DIR")
    try:
        registry = InProcessService(
            loop, lambda: start_registry(RegistrySettings(address="127.0.0.1:0", database_url=postgres.url()))
        )
        with tempfile.TemporaryDirectory(prefix="bench-numba-") as cache, grpc.insecure_channel(registry.target) as rc:
            os.environ["NUMBA_CACHE_DIR"] = cache  # read by the spawned workers' numba
            registry_stub = registry_service_pb2_grpc.RegistryServiceStub(rc)
            for label in ("cold_cache", "warm_cache"):
                started = time.perf_counter()
                trainer = InProcessService(
                    loop,
                    lambda: start_trainer(
                        TrainerSettings(address="127.0.0.1:0", registry_target=registry.target, workers=2)
                    ),
                )
                wait_for_health(trainer.target, "", timeout=600)  # what `make run` waits for
                ready = time.perf_counter() - started
                with grpc.insecure_channel(trainer.target) as tc:
                    request = trainer_service_pb2.StartRunRequest(
                        algorithm="sarsa", mode=trainer_service_pb2.TRAINING_MODE_OPTIMIZED, test_episodes=250
                    )
                    started = time.perf_counter()
                    run_id = trainer_service_pb2_grpc.TrainerServiceStub(tc).StartRun(request).run_id
                    queued = wait_running_then_completed(registry_stub, run_id)
                    first = time.perf_counter() - started
                trainer.stop()
                print(f"bench: trainer_ready_s_{label} = {ready:.2f} s")
                print(f"bench: first_run_queued_s_{label} = {queued:.2f} s")
                print(f"bench: first_run_s_after_start_{label} = {first:.2f} s", flush=True)
        registry.stop()
    finally:
        if previous is None:
            os.environ.pop("NUMBA_CACHE_DIR", None)
        else:
            os.environ["NUMBA_CACHE_DIR"] = previous
        loop.close()
        postgres.stop()


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
            # 2 workers = the default (os.cpu_count()) on the 2-core machine the figures come from;
            # the per-caller cap raised so runs_recorded can queue its runs at once.
            lambda: start_trainer(
                TrainerSettings(
                    address="127.0.0.1:0",
                    registry_target=registry.target,
                    workers=2,
                    max_active_runs_per_caller=1000,
                )
            ),
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
        runs_recorded(trainer.target, registry.target, loop)
        trainer.stop()
        registry.stop()
    finally:
        loop.close()
        postgres.stop()


SMALL_RUNS = size(40, 4)


def runs_recorded(trainer_target: str, registry_target: str, loop: LoopThread) -> None:
    """Small completed runs persisted per second, StartRun through the gateway (MLflow: 55-60/s).

    Each run is a Q-learning user run of 300 episodes and 10 test episodes, recorded with all its
    metric groups, curves and model; SMALL_RUNS are started at once (the caller's queue cap
    raised), and the clock stops when the registry says the last one is completed.
    """
    from gateway.app import start_gateway
    from gateway.settings import GatewaySettings

    gateway = InProcessService(
        loop,
        lambda: start_gateway(
            GatewaySettings(
                address="127.0.0.1:0",
                trainer_targets=(trainer_target,),
                registry_target=registry_target,
                auth_required=False,
            )
        ),
    )
    request = trainer_service_pb2.StartRunRequest(
        algorithm="q_learning",
        mode=trainer_service_pb2.TRAINING_MODE_USER,
        hyperparameters=trainer_service_pb2.Hyperparameters(
            alpha=0.5,
            gamma=0.95,
            epsilon=1.0,
            epsilon_min=0.05,
            epsilon_decay=0.99,
            training_episodes=300,
            max_steps=200,
        ),
        test_episodes=10,
    )
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            trainer_stub = trainer_service_pb2_grpc.TrainerServiceStub(channel)
            registry_stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
            wait_completed(registry_stub, trainer_stub.StartRun(request).run_id)  # warm-up
            started = time.perf_counter()
            run_ids = [trainer_stub.StartRun(request).run_id for _ in range(SMALL_RUNS)]
            for run_id in run_ids:
                wait_completed(registry_stub, run_id)
            elapsed = time.perf_counter() - started
        print(f"bench: runs_recorded_per_s = {SMALL_RUNS / elapsed:.1f} runs/s", flush=True)
        print(f"  ({SMALL_RUNS} small Q-learning runs through the gateway in {elapsed:.2f}s; MLflow 3: 55-60/s)")
    finally:
        gateway.stop()


if __name__ == "__main__":
    only = {"--presets-only", "--first-run-only", "--end-to-end-only"} & set(sys.argv)
    if not only or "--presets-only" in only:
        presets()
    if not only or "--first-run-only" in only:
        first_run()
    if not only or "--end-to-end-only" in only:
        end_to_end()
