"""Sweeps and suggestions: trials per second on 1 and 2 trainer processes, SuggestParams at 10k runs.

Real processes on loopback: an embedded PostgreSQL (or $DATABASE_URL's server, in a database of
its own), the registry, two trainers (TRAINER_WORKERS=1 each) and two tuners, one sending its
trials to the first trainer only, the other balancing over both. Each runs the same sweep of
small trials (Q-learning, a few hundred episodes, one seed each, 4 trials at once); a trial's
time includes everything a user waits for: StartRun, training, evaluation, plots, the registry's
writes and the tuner's polling. Then 10,000 completed runs are COPYed into the registry's
database and SuggestParams (TPE fitted on all of them) is timed.

Prints `bench: sweep_trials_per_s_1_trainer`, `..._2_trainers`, `sweep_trials_per_s_ratio`,
`suggest_p50_ms` (and p99). The machine's cores bound the ratio: two trainer processes on a
2-core machine shared with other work cannot double anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import grpc
import psycopg
from psycopg import conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quick import size  # noqa: E402
from registry_service.db import apply_migrations  # noqa: E402
from taxidriver.embedded_pg import EmbeddedPostgres, free_port  # noqa: E402
from taxidriver.tuner.v1 import tuner_service_pb2 as pb  # noqa: E402
from taxidriver.tuner.v1 import tuner_service_pb2_grpc  # noqa: E402
from tests.support import wait_for_health  # noqa: E402

TRIALS = size(24, 4)
EPISODES = size(300, 100)
STORED_RUNS = size(10_000, 200)
SUGGEST_CALLS = size(20, 3)


def spawn(module: str, env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def run_sweep(target: str, trials: int, label: str) -> float:
    """Trials per second of one sweep, from StartSweep to its end."""
    spec = pb.SweepSpec(
        algorithm="q_learning",
        search_space=[pb.ParameterRange(name="alpha", low=0.2, high=0.9)],
        n_trials=trials,
        parallelism=4,
        seeds_per_trial=1,
        test_episodes=5,
        sampler=pb.SAMPLER_RANDOM,
        base_seed=1,
        fixed_params={"training_episodes": float(EPISODES), "max_steps": 200.0},
    )
    with grpc.insecure_channel(target) as channel:
        stub = tuner_service_pb2_grpc.TunerServiceStub(channel)
        started = time.perf_counter()
        sweep = stub.StartSweep(pb.StartSweepRequest(spec=spec), timeout=60).sweep
        for _ in stub.WatchSweep(pb.WatchSweepRequest(sweep_id=sweep.sweep_id), timeout=1800):
            pass
        elapsed = time.perf_counter() - started
        done = stub.GetSweep(pb.GetSweepRequest(sweep_id=sweep.sweep_id), timeout=60).sweep
    if done.trials_complete != trials:
        raise RuntimeError(f"{label}: {done.trials_complete}/{trials} trials complete ({done.state})")
    print(f"  {label}: {trials} trials in {elapsed:.1f}s")
    return trials / elapsed


def seed_runs(url: str, count: int) -> None:
    """Completed Q-learning runs with the parameters and metrics a sweep would have stored."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    columns = (
        "run_id, algorithm, status, mode, env_id, params, test_metrics, system_metrics, "
        "created_at, updated_at, episodes_recorded, episodes_planned, stop_reason"
    )
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        with cursor.copy(f"COPY training_runs ({columns}) FROM STDIN") as copy:
            for index in range(count):
                alpha = 10 ** rng.uniform(-2, 0)
                gamma = rng.uniform(0.8, 1.0)
                decay = rng.uniform(0.9, 0.9999)
                episodes = int(10 ** rng.uniform(2, 3.7))
                value = max(0.0, min(1.0, 1 - abs(alpha - 0.5) - abs(gamma - 0.99) + rng.gauss(0, 0.05)))
                params = {
                    "alpha": alpha,
                    "gamma": gamma,
                    "epsilon": 1.0,
                    "epsilon_min": 0.01,
                    "epsilon_decay": decay,
                    "training_runs": episodes,
                    "max_steps": 200,
                    "test_episodes": 100,
                    "seed": index,
                }
                created = now - timedelta(seconds=index)
                copy.write_row(
                    (
                        uuid.uuid4(),
                        "q_learning",
                        "completed",
                        "optimized",
                        "Taxi-v3",
                        json.dumps(params),
                        json.dumps({"optimal_start_state_fraction": value, "success_rate": 1.0}),
                        json.dumps({"training_time_s": episodes / 5000}),
                        created,
                        created,
                        episodes,
                        episodes,
                        "episodes_done",
                    )
                )
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE training_runs")


