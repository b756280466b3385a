"""Helpers for tests: real servers in a background event loop, real processes."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent

# The seed README's three "Requêtes SQL Avancées", verbatim: they must run on our schema.
SEED_STATS_BY_ALGORITHM = """
SELECT
    algorithm,
    COUNT(*) as total_runs,
    AVG((test_metrics->>'success_rate')::FLOAT) as avg_success,
    AVG((test_metrics->>'avg_steps')::FLOAT) as avg_steps
FROM training_runs
WHERE status = 'completed'
GROUP BY algorithm;
"""

SEED_TREND = """
SELECT
    DATE_TRUNC('day', created_at) as day,
    AVG((test_metrics->>'success_rate')::FLOAT) as avg_success
FROM training_runs
GROUP BY day
ORDER BY day;
"""

SEED_OPTIMAL_PARAMS = """
SELECT
    params->>'alpha' as alpha,
    params->>'gamma' as gamma,
    test_metrics->>'success_rate' as success_rate
FROM training_runs
WHERE (test_metrics->>'success_rate')::FLOAT > 0.9
ORDER BY (test_metrics->>'avg_steps')::FLOAT ASC;
"""


def stored_episode_indices(conn: Any, run_id: str) -> list[int]:
    """Every episode index stored for a run, in order (duplicates would show twice)."""
    rows = conn.execute(
        """
        SELECT e.first_episode + i - 1
        FROM run_episodes e, generate_subscripts(e.rewards, 1) AS i
        WHERE e.run_id = %s
        ORDER BY 1
        """,
        (run_id,),
    ).fetchall()
    return [row[0] for row in rows]


class LoopThread:
    """An asyncio loop in a daemon thread: in-process grpc.aio servers for sync tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any], timeout: float = 120) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class InProcessService:
    """Starts an app (start_registry / start_trainer / start_gateway) on a LoopThread."""

    def __init__(self, loop: LoopThread, start: Callable[[], Awaitable[Any]]) -> None:
        self.loop = loop
        self.app = loop.run(start())
        self.port: int = self.app.port
        self.target = f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 1.0) -> None:
        self.loop.run(self.app.stop(grace))


def wait_for_health(target: str, service: str = "", timeout: float = 60.0) -> None:
    """Block until `target` answers SERVING for `service`."""
    deadline = time.monotonic() + timeout
    last: object = None
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = reply.status
            except grpc.RpcError as exc:
                last = exc.code()
            time.sleep(0.1)
    raise TimeoutError(f"{target} not SERVING for {service!r} after {timeout}s (last: {last})")


def spawn(module: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m module` as a real process, logs to a file."""
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    log_file = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", module], cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
    )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout)
    return int(process.returncode)


def free_port() -> int:
    from taxidriver.embedded_pg import free_port as _free_port

    return _free_port()


def start_gateway_for(
    loop: LoopThread,
    *,
    registry: InProcessService,
    trainer: InProcessService,
    tuner: InProcessService | None = None,
    auth_required: bool = True,
    **settings: Any,
) -> InProcessService:
    """The real gateway in front of the session's services; keys required unless told otherwise.

    `settings` are further GatewaySettings fields (auth_cache_seconds, ...). Without a tuner, the
    gateway's tuner target is its default (nothing listens there in tests).
    """
    from gateway.app import start_gateway
    from gateway.settings import GatewaySettings

    if tuner is not None:
        settings["tuner_target"] = tuner.target
    gateway_settings = GatewaySettings(
        address="127.0.0.1:0",
        trainer_targets=(trainer.target,),
        registry_target=registry.target,
        auth_required=auth_required,
        **settings,
    )
    return InProcessService(loop, lambda: start_gateway(gateway_settings))


def start_tuner_for(loop: LoopThread, *, registry: InProcessService, trainer: InProcessService) -> InProcessService:
    """The real tuner in front of the session's registry and trainer."""
    from tuner_service.app import start_tuner
    from tuner_service.settings import TunerSettings

    settings = TunerSettings(
        address="127.0.0.1:0", registry_target=registry.target, trainer_targets=(trainer.target,), poll_interval=0.1
    )
    return InProcessService(loop, lambda: start_tuner(settings))


def role_keys(database_url: str, prefix: str) -> dict[str, str]:
    """A fresh API key for a user of each role, named `<prefix>-<role>`: {"reader": key, ...}."""
    import psycopg

    from registry_service import users

    with psycopg.connect(database_url, autocommit=True) as conn:
        return {role: users.ensure_user_with_key(conn, f"{prefix}-{role}", role) for role in users.ROLE_NAMES}


def dockerfile_stages(text: str) -> dict[str, str]:
    """Stage name -> its text (from its FROM line to the next)."""
    stages: dict[str, str] = {}
    for chunk in re.split(r"^(?=FROM )", text, flags=re.M)[1:]:
        header = chunk.splitlines()[0]
        name = header.split(" AS ", 1)[1].strip() if " AS " in header else f"stage{len(stages)}"
        stages[name] = chunk
    return stages
