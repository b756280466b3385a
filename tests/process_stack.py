"""The stack as `make run` starts it, as separate processes, and the tools people drive it with.

Shared by tests/test_real_use.py and bench/bench_soak.py: the registry, trainer and
gateway as `python -m <service>` processes on free loopback ports with the environment
`taxidriver/devstack.py` gives them; an operator's API key from
`python -m registry_service.users`; the `taxi-driver` CLI and grpcurl as subprocesses;
and one audit of the database that says, run by run, what real use must never leave
behind (missing episodes or artifacts, episodes stored twice, runs left non-terminal).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import conninfo

from taxidriver.registry.v1 import registry_service_pb2 as registry_pb2
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_pb2_grpc
from taxidriver.registry.v1 import resources_pb2
from taxidriver.vocabulary import STOPPED_WORDS
from tests.support import ROOT, free_port, spawn, stored_episode_indices

BIN = Path(sys.executable).parent
TAXI_DRIVER = BIN / "taxi-driver"
GRPCURL = BIN / "grpcurl"
REGISTRY = "taxidriver.registry.v1.RegistryService"
TRAINER = "taxidriver.trainer.v1.TrainerService"
ALGORITHMS = ("brute_force", "q_learning", "sarsa", "expected_sarsa", "double_q_learning", "monte_carlo")
# Statuses no trainer works on (terminal, or interrupted): a waiting test stops there.
TERMINAL = STOPPED_WORDS
# The registry renders these on the first ListArtifacts of a completed run with episodes.
PLOT_NAMES = frozenset({"rewards.png", "steps.png", "epsilon.png", "td_error.png", "test_vs_brute_force.png"})
# Signals a process dies of when it crashes rather than being stopped by us.
CRASH_SIGNALS = {-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS, -signal.SIGILL, -signal.SIGFPE}


@dataclass
class Service:
    """One `python -m module` process on a fixed port, restartable on that port.

    `expected_exit` is set by whoever stops the process on purpose; any other exit
    is a crash, and `crashes` keeps each one (PID, exit code) for the report.
    """

    module: str
    port: int
    env: dict[str, str]
    log_path: Path
    health_service: str
    name: str = ""
    process: subprocess.Popen[bytes] | None = None
    expected_exit: bool = False
    paused: bool = False
    crashes: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.name = self.name or self.module

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 90.0) -> None:
        self.expected_exit = False
        self.process = spawn(self.module, self.env, self.log_path)
        wait_serving(self, timeout=timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_crash(self) -> bool:
        """True (once) if the process ended without us stopping it; recorded in `crashes`."""
        if self.process is None or self.expected_exit or self.process.poll() is None:
            return False
        self.crashes.append((self.process.pid, int(self.process.returncode)))
        self.expected_exit = True  # counted; a restart clears it
        return True

    def kill(self) -> None:
        """SIGKILL the service and every process it spawned (a crashed pod loses its workers too)."""
        assert self.process is not None
        self.expected_exit = True
        if self.paused:
            self.resume()
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(self.process.pid)
            children = parent.children(recursive=True)
            parent.kill()
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            psutil.wait_procs(children, timeout=10)
        self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets and its beliefs, and answers nothing."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the orderly stop `make run` does on Ctrl-C), SIGKILL if it hangs."""
        if self.process is None:
            return None
        self.expected_exit = True
        if self.paused:
            self.resume()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def log_lines(self, needle: str, limit: int = 10) -> list[str]:
        """The first lines of the log that mention `needle` (a run id), prefixed with the module."""
        if not self.log_path.exists():
            return []
        found = [line for line in self.log_path.read_text(errors="replace").splitlines() if needle in line]
        return [f"{self.name}: {line[:600]}" for line in found[:limit]]


def health(target: str, service: str = "", timeout: float = 2.0) -> str:
    """The health status name of `service` at `target`, or the gRPC code that stopped the check."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            return str(error.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def wait_serving(service: Service, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if service.process is not None and service.process.poll() is not None:
            raise RuntimeError(
                f"{service.name} exited with code {service.process.returncode} during start-up:\n{service.log_tail()}"
            )
        last = health(service.target, service.health_service, timeout=1.0)
        if last == "SERVING":
            return
        time.sleep(0.1)
    raise TimeoutError(f"{service.name} at {service.target}: {last} after {timeout}s\n{service.log_tail()}")


@dataclass
class Stack:
    """registry, trainer(s) and gateway with `make run`'s environment (taxidriver/devstack.py)."""

    registry: Service
    trainers: list[Service]
    gateway: Service
    database_url: str

    @property
    def trainer(self) -> Service:
        return self.trainers[0]

    @property
    def services(self) -> list[Service]:
        return [self.registry, *self.trainers, self.gateway]

    def start(self) -> None:
        for service in self.services:
            service.start()
        # The gateway reports each upstream SERVING once it reaches it.
        for name in (REGISTRY, TRAINER):
            wait_health(self.gateway.target, name)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()

    def pids(self) -> dict[str, int]:
        return {service.name: service.pid for service in self.services}

    def health_report(self) -> dict[str, str]:
        """Every service's own health, and the gateway's view of both upstreams."""
        report = {service.name: health(service.target, service.health_service) for service in self.services}
        for name in (REGISTRY, TRAINER):
            report[f"gateway:{name}"] = health(self.gateway.target, name)
        return report


