"""`make run`: the whole system on this machine, then a first training.

Starts PostgreSQL (embedded, data in .data/postgres) unless DATABASE_URL is
set, then the registry, trainer, tuner, gateway and web (the HTTP face, http://127.0.0.1:8000)
as separate processes, then trains
SARSA in `optimized` mode with 250 test episodes through the gateway (the
seed's example), prints a short summary of the run and how to call the system,
and keeps everything up until Ctrl-C or SIGTERM, restarting a service that
dies (a bounded number of times).

The stack keeps its state in the data folder (.data): the `dev` user's API key
(`dev-api-key`, mode 0600, reused across starts) and the id of the first
training (`first-run`, trained once; `--retrain` trains again).

This module knows no service's code: services are started as processes by
module name, and the dev key is obtained the way an operator gets one, by
running the registry's `users` command (issue 12: the plumbing package must not
import a service).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from taxidriver.config import SettingsError
from taxidriver.embedded_pg import EmbeddedPostgres
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.settings import (
    DATABASE_URL,
    GATEWAY_PORT,
    REGISTRY_PORT,
    TAXI_DRIVER_DATA_DIR,
    TRAINER_PORT,
    TUNER_PORT,
    WEB_PORT,
)
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from taxidriver.vocabulary import STOPPED_STATUSES, status_word

ROOT = Path(__file__).resolve().parent.parent
# Stopped: terminal or INTERRUPTED (taxidriver.vocabulary, from RunStatus).
TERMINAL = STOPPED_STATUSES
# A supervisor's bound: a service that dies this many times within the window is
# not restarted again (something is wrong that a restart will not fix).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0
STOP_TIMEOUT_S = 30.0
KEY_FILE = "dev-api-key"
FIRST_RUN_FILE = "first-run"


def say(message: str) -> None:
    print(f"[make run] {message}", flush=True)


def shout(message: str) -> None:
    """A loud line on stderr too: a death or a give-up must not scroll by unseen."""
    print(f"[make run] !!! {message}", flush=True)
    if not _same_file(sys.stdout, sys.stderr):
        print(f"[make run] !!! {message}", file=sys.stderr, flush=True)


def _same_file(one: Any, other: Any) -> bool:
    try:
        a, b = os.fstat(one.fileno()), os.fstat(other.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class Stop(Exception):
    """SIGINT/SIGTERM arrived: stop everything that was started, then exit."""


class StackFailed(Exception):
    """A service could not be (re)started; the message says which and why."""


@dataclass
class Service:
    """One service process, started in its own session so that its worker processes
    share its process group (stopped with it) and a terminal's Ctrl-C reaches only us."""

    module: str
    env: dict[str, str]
    target: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    deaths: collections.deque[float] = field(default_factory=collections.deque)

    def start(self) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=ROOT,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def exited(self) -> int | None:
        """The exit code once the process has ended, else None. A dead service is left a
        zombie (not reaped) until `reap`: its pid, which is also the process group of its
        workers, cannot be taken by another process before the group has been killed."""
        if self.process is None:
            return None
        if self.process.returncode is not None:
            return self.process.returncode
        try:
            info = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self.process.poll()
        if info is None:
            return None
        killed = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
        return -info.si_status if killed else info.si_status

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def _wait_exited(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while (code := self.exited()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return code

    def stop(self) -> int | None:
        """SIGTERM (the service drains), SIGKILL after a bound; then whatever is left
        of its process group (trainer workers of a killed trainer) is killed too."""
        if self.process is None:
            return None
        if self.exited() is None:
            self.process.send_signal(signal.SIGTERM)
            if self._wait_exited(STOP_TIMEOUT_S) is None:
                self.process.kill()
                self._wait_exited(10)
        return self.reap()

    def reap(self) -> int | None:
        """Kills what is left of the dead service's process group, then reaps the service."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return self.process.wait(10)


def _ready(target: str, stub: health_pb2_grpc.HealthStub | None) -> bool:
    """gRPC services: health SERVING; the web service (an http:// target): /readyz answers 200."""
    if stub is None:
        try:
            with urllib.request.urlopen(f"{target}/readyz", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def wait_serving(service: Service, timeout: float, check_stop: Callable[[], None]) -> None:
    started = time.monotonic()
    deadline = started + timeout
    next_note = started + 5
    http = service.target.startswith("http://")
    with grpc.insecure_channel("127.0.0.1:1" if http else service.target) as channel:
        stub = None if http else health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            check_stop()
            if time.monotonic() >= next_note:  # a slow start says what it waits for
                waited = time.monotonic() - started
                say(f"  waiting for {service.module} to be SERVING ({waited:.0f}s; log: {service.log_path})")
                next_note += 5
            code = service.exited()
            if code is not None:
                raise StackFailed(
                    f"{service.module} exited with code {code} during start-up; log tail:\n{service.log_tail(3000)}"
                )
            if _ready(service.target, stub):
                return
            time.sleep(0.2)
    raise StackFailed(
        f"{service.module} at {service.target} was not SERVING after {timeout:.0f}s (log: {service.log_path})"
    )


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class Stack:
    """PostgreSQL (when embedded) and the three services, supervised."""

    def __init__(self, data_dir: Path, ports: dict[str, int]) -> None:
        self.data_dir = data_dir
        self.log_dir = data_dir / "logs"
        self.ports = ports
        self.postgres: EmbeddedPostgres | None = None
        self.services: list[Service] = []
        self.stopping = False
        self.stop_signal = ""

    # Signals ------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Installed first thing: a signal at any moment stops what was started so far."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_signal = signal.Signals(signum).name

    def check_stop(self) -> None:
        if self.stopping:
            raise Stop(self.stop_signal)

    def sleep(self, seconds: float) -> None:
        """Sleeps in short steps so that a signal is acted on at once."""
        deadline = time.monotonic() + seconds
        while True:
            self.check_stop()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    # Start --------------------------------------------------------------------------------

    def start_postgres(self) -> str:
        self.postgres = EmbeddedPostgres(data_dir=self.data_dir / "postgres")
        url = self.postgres.start()
        return url

    def start_services(self, database_url: str) -> None:
        busy = [f"{name} port {port}" for name, port in self.ports.items() if port_in_use(port)]
        if busy:
            raise StackFailed(
                f"{', '.join(busy)} already in use on 127.0.0.1 (another `make run` still up?);"
                " stop it, or choose ports with GATEWAY_PORT / TRAINER_PORT / REGISTRY_PORT / TUNER_PORT / WEB_PORT"
            )
        registry = f"127.0.0.1:{self.ports['registry']}"
        trainer = f"127.0.0.1:{self.ports['trainer']}"
        tuner = f"127.0.0.1:{self.ports['tuner']}"
        gateway = f"127.0.0.1:{self.ports['gateway']}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        specs = [
            ("registry_service", {"DATABASE_URL": database_url, "REGISTRY_ADDRESS": registry}, registry),
            ("trainer_service", {"TRAINER_ADDRESS": trainer, "REGISTRY_TARGET": registry}, trainer),
            (
                "tuner_service",
                {"TUNER_ADDRESS": tuner, "TRAINER_TARGETS": trainer, "REGISTRY_TARGET": registry},
                tuner,
            ),
            (
                "gateway",
                {
                    "GATEWAY_ADDRESS": gateway,
                    "TRAINER_TARGETS": trainer,
                    "REGISTRY_TARGET": registry,
                    "TUNER_TARGET": tuner,
                },
                gateway,
            ),
            (
                "web",
                {"WEB_HOST": "127.0.0.1", "WEB_PORT": str(self.ports["web"]), "GATEWAY_TARGET": gateway},
                f"http://127.0.0.1:{self.ports['web']}",
            ),
        ]
        for module, env, target in specs:
            service = Service(module, env, target, self.log_dir / f"{module}.log")
            self.services.append(service)
            service.start()
            wait_serving(service, 120, self.check_stop)
            say(f"{module} SERVING on {target} (pid {service.pid}, log: {service.log_path})")

    # Supervision --------------------------------------------------------------------------

    def supervise(self) -> None:
        """Restarts a dead service (or the embedded PostgreSQL), loudly, within a bound."""
        self.check_stop()
        if self.postgres is not None and self.postgres._running_port() is None:
            shout("embedded PostgreSQL is not running; restarting it")
            self.postgres.start()
            say(f"embedded PostgreSQL restarted on port {self.postgres.port}")
        for service in self.services:
            while (code := service.exited()) is not None:
                self._restart(service, code)

    def _restart(self, service: Service, code: int) -> None:
        """One restart of a dead service; a restart that dies during its start-up counts
        as one more death, so the bound holds for a service that cannot start at all."""
        shout(f"{service.module} (pid {service.pid}) died with exit code {code}; last log lines:")
        for line in service.log_tail(1500).splitlines()[-8:]:
            print(f"    {line}", flush=True)
        service.reap()
        now = time.monotonic()
        service.deaths.append(now)
        while service.deaths and now - service.deaths[0] > RESTART_WINDOW_S:
            service.deaths.popleft()
        if len(service.deaths) > MAX_RESTARTS:
            raise StackFailed(
                f"{service.module} died {len(service.deaths)} times in {RESTART_WINDOW_S / 60:.0f} minutes;"
                f" not restarting it again (log: {service.log_path})"
            )
        backoff = min(30.0, 2.0 ** (len(service.deaths) - 1))
        say(f"restarting {service.module} in {backoff:.0f}s (restart {len(service.deaths)} of at most {MAX_RESTARTS})")
        self.sleep(backoff)
        service.start()
        try:
            wait_serving(service, 120, self.check_stop)
        except StackFailed:
            if service.exited() is None:
                raise  # alive but never SERVING: a restart will not help
            return  # died while starting: the caller's loop counts it
        shout(f"{service.module} restarted (pid {service.pid}), SERVING on {service.target}")

    # Stop ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stops everything this stack started, last started first. Signals that arrive
        now are already noted (the handler only sets a flag): the stop runs to its end."""
        self.stopping = True
        for service in reversed(self.services):
            if service.process is None:
                continue
            code = service.stop()
            say(f"{service.module} stopped (exit code {code})")
        if self.postgres is not None:
            try:
                self.postgres.stop()
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                shout(f"embedded PostgreSQL did not stop cleanly: {exc}")
                return
            say(f"embedded PostgreSQL stopped (data kept in {self.data_dir / 'postgres'})")


# The dev key and the first training -----------------------------------------------------


def dev_api_key(database_url: str, key_file: Path) -> tuple[str, str]:
    """The `dev` admin's key, kept in `key_file` (0600) and reused while it is active.

    Obtained the way an operator would: the registry's users command, run as a
    process, so this plumbing module never imports a service.
    """
    command = ["registry_service.users", "ensure", "dev", "--role", "admin", "--key-file", str(key_file)]
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise StackFailed(f"`python -m registry_service.users ensure dev` failed:\n{result.stderr}{result.stdout}")
    return key_file.read_text().strip(), result.stdout.strip()


@dataclass
class Timeline:
    """What the user waited for, measured here: queued, training, and all of it."""

    started: float = field(default_factory=time.monotonic)
    running_at: float | None = None
    ended_at: float | None = None

    def queued_s(self) -> float:
        return (self.running_at or self.ended_at or time.monotonic()) - self.started

    def total_s(self) -> float:
        return (self.ended_at or time.monotonic()) - self.started


class FirstTraining:
    def __init__(self, stack: Stack, gateway: str, api_key: str) -> None:
        self.stack = stack
        self.gateway = gateway
        self.metadata = (("authorization", f"Bearer {api_key}"),)
        self.channel = grpc.insecure_channel(gateway)
        self.trainer = trainer_service_pb2_grpc.TrainerServiceStub(self.channel)
        self.registry = registry_service_pb2_grpc.RegistryServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def call(self, method: Callable[..., Any], request: Any, timeout: float = 10) -> Any:
        """A call that survives a service being restarted under it (bounded)."""
        deadline = time.monotonic() + 180
        while True:
            self.stack.supervise()
            try:
                return method(request, timeout=timeout, metadata=self.metadata)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
            self.stack.sleep(0.5)

    def get_run(self, run_id: str) -> resources_pb2.Run | None:
        try:
            return self.call(self.registry.GetRun, registry_service_pb2.GetRunRequest(run_id=run_id)).run  # type: ignore[no-any-return]
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise

    def train(self, test_episodes: int) -> tuple[resources_pb2.Run, Timeline]:
        """SARSA, optimized mode, 250 test episodes: the seed's `POST /sarsa` example."""
        timeline = Timeline()
        started = self.call(
            self.trainer.StartRun,
            trainer_service_pb2.StartRunRequest(
                request_id=str(uuid.uuid4()),
                algorithm="sarsa",
                mode=trainer_service_pb2.TRAINING_MODE_OPTIMIZED,
                test_episodes=test_episodes,
            ),
            timeout=30,
        )
        say(f"started run {started.run_id} (sarsa, optimized, {test_episodes} test episodes, seed {started.seed})")
        deadline = time.monotonic() + 600
        last_status = -1
        last_line = ""
        last_note = 0.0
        while time.monotonic() < deadline:
            run = self.get_run(started.run_id)
            if run is None:
                raise StackFailed(f"run {started.run_id} is unknown to the registry")
            now = time.monotonic()
            if run.status != resources_pb2.RUN_STATUS_QUEUED and timeline.running_at is None:
                timeline.running_at = now
            if run.status in TERMINAL:
                timeline.ended_at = now
                return run, timeline
            if run.status == resources_pb2.RUN_STATUS_QUEUED:
                # Say what we wait for, once, then only how long (never the same line twice).
                if last_status != run.status:
                    say(
                        "  queued: waiting for a free trainer worker (a new worker loads or compiles its"
                        " numba kernels before its first run; they are cached on disk afterwards)"
                    )
                    last_note = now
                elif now - last_note >= 5:
                    say(f"  still queued after {timeline.queued_s():.0f}s (trainer log: {self.stack.log_dir})")
                    last_note = now
            else:
                planned = run.episodes_planned or 1
                line = (
                    f"  {status_word(run.status)}: {run.episodes_recorded}/{run.episodes_planned} episodes stored"
                    f" ({100 * run.episodes_recorded / planned:.0f}%)"
                )
                if line != last_line and now - last_note >= 1:
                    say(line)
                    last_line = line
                    last_note = now
            last_status = run.status
            self.stack.sleep(0.2)
        raise StackFailed(f"run {started.run_id} did not finish within 10 minutes")

    def plot_names(self, run_id: str) -> list[str]:
        """The run's plots: the registry renders them on this first read of a completed run."""
        request = registry_service_pb2.ListArtifactsRequest(run_id=run_id, kind=resources_pb2.ARTIFACT_KIND_PLOT)
        try:
            listed = self.call(self.registry.ListArtifacts, request, timeout=60).artifacts
        except grpc.RpcError as error:
            say(f"plots: not listed ({error.code().name}: {error.details()})")
            return []
        return sorted(artifact.name for artifact in listed)


def _number(value: Any) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


# A short summary: how the run ended up, how close to the exact optimum, how long.
TRAINING_SUMMARY = (
    "episodes",
    "stop_reason",
    "convergence_episode",
    "final_epsilon",
    "last100_success_rate",
    "last100_avg_steps",
    "last100_avg_reward",
)
OPTIMALITY_SUMMARY = ("optimal_mean_steps", "optimality_gap_steps", "optimal_start_state_fraction")


def print_summary(run: resources_pb2.Run, timeline: Timeline | None) -> None:
    if timeline is not None:
        say(
            f"run {run.run_id} {status_word(run.status)} in {run.execution_time:.2f}s of training;"
            f" {timeline.total_s():.1f}s since it was started ({timeline.queued_s():.1f}s of it queued)"
        )
    else:
        say(f"run {run.run_id} {status_word(run.status)} in {run.execution_time:.2f}s of training")
    metrics = json_format.MessageToDict(run.test_metrics)
    say("test metrics (greedy policy on the real Gymnasium environment):")
    for key in ("success_rate", "avg_steps", "avg_reward"):
        say(f"  {key} = {_number(metrics.get(key))}")
    groups = {
        **json_format.MessageToDict(run.learning_stability),
        **json_format.MessageToDict(run.training_metrics),
    }
    training = [key for key in TRAINING_SUMMARY if groups.get(key) is not None]
    if training:
        say("training: " + ", ".join(f"{key} = {_number(groups[key])}" for key in training))
    optimality = [key for key in OPTIMALITY_SUMMARY if key in metrics]
    if optimality:
        say("exact optimum (value iteration): " + ", ".join(f"{key} = {_number(metrics[key])}" for key in optimality))


def print_plots(names: list[str], run_id: str, gateway: str) -> None:
    if not names:
        say(f"plots: none yet; later: .venv/bin/taxi-driver --gateway {gateway} plots {run_id} -o plots/")
        return
    say(f"plots ({len(names)}): {', '.join(names)}")
    say(f"  download them as PNG: .venv/bin/taxi-driver --gateway {gateway} plots {run_id} -o plots/")


def print_howto(gateway: str, run_id: str, key_file: Path) -> None:
    say(f"gateway: {gateway}")
    say("try:")
    say(f"  export TAXI_DRIVER_API_KEY=$(cat {key_file}) TAXI_DRIVER_GATEWAY={gateway}")
    say(f"  .venv/bin/taxi-driver runs show {run_id}")
    say("  .venv/bin/taxi-driver train q_learning --test-episodes 250")
    say("  .venv/bin/taxi-driver runs list")
    say(f"  .venv/bin/grpcurl -plaintext {gateway} list")
    say(
        f'  .venv/bin/grpcurl -plaintext -H "authorization: Bearer $TAXI_DRIVER_API_KEY" '
        f'-d \'{{"run_id": "{run_id}"}}\' {gateway} taxidriver.registry.v1.RegistryService/GetRun'
    )


def print_web(url: str, run_id: str, key_file: Path) -> None:
    say(f"web: {url}/  (dashboard: sign in with the dev key; the REST API's docs: {url}/docs)")
    say(f'  curl -H "Authorization: Bearer $(cat {key_file})" "{url}/database/runs?limit=10"')
    say(f'  curl -H "Authorization: Bearer $(cat {key_file})" "{url}/database/runs/{run_id}"')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--once", action="store_true", help="stop everything after the first training")
    parser.add_argument("--retrain", action="store_true", help="train again even if the first training is done")
    parser.add_argument("--gateway-port", type=int, default=GATEWAY_PORT.read())
    parser.add_argument("--trainer-port", type=int, default=TRAINER_PORT.read())
    parser.add_argument("--registry-port", type=int, default=REGISTRY_PORT.read())
    parser.add_argument("--tuner-port", type=int, default=TUNER_PORT.read())
    parser.add_argument("--web-port", type=int, default=WEB_PORT.read())
    parser.add_argument("--test-episodes", type=int, default=250)
    parser.add_argument("--data-dir", type=Path, default=Path(TAXI_DRIVER_DATA_DIR.read()))
    args = parser.parse_args(argv)

    data_dir: Path = args.data_dir.resolve()
    stack = Stack(
        data_dir,
        {
            "registry": args.registry_port,
            "trainer": args.trainer_port,
            "tuner": args.tuner_port,
            "gateway": args.gateway_port,
            "web": args.web_port,
        },
    )
    stack.install_signal_handlers()
    data_dir.mkdir(parents=True, exist_ok=True)
    gateway = f"127.0.0.1:{args.gateway_port}"
    try:
        database_url = DATABASE_URL.read()
        if database_url:
            say("using DATABASE_URL")
        else:
            say(f"starting embedded PostgreSQL (data in {data_dir / 'postgres'})")
            database_url = stack.start_postgres()
            say(f"PostgreSQL ready: {database_url}")
        stack.check_stop()
        stack.start_services(database_url)

        key_file = data_dir / KEY_FILE
        api_key, note = dev_api_key(database_url, key_file)
        say(f"API key of the 'dev' user (admin role): {note} (mode 0600)")
        first = FirstTraining(stack, gateway, api_key)
        try:
            run_file = data_dir / FIRST_RUN_FILE
            previous = run_file.read_text().strip() if run_file.exists() else ""
            done = first.get_run(previous) if previous and not args.retrain else None
            if done is not None and done.status == resources_pb2.RUN_STATUS_COMPLETED:
                say(f"the first training was done before: run {done.run_id} (--retrain trains again)")
                run, timeline = done, None
            else:
                run, timeline = first.train(args.test_episodes)
                run_file.write_text(run.run_id + "\n")
            print_summary(run, timeline)
            if run.status != resources_pb2.RUN_STATUS_COMPLETED:
                say(f"error: {run.error_message or run.stop_reason}")
                return 1
            print_plots(first.plot_names(run.run_id), run.run_id, gateway)
            print_howto(gateway, run.run_id, key_file)
            print_web(f"http://127.0.0.1:{args.web_port}", run.run_id, key_file)
        finally:
            first.close()
        if args.once:
            return 0
        say("the stack is up; Ctrl-C stops it (a service that dies is restarted)")
        while True:
            stack.supervise()
            stack.sleep(0.5)
    except Stop as stop:
        say(f"{stop.args[0]} received: stopping everything")
        # SIGTERM is a request to stop, met in full: 0, like the services' own drain.
        # Ctrl-C keeps the shell's convention (130).
        return 130 if stop.args[0] == "SIGINT" else 0
    except StackFailed as failure:
        shout(str(failure))
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SettingsError as bad:
        print(f"[make run] {bad}", file=sys.stderr)
        sys.exit(2)
