"""IngestService against a real registry and PostgreSQL: exactly-once episodes, validation, lifecycle."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import struct_pb2

from registry_service import episodes
from taxidriver.errors import status_details
from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from taxidriver.registry.v1 import registry_service_pb2 as registry_pb2
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc
from taxidriver.registry.v1 import resources_pb2


def params(**values: float) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def register(stub: ingest_grpc.IngestServiceStub, *, planned: int = 100, algorithm: str = "q_learning") -> str:
    run_id = str(uuid.uuid4())
    reply = stub.RegisterRun(
        ingest_pb2.RegisterRunRequest(
            run_id=run_id,
            algorithm=algorithm,
            mode="user",
            env_id="Taxi-v3",
            params=params(alpha=0.1, gamma=0.99, training_runs=planned),
            episodes_planned=planned,
        )
    )
    assert reply.created
    return run_id


def batch(run_id: str, first: int, count: int) -> ingest_pb2.IngestEpisodesRequest:
    """Deterministic values so a stored episode can be traced to its index."""
    episodes = range(first, first + count)
    return ingest_pb2.IngestEpisodesRequest(
        run_id=run_id,
        first_episode=first,
        rewards=[float(-e) for e in episodes],
        steps=[e % 200 + 1 for e in episodes],
        epsilons=[1.0 / (e + 1) for e in episodes],
        td_errors=[0.5 for _ in episodes],
        successes=[e % 2 == 0 for e in episodes],
    )


def send(stub: ingest_grpc.IngestServiceStub, *batches: ingest_pb2.IngestEpisodesRequest) -> list[tuple[int, int]]:
    return [(ack.episodes_recorded, ack.stored) for ack in stub.IngestEpisodes(iter(batches))]


def full_run(queries: registry_grpc.RegistryServiceStub, run_id: str) -> resources_pb2.Run:
    return queries.GetRun(registry_pb2.GetRunRequest(run_id=run_id, view=resources_pb2.RUN_VIEW_FULL)).run


def test_replayed_batch_is_not_stored_twice(ingest: ingest_grpc.IngestServiceStub, queries, db) -> None:
    run_id = register(ingest)
    assert send(ingest, batch(run_id, 0, 10), batch(run_id, 0, 10)) == [(10, 10), (10, 0)]
    run = full_run(queries, run_id)
    assert run.episodes_recorded == 10
    assert list(run.curves.rewards) == [float(-e) for e in range(10)]
    stored = db.execute("SELECT sum(episode_count) FROM run_episodes WHERE run_id = %s", (run_id,)).fetchone()
    assert stored == (10,)


def test_overlapping_batch_stores_only_the_tail(ingest, queries) -> None:
    run_id = register(ingest)
    assert send(ingest, batch(run_id, 0, 10), batch(run_id, 5, 10)) == [(10, 10), (15, 5)]
    run = full_run(queries, run_id)
    assert list(run.curves.steps) == [e % 200 + 1 for e in range(15)]
    assert list(run.curves.successes) == [e % 2 == 0 for e in range(15)]
    assert run.curves.epsilons[14] == pytest.approx(1 / 15)


def test_concurrent_streams_of_one_run_store_each_episode_once(ingest, queries, db) -> None:
    """Two writers replaying the same overlapping batches at once: the row lock orders them."""
    from concurrent.futures import ThreadPoolExecutor

    run_id = register(ingest, planned=400)
    batches = [batch(run_id, first, 40) for first in range(0, 361, 20)]  # each overlaps the one before
    with ThreadPoolExecutor(4) as pool:
        acks = list(pool.map(lambda _: send(ingest, *batches), range(4)))
    assert sum(stored for replies in acks for _, stored in replies) == 400
    chunks = db.execute(
        "SELECT first_episode, episode_count FROM run_episodes WHERE run_id = %s ORDER BY 1", (run_id,)
    ).fetchall()
    assert all(first + count == after for (first, count), (after, _) in itertools.pairwise(chunks))
    assert sum(count for _, count in chunks) == 400
    assert list(full_run(queries, run_id).curves.rewards) == [float(-e) for e in range(400)]


def test_a_batch_without_the_optional_curves_stores_them_as_null(ingest, queries, db) -> None:
    """epsilons, td_errors and successes may be left empty (a replayed tail too): NULL, not an error."""
    run_id = register(ingest)
    bare = [
        ingest_pb2.IngestEpisodesRequest(run_id=run_id, first_episode=first, rewards=[1.0] * 10, steps=[3] * 10)
        for first in (0, 5)
    ]
    assert send(ingest, *bare) == [(10, 10), (15, 5)]
    rows = db.execute(
        "SELECT first_episode, episode_count, rewards, epsilons, td_errors, successes FROM run_episodes"
        " WHERE run_id = %s ORDER BY 1",
        (run_id,),
    ).fetchall()
    assert rows == [(0, 10, [1.0] * 10, None, None, None), (10, 5, [1.0] * 5, None, None, None)]
    assert list(full_run(queries, run_id).curves.steps) == [3] * 15


def test_batch_after_a_gap_is_refused(ingest, queries) -> None:
    run_id = register(ingest)
    send(ingest, batch(run_id, 0, 10))
    with pytest.raises(grpc.RpcError) as caught:
        send(ingest, batch(run_id, 12, 5))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_details(caught.value)[1] == "EPISODE_GAP"
    assert full_run(queries, run_id).episodes_recorded == 10


def test_complete_with_missing_episodes_is_refused(ingest, queries) -> None:
    run_id = register(ingest)
    send(ingest, batch(run_id, 0, 10))
    with pytest.raises(grpc.RpcError) as caught:
        ingest.CompleteRun(ingest_pb2.CompleteRunRequest(run_id=run_id, episodes_total=20))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert full_run(queries, run_id).status == resources_pb2.RUN_STATUS_QUEUED


def test_complete_run_is_idempotent_and_keeps_the_streamed_chunks(ingest, queries, db) -> None:
    """Chunks are written once in their final form: no rewrite at completion, so no dead rows."""
    run_id = register(ingest)
    send(ingest, batch(run_id, 0, 30), batch(run_id, 30, 30), batch(run_id, 60, 40))
    request = ingest_pb2.CompleteRunRequest(
        run_id=run_id,
        episodes_total=100,
        test_metrics=params(success_rate=0.96, avg_steps=13.5, avg_reward=7.4),
        execution_time=1.25,
    )
    first = ingest.CompleteRun(request).run
    again = ingest.CompleteRun(request).run
    assert first.status == again.status == resources_pb2.RUN_STATUS_COMPLETED
    assert again.test_metrics["success_rate"] == pytest.approx(0.96)
    rows = db.execute("SELECT first_episode, xmin::text FROM run_episodes WHERE run_id = %s ORDER BY 1", (run_id,))
    chunks = rows.fetchall()
    assert [first for first, _ in chunks] == [0, 30, 60]
    assert list(full_run(queries, run_id).curves.rewards) == [float(-e) for e in range(100)]
    with pytest.raises(grpc.RpcError) as caught:
        send(ingest, batch(run_id, 100, 1))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    again = db.execute("SELECT first_episode, xmin::text FROM run_episodes WHERE run_id = %s ORDER BY 1", (run_id,))
    assert again.fetchall() == chunks  # the same row versions: nothing rewritten


def test_a_run_of_many_small_chunks_is_merged_at_completion(ingest, queries, db) -> None:
    from registry_service.episodes import COMPACT_ABOVE_CHUNKS

    count = COMPACT_ABOVE_CHUNKS + 1
    run_id = register(ingest, planned=count * 2)
    send(ingest, *(batch(run_id, first, 2) for first in range(0, count * 2, 2)))
    ingest.CompleteRun(ingest_pb2.CompleteRunRequest(run_id=run_id, episodes_total=count * 2))
    assert db.execute("SELECT count(*) FROM run_episodes WHERE run_id = %s", (run_id,)).fetchone() == (1,)
    curves = full_run(queries, run_id).curves
    assert list(curves.rewards) == [float(-e) for e in range(count * 2)]
    assert list(curves.successes) == [e % 2 == 0 for e in range(count * 2)]


def test_register_is_idempotent_on_run_id_and_request_id(ingest) -> None:
    run_id = str(uuid.uuid4())
    request_id = f"req-{uuid.uuid4()}"
    request = ingest_pb2.RegisterRunRequest(run_id=run_id, request_id=request_id, algorithm="sarsa", mode="optimized")
    assert ingest.RegisterRun(request).created
    again = ingest.RegisterRun(request)
    assert not again.created and again.run.run_id == run_id
    # A trainer retrying StartRun picks a new run_id: same request otherwise, so the same run.
    retried = ingest.RegisterRun(
        ingest_pb2.RegisterRunRequest(
            run_id=str(uuid.uuid4()), request_id=request_id, algorithm="sarsa", mode="optimized"
        )
    )
    assert not retried.created and retried.run.run_id == run_id
    # AIP-155: the same request_id on a different request (here: another mode) is refused.
    with pytest.raises(grpc.RpcError) as caught:
        ingest.RegisterRun(
            ingest_pb2.RegisterRunRequest(run_id=str(uuid.uuid4()), request_id=request_id, algorithm="sarsa")
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert status_details(caught.value)[1] == "REQUEST_ID_REUSED"


def test_register_validation_names_every_bad_field(ingest, db) -> None:
    before = db.execute("SELECT count(*) FROM training_runs").fetchone()
    with pytest.raises(grpc.RpcError) as caught:
        ingest.RegisterRun(
            ingest_pb2.RegisterRunRequest(
                run_id="not-a-uuid", algorithm="Deep Q!", mode="fast", params=params(alpha="x"), episodes_planned=-1
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in status_details(caught.value)[0]}
    assert fields == {"run_id", "algorithm", "mode", "params.alpha", "episodes_planned"}
    assert db.execute("SELECT count(*) FROM training_runs").fetchone() == before


def test_episode_batch_validation_names_fields(ingest) -> None:
    run_id = register(ingest)
    bad = ingest_pb2.IngestEpisodesRequest(run_id=run_id, first_episode=0, rewards=[1.0, 2.0], steps=[1], epsilons=[1])
    with pytest.raises(grpc.RpcError) as caught:
        send(ingest, bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in status_details(caught.value)[0]} == {"steps", "epsilons"}


def test_unknown_run_is_not_found(ingest, queries) -> None:
    missing = str(uuid.uuid4())
    for call in (
        lambda: send(ingest, batch(missing, 0, 1)),
        lambda: queries.GetRun(registry_pb2.GetRunRequest(run_id=missing)),
        lambda: ingest.Heartbeat(ingest_pb2.HeartbeatRequest(run_id=missing)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_status_heartbeat_and_cancel(ingest) -> None:
    run_id = register(ingest)
    running = ingest.UpdateRunStatus(
        ingest_pb2.UpdateRunStatusRequest(
            run_id=run_id, status=resources_pb2.RUN_STATUS_RUNNING, trainer_id="trainer-a"
        )
    ).run
    assert running.status == resources_pb2.RUN_STATUS_RUNNING
    beat = ingest.Heartbeat(ingest_pb2.HeartbeatRequest(run_id=run_id, trainer_id="trainer-a", episodes_done=3))
    assert not beat.cancel_requested and beat.lease.seconds > 0
    ingest.RequestCancel(ingest_pb2.RequestCancelRequest(run_id=run_id))
    assert ingest.Heartbeat(ingest_pb2.HeartbeatRequest(run_id=run_id)).cancel_requested
    done = ingest.CompleteRun(
        ingest_pb2.CompleteRunRequest(run_id=run_id, status=resources_pb2.RUN_STATUS_CANCELLED, stop_reason="cancelled")
    ).run
    assert done.status == resources_pb2.RUN_STATUS_CANCELLED
    with pytest.raises(grpc.RpcError) as caught:
        ingest.UpdateRunStatus(
            ingest_pb2.UpdateRunStatusRequest(run_id=run_id, status=resources_pb2.RUN_STATUS_RUNNING)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_failed_run_can_be_queued_again_for_resume(ingest) -> None:
    run_id = register(ingest)
    failed = ingest.UpdateRunStatus(
        ingest_pb2.UpdateRunStatusRequest(
            run_id=run_id, status=resources_pb2.RUN_STATUS_FAILED, error_message="worker crashed"
        )
    ).run
    assert failed.status == resources_pb2.RUN_STATUS_FAILED
    queued = ingest.UpdateRunStatus(
        ingest_pb2.UpdateRunStatusRequest(run_id=run_id, status=resources_pb2.RUN_STATUS_QUEUED)
    ).run
    assert queued.status == resources_pb2.RUN_STATUS_QUEUED
    with pytest.raises(grpc.RpcError) as caught:
        ingest.UpdateRunStatus(
            ingest_pb2.UpdateRunStatusRequest(run_id=run_id, status=resources_pb2.RUN_STATUS_COMPLETED)
        )
    assert caught.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)


def upload(stub, run_id: str, kind: int, name: str, data: bytes, episode: int = 0):
    header = ingest_pb2.ArtifactHeader(
        run_id=run_id, kind=kind, name=name, content_type="application/x-npy", episode=episode
    )
    messages = [ingest_pb2.UploadArtifactRequest(header=header)]
    messages += [ingest_pb2.UploadArtifactRequest(chunk=data[i : i + 1000]) for i in range(0, len(data), 1000)]
    return stub.UploadArtifact(iter(messages)).artifact


def test_model_upload_upserts_and_sets_model_path(ingest, queries, db) -> None:
    run_id = register(ingest)
    first = upload(ingest, run_id, resources_pb2.ARTIFACT_KIND_MODEL, "q_table.npy", b"a" * 2500)
    second = upload(ingest, run_id, resources_pb2.ARTIFACT_KIND_MODEL, "q_table.npy", b"b" * 3000)
    assert first.artifact_id == second.artifact_id and second.size_bytes == 3000
    run = queries.GetRun(registry_pb2.GetRunRequest(run_id=run_id)).run
    assert run.model_path == f"artifacts/{second.artifact_id}"
    assert db.execute("SELECT model_size FROM saved_models WHERE run_id = %s", (run_id,)).fetchall() == [(3000,)]
    plot = upload(ingest, run_id, resources_pb2.ARTIFACT_KIND_PLOT, "rewards.png", b"png")
    run = queries.GetRun(registry_pb2.GetRunRequest(run_id=run_id)).run
    assert run.plots["rewards.png"] == plot.artifact_id


def test_latest_checkpoint_is_the_highest_episode(ingest) -> None:
    run_id = register(ingest)
    upload(ingest, run_id, resources_pb2.ARTIFACT_KIND_CHECKPOINT, "episode-000010", b"ten", episode=10)
    upload(ingest, run_id, resources_pb2.ARTIFACT_KIND_CHECKPOINT, "episode-000020", b"x" * 70_000, episode=20)
    upload(ingest, run_id, resources_pb2.ARTIFACT_KIND_CHECKPOINT, "episode-000015", b"fifteen", episode=15)
    replies = list(ingest.GetLatestCheckpoint(ingest_pb2.GetLatestCheckpointRequest(run_id=run_id)))
    assert replies[0].artifact.episode == 20
    assert b"".join(r.chunk for r in replies) == b"x" * 70_000
    assert len(replies) == 2


def test_deleting_a_run_cascades(ingest, db: psycopg.Connection) -> None:
    run_id = register(ingest)
    send(ingest, batch(run_id, 0, 5))
    upload(ingest, run_id, resources_pb2.ARTIFACT_KIND_MODEL, "q_table.npy", b"q")
    db.execute("DELETE FROM training_runs WHERE run_id = %s", (run_id,))
    for table in ("run_episodes", "artifacts", "saved_models"):
        assert db.execute(f"SELECT count(*) FROM {table} WHERE run_id = %s", (run_id,)).fetchone() == (0,)


def test_lifecycle_tables_are_the_run_status_vocabulary() -> None:
    """The statuses UpdateRunStatus, ClaimRun and the lease SQL accept, derived from RunStatus (issue 12)."""
    from registry_service import ingest

    settable = {"queued", "running", "failed", "cancelled", "interrupted"}
    assert ingest.ALLOWED_TRANSITIONS == {
        "queued": settable,
        "running": settable,
        "interrupted": settable,
        "failed": {"queued", "running", "failed"},
    }
    assert ingest.LIVE_STATUSES == {"queued", "running"}
    assert ingest.CLAIMABLE == {"interrupted", "failed"}
    assert ingest.TERMINAL_LIST == ["cancelled", "completed", "failed"]


@pytest.mark.parametrize(
    ("oid", "values"),
    [
        (episodes.FLOAT4_ARRAY_OID, [1.5, -2.25, 0.0, 3.4e38]),
        (episodes.INT4_ARRAY_OID, [0, 1, -7, 2**31 - 1]),
        (episodes.BOOL_ARRAY_OID, [True, False, True]),
        (episodes.FLOAT4_ARRAY_OID, []),
    ],
)
def test_packed_arrays_read_back_as_written(oid: int, values: list[Any]) -> None:
    """unpack is pack's inverse (read_chunks decodes PostgreSQL's binary arrays with numpy)."""
    read = episodes.unpack(episodes.pack(values, oid).data, oid)
    assert read.tolist() == pytest.approx(values)


def inline(kind: int, name: str, data: bytes, **fields) -> ingest_pb2.InlineArtifact:
    return ingest_pb2.InlineArtifact(kind=kind, name=name, content_type="application/x-npy", data=data, **fields)


def completion(run_id: str, *artifacts: ingest_pb2.InlineArtifact, epoch: int = 0) -> ingest_pb2.CompleteRunRequest:
    return ingest_pb2.CompleteRunRequest(run_id=run_id, episodes_total=10, artifacts=list(artifacts), lease_epoch=epoch)


def artifacts_of(db, run_id: str) -> list[tuple[str, str, int]]:
    rows = db.execute("SELECT kind, name, size FROM artifacts WHERE run_id = %s ORDER BY kind, name", (run_id,))
    return rows.fetchall()


def test_complete_run_stores_its_inline_model_in_one_call(ingest, queries, db) -> None:
    """One round trip: the model (with its saved_models row and model_path) and the plots."""
    run_id = register(ingest, planned=10)
    send(ingest, batch(run_id, 0, 10))
    model = inline(resources_pb2.ARTIFACT_KIND_MODEL, "q_table.npy", b"q" * 3000, episode=10)
    model.metadata.update({"policy": "greedy"})
    plot = inline(resources_pb2.ARTIFACT_KIND_PLOT, "rewards.png", b"png")
    request = completion(run_id, model, plot)
    first = ingest.CompleteRun(request).run
    assert first.status == resources_pb2.RUN_STATUS_COMPLETED
    stored = artifacts_of(db, run_id)
    assert stored == [("model", "q_table.npy", 3000), ("plot", "rewards.png", 3)]
    (model_id,) = db.execute(
        "SELECT artifact_id FROM artifacts WHERE run_id = %s AND kind = 'model'", (run_id,)
    ).fetchone()
    assert first.model_path == f"artifacts/{model_id}"
    assert db.execute(
        "SELECT model_size, model_metadata FROM saved_models WHERE run_id = %s", (run_id,)
    ).fetchall() == [(3000, {"policy": "greedy"})]
    assert "rewards.png" in first.plots
    # A replay (the trainer retries blindly) changes nothing: same artifacts, same rows.
    versions = db.execute(
        "SELECT artifact_id, xmin::text FROM artifacts WHERE run_id = %s ORDER BY 1", (run_id,)
    ).fetchall()
    again = ingest.CompleteRun(request).run
    assert again.status == resources_pb2.RUN_STATUS_COMPLETED and again.model_path == first.model_path
    assert (
        db.execute("SELECT artifact_id, xmin::text FROM artifacts WHERE run_id = %s ORDER BY 1", (run_id,)).fetchall()
        == versions
    )


def test_a_complete_run_failing_midway_stores_neither_model_nor_status(ingest, queries, db) -> None:
    """The second artifact's INSERT fails in PostgreSQL (a trigger): the model and the status roll back."""
    run_id = register(ingest, planned=10)
    send(ingest, batch(run_id, 0, 10))
    db.execute(
        """
        CREATE OR REPLACE FUNCTION refuse_explode() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.name = 'explode.png' THEN RAISE EXCEPTION 'disk full (test)'; END IF;
            RETURN NEW;
        END $$
        """
    )
    db.execute(
        "CREATE TRIGGER refuse_explode BEFORE INSERT ON artifacts FOR EACH ROW EXECUTE FUNCTION refuse_explode()"
    )
    db.commit()
    try:
        model = inline(resources_pb2.ARTIFACT_KIND_MODEL, "q_table.npy", b"q" * 100)
        with pytest.raises(grpc.RpcError):
            ingest.CompleteRun(completion(run_id, model, inline(resources_pb2.ARTIFACT_KIND_PLOT, "explode.png", b"x")))
    finally:
        db.execute("DROP TRIGGER refuse_explode ON artifacts")
        db.execute("DROP FUNCTION refuse_explode()")
        db.commit()
    run = full_run(queries, run_id)
    assert run.status == resources_pb2.RUN_STATUS_QUEUED and run.model_path == ""
    assert artifacts_of(db, run_id) == []
    assert db.execute("SELECT count(*) FROM saved_models WHERE run_id = %s", (run_id,)).fetchone() == (0,)
    # The trainer's retry then completes it, with its model.
    done = ingest.CompleteRun(completion(run_id, model)).run
    assert done.status == resources_pb2.RUN_STATUS_COMPLETED and done.model_path