def wait_health(target: str, service: str = "", timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        last = health(target, service, timeout=1.0)
        if last == "SERVING":
            return
        time.sleep(0.1)
    raise TimeoutError(f"{target}: {service or 'server'} {last} after {timeout}s")


def make_stack(
    database_url: str, logs: Path, extra_env: dict[str, dict[str, str]] | None = None, trainers: int = 1
) -> Stack:
    """The services on free ports, each with the environment `make run` gives it.

    `extra_env` adds settings per module (e.g. shorter intervals) on top of `make run`'s;
    `trainers` > 1 puts several trainer replicas behind the gateway (TRAINER_TARGETS).
    """
    extra_env = extra_env or {}
    logs.mkdir(parents=True, exist_ok=True)
    registry_port, gateway_port = free_port(), free_port()
    trainer_ports = [free_port() for _ in range(trainers)]
    registry_target = f"127.0.0.1:{registry_port}"

    def service(module: str, name: str, port: int, env: dict[str, str], health_service: str) -> Service:
        # PYTHONFAULTHANDLER changes nothing but what a crash leaves in the log: the
        # Python stack of every thread when the process dies of SIGSEGV/SIGABRT.
        full_env = {**env, "PYTHONFAULTHANDLER": "1", **extra_env.get(module, {})}
        return Service(module, port, full_env, logs / f"{name}.log", health_service, name=name)

    registry = service(
        "registry_service",
        "registry_service",
        registry_port,
        {"DATABASE_URL": database_url, "REGISTRY_ADDRESS": registry_target},
        REGISTRY,
    )
    trainer_services = [
        service(
            "trainer_service",
            "trainer_service" if index == 0 else f"trainer_service-{index + 1}",
            port,
            {"TRAINER_ADDRESS": f"127.0.0.1:{port}", "REGISTRY_TARGET": registry_target},
            TRAINER,
        )
        for index, port in enumerate(trainer_ports)
    ]
    gateway = service(
        "gateway",
        "gateway",
        gateway_port,
        {
            "GATEWAY_ADDRESS": f"127.0.0.1:{gateway_port}",
            "TRAINER_TARGETS": ",".join(t.target for t in trainer_services),
            "REGISTRY_TARGET": registry_target,
        },
        "",
    )
    return Stack(registry, trainer_services, gateway, database_url)


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """A database of its own on `server_url`'s server, dropped afterwards.

    A registry sweeps expired leases in its whole database: the stack under test must
    not share one with another registry (the session's in-process one, say).
    """
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = conninfo.make_conninfo(server_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield conninfo.make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def scratch_postgres(prefix: str) -> Iterator[str]:
    """A database for a run outside pytest (bench/): on $DATABASE_URL's server if set, else
    on an embedded PostgreSQL in a temporary folder under .data/ (removed afterwards)."""
    if os.environ.get("DATABASE_URL"):
        with scratch_database(os.environ["DATABASE_URL"], prefix) as url:
            yield url
        return
    from taxidriver.embedded_pg import EmbeddedPostgres

    (ROOT / ".data").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}-pg-", dir=ROOT / ".data"))
    server = EmbeddedPostgres(data_dir=folder, durable=False)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def create_user_key(database_url: str, username: str, role: str) -> str:
    """`python -m registry_service.users create <user> --role <role>`: what an operator runs."""
    result = subprocess.run(
        [sys.executable, "-m", "registry_service.users", "create", username, "--role", role],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"users create failed ({result.returncode}): {result.stderr}")
    match = re.search(r"^(tdk_\S+)$", result.stdout, re.MULTILINE)
    if not match:
        raise RuntimeError(f"no key printed: {result.stdout!r}")
    return match.group(1)


# The CLI and grpcurl, as people run them -------------------------------------------------


@dataclass
class Finished:
    """A finished command: argv, exit code and both outputs."""

    argv: list[str]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def __str__(self) -> str:
        return f"{' '.join(self.argv)} -> exit {self.code}\nstdout: {self.out[-1500:]}\nstderr: {self.err[-1500:]}"


class Tools:
    """The `taxi-driver` CLI and grpcurl against one gateway with one API key."""

    def __init__(self, gateway: str, api_key: str) -> None:
        self.gateway = gateway
        self.api_key = api_key
        # What a person exports in their shell (README): the CLI reads them.
        self.env = {**os.environ, "TAXI_DRIVER_GATEWAY": gateway, "TAXI_DRIVER_API_KEY": api_key}

    def cli_argv(self, *args: str) -> list[str]:
        return [str(TAXI_DRIVER), *args]

    def grpcurl_argv(self, method: str, body: dict[str, Any] | None = None, *options: str) -> list[str]:
        argv = [str(GRPCURL), "-plaintext", "-H", f"authorization: Bearer {self.api_key}", *options]
        if body is not None:
            argv += ["-d", json.dumps(body)]
        return [*argv, self.gateway, method]

    def run(self, argv: Sequence[str], timeout: float = 120.0) -> Finished:
        result = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        return Finished(list(argv), result.returncode, result.stdout, result.stderr)

    def cli(self, *args: str, timeout: float = 120.0) -> Finished:
        return self.run(self.cli_argv(*args), timeout=timeout)

    def grpcurl(self, method: str, body: dict[str, Any] | None = None, *options: str, timeout: float = 60) -> Finished:
        return self.run(self.grpcurl_argv(method, body, *options), timeout=timeout)

    def background(self, argv: Sequence[str], stdin: bool = False) -> Background:
        """A long-running command (a watcher, a training followed live), read as it writes."""
        return Background(list(argv), self.env, stdin=stdin)


class Background:
    """A command running on its own; its output is collected as it comes (progress lines end in
    \r, not \n, so nothing here reads by lines)."""

    def __init__(self, argv: list[str], env: dict[str, str], stdin: bool = False) -> None:
        self.argv = argv
        self.process = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._out = bytearray()
        self._err = bytearray()
        self._readers = [
            threading.Thread(target=self._drain, args=(self.process.stdout, self._out), daemon=True),
            threading.Thread(target=self._drain, args=(self.process.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _drain(pipe: Any, into: bytearray) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := os.read(pipe.fileno(), 65536):
                into.extend(chunk)

    @property
    def out(self) -> str:
        return self._out.decode(errors="replace")

    @property
    def err(self) -> str:
        return self._err.decode(errors="replace")

    def wait_output(self, pattern: str, timeout: float = 60.0, stream: str = "out") -> re.Match[str]:
        """The first match of `pattern` in stdout (or stderr); fails if the command ends first."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.out if stream == "out" else self.err
            if match := re.search(pattern, text):
                return match
            if self.process.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)  # the readers catch up with the last bytes
                text = self.out if stream == "out" else self.err
                if match := re.search(pattern, text):
                    return match
                raise AssertionError(f"{pattern!r} never appeared on std{stream}:\n{self.finished(timeout=5)}")
            time.sleep(0.05)

    def write(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())
        self.process.stdin.flush()

    def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def finished(self, timeout: float = 60.0) -> Finished:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        for reader in self._readers:
            reader.join(5)
        return Finished(self.argv, code, self.out, self.err)


# Small runs learn (epsilon decays fast); "random" runs never stop exploring, so every
# episode walks up to max_steps: the way to make a run last without many episodes.
LEARNING = {"alpha": 0.5, "gamma": 0.95, "epsilon": 1.0, "epsilon_min": 0.05, "epsilon_decay": 0.99}
RANDOM_WALK = {"alpha": 0.5, "gamma": 0.95, "epsilon": 1.0, "epsilon_min": 1.0, "epsilon_decay": 1.0}


def train_args(episodes: int, *, test_episodes: int = 20, max_steps: int = 200, walk: bool = False) -> list[str]:
    """`taxi-driver train` flags for a user-mode run (every hyper-parameter given)."""
    args = ["--mode", "user"]
    for name, value in (RANDOM_WALK if walk else LEARNING).items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return [*args, "--episodes", str(episodes), "--max-steps", str(max_steps), "--test-episodes", str(test_episodes)]


def start_body(
    algorithm: str, episodes: int, seed: int, *, test_episodes: int = 20, max_steps: int = 200, walk: bool = False
) -> dict[str, Any]:
    """A StartRun request body for grpcurl: the same run as `train_args`."""
    return {
        "algorithm": algorithm,
        "mode": "TRAINING_MODE_USER",
        "hyperparameters": {
            **(RANDOM_WALK if walk else LEARNING),
            "training_episodes": episodes,
            "max_steps": max_steps,
        },
        "seed": seed,
        "test_episodes": test_episodes,
    }


# What real use must never leave behind ---------------------------------------------------


@dataclass
class RunAudit:
    """One run as stored, and every way it falls short of what was acknowledged."""

    run_id: str
    algorithm: str
    status: str
    planned: int
    recorded: int
    stored: list[int]
    models: int
    plots: set[str]
    trainer_ids: set[str] = field(default_factory=set)
    # Whether the plots were asked for (through the registry, which renders them on first read).
    plots_read: bool = False

    @property
    def duplicate_episodes(self) -> int:
        return len(self.stored) - len(set(self.stored))

    @property
    def lost_episodes(self) -> int:
        """Episodes acknowledged (episodes_recorded) but not stored, or a completed run short of its plan."""
        expected = self.planned if self.status == "completed" else self.recorded
        return len(set(range(expected)) - set(self.stored))

    @property
    def missing_artifacts(self) -> list[str]:
        if self.status != "completed":
            return []
        missing = [] if self.models == 1 else [f"{self.models} models"]
        # Not stored at completion: the registry renders them on first read (plot_rendering.py).
        if self.plots_read and self.recorded:
            missing += sorted(PLOT_NAMES - self.plots)
        return missing

    def problems(self) -> list[str]:
        found = []
        if self.status not in TERMINAL:
            found.append(f"left {self.status}")
        if self.status == "completed" and self.recorded != self.planned:
            found.append(f"completed with {self.recorded}/{self.planned} episodes")
        if self.lost_episodes:
            found.append(f"{self.lost_episodes} episodes missing")
        if self.duplicate_episodes:
            found.append(f"{self.duplicate_episodes} episodes stored twice")
        if self.stored and max(self.stored) >= max(self.planned, 1):
            found.append(f"episode {max(self.stored)} stored beyond the plan of {self.planned}")
        if self.missing_artifacts:
            found.append(f"missing artifacts: {', '.join(self.missing_artifacts)}")
        return found

    def __str__(self) -> str:
        return f"{self.run_id} {self.algorithm} {self.status} {self.recorded}/{self.planned}: {self.problems()}"


def audit_run(conn: psycopg.Connection[Any], run_id: str, registry_target: str | None = None) -> RunAudit | None:
    """The run as stored; with `registry_target`, a completed run's plots are first read through
    the registry (which renders them then) and required."""
    row = conn.execute(
        "SELECT algorithm, status, episodes_planned, episodes_recorded FROM training_runs WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    plots_read = registry_target is not None and row[1] == "completed"
    if plots_read and row[3]:
        with grpc.insecure_channel(str(registry_target)) as channel, contextlib.suppress(grpc.RpcError):
            request = registry_pb2.ListArtifactsRequest(run_id=run_id, kind=resources_pb2.ARTIFACT_KIND_PLOT)
            registry_pb2_grpc.RegistryServiceStub(channel).ListArtifacts(request, timeout=60)
    models = conn.execute("SELECT count(*) FROM saved_models WHERE run_id = %s", (run_id,)).fetchone()
    plots = conn.execute("SELECT name FROM artifacts WHERE run_id = %s AND kind = 'plot'", (run_id,)).fetchall()
    return RunAudit(
        run_id=run_id,
        algorithm=str(row[0]),
        status=str(row[1]),
        planned=int(row[2]),
        recorded=int(row[3]),
        stored=stored_episode_indices(conn, run_id),
        models=int(models[0]) if models else 0,
        plots={str(name) for (name,) in plots},
        plots_read=plots_read,
    )


def audit_all(conn: psycopg.Connection[Any], registry_target: str | None = None) -> list[RunAudit]:
    ids = [str(run_id) for (run_id,) in conn.execute("SELECT run_id FROM training_runs ORDER BY created_at")]
    return [audit for run_id in ids if (audit := audit_run(conn, run_id, registry_target)) is not None]


def rows_left_by(conn: psycopg.Connection[Any], run_id: str) -> dict[str, int]:
    """Rows anywhere that still reference a run (all zero once it is deleted for good)."""
    counts = {}
    for table in ("training_runs", "run_episodes", "artifacts", "saved_models", "run_annotations"):
        found = conn.execute(f"SELECT count(*) FROM {table} WHERE run_id = %s", (run_id,)).fetchone()
        counts[table] = int(found[0]) if found else 0
    return counts


def wait_until(condition: Any, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Polls `condition()` until it returns something truthy; raises TimeoutError with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout}s")
        time.sleep(interval)
