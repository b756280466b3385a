"""Faults with real processes: SIGKILL, SIGSTOP/SIGCONT, SIGTERM and a PostgreSQL restart mid-run.

Each service runs as `python -m <service>` on a free port against the session's database.
The registry runs with REGISTRY_LEASE_SECONDS=3 (and a 0.5 s health/lease sweep) so that a
run whose trainer died becomes INTERRUPTED within seconds rather than the default 30 s.
After every fault, the run's episodes are checked in PostgreSQL: indices 0..N-1, each once.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import conninfo

from taxidriver.embedded_pg import EmbeddedPostgres
from taxidriver.registry.v1 import registry_service_pb2 as pb
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc
from taxidriver.registry.v1 import resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2 as tpb
from taxidriver.trainer.v1 import trainer_service_pb2_grpc as trainer_grpc
from taxidriver.vocabulary import STOPPED_STATUSES
from tests.support import free_port, spawn, stored_episode_indices, wait_for_health

pytestmark = pytest.mark.slow

REGISTRY = "taxidriver.registry.v1.RegistryService"
TRAINER = "taxidriver.trainer.v1.TrainerService"
# Stopped: terminal or INTERRUPTED (taxidriver.vocabulary, from RunStatus).
TERMINAL = STOPPED_STATUSES
EPISODES = 300_000
CHECKPOINT_EVERY = 20_000
LEASE_SECONDS = 3


@dataclass
class Service:
    """One `python -m module` process on a fixed port, restartable on that port."""

    module: str
    port: int
    env: dict[str, str]
    log_path: Path
    health_service: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        self.process = spawn(self.module, self.env, self.log_path)
        wait_for_health(self.target, self.health_service, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the service and every process it spawned (a crashed pod loses its workers too)."""
        assert self.process is not None
        parent = psutil.Process(self.process.pid)
        children = parent.children(recursive=True)
        parent.kill()
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait(10)
        psutil.wait_procs(children, timeout=10)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


@dataclass
class Stack:
    registry: Service
    trainer: Service
    gateway: Service
    extra: list[Service] = field(default_factory=list)

    def all(self) -> list[Service]:
        return [self.registry, self.trainer, self.gateway, *self.extra]


def make_stack(database_url: str, logs: Path) -> Stack:
    registry_port, trainer_port, gateway_port = free_port(), free_port(), free_port()
    registry_target = f"127.0.0.1:{registry_port}"
    registry = Service(
        "registry_service",
        registry_port,
        {
            "DATABASE_URL": database_url,
            "REGISTRY_ADDRESS": registry_target,
            "REGISTRY_LEASE_SECONDS": str(LEASE_SECONDS),
            "REGISTRY_HEALTH_INTERVAL": "0.5",
            "REGISTRY_SHUTDOWN_GRACE": "5",
        },
        logs / "registry.log",
        REGISTRY,
    )
    trainer = trainer_service(registry_target, trainer_port, logs / "trainer.log")
    gateway = Service(
        "gateway",
        gateway_port,
        {
            "GATEWAY_ADDRESS": f"127.0.0.1:{gateway_port}",
            "TRAINER_TARGETS": trainer.target,
            "REGISTRY_TARGET": registry_target,
            "GATEWAY_SHUTDOWN_GRACE": "5",
            "GATEWAY_HEALTH_RETRY_MAX": "0.5",
            # Authentication is not what these tests exercise.
            "GATEWAY_AUTH_REQUIRED": "0",
        },
        logs / "gateway.log",
        "",
    )
    return Stack(registry, trainer, gateway)


def trainer_service(registry_target: str, port: int, log_path: Path, **env: str) -> Service:
    return Service(
        "trainer_service",
        port,
        {
            "TRAINER_ADDRESS": f"127.0.0.1:{port}",
            "REGISTRY_TARGET": registry_target,
            "TRAINER_WORKERS": "1",
            "TRAINER_HEARTBEAT_S": "0.5",
            "TRAINER_GRACE_S": "20",
            **env,
        },
        log_path,
        TRAINER,
    )