def test_complete_run_inline_artifacts_are_fenced_by_the_lease(ingest, db) -> None:
    run_id = str(uuid.uuid4())
    epoch = ingest.RegisterRun(
        ingest_pb2.RegisterRunRequest(run_id=run_id, algorithm="q_learning", episodes_planned=10, trainer_id="a")
    ).lease_epoch
    send(ingest, batch(run_id, 0, 10))
    ingest.UpdateRunStatus(
        ingest_pb2.UpdateRunStatusRequest(run_id=run_id, status=resources_pb2.RUN_STATUS_INTERRUPTED, lease_epoch=epoch)
    )
    taken = ingest.ClaimRun(ingest_pb2.ClaimRunRequest(run_id=run_id, trainer_id="b"))
    with pytest.raises(grpc.RpcError) as caught:
        ingest.CompleteRun(completion(run_id, inline(resources_pb2.ARTIFACT_KIND_MODEL, "q.npy", b"q"), epoch=epoch))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_details(caught.value)[1] == "LEASE_LOST"
    assert artifacts_of(db, run_id) == []
    assert taken.lease_epoch > epoch


def test_complete_run_inline_artifact_validation_names_the_fields(ingest, db) -> None:
    run_id = register(ingest, planned=10)
    send(ingest, batch(run_id, 0, 10))
    bad = [
        inline(resources_pb2.ARTIFACT_KIND_MODEL, "q.npy", b"q"),
        inline(0, "", b"x", episode=-1),
        inline(resources_pb2.ARTIFACT_KIND_MODEL, "q.npy", b"q"),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        ingest.CompleteRun(completion(run_id, *bad))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {violation.field for violation in status_details(caught.value)[0]}
    for field in ("artifacts[1].kind", "artifacts[1].name", "artifacts[1].episode", "artifacts[2].name"):
        assert field in fields, field
    assert artifacts_of(db, run_id) == []
