"""Soak: minutes of mixed real use through the gateway while faults are injected.

The stack runs as `make run` starts it (tests/process_stack.py): the registry, two trainer
replicas behind the gateway, as `python -m` processes, on $DATABASE_URL's server or an
embedded PostgreSQL under .data/. Three users (admin, trainer, reader roles) use it at
once for SOAK_SECONDS (default 300; BENCH_QUICK=1 runs 20 s):

- two people train runs of every algorithm (mostly small, one in four seconds long) with
  the Python client, retrying a refused start with the same request_id, following some
  runs to the end and walking away from others after a few events (an abandoned WatchRun);
- one person runs `taxi-driver train` and sometimes kills it mid-stream;
- one person watches runs with grpcurl and kills it after the first events;
- one person browses: lists, shows, best runs, statistics, comparisons, annotations;
- an operator resumes interrupted runs, cancels a running run now and then, deletes old
  completed runs.

Meanwhile faults are injected in turn: the registry SIGKILLed and restarted, a longer
registry outage, the registry paused (SIGSTOP) past the lease and continued, a trainer
SIGTERMed and restarted, a trainer SIGKILLed and restarted, a trainer paused past the
lease (its runs are resumed elsewhere meanwhile) and continued. A monitor restarts any
service that dies without being killed and counts it as a crash.

Then every service is brought back, the runs get a grace period to end, and the database
is audited. Figures (all but soak_calls must be 0; the script exits 1 otherwise):
  soak_calls           client calls made (any outcome)
  soak_crashes         service processes that died without being killed by the soak
  soak_lost_episodes   episodes acknowledged (episodes_recorded, or the plan of a completed
                       run) but not stored
  soak_lost_artifacts  completed runs without their model or all their plots (read through
                       the registry, which renders them on first read)
  soak_double_writers  runs trained twice: an episode stored twice or past the plan, or
                       completed by more than one trainer process (trainer logs)
  soak_stranded_runs   runs still queued or running after the grace period
Leases are shortened (REGISTRY_LEASE_SECONDS=5, heartbeats every second) so that a dead
or paused trainer's runs are declared interrupted within the soak, not after 30 s.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quick import QUICK, size  # noqa: E402
from taxidriver.client import ClientError, TaxiDriverClient  # noqa: E402
from tests.process_stack import (  # noqa: E402
    ALGORITHMS,
    LEARNING,
    RANDOM_WALK,
    REGISTRY,
    TERMINAL,
    Service,
    Stack,
    Tools,
    audit_all,
    create_user_key,
    make_stack,
    scratch_postgres,
    train_args,
)

SECONDS = size(int(os.environ.get("SOAK_SECONDS", "300")), 20)
LEASE_S = 5.0
# Between two faults: every kind comes up at least once in a default soak.
FAULT_GAP_S = 4.0 if QUICK else 12.0
GRACE_S = 6 * LEASE_S + 60
FAULT_ENV = {
    "registry_service": {
        "REGISTRY_LEASE_SECONDS": str(LEASE_S),
        "REGISTRY_HEALTH_INTERVAL": "0.5",
        "REGISTRY_SHUTDOWN_GRACE": "5",
    },
    "trainer_service": {"TRAINER_WORKERS": "1", "TRAINER_HEARTBEAT_S": "1", "TRAINER_GRACE_S": "10"},
    "gateway": {"GATEWAY_HEALTH_RETRY_MAX": "0.5", "GATEWAY_SHUTDOWN_GRACE": "5"},
}


def say(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Tally:
    """Every client call and its outcome (a status code name, or the exit of a command)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.run_ids: list[str] = []
        self.deleted: set[str] = set()

    def count(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1

    def call(self, action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`action(*args, **kwargs)`, counted; None if it failed."""
        try:
            result = action(*args, **kwargs)
        except ClientError as error:
            self.count(error.code.name)
            return None
        except grpc.RpcError as error:
            self.count(error.code().name)
            return None
        self.count("OK")
        return result

    def started(self, run_id: str) -> None:
        with self.lock:
            self.run_ids.append(run_id)

    def recent_run(self, rng: random.Random) -> str | None:
        with self.lock:
            candidates = [r for r in self.run_ids[-20:] if r not in self.deleted]
        return rng.choice(candidates) if candidates else None

    @property
    def calls(self) -> int:
        return sum(self.outcomes.values())


class Soak:
    def __init__(self, stack: Stack, keys: dict[str, str]) -> None:
        self.stack = stack
        self.keys = keys
        self.gateway = stack.gateway.target
        self.tally = Tally()
        self.stop = threading.Event()
        self.lock = threading.Lock()  # one fault or restart at a time
        self.faults: collections.Counter[str] = collections.Counter()
        self.crash_reports: list[str] = []

    def client(self, user: str) -> TaxiDriverClient:
        return TaxiDriverClient(self.gateway, timeout=10.0, api_key=self.keys[user])

    # People ------------------------------------------------------------------------------

    def trainer_person(self, index: int) -> None:
        rng = random.Random(index)
        with self.client("bob") as client:
            while not self.stop.is_set():
                algorithm = rng.choice(ALGORITHMS)
                # Mostly small runs; one in four walks at random for seconds, so that faults
                # find runs in flight (a paused registry or trainer, then a resume elsewhere).
                walk = rng.random() < 0.25
                episodes = 20_000 if walk else rng.choice((300, 1000, 3000))
                hyperparameters = {
                    **(RANDOM_WALK if walk else LEARNING),
                    "training_episodes": episodes,
                    "max_steps": 2_000 if walk else 200,
                }
                request_id = str(uuid.uuid4())
                started = None
                for _ in range(5):  # a refused start is retried with the same request_id
                    started = self.tally.call(
                        client.start_run,
                        algorithm,
                        mode="user",
                        hyperparameters=hyperparameters,
                        test_episodes=20,
                        seed=rng.randrange(1 << 30),
                        request_id=request_id,
                    )
                    if started is not None or self.stop.wait(1.0):
                        break
                if started is None:
                    continue
                run_id = started.run_id
                self.tally.started(run_id)
                abandon_after = rng.choice((None, 1, 3))
                self.tally.call(self._follow, client, run_id, abandon_after)

    @staticmethod
    def _follow(client: TaxiDriverClient, run_id: str, abandon_after: int | None) -> None:
        """Watches until the run ends (the stream ends after its terminal status), or walks
        away after `abandon_after` events as the CLI does when a run ends early."""
        events: Iterator[Any] = client.watch_run(run_id, timeout=120)
        for seen, _ in enumerate(events, start=1):
            if abandon_after is not None and seen >= abandon_after:
                return

    def cli_person(self) -> None:
        rng = random.Random(7)
        tools = Tools(self.gateway, self.keys["bob"])
        for index in itertools.count(1000):
            if self.stop.is_set():
                return
            algorithm = rng.choice(ALGORITHMS)
            command = tools.background(
                tools.cli_argv("train", algorithm, *train_args(rng.choice((300, 2000))), "--seed", str(index))
            )
            if rng.random() < 0.4:
                try:
                    command.wait_output(r"episode \d+/", timeout=30, stream="err")
                except AssertionError:
                    pass
                command.signal(signal.SIGKILL)  # the terminal is closed mid-stream
            finished = command.finished(timeout=120)
            if match := re.search(r"run ([0-9a-f-]{36}) ", finished.err):
                self.tally.started(match.group(1))
            self.tally.count("OK" if finished.code in (0, -signal.SIGKILL) else f"cli exit {finished.code}")
            self.stop.wait(1.0)

    def grpcurl_person(self) -> None:
        rng = random.Random(11)
        tools = Tools(self.gateway, self.keys["carol"])
        while not self.stop.wait(2.0):
            run_id = self.tally.recent_run(rng)
            if run_id is None:
                continue
            argv = tools.grpcurl_argv(f"{REGISTRY}/WatchRun", {"run_id": run_id})
            if rng.random() < 0.5:
                argv = ["bash", "-c", f"{shlex.join(argv)} | head -c 300"]  # `| head`
            watcher = tools.background(argv)
            try:
                watcher.wait_output(r"\S", timeout=5)
            except AssertionError:
                pass
            watcher.signal(rng.choice((signal.SIGKILL, signal.SIGINT)))
            watcher.finished(timeout=10)
            self.tally.count("OK")

    def browsing_person(self) -> None:
        rng = random.Random(13)
        with self.client("carol") as reader, self.client("bob") as annotator:
            while not self.stop.wait(0.2):
                run_id = self.tally.recent_run(rng)
                other = self.tally.recent_run(rng)
                roll = rng.random()
                if roll < 0.3:
                    self.tally.call(lambda: reader.list_runs(limit=50))
                elif roll < 0.5 and run_id:
                    self.tally.call(reader.get_run, run_id, curves=rng.random() < 0.2)
                elif roll < 0.6:
                    self.tally.call(lambda: reader.best_runs(limit=10))
                elif roll < 0.7:
                    self.tally.call(lambda: reader.statistics())
                elif roll < 0.8 and run_id and other and run_id != other:
                    self.tally.call(reader.compare_runs, [run_id, other])
                elif roll < 0.9 and run_id:
                    self.tally.call(annotator.annotate, run_id, "seen in the soak", ["soak"])
                else:
                    self.tally.call(lambda: reader.list_runs(filter='status = "running"', limit=20))

    def operator(self) -> None:
        rng = random.Random(17)
        with self.client("alice") as admin:
            while not self.stop.wait(3.0):
                listed = self.tally.call(lambda: admin.list_runs(filter='status = "interrupted"', limit=20))
                for run in listed[0] if listed else []:
                    self.tally.call(admin.resume_run, run.run_id)
                roll = rng.random()
                if roll < 0.15:
                    running = self.tally.call(lambda: admin.list_runs(filter='status = "running"', limit=5))
                    if running and running[0]:
                        self.tally.call(admin.cancel_run, running[0][0].run_id)
                elif roll < 0.3:
                    done = self.tally.call(
                        lambda: admin.list_runs(filter='status = "completed"', order_by="create_time asc", limit=1)
                    )
                    if done and done[0]:
                        run_id = done[0][0].run_id
                        with self.tally.lock:
                            self.tally.deleted.add(run_id)
                        self.tally.call(admin.delete_run, run_id)

    # Faults ------------------------------------------------------------------------------

    def _restart(self, service: Service) -> None:
        try:
            service.start(timeout=120)
        except (RuntimeError, TimeoutError) as error:
            say(f"{service.name} did not come back: {error}")

    def fault_registry_kill(self) -> None:
        self.stack.registry.kill()
        time.sleep(2.0)
        self._restart(self.stack.registry)

    def fault_registry_long_outage(self) -> None:
        self.stack.registry.kill()
        time.sleep(3 * LEASE_S)
        self._restart(self.stack.registry)

    def fault_registry_pause(self) -> None:
        self.stack.registry.pause()
        time.sleep(2 * LEASE_S)
        self.stack.registry.resume()

    def fault_trainer_restart(self) -> None:
        trainer = random.choice(self.stack.trainers)
        trainer.stop()
        self._restart(trainer)

    def fault_trainer_kill(self) -> None:
        trainer = random.choice(self.stack.trainers)
        trainer.kill()
        time.sleep(1.0)
        self._restart(trainer)

    def fault_trainer_pause(self) -> None:
        """Past the lease: its runs are declared interrupted and resumed on the other trainer
        while this one still believes it owns them."""
        trainer = random.choice(self.stack.trainers)
        trainer.pause()
        time.sleep(3 * LEASE_S)
        trainer.resume()

    def injector(self) -> None:
        faults = [
            self.fault_registry_kill,
            self.fault_trainer_pause,
            self.fault_registry_pause,
            self.fault_trainer_kill,
            self.fault_registry_long_outage,
            self.fault_trainer_restart,
        ]
        index = 0
        while not self.stop.wait(FAULT_GAP_S):
            fault = faults[index % len(faults)]
            index += 1
            name = fault.__name__.removeprefix("fault_")
            say(f"fault: {name}")
            with self.lock:
                fault()
            self.faults[name] += 1

    def monitor(self) -> None:
        while not self.stop.wait(0.5):
            self.check_crashes()

    def check_crashes(self) -> None:
        with self.lock:
            for service in self.stack.services:
                if service.check_crash():
                    pid, code = service.crashes[-1]
                    report = f"{service.name} (pid {pid}) died with exit code {code}; log tail:\n{crash_tail(service)}"
                    self.crash_reports.append(report)
                    say(f"CRASH: {report}")
                    self._restart(service)


def crash_tail(service: Service) -> str:
    """The end of the log, from the faulthandler's "Fatal Python error" if there is one."""
    text = service.log_tail(20_000)
    start = text.rfind("Fatal Python error")
    return text[start : start + 2500] if start >= 0 else text[-1500:]


def completions_by_run(stack: Stack) -> collections.Counter[str]:
    """How many times trainer processes logged a run as completed (more than once: trained twice)."""
    counts: collections.Counter[str] = collections.Counter()
    for trainer in stack.trainers:
        if trainer.log_path.exists():
            for match in re.finditer(r'"msg": "run ([0-9a-f-]{36}) completed"', trainer.log_path.read_text()):
                counts[match.group(1)] += 1
    return counts


def bring_back(soak: Soak) -> None:
    with soak.lock:
        for service in soak.stack.services:
            if service.paused:
                service.resume()
            if not service.alive():
                service.check_crash()
                soak._restart(service)


def main() -> int:
    logs = Path(tempfile.mkdtemp(prefix="bench-soak-logs-", dir=ROOT / ".data" if (ROOT / ".data").exists() else None))
    failed = 1  # until the audit says otherwise: logs of a soak that broke off are kept
    with scratch_postgres("bench_soak") as database_url:
        stack = make_stack(database_url, logs, extra_env=FAULT_ENV, trainers=2)
        try:
            stack.start()
            keys = {
                user: create_user_key(database_url, user, role)
                for user, role in (("alice", "admin"), ("bob", "trainer"), ("carol", "reader"))
            }
            soak = Soak(stack, keys)
            people = [
                threading.Thread(target=soak.trainer_person, args=(1,), name="trainer-1"),
                threading.Thread(target=soak.trainer_person, args=(2,), name="trainer-2"),
                threading.Thread(target=soak.cli_person, name="cli"),
                threading.Thread(target=soak.grpcurl_person, name="grpcurl"),
                threading.Thread(target=soak.browsing_person, name="browser"),
                threading.Thread(target=soak.operator, name="operator"),
            ]
            machinery = [
                threading.Thread(target=soak.injector, name="faults"),
                threading.Thread(target=soak.monitor, name="monitor"),
            ]
            say(f"{SECONDS} s of real use with faults; logs in {logs}")
            started = time.monotonic()
            for thread in people + machinery:
                thread.start()
            soak.stop.wait(SECONDS)
            soak.stop.set()
            for thread in machinery + people:
                thread.join(180)
            elapsed = time.monotonic() - started
            bring_back(soak)
            soak.check_crashes()
            say(f"real use over after {elapsed:.0f} s; grace of up to {GRACE_S:.0f} s for runs to end")
            deadline = time.monotonic() + GRACE_S
            with psycopg.connect(database_url, autocommit=True) as conn:
                while time.monotonic() < deadline:
                    audits = audit_all(conn, stack.registry.target)
                    if all(a.status in TERMINAL and not a.missing_artifacts for a in audits):
                        break
                    time.sleep(1.0)
                    soak.check_crashes()
                audits = audit_all(conn, stack.registry.target)
            completions = completions_by_run(stack)
            lost_episodes = sum(a.lost_episodes for a in audits)
            lost_artifacts = [a for a in audits if a.missing_artifacts]
            double = [
                a
                for a in audits
                if a.duplicate_episodes
                or (a.stored and max(a.stored) >= max(a.planned, 1))
                or completions[a.run_id] > 1
            ]
            stranded = [a for a in audits if a.status not in TERMINAL]
            crashes = len(soak.crash_reports)
            statuses = collections.Counter(a.status for a in audits)
            print(f"bench: soak_seconds = {elapsed:.0f} s")
            print(f"bench: soak_calls = {soak.tally.calls} calls")
            print(f"bench: soak_faults = {sum(soak.faults.values())} faults ({dict(soak.faults)})")
            print(f"bench: soak_runs = {len(audits)} runs ({dict(statuses)})")
            errors = {code: n for code, n in soak.tally.outcomes.items() if code != "OK"}
            print(f"bench: soak_call_errors = {sum(errors.values())} calls ({errors})")
            print(f"bench: soak_crashes = {crashes} processes")
            print(f"bench: soak_lost_episodes = {lost_episodes} episodes")
            print(f"bench: soak_lost_artifacts = {len(lost_artifacts)} runs")
            print(f"bench: soak_double_writers = {len(double)} runs")
            print(f"bench: soak_stranded_runs = {len(stranded)} runs")
            for report in soak.crash_reports[:3]:
                print(f"crash: {report}")
            for title, runs in (
                ("lost episodes", [a for a in audits if a.lost_episodes]),
                ("lost artifacts", lost_artifacts),
                ("double writer", double),
                ("stranded", stranded),
            ):
                for audit in runs[:5]:
                    extra = (
                        f" (completed by trainers {completions[audit.run_id]} times)"
                        if title == "double writer"
                        else ""
                    )
                    print(f"{title}: {audit}{extra}")
                    for service in stack.services:
                        for line in service.log_lines(audit.run_id, limit=3):
                            print(f"    {line[:300]}")
            failed = crashes + lost_episodes + len(lost_artifacts) + len(double) + len(stranded)
            if failed:
                print(f"soak logs (kept): {logs}")
            return 1 if failed else 0
        finally:
            stack.stop()
            if not failed:
                shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
