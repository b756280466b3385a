"""The Python clients (the CLI's TaxiDriverClient, the web's channel) use the published service
config (protos/taxidriver/grpc_service_config.json), as docs/clients.md tells every client to:
a read that meets UNAVAILABLE is retried; a StartRun is not (no request_id guarantee)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from taxidriver.client import TaxiDriverClient, client_channel_options
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from tests.support import ROOT
from tests.web_support import WebServer
from web.settings import WebSettings

RUN_ID = "6f1c2a9e-1d3b-4a53-9c55-0c6f1c2a9e11"


class Flaky(registry_service_pb2_grpc.RegistryServiceServicer, trainer_service_pb2_grpc.TrainerServiceServicer):
    """Answers UNAVAILABLE to the first `failures` calls of each method, then a real reply."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}

    def _fail_first(self, method: str, context: grpc.ServicerContext) -> bool:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self.calls[method] <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "registry restarting")
        return True

    def GetRun(self, request, context):  # type: ignore[no-untyped-def]
        self._fail_first("GetRun", context)
        return registry_service_pb2.GetRunResponse(
            run=resources_pb2.Run(run_id=request.run_id, status=resources_pb2.RUN_STATUS_COMPLETED)
        )

    def StartRun(self, request, context):  # type: ignore[no-untyped-def]
        self._fail_first("StartRun", context)
        return trainer_service_pb2.StartRunResponse(run_id=RUN_ID)


@pytest.fixture
def flaky() -> Iterator[tuple[str, Flaky]]:
    servicer = Flaky(failures=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
    trainer_service_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def test_the_client_options_carry_the_published_service_config() -> None:
    published = json.loads((ROOT / "protos" / "taxidriver" / "grpc_service_config.json").read_text())
    options = dict(client_channel_options())
    assert json.loads(str(options["grpc.service_config"])) == published
    assert options["grpc.enable_retries"] == 1


def test_a_read_that_meets_unavailable_is_retried(flaky: tuple[str, Flaky]) -> None:
    target, servicer = flaky
    with TaxiDriverClient(target, api_key="") as client:
        run = client.get_run(RUN_ID)
    assert run.run_id == RUN_ID
    assert servicer.calls["GetRun"] == 3  # two UNAVAILABLE, then the answer


def test_start_run_is_not_retried(flaky: tuple[str, Flaky]) -> None:
    target, servicer = flaky
    with TaxiDriverClient(target, api_key="") as client, pytest.raises(Exception, match="UNAVAILABLE"):
        client.start_run("q_learning", mode="optimized")
    assert servicer.calls["StartRun"] == 1


def test_the_web_retries_a_read_that_meets_unavailable(flaky: tuple[str, Flaky]) -> None:
    target, servicer = flaky
    web = WebServer(WebSettings(host="127.0.0.1", port=0, gateway_target=target))
    try:
        with urllib.request.urlopen(f"{web.url}/database/runs/{RUN_ID}", timeout=30) as reply:
            body = json.loads(reply.read())
    finally:
        web.stop()
    assert body["run"]["runId"] == RUN_ID
    assert servicer.calls["GetRun"] == 3
