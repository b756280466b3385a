"""A completed run's plots: rendered by the registry on first read, then plain stored artifacts.

Against the session's in-process registry and real PostgreSQL (registry_service/plot_rendering.py).
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import psycopg
from google.protobuf import struct_pb2

from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from taxidriver.registry.v1 import registry_service_pb2 as registry_pb2
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc
from taxidriver.registry.v1 import resources_pb2
from tests.support import InProcessService

PLOT = resources_pb2.ARTIFACT_KIND_PLOT
PLOT_NAMES = {"rewards.png", "steps.png", "epsilon.png", "td_error.png", "test_vs_brute_force.png"}
EPISODES = 300


def struct(**values: float) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def registered(ingest: ingest_grpc.IngestServiceStub) -> str:
    """A run with its episodes stored, not completed yet."""
    run_id = str(uuid.uuid4())
    ingest.RegisterRun(
        ingest_pb2.RegisterRunRequest(run_id=run_id, algorithm="q_learning", mode="user", episodes_planned=EPISODES)
    )
    batch = ingest_pb2.IngestEpisodesRequest(
        run_id=run_id,
        first_episode=0,
        rewards=[float(-200 + e) for e in range(EPISODES)],
        steps=[200 - e // 2 for e in range(EPISODES)],
        epsilons=[0.99**e for e in range(EPISODES)],
        td_errors=[1.0 / (e + 1) for e in range(EPISODES)],
        successes=[e > 100 for e in range(EPISODES)],
    )
    list(ingest.IngestEpisodes(iter([batch])))
    return run_id


def completed(ingest: ingest_grpc.IngestServiceStub) -> str:
    run_id = registered(ingest)
    ingest.CompleteRun(
        ingest_pb2.CompleteRunRequest(
            run_id=run_id,
            episodes_total=EPISODES,
            test_metrics=struct(success_rate=0.9, avg_steps=14.0, avg_reward=6.5),
            brute_force_metrics=struct(random_success_rate=0.05, random_avg_steps=190.0, random_avg_reward=-700.0),
            artifacts=[
                ingest_pb2.InlineArtifact(kind=resources_pb2.ARTIFACT_KIND_MODEL, name="q_table.npy", data=b"q" * 64)
            ],
        )
    )
    return run_id


def plots(queries: registry_grpc.RegistryServiceStub, run_id: str) -> dict[str, bytes]:
    """name -> PNG bytes, through ListArtifacts and DownloadArtifact as clients read them."""
    listed = queries.ListArtifacts(registry_pb2.ListArtifactsRequest(run_id=run_id, kind=PLOT), timeout=120).artifacts
    found = {}
    for artifact in listed:
        chunks = queries.DownloadArtifact(registry_pb2.DownloadArtifactRequest(artifact_id=artifact.artifact_id))
        found[artifact.name] = b"".join(message.chunk for message in chunks)
    return found


def stored_plots(db: psycopg.Connection, run_id: str) -> list[tuple[str, str, str]]:
    rows = db.execute(
        "SELECT name, artifact_id::text, xmin::text FROM artifacts WHERE run_id = %s AND kind = 'plot' ORDER BY name",
        (run_id,),
    )
    return rows.fetchall()


def test_a_completed_run_has_its_plots_on_first_read(ingest, queries, db) -> None:
    run_id = completed(ingest)
    # Nothing rendered at completion: the run completed without waiting for matplotlib.
    assert stored_plots(db, run_id) == []
    assert not queries.GetRun(registry_pb2.GetRunRequest(run_id=run_id)).run.plots
    first = plots(queries, run_id)
    assert set(first) == PLOT_NAMES
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in first.values())
    # Stored as PLOT artifacts, and the run's `plots` names them as before.
    stored = stored_plots(db, run_id)
    run = queries.GetRun(registry_pb2.GetRunRequest(run_id=run_id)).run
    assert dict(run.plots) == {name: artifact_id for name, artifact_id, _ in stored}
    # The whole listing (no kind) renders them too: a run's other artifacts are still there.
    listed = queries.ListArtifacts(registry_pb2.ListArtifactsRequest(run_id=run_id)).artifacts
    assert {a.name for a in listed} == PLOT_NAMES | {"q_table.npy"}


def test_a_second_read_gives_the_same_bytes_without_rendering_again(ingest, queries, db, registry) -> None:
    run_id = completed(ingest)
    first = plots(queries, run_id)
    rows = stored_plots(db, run_id)
    renders = registry.app.plots.renders
    assert plots(queries, run_id) == first  # byte for byte
    assert stored_plots(db, run_id) == rows  # the same row versions: nothing written again
    assert registry.app.plots.renders == renders


def test_rendering_is_deterministic(ingest, queries) -> None:
    """Two runs with the same stored data get the same bytes (a replica rendering again writes the same)."""
    assert plots(queries, completed(ingest)) == plots(queries, completed(ingest))


def test_concurrent_first_reads_render_once(ingest, registry, db) -> None:
    run_id = completed(ingest)
    renders = registry.app.plots.renders

    def read(_: int) -> list[tuple[str, str]]:
        with grpc.insecure_channel(registry.target) as channel:
            stub = registry_grpc.RegistryServiceStub(channel)
            listed = stub.ListArtifacts(registry_pb2.ListArtifactsRequest(run_id=run_id, kind=PLOT), timeout=120)
            return sorted((a.name, a.artifact_id) for a in listed.artifacts)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(read, range(8)))
    assert registry.app.plots.renders == renders + 1
    assert all(answer == answers[0] for answer in answers)
    assert {name for name, _ in answers[0]} == PLOT_NAMES
    assert [(name, artifact_id) for name, artifact_id, _ in stored_plots(db, run_id)] == answers[0]


def test_a_run_not_completed_has_no_plots_yet(ingest, queries, db, registry: InProcessService) -> None:
    run_id = registered(ingest)
    renders = registry.app.plots.renders
    assert queries.ListArtifacts(registry_pb2.ListArtifactsRequest(run_id=run_id, kind=PLOT)).artifacts == []
    assert stored_plots(db, run_id) == [] and registry.app.plots.renders == renders
    # A cancelled run keeps none either: only completed runs have test scores to draw.
    ingest.CompleteRun(
        ingest_pb2.CompleteRunRequest(run_id=run_id, status=resources_pb2.RUN_STATUS_CANCELLED, episodes_total=EPISODES)
    )
    assert queries.ListArtifacts(registry_pb2.ListArtifactsRequest(run_id=run_id, kind=PLOT)).artifacts == []
    assert registry.app.plots.renders == renders
