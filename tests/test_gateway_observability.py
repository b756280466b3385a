"""Every server counts, times and logs its calls; gauges and /metrics are there for the services."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client import REGISTRY

from taxidriver import metrics
from taxidriver.logs import JsonFormatter
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
from taxidriver.server import RunningServer
from tests.fake_upstreams import REGISTRY as REGISTRY_SERVICE
from tests.fake_upstreams import Observations, gateway_before_fake_registry
from tests.support import LoopThread, wait_for_health


@dataclass
class Servers:
    upstream: RunningServer
    gateway_target: str
    seen: Observations


@pytest.fixture(scope="module")
def servers(loop_thread: LoopThread) -> Iterator[Servers]:
    seen = Observations()
    with gateway_before_fake_registry(loop_thread, seen) as (upstream, target):
        yield Servers(upstream=upstream, gateway_target=target, seen=seen)


def handled(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "taxidriver_grpc_server_handled_total",
        {"grpc_service": REGISTRY_SERVICE, "grpc_method": method, "grpc_type": "unary", "grpc_code": code},
    )
    return value or 0.0


def get_run(target: str, run_id: str, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
        try:
            stub.GetRun(registry_service_pb2.GetRunRequest(run_id=run_id), metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_calls_are_counted_by_method_and_code(servers: Servers) -> None:
    ok_before, bad_before = handled("GetRun", "OK"), handled("GetRun", "INVALID_ARGUMENT")
    missing_before = handled("GetRun", "NOT_FOUND")
    direct = f"127.0.0.1:{servers.upstream.port}"
    assert get_run(direct, "r-1") == grpc.StatusCode.OK
    assert get_run(direct, "bad") == grpc.StatusCode.INVALID_ARGUMENT
    assert get_run(direct, "missing") == grpc.StatusCode.NOT_FOUND
    # The gateway counts its own hop too: each call through it is seen twice in this process.
    assert get_run(servers.gateway_target, "r-2") == grpc.StatusCode.OK
    assert eventually(lambda: handled("GetRun", "OK"), ok_before + 3)
    assert eventually(lambda: handled("GetRun", "INVALID_ARGUMENT"), bad_before + 1)
    assert eventually(lambda: handled("GetRun", "NOT_FOUND"), missing_before + 1)


def eventually(read: Callable[[], object], expected: object, timeout: float = 5.0) -> bool:
    """The interceptor records a call after its response is sent: the client may look first."""
    deadline = time.monotonic() + timeout
    while read() != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return read() == expected


def test_latency_is_observed(servers: Servers) -> None:
    labels = {"grpc_service": REGISTRY_SERVICE, "grpc_method": "GetRun", "grpc_type": "unary"}
    before = REGISTRY.get_sample_value("taxidriver_grpc_server_handling_seconds_count", labels) or 0.0
    get_run(f"127.0.0.1:{servers.upstream.port}", "r-3")
    assert eventually(
        lambda: REGISTRY.get_sample_value("taxidriver_grpc_server_handling_seconds_count", labels), before + 1
    )
    assert (REGISTRY.get_sample_value("taxidriver_grpc_server_handling_seconds_sum", labels) or 0) > 0


def test_each_call_is_logged_as_json_with_request_id(servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="taxidriver.calls"):
        get_run(f"127.0.0.1:{servers.upstream.port}", "bad", metadata=(("x-request-id", "trace-77"),))

        def traced() -> list[logging.LogRecord]:
            return [r for r in caplog.records if getattr(r, "request_id", "") == "trace-77"]

        assert eventually(lambda: len(traced()), 1)
        records = traced()
    line = json.loads(JsonFormatter("registry").format(records[0]))
    assert line["method"] == f"/{REGISTRY_SERVICE}/GetRun"
    assert line["code"] == "INVALID_ARGUMENT"
    assert line["request_id"] == "trace-77"
    assert line["duration_ms"] >= 0
    assert line["service"] == "registry"


def test_gateway_gives_a_request_id_to_calls_without_one(servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="taxidriver.calls"):
        assert get_run(servers.gateway_target, "r-4") == grpc.StatusCode.OK
        forwarded = servers.seen.metadata["GetRun"]["x-request-id"]
        assert len(forwarded) == 32

        def logged() -> int:
            return len([r for r in caplog.records if getattr(r, "request_id", "") == forwarded])

        # The same id on the gateway's line and on the upstream's line (each written after its response).
        assert eventually(logged, 2), logged()


def test_health_probes_are_not_logged_at_info(servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="taxidriver.calls"):
        wait_for_health(servers.gateway_target, "", timeout=5)
    assert not [r for r in caplog.records if "Health" in getattr(r, "method", "")]


def test_metrics_endpoint_serves_the_text_format(servers: Servers) -> None:
    get_run(f"127.0.0.1:{servers.upstream.port}", "r-5")
    port = metrics.start_metrics_server(0, addr="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    assert 'taxidriver_grpc_server_handled_total{grpc_code="OK",grpc_method="GetRun"' in body
    assert "taxidriver_grpc_server_handling_seconds_bucket" in body


def test_metrics_port_is_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METRICS_PORT", raising=False)
    assert metrics.metrics_port_from_env() == 0
    monkeypatch.setenv("METRICS_PORT", "9464")
    assert metrics.metrics_port_from_env() == 9464
