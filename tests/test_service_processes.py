"""Every service's `python -m` is taxidriver.server.main: logging at LOG_LEVEL, exit 2 with one
line when it cannot start, and SIGTERM met by the app's own `stop()` with exit 0. Real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import conninfo

from taxidriver.server import LIVENESS
from tests.process_stack import health, scratch_database
from tests.support import ROOT, free_port, spawn, stop_process

MODULES = ("gateway", "registry_service", "trainer_service", "tuner_service", "web")
# The variable that sets each service's listen address, and how to write one for a port.
ADDRESS = {
    "gateway": ("GATEWAY_ADDRESS", "127.0.0.1:{port}"),
    "registry_service": ("REGISTRY_ADDRESS", "127.0.0.1:{port}"),
    "trainer_service": ("TRAINER_ADDRESS", "127.0.0.1:{port}"),
    "tuner_service": ("TUNER_ADDRESS", "127.0.0.1:{port}"),
    "web": ("WEB_PORT", "{port}"),
}
# Enough for each service to start on a laptop: one trainer worker, loopback upstreams that
# need not answer (nothing is called before SIGTERM).
BASE_ENV = {
    "trainer_service": {"TRAINER_WORKERS": "1"},
    "web": {"WEB_HOST": "127.0.0.1"},
}


def _env(module: str, port: int, database_url: str = "", **extra: str) -> dict[str, str]:
    variable, form = ADDRESS[module]
    env = {**BASE_ENV.get(module, {}), variable: form.format(port=port), "METRICS_PORT": "0"}
    if module == "registry_service":
        env["DATABASE_URL"] = database_url
    return {**env, **extra}


def run_to_exit(module: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def log_entries(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries


def assert_refused(finished: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit 2, no traceback, and exactly one error line, which says all of `expected`."""
    output = finished.stdout + finished.stderr
    assert finished.returncode == 2, output
    assert "Traceback" not in output
    errors = [entry["msg"] for entry in log_entries(finished.stderr) if entry["level"] == "error"]
    assert len(errors) == 1, output
    for text in expected:
        assert text in errors[0]
    return str(errors[0])


@pytest.fixture(scope="module")
def scratch_url(database_url: str) -> Iterator[str]:
    """A database of the registry processes' own: a registry sweeps leases in its whole database."""
    with scratch_database(database_url, "processes") as url:
        yield url


