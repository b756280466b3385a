"""ListArtifacts in pages (AIP-158), added compatibly: without page_size a run's artifacts come whole."""

from __future__ import annotations

import uuid

import grpc
import pytest

from taxidriver.errors import status_details
from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from taxidriver.registry.v1 import registry_service_pb2 as pb
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc
from taxidriver.registry.v1 import resources_pb2
from tests.web_support import http, keys, secured_gateway, web  # noqa: F401 - fixtures

CHECKPOINT = resources_pb2.ARTIFACT_KIND_CHECKPOINT
MODEL = resources_pb2.ARTIFACT_KIND_MODEL
PLOT = resources_pb2.ARTIFACT_KIND_PLOT
# In the listing's order: kind ("checkpoint" < "model" < "plot"), then episode, then name.
STORED = [
    (CHECKPOINT, "episode-000100", 100),
    (CHECKPOINT, "episode-000200", 200),
    (CHECKPOINT, "episode-000300", 300),
    (MODEL, "q_table.npy", 0),
    (PLOT, "rewards.png", 0),
    (PLOT, "steps.png", 0),
]


@pytest.fixture(scope="module")
def run_id(registry) -> str:  # type: ignore[no-untyped-def]
    """A run holding the STORED artifacts (uploaded out of order)."""
    with grpc.insecure_channel(registry.target) as channel:
        ingest = ingest_grpc.IngestServiceStub(channel)
        run = str(uuid.uuid4())
        ingest.RegisterRun(
            ingest_pb2.RegisterRunRequest(
                run_id=run, algorithm="q_learning", mode="user", env_id="Taxi-v3", episodes_planned=10
            )
        )
        for kind, name, episode in reversed(STORED):
            header = ingest_pb2.ArtifactHeader(run_id=run, kind=kind, name=name, episode=episode)
            messages = [ingest_pb2.UploadArtifactRequest(header=header), ingest_pb2.UploadArtifactRequest(chunk=b"x")]
            ingest.UploadArtifact(iter(messages))
    return run


def names(artifacts: list[resources_pb2.Artifact]) -> list[str]:
    return [a.name for a in artifacts]


def pages(queries: registry_grpc.RegistryServiceStub, request: pb.ListArtifactsRequest) -> list[list[str]]:
    """Every page of a listing, following next_page_token."""
    found: list[list[str]] = []
    while True:
        reply = queries.ListArtifacts(request)
        found.append(names(list(reply.artifacts)))
        if not reply.next_page_token:
            return found
        request.page_token = reply.next_page_token


def test_without_page_size_every_artifact_comes_in_one_answer(queries, run_id: str) -> None:  # type: ignore[no-untyped-def]
    reply = queries.ListArtifacts(pb.ListArtifactsRequest(run_id=run_id))
    assert names(list(reply.artifacts)) == [name for _, name, _ in STORED]
    assert reply.next_page_token == ""


def test_pages_follow_each_other_in_order(queries, run_id: str) -> None:  # type: ignore[no-untyped-def]
    assert pages(queries, pb.ListArtifactsRequest(run_id=run_id, page_size=4)) == [
        ["episode-000100", "episode-000200", "episode-000300", "q_table.npy"],
        ["rewards.png", "steps.png"],
    ]
    assert pages(queries, pb.ListArtifactsRequest(run_id=run_id, page_size=6)) == [[name for _, name, _ in STORED]]
    # Values above the maximum are read as the maximum.
    assert pages(queries, pb.ListArtifactsRequest(run_id=run_id, page_size=5000)) == [[n for _, n, _ in STORED]]


def test_pages_of_one_kind(queries, run_id: str) -> None:  # type: ignore[no-untyped-def]
    request = pb.ListArtifactsRequest(run_id=run_id, kind=CHECKPOINT, page_size=2)
    assert pages(queries, request) == [["episode-000100", "episode-000200"], ["episode-000300"]]


def refused_fields(call) -> list[str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as refused:
        call()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return [v.field for v in status_details(refused.value)[0]]


def test_a_token_is_good_for_its_own_listing_only(queries, run_id: str) -> None:  # type: ignore[no-untyped-def]
    token = queries.ListArtifacts(pb.ListArtifactsRequest(run_id=run_id, kind=CHECKPOINT, page_size=1)).next_page_token
    assert token
    other_kind = pb.ListArtifactsRequest(run_id=run_id, kind=PLOT, page_size=1, page_token=token)
    assert refused_fields(lambda: queries.ListArtifacts(other_kind)) == ["page_token"]
    forged = pb.ListArtifactsRequest(run_id=run_id, page_size=1, page_token="not-a-token")
    assert refused_fields(lambda: queries.ListArtifacts(forged)) == ["page_token"]
    negative = pb.ListArtifactsRequest(run_id=run_id, page_size=-1)
    assert refused_fields(lambda: queries.ListArtifacts(negative)) == ["page_size"]


def test_the_web_api_pages_artifacts_with_query_parameters(web, keys, run_id: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    with http(web, keys["reader"]) as client:
        first = client.get(f"/database/runs/{run_id}/artifacts", params={"page_size": 5}).json()
        assert [a["name"] for a in first["artifacts"]] == [name for _, name, _ in STORED][:5]
        second = client.get(
            f"/database/runs/{run_id}/artifacts", params={"page_size": 5, "page_token": first["nextPageToken"]}
        ).json()
    assert [a["name"] for a in second["artifacts"]] == ["steps.png"]
    assert second.get("nextPageToken", "") == ""