def time_suggest(target: str, calls: int) -> tuple[float, float, int]:
    with grpc.insecure_channel(target) as channel:
        stub = tuner_service_pb2_grpc.TunerServiceStub(channel)
        request = pb.SuggestParamsRequest(algorithm="q_learning", env_id="Taxi-v3")
        reply = stub.SuggestParams(request, timeout=300)  # warm-up (and the figure's size)
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            stub.SuggestParams(request, timeout=300)
            samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))], reply.runs_used


def main() -> int:
    (ROOT / ".data").mkdir(exist_ok=True)
    temp = None
    server = None
    admin = None
    name = f"bench_tuner_{uuid.uuid4().hex[:8]}"
    if os.environ.get("DATABASE_URL"):
        admin = conninfo.make_conninfo(os.environ["DATABASE_URL"], dbname="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = conninfo.make_conninfo(os.environ["DATABASE_URL"], dbname=name)
    else:
        temp = Path(tempfile.mkdtemp(prefix="bench-tuner-", dir=ROOT / ".data"))
        server = EmbeddedPostgres(data_dir=temp / "pg", durable=False)
        url = server.start()
    logs = Path(tempfile.mkdtemp(prefix="bench-tuner-logs-", dir=ROOT / ".data"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(apply_migrations(url))
        registry = f"127.0.0.1:{free_port()}"
        processes.append(
            spawn(
                "registry_service",
                {"DATABASE_URL": url, "REGISTRY_ADDRESS": registry},
                (logs / "registry.log").open("wb"),
            )
        )
        wait_for_health(registry, "taxidriver.registry.v1.RegistryService", timeout=120)
        trainers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
        for index, address in enumerate(trainers):
            processes.append(
                spawn(
                    "trainer_service",
                    {
                        "TRAINER_ADDRESS": address,
                        "REGISTRY_TARGET": registry,
                        "TRAINER_WORKERS": "1",
                        "TRAINER_MAX_ACTIVE_RUNS_PER_CALLER": "100",
                    },
                    (logs / f"trainer{index}.log").open("wb"),
                )
            )
        for address in trainers:
            wait_for_health(address, "taxidriver.trainer.v1.TrainerService", timeout=300)
        tuners = {"1_trainer": (trainers[0],), "2_trainers": tuple(trainers)}
        targets = {}
        for label, trainer_targets in tuners.items():
            address = f"127.0.0.1:{free_port()}"
            processes.append(
                spawn(
                    "tuner_service",
                    {
                        "TUNER_ADDRESS": address,
                        "REGISTRY_TARGET": registry,
                        "TRAINER_TARGETS": ",".join(trainer_targets),
                        "TUNER_POLL_S": "0.1",
                    },
                    (logs / f"tuner-{label}.log").open("wb"),
                )
            )
            wait_for_health(address, "taxidriver.tuner.v1.TunerService", timeout=60)
            targets[label] = address
        # Warm-up: every worker has trained a run (imports, caches) before anything is timed.
        run_sweep(targets["2_trainers"], 4, "warm-up")
        rates = {label: run_sweep(address, TRIALS, label.replace("_", " ")) for label, address in targets.items()}
        print(f"bench: sweep_trials_per_s_1_trainer = {rates['1_trainer']:.2f} trials/s")
        print(f"bench: sweep_trials_per_s_2_trainers = {rates['2_trainers']:.2f} trials/s")
        print(f"bench: sweep_trials_per_s_ratio = {rates['2_trainers'] / rates['1_trainer']:.2f} x")
        print(f"  ({os.cpu_count()} cores on this machine; {EPISODES} episodes per trial, 1 seed, 4 trials at once)")

        started = time.perf_counter()
        seed_runs(url, STORED_RUNS)
        print(f"  seeded {STORED_RUNS} completed runs with COPY in {time.perf_counter() - started:.1f}s")
        p50, p99, used = time_suggest(targets["1_trainer"], SUGGEST_CALLS)
        print(f"bench: suggest_p50_ms = {p50:.0f} ms")
        print(f"bench: suggest_p99_ms = {p99:.0f} ms")
        print(f"  SuggestParams learned from {used} runs (TPE, 4 parameters); {SUGGEST_CALLS} calls")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        if server is not None:
            server.stop()
        if admin is not None:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
