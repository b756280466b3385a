"""`make run`'s dev stack as a user meets it: real processes, signals, a crash.

Runs `python -m taxidriver.devstack` (what `make run` runs) as its own process
group on free ports and its own data folder, then signals it or kills one of
its services, and checks which processes are left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import psycopg
import pytest

from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from tests.support import ROOT, free_port

pytestmark = pytest.mark.slow


class DevStack:
    """One `python -m taxidriver.devstack` process; its output is read as it comes."""

    def __init__(self, data_dir: Path, *args: str, database_url: str | None = None, make: bool = False) -> None:
        self.data_dir = data_dir
        self.gateway_port = free_port()
        self.web_port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRAINER_WORKERS": "1"}
        env.pop("DATABASE_URL", None)
        if database_url:
            env["DATABASE_URL"] = database_url
        ports = {
            "GATEWAY_PORT": self.gateway_port,
            "TRAINER_PORT": free_port(),
            "REGISTRY_PORT": free_port(),
            "TUNER_PORT": free_port(),
            "WEB_PORT": self.web_port,
        }
        env.update({name: str(port) for name, port in ports.items()})
        env["TAXI_DRIVER_DATA_DIR"] = str(data_dir)
        # `make run` exactly as a user types it, or what it runs (with extra arguments).
        command = ["make", "--no-print-directory", "run"] if make else [sys.executable, "-m", "taxidriver.devstack"]
        self.process = subprocess.Popen(
            [*command, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        # Every process of the stack ever seen, for the clean-up (psutil checks a pid's
        # identity before signalling it: a reused pid is never hit).
        self.seen: dict[int, psutil.Process] = {}
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match[str]:
        """The first output line matching `pattern` (bounded wait on the output itself)."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    match = compiled.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r}; output so far:\n{self.output}\n{self.logs()}")
                self._changed.wait(min(left, 1.0))

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in (self.data_dir / "logs").glob("*.log")
        )

    def service_pids(self) -> set[int]:
        """Every process below the dev stack now (services and trainer workers)."""
        children = psutil.Process(self.process.pid).children(recursive=True)
        self.seen.update({child.pid: child for child in children})
        return {child.pid for child in children}

    def postgres_pid(self) -> int | None:
        pid_file = self.data_dir / "postgres" / "pgdata" / "postmaster.pid"
        pid = int(pid_file.read_text().splitlines()[0]) if pid_file.exists() else None
        if pid is not None and pid not in self.seen:
            self.seen[pid] = psutil.Process(pid)
        return pid

    def terminate(self, timeout: float = 120) -> int:
        os.killpg(self.process.pid, signal.SIGTERM)
        code = self.process.wait(timeout)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def in_sessions(sessions: set[int]) -> set[int]:
    """Live processes whose session is one of `sessions` (a service and what it spawned)."""
    found = set()
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) in sessions and process.status() != psutil.STATUS_ZOMBIE:
                found.add(process.pid)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return found


def wait_gone(pids: set[int], timeout: float = 15) -> set[int]:
    deadline = time.monotonic() + timeout
    left = {pid for pid in pids if alive(pid)}
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = {pid for pid in left if alive(pid)}
    return left


@pytest.fixture()
def data_dir() -> Iterator[Path]:
    """Under the repository's .data, not /tmp: the embedded server runs as another user,
    and a pytest session started meanwhile makes /tmp/pytest-of-<user> private again."""
    folder = ROOT / ".data" / f"test-devstack-{uuid.uuid4().hex[:8]}"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def stacks() -> Iterator[list[DevStack]]:
    started: list[DevStack] = []
    yield started
    for stack in started:  # never leave a stack behind, whatever the test did
        if stack.process.poll() is None:
            stack.service_pids()
            stack.postgres_pid()
            stack.kill()
        for process in stack.seen.values():
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.mark.parametrize(
    ("moment", "started_services"),
    [(r"started run [0-9a-f-]{36}", 4), (r"registry_service SERVING", 1)],
    ids=["during-the-first-training", "during-start-up"],
)
def test_sigterm_to_make_run_at_any_moment_leaves_no_process(
    data_dir: Path, stacks: list[DevStack], moment: str, started_services: int
) -> None:
    stack = DevStack(data_dir, make=True)  # `make run`, with its own embedded PostgreSQL
    stacks.append(stack)
    stack.wait_for(moment)
    services = stack.service_pids()
    sessions = {pid for pid in services if os.getsid(pid) == pid}  # each service leads a session
    assert len(sessions) >= started_services, stack.output
    postgres = stack.postgres_pid()
    assert postgres is not None and alive(postgres)

    stack.terminate()  # make's own exit status is make's (it re-raises SIGTERM): not asserted

    assert "SIGTERM received: stopping everything" in stack.output
    assert wait_gone(services) == set(), stack.output
    assert in_sessions(sessions) == set(), stack.output
    assert wait_gone({postgres}) == set(), stack.output
    for service in ("registry_service", "trainer_service", "gateway", "web")[:started_services]:
        assert re.search(rf"{service} stopped \(exit code -?\d+\)", stack.output), stack.output


