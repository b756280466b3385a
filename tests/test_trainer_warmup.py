"""Kernels are compiled once, before the trainer says it is ready, never on a run's clock.

Real processes: a fresh interpreter per check (a test process has compiled everything
already), a real NUMBA_CACHE_DIR on disk, a real trainer whose health is asked over gRPC.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import ROOT, InProcessService, LoopThread, dockerfile_stages

TRAINER_SERVICE = "taxidriver.trainer.v1.TrainerService"

# Every jitted function of the trainer, with its compiled signatures and cache counters.
KERNELS_SCRIPT = """
import importlib, json, pkgutil, sys
import numba.core.registry
import trainer_service.algorithms as algorithms

def kernels():
    names = ["trainer_service.kernels", "trainer_service.evaluation"]
    names += [f"trainer_service.algorithms.{m.name}" for m in pkgutil.iter_modules(algorithms.__path__)]
    for name in names:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if isinstance(value, numba.core.registry.CPUDispatcher) and value.__module__ == name:
                yield f"{name}.{attr}", value

def snapshot():
    return {
        key: {
            "signatures": sorted(str(s) for s in kernel.signatures),
            "hits": sum(kernel.stats.cache_hits.values()),
            "misses": sum(kernel.stats.cache_misses.values()),
        }
        for key, kernel in kernels()
    }
"""


def run_python(code: str, env: dict[str, str]) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-c", KERNELS_SCRIPT + code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_a_run_after_warm_up_compiles_no_kernel(tmp_path: Path) -> None:
    result = run_python(
        """
from trainer_service.algorithms import ALGORITHMS
from trainer_service.params import PRESETS, RunSpec
from trainer_service.worker import Job, execute, warm_up

class Outbox(list):
    put = list.append

class Control:
    value = 0

warm_up()
before = snapshot()
for name in ALGORITHMS:
    spec = RunSpec(name, "optimized", "Taxi-v3", PRESETS[name].hyperparameters.__class__(
        **{**PRESETS[name].hyperparameters.__dict__, "training_episodes": 300}), 20, 1, 100, 0.0)
    outbox = Outbox()
    execute(Job(run_id="r", spec=spec), outbox, Control())
    kinds = [type(m).__name__ for m in outbox]
    assert "RunDone" in kinds, kinds
after = snapshot()
print(json.dumps({key: sorted(set(after[key]["signatures"]) - set(before[key]["signatures"])) for key in after}))
""",
        {"NUMBA_CACHE_DIR": str(tmp_path / "numba")},
    )
    assert result, "no kernel found"
    assert {key: new for key, new in result.items() if new} == {}


def test_a_second_process_loads_every_kernel_from_the_disk_cache(tmp_path: Path) -> None:
    code = """
from trainer_service.worker import warm_up
warm_up()
print(json.dumps(snapshot()))
"""
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    first = run_python(code, env)
    second = run_python(code, env)
    compiled = {key for key, stats in first.items() if stats["misses"]}  # type: ignore[index]
    # Python calls these; the others (next_u64's callers, greedy, ...) are compiled into them.
    entry_points = {
        f"trainer_service.algorithms.{name}.train_episodes"
        for name in ("brute_force", "q_learning", "sarsa", "expected_sarsa", "double_q_learning", "monte_carlo")
    } | {f"trainer_service.evaluation.{name}" for name in ("_value_iteration", "_rollouts", "_replay")}
    entry_points.add("trainer_service.evaluation._random_policy_expectations")
    assert entry_points <= compiled
    # The second process compiles nothing: every entry point comes from the cache directory.
    assert {key: stats["misses"] for key, stats in second.items() if stats["misses"]} == {}  # type: ignore[index]
    assert {key for key, stats in second.items() if stats["hits"]} >= entry_points  # type: ignore[index]


def health(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


def test_trainer_is_serving_only_once_every_worker_is_warm(registry: InProcessService) -> None:
    from trainer_service.app import start_trainer
    from trainer_service.settings import TrainerSettings

    loop = LoopThread()
    settings = TrainerSettings(address="127.0.0.1:0", registry_target=registry.target, workers=2)
    trainer = InProcessService(loop, lambda: start_trainer(settings))
    try:
        seen: list[tuple[int, int]] = []  # (health, warm workers) at each look
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = health(trainer.target, TRAINER_SERVICE)
            seen.append((status, trainer.app.runs.pool.ready_workers))
            if status == health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.05)
        assert seen[-1][0] == health_pb2.HealthCheckResponse.SERVING, seen[-5:]
        # SERVING means every worker process has its kernels loaded and can start a run now.
        assert all(ready == 2 for status, ready in seen if status == health_pb2.HealthCheckResponse.SERVING)
        assert health(trainer.target, "") == health_pb2.HealthCheckResponse.SERVING
        # The process answered before it was ready (liveness is separate from readiness).
        assert health(trainer.target, "liveness") == health_pb2.HealthCheckResponse.SERVING
    finally:
        trainer.stop()
        loop.close()


def test_containers_give_the_kernel_cache_a_writable_directory() -> None:
    """Read-only root filesystems everywhere: NUMBA_CACHE_DIR must sit on the writable /tmp mount,
    or every worker compiles every kernel at every start (kernels.jit falls back to no cache)."""
    # The trainer image is the `trainer` target of the shared Dockerfile.
    stages = dockerfile_stages((ROOT / "deploy" / "python" / "Dockerfile").read_text())
    cache_dir = re.search(r"NUMBA_CACHE_DIR=(\S+)", stages["trainer"])
    assert cache_dir is not None and cache_dir.group(1).startswith("/tmp/")
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    trainer = compose["services"]["trainer"]
    assert trainer["read_only"] is True and "/tmp" in trainer["tmpfs"]
    manifest = next(
        doc
        for doc in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "base" / "trainer.yaml").read_text())
        if doc["kind"] == "Deployment"
    )
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # The startup probe waits for "" (NOT_SERVING while warming) long enough for a cold compile.
    probe = container["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 120


def test_workers_warming_up_together_compile_each_kernel_once(tmp_path: Path) -> None:
    """A trainer's workers start at the same moment: one compiles, the others load its cache."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    code = KERNELS_SCRIPT + "\nfrom trainer_service.worker import warm_up\nwarm_up()\nprint(json.dumps(snapshot()))\n"
    processes = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    first, second = (json.loads(output.strip().splitlines()[-1]) for output in outputs)
    kernel = "trainer_service.algorithms.q_learning.train_episodes"
    assert first[kernel]["misses"] + second[kernel]["misses"] == 1
    compiled_twice = [key for key in first if first[key]["misses"] and second[key]["misses"]]
    assert compiled_twice == []