@pytest.mark.parametrize(
    ("module", "variable", "raw", "says"),
    [
        ("gateway", "GATEWAY_SHUTDOWN_GRACE", "-1", "GATEWAY_SHUTDOWN_GRACE must be >= 0 (seconds), got -1.0"),
        ("gateway", "LOG_LEVEL", "loud", "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("registry_service", "REGISTRY_POOL_MAX", "many", "REGISTRY_POOL_MAX must be an integer of connections"),
        ("registry_service", "DATABASE_URL", "", "DATABASE_URL is required"),
        ("trainer_service", "TRAINER_HEARTBEAT_S", "soon", "TRAINER_HEARTBEAT_S must be a number of seconds"),
        ("tuner_service", "TUNER_LEASE_S", "0", "TUNER_LEASE_S must be > 0 (seconds), got 0.0"),
        ("web", "WEB_CALL_TIMEOUT", "1m", "WEB_CALL_TIMEOUT must be a number of seconds, got '1m'"),
        # Was a traceback in uvicorn's lifespan and exit 3.
        ("web", "WEB_GATEWAY_CA_FILE", "/nonexistent/ca.pem", "cannot read WEB_GATEWAY_CA_FILE /nonexistent/ca.pem"),
    ],
)
def test_a_bad_setting_stops_start_up_with_one_line_and_exit_2(module: str, variable: str, raw: str, says: str) -> None:
    env = _env(module, free_port(), database_url="postgresql://unused@127.0.0.1:1/unused", **{variable: raw})
    assert_refused(run_to_exit(module, env), "cannot start:", says)


@pytest.mark.parametrize("module", MODULES)
def test_a_port_in_use_stops_start_up_with_one_line_and_exit_2(module: str, scratch_url: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        finished = run_to_exit(module, _env(module, port, database_url=scratch_url))
    assert_refused(finished, "cannot start: cannot listen on", str(port))


def test_an_unreachable_database_stops_the_registry_with_one_line_and_exit_2() -> None:
    env = _env(
        "registry_service",
        free_port(),
        database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/nothing",
        REGISTRY_CONNECT_TIMEOUT="1",
    )
    assert_refused(run_to_exit("registry_service", env), "cannot start: cannot reach PostgreSQL (DATABASE_URL)")


def wait_alive(process: subprocess.Popen[bytes], module: str, port: int, log_path: Path, timeout: float = 120) -> None:
    """Until the process answers: gRPC liveness, or the web's /healthz."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{module} exited {process.returncode}:\n{log_path.read_text()[-3000:]}")
        if module == "web":
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as reply:
                    if reply.status == 200:
                        return
        elif health(f"127.0.0.1:{port}", LIVENESS, timeout=1.0) == "SERVING":
            return
        time.sleep(0.1)
    raise AssertionError(f"{module} not up after {timeout}s:\n{log_path.read_text()[-3000:]}")


@contextlib.contextmanager
def running(module: str, env: dict[str, str], port: int, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = spawn(module, env, log_path)
    try:
        wait_alive(process, module, port, log_path)
        yield process
    finally:
        stop_process(process, timeout=60)


@pytest.mark.parametrize("module", MODULES)
def test_sigterm_stops_each_service_through_its_stop_with_exit_0(module: str, scratch_url: str, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / f"{module}.log"
    with running(module, _env(module, port, database_url=scratch_url), port, log_path) as process:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
    log = log_path.read_text()
    assert code == 0, log[-3000:]
    messages = [entry["msg"] for entry in log_entries(log)]
    assert "shutting down" in messages
    assert "stopped" in messages[messages.index("shutting down") :]


def test_the_registry_logs_at_the_level_log_level_sets(scratch_url: str, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "registry.log"
    env = _env("registry_service", port, database_url=scratch_url, LOG_LEVEL="DEBUG")
    with running("registry_service", env, port, log_path):
        pass
    levels = {entry["level"] for entry in log_entries(log_path.read_text())}
    assert "debug" in levels


class LateDatabase:
    """A loopback port where PostgreSQL "appears" late: nothing listens until `open()`, then
    each connection is forwarded to the real server (a registry started before its database)."""

    def __init__(self, database_url: str) -> None:
        info = conninfo.conninfo_to_dict(database_url)
        self.upstream = (str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
        self.port = free_port()
        self.url = conninfo.make_conninfo(database_url, host="127.0.0.1", port=str(self.port))
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def open(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()


def wait_logged(log_path: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}:\n{log_path.read_text()[-3000:]}")
        if text in log_path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged after {timeout}s:\n{log_path.read_text()[-3000:]}")


def test_a_registry_started_before_its_database_waits_for_it_then_serves(scratch_url: str, tmp_path: Path) -> None:
    """REGISTRY_CONNECT_TIMEOUT is how long start-up waits for PostgreSQL: a refused connection
    (the database pod not up yet) is waited on, said once in the log, not an exit 2 at once."""
    late = LateDatabase(scratch_url)
    port = free_port()
    log_path = tmp_path / "registry.log"
    env = _env("registry_service", port, database_url=late.url, REGISTRY_CONNECT_TIMEOUT="120")
    process = spawn("registry_service", env, log_path)
    try:
        wait_logged(log_path, "waiting for PostgreSQL", process)
        late.open()
        wait_alive(process, "registry_service", port, log_path)
        assert health(f"127.0.0.1:{port}", "taxidriver.registry.v1.RegistryService", timeout=5.0) == "SERVING"
    finally:
        stop_process(process, timeout=60)
        late.close()


def test_sigterm_while_the_registry_waits_for_its_database_exits_0_at_once(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "registry.log"
    unreachable = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    env = _env("registry_service", port, database_url=unreachable, REGISTRY_CONNECT_TIMEOUT="300")
    process = spawn("registry_service", env, log_path)
    try:
        wait_logged(log_path, "waiting for PostgreSQL", process)
        process.send_signal(signal.SIGTERM)
        # Well before the 300 s it would otherwise wait.
        code = process.wait(60)
    finally:
        stop_process(process)
    log = log_path.read_text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log
    assert "stopped before it started" in [entry["msg"] for entry in log_entries(log)]
