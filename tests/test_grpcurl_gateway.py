"""An operator's view: grpcurl against a real `python -m gateway` process.

The upstreams are stand-ins (real gRPC servers in this process); the calls an
operator makes against the real registry and trainer are in
test_grpcurl_public_api.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fake_upstreams import REGISTRY, TRAINER, Observations, start_fake_registry, start_fake_trainer
from tests.support import LoopThread, free_port, spawn, stop_process, wait_for_health

GRPCURL = Path(sys.executable).parent / "grpcurl"


def grpcurl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(GRPCURL), *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"grpcurl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


@dataclass
class GatewayProcess:
    target: str
    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int


@pytest.fixture(scope="module")
def gateway_process(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    seen = Observations()
    registry = loop_thread.run(start_fake_registry(seen))
    trainer = loop_thread.run(start_fake_trainer("one", seen))
    port = free_port()
    metrics_port = free_port()
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    process = spawn(
        "gateway",
        {
            "GATEWAY_ADDRESS": f"127.0.0.1:{port}",
            # Stand-in upstreams have no AuthService; authentication is tested in test_gateway_auth.py.
            "GATEWAY_AUTH_REQUIRED": "false",
            "TRAINER_TARGETS": f"127.0.0.1:{trainer.port}",
            "REGISTRY_TARGET": f"127.0.0.1:{registry.port}",
            "GATEWAY_SHUTDOWN_GRACE": "1",
            "METRICS_PORT": str(metrics_port),
        },
        log,
    )
    target = f"127.0.0.1:{port}"
    try:
        wait_for_health(target, REGISTRY, timeout=60)
        wait_for_health(target, TRAINER, timeout=30)
        yield GatewayProcess(target=target, process=process, log=log, metrics_port=metrics_port)
    finally:
        stop_process(process)
        loop_thread.run(registry.server.stop(0.1))
        loop_thread.run(trainer.server.stop(0.1))


def test_list_shows_exactly_the_public_services(gateway_process: GatewayProcess) -> None:
    listed = grpcurl("-plaintext", gateway_process.target, "list").stdout.split()
    assert listed == sorted(
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            REGISTRY,
            TRAINER,
            "taxidriver.tuner.v1.TunerService",
        ]
    )


def test_describe_a_public_method(gateway_process: GatewayProcess) -> None:
    described = grpcurl("-plaintext", gateway_process.target, "describe", f"{REGISTRY}.GetRun").stdout
    assert (
        "rpc GetRun ( .taxidriver.registry.v1.GetRunRequest ) returns ( .taxidriver.registry.v1.GetRunResponse )"
        in (described)
    )


def test_ingest_cannot_be_described(gateway_process: GatewayProcess) -> None:
    result = grpcurl(
        "-plaintext", gateway_process.target, "describe", "taxidriver.ingest.v1.IngestService", check=False
    )
    assert result.returncode != 0


def test_json_call_with_header_through_the_process(gateway_process: GatewayProcess) -> None:
    result = grpcurl(
        "-plaintext",
        "-H",
        "x-request-id: op-7",
        "-d",
        '{"run_id": "r-json"}',
        gateway_process.target,
        f"{REGISTRY}/GetRun",
    )
    reply = json.loads(result.stdout)
    assert reply["run"]["run_id"] == "r-json"
    assert reply["run"]["status"] == "RUN_STATUS_COMPLETED"


def test_rich_error_shows_field_violations(gateway_process: GatewayProcess) -> None:
    result = grpcurl("-plaintext", "-d", '{"run_id": "bad"}', gateway_process.target, f"{REGISTRY}/GetRun", check=False)
    assert result.returncode != 0
    assert "Code: InvalidArgument" in result.stderr
    assert "must be a UUID" in result.stderr


def test_health_check_through_grpcurl(gateway_process: GatewayProcess) -> None:
    result = grpcurl(
        "-plaintext", "-d", json.dumps({"service": REGISTRY}), gateway_process.target, "grpc.health.v1.Health/Check"
    )
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_sigterm_drains_and_exits_zero(loop_thread: LoopThread, tmp_path: Path) -> None:
    seen = Observations()
    registry = loop_thread.run(start_fake_registry(seen))
    port = free_port()
    process = spawn(
        "gateway",
        {
            "GATEWAY_ADDRESS": f"127.0.0.1:{port}",
            # Stand-in upstreams have no AuthService; authentication is tested in test_gateway_auth.py.
            "GATEWAY_AUTH_REQUIRED": "false",
            "TRAINER_TARGETS": f"127.0.0.1:{free_port()}",
            "REGISTRY_TARGET": f"127.0.0.1:{registry.port}",
            "GATEWAY_SHUTDOWN_GRACE": "1",
        },
        tmp_path / "gateway.log",
    )
    try:
        wait_for_health(f"127.0.0.1:{port}", REGISTRY, timeout=60)
    finally:
        code = stop_process(process)
        loop_thread.run(registry.server.stop(0.1))
    assert code == 0
    lines = [json.loads(line) for line in (tmp_path / "gateway.log").read_text().splitlines() if line.startswith("{")]
    assert any(line["msg"] == "stopped" and line["service"] == "gateway" for line in lines)


def test_process_serves_metrics_and_logs_calls(gateway_process: GatewayProcess) -> None:
    grpcurl(
        "-plaintext",
        "-H",
        "x-request-id: op-metrics",
        "-d",
        '{"run_id": "r-m"}',
        gateway_process.target,
        f"{REGISTRY}/GetRun",
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway_process.metrics_port}/metrics", timeout=10) as response:
        body = response.read().decode()
    assert 'grpc_code="OK",grpc_method="GetRun"' in body
    lines = [json.loads(line) for line in gateway_process.log.read_text().splitlines() if line.startswith("{")]
    call = [line for line in lines if line.get("request_id") == "op-metrics"]
    assert call and call[0]["method"] == f"/{REGISTRY}/GetRun" and call[0]["code"] == "OK"