@pytest.fixture(scope="module")
def fault_database_url(database_url: str) -> Iterator[str]:
    """A database of its own on the session's server.

    The session's in-process registry sweeps expired leases in the session database; it
    would rightly declare the fault stack's runs interrupted while the fault stack's own
    registry is down (the trainer knows only that one), which is not the fault under test.
    """
    name = f"taxidriver_faults_{uuid.uuid4().hex[:8]}"
    admin = conninfo.make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield conninfo.make_conninfo(database_url, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def db(fault_database_url: str) -> Iterator[psycopg.Connection]:
    """Rows of the fault stack's database (overrides the session-wide `db`)."""
    with psycopg.connect(fault_database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def stack(fault_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("fault-logs")
    built = make_stack(fault_database_url, logs)
    try:
        built.registry.start()
        built.trainer.start()
        built.gateway.start()
        yield built
    finally:
        for service in reversed(built.all()):
            service.stop()


@pytest.fixture()
def healthy_stack(stack: Stack) -> Stack:
    """Restarts whatever a previous test left stopped."""
    for service in (stack.registry, stack.trainer, stack.gateway):
        if service.process is None or service.process.poll() is not None:
            service.start()
    # The gateway must see a restarted upstream again before a test calls through it.
    for name in (REGISTRY, TRAINER):
        wait_for_health(stack.gateway.target, name, timeout=30)
    return stack


def run_request(seed: int) -> tpb.StartRunRequest:
    """A few seconds of Q-learning with a checkpoint every 20,000 episodes."""
    return tpb.StartRunRequest(
        algorithm="q_learning",
        mode=tpb.TRAINING_MODE_USER,
        hyperparameters=tpb.Hyperparameters(
            alpha=0.5,
            gamma=0.9,
            epsilon=1.0,
            epsilon_min=0.1,
            epsilon_decay=0.99999,
            training_episodes=EPISODES,
            max_steps=200,
        ),
        seed=seed,
        test_episodes=10,
        checkpoint_every=CHECKPOINT_EVERY,
    )


def row(db: psycopg.Connection, run_id: str) -> tuple[str, int]:
    found = db.execute("SELECT status, episodes_recorded FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
    assert found is not None
    return str(found[0]), int(found[1])


def wait_row(
    db: psycopg.Connection, run_id: str, *, statuses: set[str] | None = None, min_episodes: int = 0, timeout: float = 90
) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        status, recorded = row(db, run_id)
        if (statuses is None or status in statuses) and recorded >= min_episodes:
            return status, recorded
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id}: {status} with {recorded} episodes after {timeout}s")
        time.sleep(0.05)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Bounded polling on a condition (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout}s: {what}")
        time.sleep(0.05)


def assert_complete_exactly_once(db: psycopg.Connection, run_id: str) -> None:
    status, recorded = row(db, run_id)
    assert (status, recorded) == ("completed", EPISODES)
    assert stored_episode_indices(db, run_id) == list(range(EPISODES))
    model = db.execute("SELECT count(*) FROM saved_models WHERE run_id = %s", (run_id,)).fetchone()
    assert model == (1,)


def test_registry_sigkilled_mid_training_loses_no_episode(healthy_stack: Stack, db: psycopg.Connection) -> None:
    with grpc.insecure_channel(healthy_stack.gateway.target) as channel:
        run_id = trainer_grpc.TrainerServiceStub(channel).StartRun(run_request(seed=21), timeout=60).run_id
    _, before = wait_row(db, run_id, statuses={"running"}, min_episodes=10_000)
    healthy_stack.registry.kill()
    # Longer than the lease: the outage must not count against the trainer's lease (the
    # registry renews live leases when it comes back). The trainer keeps training and
    # buffering meanwhile. The registry stays down until the run's lease has been over a second.
    wait_until(lambda: lease_expired_for(db, run_id, 1.0), "the run's lease is over")
    healthy_stack.registry.start()
    status, _ = wait_row(db, run_id, statuses={"completed", "failed", "interrupted"}, timeout=120)
    reason = db.execute("SELECT stop_reason, error_message FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
    assert status == "completed", (reason, healthy_stack.trainer.log_tail())
    assert before < EPISODES
    assert_complete_exactly_once(db, run_id)
    reconnects = db.execute(
        "SELECT (system_metrics->>'stream_reconnects')::int FROM training_runs WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert reconnects is not None and reconnects[0] >= 1


def test_trainer_sigkilled_mid_run_is_interrupted_then_resumed_elsewhere(
    healthy_stack: Stack, db: psycopg.Connection, tmp_path: Path
) -> None:
    with grpc.insecure_channel(healthy_stack.trainer.target) as channel:
        run_id = trainer_grpc.TrainerServiceStub(channel).StartRun(run_request(seed=22), timeout=60).run_id
    wait_row(db, run_id, statuses={"running"}, min_episodes=2 * CHECKPOINT_EVERY)
    healthy_stack.trainer.kill()
    killed_at = time.monotonic()
    status, recorded = wait_row(db, run_id, statuses={"interrupted"}, timeout=30)
    assert time.monotonic() - killed_at < 30
    assert 0 < recorded < EPISODES
    stop_reason = db.execute("SELECT stop_reason FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
    assert stop_reason == ("lease_expired",)
    # A different trainer process picks the run up from its last checkpoint.
    other = trainer_service(healthy_stack.registry.target, free_port(), tmp_path / "trainer-2.log")
    healthy_stack.extra.append(other)
    other.start()
    try:
        with grpc.insecure_channel(other.target) as channel:
            resumed = trainer_grpc.TrainerServiceStub(channel).ResumeRun(
                tpb.ResumeRunRequest(run_id=run_id), timeout=60
            )
        assert resumed.resumed_from_episode >= CHECKPOINT_EVERY
        assert resumed.resumed_from_episode % CHECKPOINT_EVERY == 0
        # A checkpoint may be ahead of the episodes the registry acknowledged (it holds the
        # whole history, and the resuming trainer re-sends the unacknowledged part from it):
        # the check that matters is that every episode ends up stored exactly once.
        assert resumed.resumed_from_episode < EPISODES
        status, _ = wait_row(db, run_id, statuses={"completed", "failed"}, timeout=120)
        assert status == "completed", other.log_tail()
        assert_complete_exactly_once(db, run_id)
    finally:
        other.stop()


def _health_recorder(target: str, stop: threading.Event, seen: list[int]) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=REGISTRY), timeout=1).status
            except grpc.RpcError:
                status = -1
            if not seen or seen[-1] != status:
                seen.append(status)
            time.sleep(0.05)


def test_postgres_restarted_mid_run_without_restarting_any_service(
    healthy_stack: Stack,
    db: psycopg.Connection,
    embedded_postgres: EmbeddedPostgres | None,
    fault_database_url: str,
) -> None:
    if embedded_postgres is None:
        pytest.skip("DATABASE_URL is set: the suite cannot restart a PostgreSQL server it does not own")
    pids = {s.module: s.process.pid for s in (healthy_stack.registry, healthy_stack.trainer, healthy_stack.gateway)}  # type: ignore[union-attr]
    with grpc.insecure_channel(healthy_stack.gateway.target) as channel:
        run_id = trainer_grpc.TrainerServiceStub(channel).StartRun(run_request(seed=23), timeout=60).run_id
    db.close()
    with psycopg.connect(fault_database_url, autocommit=True) as conn:
        _, acknowledged = wait_row(conn, run_id, statuses={"running"}, min_episodes=10_000)
    seen: list[int] = []
    stop = threading.Event()
    recorder = threading.Thread(target=_health_recorder, args=(healthy_stack.registry.target, stop, seen))
    recorder.start()
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    try:
        wait_until(lambda: bool(seen) and seen[-1] == serving, "the recorder saw SERVING", timeout=30)
        embedded_postgres.stop()
        wait_until(lambda: not_serving in seen, "the 0.5 s health probe noticed", timeout=30)
        embedded_postgres.start()
        wait_for_health(healthy_stack.registry.target, REGISTRY, timeout=30)
        wait_until(lambda: seen[-1] == serving, "the recorder saw SERVING again", timeout=30)
    finally:
        stop.set()
        recorder.join(10)
    assert serving in seen and not_serving in seen, seen
    assert seen.index(not_serving) < len(seen) - 1 - seen[::-1].index(serving), seen  # NOT_SERVING, then SERVING
    assert seen[-1] == serving
    with psycopg.connect(fault_database_url, autocommit=True) as conn:
        status, recorded = wait_row(conn, run_id, statuses={"completed", "failed"}, timeout=120)
        assert status == "completed", healthy_stack.trainer.log_tail()
        assert recorded >= acknowledged
        assert_complete_exactly_once(conn, run_id)
    # Nobody was restarted.
    for service in (healthy_stack.registry, healthy_stack.trainer, healthy_stack.gateway):
        assert service.process is not None and service.process.poll() is None
        assert service.process.pid == pids[service.module]


def test_sigterm_trainer_checkpoints_running_run_and_exits_zero(healthy_stack: Stack, db: psycopg.Connection) -> None:
    with grpc.insecure_channel(healthy_stack.trainer.target) as channel:
        run_id = trainer_grpc.TrainerServiceStub(channel).StartRun(run_request(seed=24), timeout=60).run_id
    wait_row(db, run_id, statuses={"running"}, min_episodes=5_000)
    assert healthy_stack.trainer.terminate() == 0, healthy_stack.trainer.log_tail()
    status, recorded = row(db, run_id)
    assert status == "interrupted"
    assert stored_episode_indices(db, run_id) == list(range(recorded))
    checkpoint = db.execute(
        "SELECT max(episode) FROM artifacts WHERE run_id = %s AND kind = 'checkpoint'", (run_id,)
    ).fetchone()
    assert checkpoint is not None and checkpoint[0] == recorded  # the interruption checkpoint
    healthy_stack.trainer.start()
    with grpc.insecure_channel(healthy_stack.trainer.target) as channel:
        resumed = trainer_grpc.TrainerServiceStub(channel).ResumeRun(tpb.ResumeRunRequest(run_id=run_id), timeout=60)
    assert resumed.resumed_from_episode == recorded
    status, _ = wait_row(db, run_id, statuses={"completed", "failed"}, timeout=120)
    assert status == "completed", healthy_stack.trainer.log_tail()
    assert_complete_exactly_once(db, run_id)


def test_sigterm_registry_and_gateway_drain_and_exit_zero(healthy_stack: Stack, db: psycopg.Connection) -> None:
    """In-flight calls end OK (or UNAVAILABLE once the port is closed), never INTERNAL/UNKNOWN/CANCELLED."""
    codes: list[grpc.StatusCode] = []
    stop = threading.Event()

    def hammer(target: str) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = registry_grpc.RegistryServiceStub(channel)
            while not stop.is_set():
                try:
                    stub.ListRuns(pb.ListRunsRequest(page_size=50), timeout=5)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())

    for service in (healthy_stack.gateway, healthy_stack.registry):
        codes.clear()
        stop.clear()
        threads = [threading.Thread(target=hammer, args=(healthy_stack.gateway.target,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: codes.count(grpc.StatusCode.OK) >= 20, "calls in flight and answered", timeout=30)
        exit_code = service.terminate()
        stop.set()
        for thread in threads:
            thread.join(30)
        assert exit_code == 0, service.log_tail()
        assert grpc.StatusCode.OK in codes
        # Never INTERNAL/UNKNOWN. A call that races the gateway's own shutdown (sent as the
        # GOAWAY goes out) is never processed: grpc reports it CANCELLED, or it waits out its
        # deadline (DEADLINE_EXCEEDED). Read-only and retryable; the registry's drops are
        # turned into UNAVAILABLE by the gateway.
        allowed = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
        if service is healthy_stack.gateway:
            allowed |= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
        assert set(codes) <= allowed, (service.module, set(codes))
        service.start()
    # Both came back on their ports and the stack answers again through the gateway.
    with grpc.insecure_channel(healthy_stack.gateway.target) as channel:
        wait_for_health(healthy_stack.gateway.target, REGISTRY, timeout=30)
        assert registry_grpc.RegistryServiceStub(channel).ListRuns(pb.ListRunsRequest(page_size=1), timeout=10)


def lease_expired_for(db: psycopg.Connection, run_id: str, seconds: float) -> bool:
    """True once the run's lease (as last renewed) ended at least `seconds` ago, by the database's clock."""
    found = db.execute(
        "SELECT lease_expires_at IS NOT NULL AND lease_expires_at + make_interval(secs => %s) < now()"
        " FROM training_runs WHERE run_id = %s",
        (seconds, run_id),
    ).fetchone()
    return bool(found and found[0])


def writer_of(db: psycopg.Connection, run_id: str) -> str:
    found = db.execute("SELECT trainer_id FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
    assert found is not None
    return str(found[0])


def logged(service: Service, run_id: str, prefix: str) -> bool:
    """Whether the service logged a JSON line about `run_id` whose message starts with `prefix`."""
    if not service.log_path.exists():
        return False
    for line in service.log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("run_id") == run_id and str(entry.get("msg", "")).startswith(prefix):
            return True
    return False


@contextlib.contextmanager
def second_trainer(stack: Stack, log_path: Path, **env: str) -> Iterator[Service]:
    other = trainer_service(stack.registry.target, free_port(), log_path, **env)
    stack.extra.append(other)
    other.start()
    try:
        yield other
    finally:
        other.stop()
        stack.extra.remove(other)


def test_registry_paused_longer_than_the_lease_keeps_its_one_writer(
    healthy_stack: Stack, db: psycopg.Connection, tmp_path: Path
) -> None:
    """SIGSTOP the registry for three leases: the live run stays with its trainer; nobody else may take it."""
    with second_trainer(healthy_stack, tmp_path / "trainer-2.log") as other:
        with grpc.insecure_channel(healthy_stack.trainer.target) as channel:
            run_id = trainer_grpc.TrainerServiceStub(channel).StartRun(run_request(seed=25), timeout=60).run_id
        wait_row(db, run_id, statuses={"running"}, min_episodes=10_000)
        first_writer = writer_of(db, run_id)
        registry = healthy_stack.registry.process
        assert registry is not None
        outcomes: list[grpc.StatusCode] = []

        def resume_elsewhere() -> None:
            with grpc.insecure_channel(other.target) as channel:
                try:
                    trainer_grpc.TrainerServiceStub(channel).ResumeRun(tpb.ResumeRunRequest(run_id=run_id), timeout=180)
                    outcomes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    outcomes.append(error.code())

        registry.send_signal(signal.SIGSTOP)
        try:
            # A second trainer asks for the run while the registry is frozen (its call waits).
            resumer = threading.Thread(target=resume_elsewhere)
            resumer.start()
            # The fault: frozen until the run's lease has been over for two more lease periods.
            wait_until(lambda: lease_expired_for(db, run_id, 2 * LEASE_SECONDS), "lease over for 2 periods")
        finally:
            registry.send_signal(signal.SIGCONT)
        resumer.join(200)
        assert not resumer.is_alive()
        assert outcomes == [grpc.StatusCode.FAILED_PRECONDITION], (outcomes, other.log_tail())
        # Once the registry is back, the run is still its first trainer's: asking again is refused too.
        with grpc.insecure_channel(other.target) as channel, pytest.raises(grpc.RpcError) as refused:
            trainer_grpc.TrainerServiceStub(channel).ResumeRun(tpb.ResumeRunRequest(run_id=run_id), timeout=60)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        status, _ = wait_row(db, run_id, statuses={"completed", "failed"}, timeout=120)
        assert status == "completed", healthy_stack.trainer.log_tail()
        assert_complete_exactly_once(db, run_id)
        final = db.execute(
            "SELECT trainer_id, stop_reason, lease_epoch FROM training_runs WHERE run_id = %s", (run_id,)
        ).fetchone()
        # One writer from start to end: never re-taken (epoch 1), never interrupted.
        assert final == (first_writer, "episodes_done", 1)


def test_registry_outage_longer_than_every_retry_strands_no_run(
    healthy_stack: Stack, db: psycopg.Connection, tmp_path: Path
) -> None:
    """The registry dies while a queued run's trainer reports it started; it stays down past every retry."""
    retry_s = 1.0
    with second_trainer(healthy_stack, tmp_path / "trainer-2.log", TRAINER_REGISTRY_RETRY_S=str(retry_s)) as other:
        with grpc.insecure_channel(other.target) as channel:
            stub = trainer_grpc.TrainerServiceStub(channel)
            first = stub.StartRun(run_request(seed=26), timeout=60).run_id
            second = stub.StartRun(run_request(seed=27), timeout=60).run_id  # waits for the one worker
        wait_row(db, first, statuses={"running"}, min_episodes=10_000)
        assert row(db, second)[0] == "queued"
        healthy_stack.registry.kill()
        # The worker finishes the first run and starts the second; reporting it RUNNING fails ...
        wait_until(lambda: logged(other, second, "UpdateRunStatus"), "the second run's status retries", timeout=120)
        # ... and the outage lasts well past the trainer's retry window (the fault's duration).
        outage_ends = time.monotonic() + 5 * retry_s
        wait_until(lambda: time.monotonic() > outage_ends, "outage over")
        healthy_stack.registry.start()
        for run_id in (first, second):
            status, _ = wait_row(db, run_id, statuses={"completed", "failed", "cancelled"}, timeout=180)
            assert status == "completed", (run_id, other.log_tail())
            assert_complete_exactly_once(db, run_id)


def test_trainer_sigkilled_alone_leaves_no_worker_behind(
    healthy_stack: Stack, db: psycopg.Connection, tmp_path: Path
) -> None:
    """SIGKILL only the trainer's main process: its worker processes must not outlive it."""
    other = trainer_service(healthy_stack.registry.target, free_port(), tmp_path / "trainer-2.log")
    other.start()
    workers: list[psutil.Process] = []
    try:
        with grpc.insecure_channel(other.target) as channel:
            run_id = trainer_grpc.TrainerServiceStub(channel).StartRun(run_request(seed=28), timeout=60).run_id
        wait_row(db, run_id, statuses={"running"}, min_episodes=10_000)
        assert other.process is not None
        workers = psutil.Process(other.process.pid).children(recursive=True)
        assert workers
        other.process.kill()  # the main process only, as the OOM killer or `kill -9 <pid>` would
        other.process.wait(10)
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert alive == [], [(p.pid, p.name()) for p in alive]
        # The run it was training has a way out: its lease expires and it can be resumed.
        status, _ = wait_row(db, run_id, statuses={"interrupted"}, timeout=60)
        assert status == "interrupted"
    finally:
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        other.stop()


def test_trainer_paused_past_its_lease_is_refused_after_another_took_the_run(
    healthy_stack: Stack, db: psycopg.Connection, tmp_path: Path
) -> None:
    """A SIGSTOPped trainer wakes up believing it still trains the run: it must not write again."""
    with second_trainer(healthy_stack, tmp_path / "trainer-2.log") as other:
        with grpc.insecure_channel(healthy_stack.trainer.target) as channel:
            run_id = trainer_grpc.TrainerServiceStub(channel).StartRun(run_request(seed=29), timeout=60).run_id
        wait_row(db, run_id, statuses={"running"}, min_episodes=2 * CHECKPOINT_EVERY)
        first_writer = writer_of(db, run_id)
        paused = healthy_stack.trainer.process
        assert paused is not None
        paused.send_signal(signal.SIGSTOP)
        try:
            status, _ = wait_row(db, run_id, statuses={"interrupted"}, timeout=60)
            with grpc.insecure_channel(other.target) as channel:
                resumed = trainer_grpc.TrainerServiceStub(channel).ResumeRun(
                    tpb.ResumeRunRequest(run_id=run_id), timeout=60
                )
            assert resumed.resumed_from_episode >= CHECKPOINT_EVERY
        finally:
            paused.send_signal(signal.SIGCONT)
        # The first trainer's next writes carry the old epoch: refused, so it stops its worker.
        wait_until(
            lambda: logged(healthy_stack.trainer, run_id, f"run {run_id}: no longer ours"), "first trainer gave up"
        )
        status, _ = wait_row(db, run_id, statuses={"completed", "failed"}, timeout=120)
        assert status == "completed", other.log_tail()
        assert_complete_exactly_once(db, run_id)
        final = db.execute("SELECT trainer_id, lease_epoch FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
        assert final is not None and final[1] == 2 and final[0] not in ("", first_writer)


PLOT_NAMES = {"rewards.png", "steps.png", "epsilon.png", "td_error.png", "test_vs_brute_force.png"}


def test_trainer_sigkilled_as_its_run_completes_leaves_the_run_with_model_and_every_plot(
    healthy_stack: Stack, db: psycopg.Connection
) -> None:
    """Issue 10: a run is `completed` only once everything it promises is stored.

    The trainer is SIGKILLed the moment the registry answers `completed` (a few runs, each
    on a freshly started trainer): each completed run must already hold its model (stored in
    CompleteRun's own transaction), and its first ListArtifacts must give all five plots
    (rendered by the registry from the stored run), then in training_runs.plots too.
    """
    trainer = healthy_stack.trainer
    with grpc.insecure_channel(healthy_stack.registry.target) as registry_channel:
        registry = registry_grpc.RegistryServiceStub(registry_channel)
        for seed in (101, 102, 103):
            if trainer.process is None or trainer.process.poll() is not None:
                trainer.start()
            request = tpb.StartRunRequest(
                algorithm="q_learning",
                mode=tpb.TRAINING_MODE_USER,
                hyperparameters=tpb.Hyperparameters(
                    alpha=0.5,
                    gamma=0.9,
                    epsilon=1.0,
                    epsilon_min=0.1,
                    epsilon_decay=0.999,
                    training_episodes=5_000,
                    max_steps=200,
                ),
                seed=seed,
                test_episodes=10,
            )
            with grpc.insecure_channel(trainer.target) as channel:
                run_id = trainer_grpc.TrainerServiceStub(channel).StartRun(request, timeout=60).run_id
            deadline = time.monotonic() + 120
            while True:  # as tight as the registry answers: the kill must land right after completion
                status = registry.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10).run.status
                if status in TERMINAL:
                    break
                assert time.monotonic() < deadline, f"run {run_id} still {status} after 120s"
            trainer.kill()
            assert status == resources_pb2.RUN_STATUS_COMPLETED, trainer.log_tail()
            assert row(db, run_id) == ("completed", 5_000)
            model = db.execute("SELECT count(*) FROM saved_models WHERE run_id = %s", (run_id,)).fetchone()
            assert model == (1,), run_id
            listed = registry.ListArtifacts(
                pb.ListArtifactsRequest(run_id=run_id, kind=resources_pb2.ARTIFACT_KIND_PLOT), timeout=60
            ).artifacts
            assert {artifact.name for artifact in listed} == PLOT_NAMES, (run_id, listed)
            stored = dict(
                db.execute(
                    "SELECT name, artifact_id::text FROM artifacts WHERE run_id = %s AND kind = 'plot'", (run_id,)
                ).fetchall()
            )
            assert set(stored) == PLOT_NAMES, (run_id, sorted(stored))
            plots = db.execute("SELECT plots FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
            assert plots is not None and plots[0] == stored, run_id