def test_a_killed_trainer_is_restarted_and_the_stack_still_answers(
    data_dir: Path, database_url: str, stacks: list[DevStack]
) -> None:
    stack = DevStack(data_dir, "--test-episodes", "20", database_url=database_url)
    stacks.append(stack)
    stack.wait_for(r"the stack is up")
    trainer = int(stack.wait_for(r"trainer_service SERVING on \S+ \(pid (\d+)").group(1))
    workers = {child.pid for child in psutil.Process(trainer).children(recursive=True)}

    os.kill(trainer, signal.SIGKILL)

    stack.wait_for(rf"trainer_service \(pid {trainer}\) died with exit code -9", timeout=60)
    restarted = int(stack.wait_for(r"trainer_service restarted \(pid (\d+)\)", timeout=180).group(1))
    assert restarted != trainer
    assert wait_gone(workers) == set(), "the killed trainer's workers were left running"
    key = (data_dir / "dev-api-key").read_text().strip()
    # The gateway reconnects to the new trainer on gRPC's backoff: answered within a bound.
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(f"127.0.0.1:{stack.gateway_port}") as channel:
        stub = trainer_service_pb2_grpc.TrainerServiceStub(channel)
        while True:
            try:
                reply = stub.ListAlgorithms(
                    trainer_service_pb2.ListAlgorithmsRequest(),
                    metadata=(("authorization", f"Bearer {key}"),),
                    timeout=30,
                )
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                assert time.monotonic() < deadline, f"the gateway never reached the restarted trainer: {error}"
                time.sleep(0.5)
    assert "sarsa" in {a.name for a in reply.algorithms}
    # The HTTP face came up with the stack, printed its URL, and answers with the dev key.
    stack.wait_for(rf"web: http://127\.0\.0\.1:{stack.web_port}/")
    with urllib.request.urlopen(
        urllib.request.Request(
            f"http://127.0.0.1:{stack.web_port}/database/runs?limit=10", headers={"Authorization": f"Bearer {key}"}
        ),
        timeout=30,
    ) as reply_http:
        listed = json.loads(reply_http.read())
    assert any(run["algorithm"] == "sarsa" for run in listed["runs"])
    services = stack.service_pids()
    assert stack.terminate() == 0
    assert wait_gone(services) == set(), stack.output


def _active_dev_keys(database_url: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """
            SELECT k.key_sha256 FROM api_keys k JOIN users u USING (user_id)
            WHERE u.username = 'dev' AND k.revoked_at IS NULL
            """
        ).fetchall()
    return {row[0] for row in rows}


def _sarsa_runs(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return int(conn.execute("SELECT count(*) FROM training_runs WHERE algorithm = 'sarsa'").fetchone()[0])  # type: ignore[index]


def test_restarts_reuse_the_dev_key_and_the_first_training(
    data_dir: Path, database_url: str, stacks: list[DevStack]
) -> None:
    from registry_service.users import hash_key

    first = DevStack(data_dir, "--once", "--test-episodes", "20", database_url=database_url)
    stacks.append(first)
    assert first.process.wait(600) == 0, first.output + first.logs()
    key_file = data_dir / "dev-api-key"
    key = key_file.read_text().strip()
    assert key_file.stat().st_mode & 0o777 == 0o600
    keys_after_first = _active_dev_keys(database_url)
    runs_after_first = _sarsa_runs(database_url)
    assert hash_key(key) in keys_after_first
    # What the user waited for, said honestly, and a short summary with the plots.
    timing = r"completed in \d+\.\d+s of training; \d+\.\ds since it was started \(\d+\.\ds of it queued\)"
    assert re.search(timing, first.output), first.output
    assert re.search(r"^\[make run\] training: episodes = \d+", first.output, re.MULTILINE), first.output
    assert re.search(r"^\[make run\] plots \(\d+\): \S+\.png", first.output, re.MULTILINE), first.output

    second = DevStack(data_dir, "--once", "--test-episodes", "20", database_url=database_url)
    stacks.append(second)
    assert second.process.wait(600) == 0, second.output + second.logs()

    assert key_file.read_text().strip() == key
    assert _active_dev_keys(database_url) == keys_after_first
    assert _sarsa_runs(database_url) == runs_after_first
    assert "the first training was done before" in second.output
    assert key not in first.output + second.output  # the key stays in its file


def test_the_dev_stack_and_the_cli_import_no_service() -> None:
    """taxidriver/ is plumbing: the dev stack starts services by module name and gets the dev
    key by running the registry's users command; it never imports a service's code."""
    import ast

    services = {"registry_service", "trainer_service", "gateway"}
    for module in ("devstack", "cli", "client"):
        tree = ast.parse((ROOT / "taxidriver" / f"{module}.py").read_text())
        imported = {
            name.split(".")[0]
            for node in ast.walk(tree)
            for name in (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
        }
        assert imported & services == set(), (module, imported & services)


def test_a_service_that_keeps_dying_is_restarted_only_up_to_the_bound(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real process that exits at once (`python -m this`) stands for a service that cannot stay up."""
    from taxidriver import devstack

    monkeypatch.setattr(devstack, "MAX_RESTARTS", 2)  # backoffs of 1 s and 2 s instead of a minute
    stack = devstack.Stack(data_dir, {})
    stack.log_dir.mkdir(parents=True)
    service = devstack.Service("this", {}, f"127.0.0.1:{free_port()}", stack.log_dir / "this.log")
    stack.services.append(service)
    service.start()
    assert service.process is not None
    service.process.wait(60)

    with pytest.raises(devstack.StackFailed, match=r"this died 3 times in 10 minutes; not restarting it again"):
        stack.supervise()

    shown = capsys.readouterr().out
    assert shown.count("died with exit code 0") == 3
    assert "restarting this in 1s (restart 1 of at most 2)" in shown
    assert "restarting this in 2s (restart 2 of at most 2)" in shown
    assert service.exited() is not None
