"""Enum fields of public requests: an unknown value, or an unspecified one where the contract
documents no default, is INVALID_ARGUMENT naming the field, never silently a default.

Clients meet this for real: proto-loader (Node) turns an enum string it does not know, such as
`mode: "optimized"`, into 0, and proto3 lets any number through on the wire.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest

from taxidriver.errors import status_details
from taxidriver.registry.v1 import registry_service_pb2 as rpb
from taxidriver.registry.v1 import registry_service_pb2_grpc, resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2 as tpb
from taxidriver.trainer.v1 import trainer_service_pb2_grpc
from tests.support import InProcessService


@pytest.fixture()
def channel(gateway: InProcessService) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.target) as channel:
        yield channel


def invalid_fields(call: Callable[[], object]) -> list[str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    violations, _ = status_details(caught.value)
    return [v.field for v in violations]


@pytest.mark.parametrize("mode", [tpb.TRAINING_MODE_UNSPECIFIED, 9])
def test_start_run_without_a_known_mode_is_invalid(channel: grpc.Channel, mode: int) -> None:
    trainer = trainer_service_pb2_grpc.TrainerServiceStub(channel)
    request = tpb.StartRunRequest(algorithm="q_learning", mode=mode, test_episodes=10)  # type: ignore[arg-type]
    assert invalid_fields(lambda: trainer.StartRun(request, timeout=30)) == ["mode"]


def test_unknown_run_view_is_invalid(channel: grpc.Channel) -> None:
    registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
    unknown = 7
    get = rpb.GetRunRequest(run_id=str(uuid.uuid4()), view=unknown)  # type: ignore[arg-type]
    assert invalid_fields(lambda: registry.GetRun(get, timeout=30)) == ["view"]
    listing = rpb.ListRunsRequest(page_size=1, view=unknown)  # type: ignore[arg-type]
    assert invalid_fields(lambda: registry.ListRuns(listing, timeout=30)) == ["view"]


def test_unknown_artifact_kind_is_invalid(channel: grpc.Channel) -> None:
    registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
    request = rpb.ListArtifactsRequest(run_id=str(uuid.uuid4()), kind=42)  # type: ignore[arg-type]
    assert invalid_fields(lambda: registry.ListArtifacts(request, timeout=30)) == ["kind"]


def test_documented_enum_defaults_still_apply(channel: grpc.Channel) -> None:
    """RUN_VIEW_UNSPECIFIED is documented as SUMMARY; ARTIFACT_KIND_UNSPECIFIED as every kind."""
    registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
    listing = registry.ListRuns(rpb.ListRunsRequest(page_size=5, view=resources_pb2.RUN_VIEW_UNSPECIFIED), timeout=30)
    assert all(not run.HasField("curves") for run in listing.runs)
    with pytest.raises(grpc.RpcError) as caught:
        registry.ListArtifacts(rpb.ListArtifactsRequest(run_id=str(uuid.uuid4())), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # the kind passed, the run is unknown


@pytest.mark.parametrize("method", ["ListRuns", "GetStatistics"])
def test_an_unknown_status_in_a_filter_is_invalid(channel: grpc.Channel, method: str) -> None:
    """Statuses in AIP-160 filters are the enum's names or their stored lower-case words."""
    registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
    call = getattr(registry, method)
    request_type = getattr(rpb, f"{method}Request")
    assert invalid_fields(lambda: call(request_type(filter='status = "finished"'), timeout=30)) == ["filter"]
    call(request_type(filter='status = "RUN_STATUS_COMPLETED" OR status = "running"'), timeout=30)
