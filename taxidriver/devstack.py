"""`make run`: the whole system on this machine, then a first training.

Starts PostgreSQL (embedded, data in .data/postgres) unless DATABASE_URL is
set, then the registry, trainer and gateway as separate processes, then trains
SARSA in `optimized` mode with 250 test episodes through the gateway (the
seed's example), prints the run and how to call the system with grpcurl, and
keeps everything up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from taxidriver.embedded_pg import EmbeddedPostgres
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {
    resources_pb2.RUN_STATUS_COMPLETED,
    resources_pb2.RUN_STATUS_FAILED,
    resources_pb2.RUN_STATUS_CANCELLED,
    resources_pb2.RUN_STATUS_INTERRUPTED,
}


def say(message: str) -> None:
    print(f"[make run] {message}", flush=True)


def wait_serving(target: str, name: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
                raise SystemExit(f"{name} exited with code {process.returncode} during start-up; log tail:\n{tail}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"{name} at {target} was not SERVING after {timeout:.0f}s (log: {log_path})")


def start_service(module: str, env: dict[str, str], log_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = log_dir / f"{module}.log"
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches us; we stop the services in order
    )
    return process, log_path


def dev_api_key(database_url: str) -> str:
    """A fresh admin key for the `dev` user (the registry has migrated the schema by now)."""
    import psycopg

    from registry_service.users import ensure_user_with_key

    with psycopg.connect(database_url, autocommit=True) as conn:
        return ensure_user_with_key(conn, "dev", "admin")


def first_training(gateway: str, test_episodes: int, api_key: str) -> resources_pb2.Run:
    """SARSA, optimized mode, 250 test episodes: the seed's `POST /sarsa` example."""
    auth = (("authorization", f"Bearer {api_key}"),)
    with grpc.insecure_channel(gateway) as channel:
        trainer = trainer_service_pb2_grpc.TrainerServiceStub(channel)
        registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
        started = trainer.StartRun(
            trainer_service_pb2.StartRunRequest(
                request_id=str(uuid.uuid4()),
                algorithm="sarsa",
                mode=trainer_service_pb2.TRAINING_MODE_OPTIMIZED,
                test_episodes=test_episodes,
            ),
            timeout=30,
            metadata=auth,
        )
        say(f"started run {started.run_id} (sarsa, optimized, {test_episodes} test episodes)")
        deadline = time.monotonic() + 600
        last_print = 0.0
        while time.monotonic() < deadline:
            run = registry.GetRun(
                registry_service_pb2.GetRunRequest(run_id=started.run_id), timeout=10, metadata=auth
            ).run
            if run.status in TERMINAL:
                return run
            if time.monotonic() - last_print > 1.0:
                last_print = time.monotonic()
                planned = run.episodes_planned or 1
                say(
                    f"  {resources_pb2.RunStatus.Name(run.status).removeprefix('RUN_STATUS_').lower()}: "
                    f"{run.episodes_recorded}/{run.episodes_planned} episodes stored "
                    f"({100 * run.episodes_recorded / planned:.0f}%)"
                )
            time.sleep(0.2)
        raise SystemExit(f"run {started.run_id} did not finish within 10 minutes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="stop everything after the first training")
    parser.add_argument("--gateway-port", type=int, default=int(os.environ.get("GATEWAY_PORT", "50051")))
    parser.add_argument("--trainer-port", type=int, default=int(os.environ.get("TRAINER_PORT", "50052")))
    parser.add_argument("--registry-port", type=int, default=int(os.environ.get("REGISTRY_PORT", "50053")))
    parser.add_argument("--test-episodes", type=int, default=250)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".data")
    args = parser.parse_args(argv)

    data_dir: Path = args.data_dir.resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    postgres: EmbeddedPostgres | None = None
    database_url = os.environ.get("DATABASE_URL", "")
    if database_url:
        say("using DATABASE_URL")
    else:
        say(f"starting embedded PostgreSQL (data in {data_dir / 'postgres'})")
        postgres = EmbeddedPostgres(data_dir=data_dir / "postgres")
        database_url = postgres.start()
        say(f"PostgreSQL ready: {database_url}")

    registry_target = f"127.0.0.1:{args.registry_port}"
    trainer_target = f"127.0.0.1:{args.trainer_port}"
    gateway_target = f"127.0.0.1:{args.gateway_port}"
    services: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for module, env, target in [
            ("registry_service", {"DATABASE_URL": database_url, "REGISTRY_ADDRESS": registry_target}, registry_target),
            (
                "trainer_service",
                {"TRAINER_ADDRESS": trainer_target, "REGISTRY_TARGET": registry_target},
                trainer_target,
            ),
            (
                "gateway",
                {
                    "GATEWAY_ADDRESS": gateway_target,
                    "TRAINER_TARGETS": trainer_target,
                    "REGISTRY_TARGET": registry_target,
                },
                gateway_target,
            ),
        ]:
            process, log_path = start_service(module, env, log_dir)
            services.append((module, process))
            wait_serving(target, module, process, log_path, timeout=120)
            say(f"{module} SERVING on {target} (log: {log_path})")

        api_key = dev_api_key(database_url)
        say("API key of the 'dev' user (admin role), printed once; the gateway requires one on every call:")
        say(f"  {api_key}")
        run = first_training(gateway_target, args.test_episodes, api_key)
        status = resources_pb2.RunStatus.Name(run.status).removeprefix("RUN_STATUS_").lower()
        say(f"run {run.run_id} {status} in {run.execution_time:.2f}s")
        if run.status != resources_pb2.RUN_STATUS_COMPLETED:
            say(f"error: {run.error_message or run.stop_reason}")
            return 1
        metrics = json_format.MessageToDict(run.test_metrics)
        say("test metrics (greedy policy on the real Gymnasium environment):")
        for key in ("success_rate", "avg_steps", "avg_reward"):
            say(f"  {key} = {metrics.get(key)}")
        for key, value in sorted(metrics.items()):
            if key not in ("success_rate", "avg_steps", "avg_reward"):
                say(f"  {key} = {value}")
        say(f"gateway: {gateway_target}")
        say("try:")
        say(f"  export TAXI_DRIVER_API_KEY={api_key}")
        say(f"  .venv/bin/grpcurl -plaintext {gateway_target} list")
        say(
            f'  .venv/bin/grpcurl -plaintext -H "authorization: Bearer $TAXI_DRIVER_API_KEY" '
            f'-d \'{{"run_id": "{run.run_id}"}}\' {gateway_target} taxidriver.registry.v1.RegistryService/GetRun'
        )
        say(
            f'  .venv/bin/grpcurl -plaintext -H "authorization: Bearer $TAXI_DRIVER_API_KEY" '
            f'-d \'{{"algorithm": "q_learning", "mode": "TRAINING_MODE_OPTIMIZED", "test_episodes": 250}}\' '
            f"{gateway_target} taxidriver.trainer.v1.TrainerService/StartRun"
        )
        say(f"  .venv/bin/taxi-driver --gateway {gateway_target} runs list")
        if args.once:
            return 0
        say("the stack is up; Ctrl-C stops it")
        stop = False

        def on_signal(signum: int, frame: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop:
            for name, process in services:
                if process.poll() is not None:
                    say(f"{name} exited with code {process.returncode}; stopping")
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        for name, process in reversed(services):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    code = process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    code = process.wait(10)
                say(f"{name} stopped (exit code {code})")
        if postgres is not None:
            postgres.stop()
            say("embedded PostgreSQL stopped (data kept in .data/postgres)")


if __name__ == "__main__":
    sys.exit(main())
