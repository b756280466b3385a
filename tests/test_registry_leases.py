"""One writer per run: lease epochs fence every trainer write; every live run has a way out.

Against the session's in-process registry and real PostgreSQL. The process-level faults
(a paused registry, a long outage, a SIGKILLed trainer) are in test_faults_processes.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import psycopg
import pytest

from taxidriver.errors import status_details
from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from taxidriver.registry.v1 import registry_service_pb2 as registry_pb2
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc
from taxidriver.registry.v1 import resources_pb2
from tests.support import InProcessService

STATUS = resources_pb2


def register(ingest: ingest_grpc.IngestServiceStub, planned: int = 10) -> tuple[str, int]:
    run_id = str(uuid.uuid4())
    reply = ingest.RegisterRun(
        ingest_pb2.RegisterRunRequest(run_id=run_id, algorithm="q_learning", episodes_planned=planned, trainer_id="a")
    )
    assert reply.created
    return run_id, reply.lease_epoch


def episodes(run_id: str, first: int, count: int, epoch: int) -> ingest_pb2.IngestEpisodesRequest:
    return ingest_pb2.IngestEpisodesRequest(
        run_id=run_id,
        first_episode=first,
        rewards=[float(e) for e in range(first, first + count)],
        steps=[1] * count,
        lease_epoch=epoch,
    )


def upload(run_id: str, epoch: int) -> Iterator[ingest_pb2.UploadArtifactRequest]:
    header = ingest_pb2.ArtifactHeader(
        run_id=run_id, kind=STATUS.ARTIFACT_KIND_MODEL, name="q_table.npy", content_type="x", lease_epoch=epoch
    )
    yield ingest_pb2.UploadArtifactRequest(header=header)
    yield ingest_pb2.UploadArtifactRequest(chunk=b"\x00" * 16)


def refused(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), status_details(caught.value)[1]


def state(db: psycopg.Connection, run_id: str) -> tuple[Any, ...]:
    found = db.execute(
        "SELECT status, episodes_recorded, lease_epoch, trainer_id, stop_reason,"
        " (SELECT count(*) FROM artifacts a WHERE a.run_id = r.run_id)"
        " FROM training_runs r WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    assert found is not None
    return tuple(found)


def wait_status(db: psycopg.Connection, run_id: str, wanted: str, timeout: float = 60.0) -> tuple[Any, ...]:
    deadline = time.monotonic() + timeout
    while (found := state(db, run_id))[0] != wanted:
        assert time.monotonic() < deadline, f"run {run_id} still {found} after {timeout}s"
        time.sleep(0.05)
    return found


def interrupt(ingest: ingest_grpc.IngestServiceStub, run_id: str, epoch: int) -> None:
    ingest.UpdateRunStatus(
        ingest_pb2.UpdateRunStatusRequest(run_id=run_id, status=STATUS.RUN_STATUS_INTERRUPTED, lease_epoch=epoch)
    )


def test_registering_holds_epoch_one_and_each_claim_moves_it_on(
    ingest: ingest_grpc.IngestServiceStub, db: psycopg.Connection
) -> None:
    run_id, epoch = register(ingest)
    assert epoch == 1
    interrupt(ingest, run_id, epoch)
    claimed = ingest.ClaimRun(ingest_pb2.ClaimRunRequest(run_id=run_id, trainer_id="b"))
    assert claimed.lease_epoch == 2
    assert claimed.run.status == STATUS.RUN_STATUS_QUEUED
    assert state(db, run_id)[:4] == ("queued", 0, 2, "b")


def test_a_stale_epoch_is_refused_on_every_write_and_nothing_is_stored(
    ingest: ingest_grpc.IngestServiceStub, db: psycopg.Connection
) -> None:
    run_id, stale = register(ingest)
    ingest.UpdateRunStatus(
        ingest_pb2.UpdateRunStatusRequest(run_id=run_id, status=STATUS.RUN_STATUS_RUNNING, lease_epoch=stale)
    )
    list(ingest.IngestEpisodes(iter([episodes(run_id, 0, 3, stale)])))
    interrupt(ingest, run_id, stale)
    current = ingest.ClaimRun(ingest_pb2.ClaimRunRequest(run_id=run_id, trainer_id="b")).lease_epoch
    before = state(db, run_id)
    writes: dict[str, Callable[[], Any]] = {
        "IngestEpisodes": lambda: list(ingest.IngestEpisodes(iter([episodes(run_id, 3, 2, stale)]))),
        "Heartbeat": lambda: ingest.Heartbeat(
            ingest_pb2.HeartbeatRequest(run_id=run_id, trainer_id="a", episodes_done=5, lease_epoch=stale)
        ),
        "UpdateRunStatus": lambda: ingest.UpdateRunStatus(
            ingest_pb2.UpdateRunStatusRequest(
                run_id=run_id, status=STATUS.RUN_STATUS_RUNNING, trainer_id="a", lease_epoch=stale
            )
        ),
        "UploadArtifact": lambda: ingest.UploadArtifact(upload(run_id, stale)),
        "CompleteRun": lambda: ingest.CompleteRun(
            ingest_pb2.CompleteRunRequest(run_id=run_id, episodes_total=3, lease_epoch=stale)
        ),
    }
    outcomes = {name: refused(call) for name, call in writes.items()}
    assert outcomes == {name: (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST") for name in writes}
    assert state(db, run_id) == before == ("queued", 3, current, "b", "", 0)
    # The holder of the current epoch writes as usual.
    list(ingest.IngestEpisodes(iter([episodes(run_id, 3, 2, current)])))
    ingest.UploadArtifact(upload(run_id, current))
    ingest.CompleteRun(ingest_pb2.CompleteRunRequest(run_id=run_id, episodes_total=5, lease_epoch=current))
    assert state(db, run_id) == ("completed", 5, current, "b", "episodes_done", 1)


def test_only_a_run_nobody_holds_can_be_claimed(ingest: ingest_grpc.IngestServiceStub, db: psycopg.Connection) -> None:
    run_id, epoch = register(ingest, planned=2)
    for status in (STATUS.RUN_STATUS_QUEUED, STATUS.RUN_STATUS_RUNNING):
        ingest.UpdateRunStatus(ingest_pb2.UpdateRunStatusRequest(run_id=run_id, status=status, lease_epoch=epoch))
        code, reason = refused(lambda: ingest.ClaimRun(ingest_pb2.ClaimRunRequest(run_id=run_id, trainer_id="b")))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RUN_NOT_RESUMABLE")
    interrupt(ingest, run_id, epoch)
    # Two trainers resume at once: one wins; the loser is refused and the winner's epoch stands.
    first = ingest.ClaimRun(ingest_pb2.ClaimRunRequest(run_id=run_id, trainer_id="b"))
    code, reason = refused(lambda: ingest.ClaimRun(ingest_pb2.ClaimRunRequest(run_id=run_id, trainer_id="c")))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RUN_NOT_RESUMABLE")
    assert state(db, run_id)[2:4] == (first.lease_epoch, "b")
    list(ingest.IngestEpisodes(iter([episodes(run_id, 0, 2, first.lease_epoch)])))
    ingest.CompleteRun(ingest_pb2.CompleteRunRequest(run_id=run_id, episodes_total=2, lease_epoch=first.lease_epoch))
    code, reason = refused(lambda: ingest.ClaimRun(ingest_pb2.ClaimRunRequest(run_id=run_id, trainer_id="c")))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RUN_NOT_RESUMABLE")


def test_a_queued_run_whose_trainer_vanished_is_interrupted_then_resumable(
    ingest: ingest_grpc.IngestServiceStub, db: psycopg.Connection
) -> None:
    run_id, _ = register(ingest)
    # Its trainer registered it, then was gone for longer than a lease.
    db.execute("UPDATE training_runs SET lease_expires_at = now() - interval '1 second' WHERE run_id = %s", (run_id,))
    _, _, epoch, _, stop_reason, _ = wait_status(db, run_id, "interrupted")
    assert (stop_reason, epoch) == ("lease_expired", 1)
    assert ingest.ClaimRun(ingest_pb2.ClaimRunRequest(run_id=run_id, trainer_id="b")).lease_epoch == 2


def test_cancelling_a_stranded_queued_run_cancels_it(
    ingest: ingest_grpc.IngestServiceStub, db: psycopg.Connection
) -> None:
    run_id, epoch = register(ingest)
    db.execute("UPDATE training_runs SET lease_expires_at = now() - interval '1 second' WHERE run_id = %s", (run_id,))
    reply = ingest.RequestCancel(ingest_pb2.RequestCancelRequest(run_id=run_id))
    assert reply.run.status == STATUS.RUN_STATUS_CANCELLED
    status, _, current, _, stop_reason, _ = state(db, run_id)
    assert (status, stop_reason) == ("cancelled", "cancelled")
    # Its trainer, should it come back, is refused.
    assert current > epoch
    code, reason = refused(lambda: list(ingest.IngestEpisodes(iter([episodes(run_id, 0, 1, epoch)]))))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")


def test_cancelling_a_held_run_leaves_it_to_its_trainer(
    ingest: ingest_grpc.IngestServiceStub, db: psycopg.Connection
) -> None:
    run_id, epoch = register(ingest)
    ingest.Heartbeat(ingest_pb2.HeartbeatRequest(run_id=run_id, trainer_id="a", lease_epoch=epoch))
    reply = ingest.RequestCancel(ingest_pb2.RequestCancelRequest(run_id=run_id))
    assert reply.run.status == STATUS.RUN_STATUS_QUEUED
    beat = ingest.Heartbeat(ingest_pb2.HeartbeatRequest(run_id=run_id, trainer_id="a", lease_epoch=epoch))
    assert beat.cancel_requested


def test_an_abandoned_live_run_is_purged_after_the_cutoff(
    queries: registry_grpc.RegistryServiceStub, ingest: ingest_grpc.IngestServiceStub, db: psycopg.Connection
) -> None:
    run_id, _ = register(ingest)
    db.execute(
        "UPDATE training_runs SET created_at = now() - interval '40 days', updated_at = now() - interval '40 days',"
        " lease_expires_at = NULL WHERE run_id = %s",
        (run_id,),
    )
    queries.PurgeRuns(registry_pb2.PurgeRunsRequest(older_than_days=30))
    assert db.execute("SELECT count(*) FROM training_runs WHERE run_id = %s", (run_id,)).fetchone() == (0,)


def test_a_live_run_under_its_trainer_is_never_purged(
    queries: registry_grpc.RegistryServiceStub, ingest: ingest_grpc.IngestServiceStub, db: psycopg.Connection
) -> None:
    run_id, epoch = register(ingest)
    db.execute("UPDATE training_runs SET created_at = now() - interval '40 days' WHERE run_id = %s", (run_id,))
    ingest.Heartbeat(ingest_pb2.HeartbeatRequest(run_id=run_id, trainer_id="a", lease_epoch=epoch))
    queries.PurgeRuns(registry_pb2.PurgeRunsRequest(older_than_days=30))
    assert state(db, run_id)[0] == "queued"


def test_its_holder_takes_back_a_run_whose_lease_ran_out_while_nobody_took_it(
    ingest: ingest_grpc.IngestServiceStub, db: psycopg.Connection
) -> None:
    run_id, epoch = register(ingest)
    ingest.UpdateRunStatus(
        ingest_pb2.UpdateRunStatusRequest(run_id=run_id, status=STATUS.RUN_STATUS_RUNNING, lease_epoch=epoch)
    )
    # Its trainer was paused (or cut off) past its lease; the registry, alive all along, expired it.
    db.execute("UPDATE training_runs SET lease_expires_at = now() - interval '1 second' WHERE run_id = %s", (run_id,))
    assert wait_status(db, run_id, "interrupted")[4] == "lease_expired"
    ingest.Heartbeat(
        ingest_pb2.HeartbeatRequest(run_id=run_id, trainer_id="a", lease_epoch=epoch, status=STATUS.RUN_STATUS_RUNNING)
    )
    assert state(db, run_id)[:5] == ("running", 0, epoch, "a", "")
    live = db.execute("SELECT lease_expires_at > now() FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
    assert live == (True,)


def test_an_expired_run_someone_else_took_stays_theirs(
    ingest: ingest_grpc.IngestServiceStub, db: psycopg.Connection
) -> None:
    run_id, epoch = register(ingest)
    interrupt(ingest, run_id, epoch)
    db.execute("UPDATE training_runs SET stop_reason = 'lease_expired' WHERE run_id = %s", (run_id,))
    taken = ingest.ClaimRun(ingest_pb2.ClaimRunRequest(run_id=run_id, trainer_id="b")).lease_epoch
    code, reason = refused(
        lambda: ingest.Heartbeat(
            ingest_pb2.HeartbeatRequest(
                run_id=run_id, trainer_id="a", lease_epoch=epoch, status=STATUS.RUN_STATUS_RUNNING
            )
        )
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    assert state(db, run_id)[:4] == ("queued", 0, taken, "b")


def test_of_trainers_claiming_at_once_exactly_one_wins(
    registry: InProcessService, ingest: ingest_grpc.IngestServiceStub, db: psycopg.Connection
) -> None:
    run_id, epoch = register(ingest)
    interrupt(ingest, run_id, epoch)
    start = threading.Barrier(8)

    def claim(trainer: str) -> str:
        with grpc.insecure_channel(registry.target) as channel:
            stub = ingest_grpc.IngestServiceStub(channel)
            start.wait(30)
            try:
                stub.ClaimRun(ingest_pb2.ClaimRunRequest(run_id=run_id, trainer_id=trainer), timeout=30)
                return "won"
            except grpc.RpcError as error:
                return status_details(error)[1]

    with ThreadPoolExecutor(8) as executor:
        outcomes = list(executor.map(claim, [f"t{i}" for i in range(8)]))
    assert sorted(outcomes) == ["RUN_NOT_RESUMABLE"] * 7 + ["won"]
    winner = f"t{outcomes.index('won')}"
    assert state(db, run_id)[:4] == ("queued", 0, epoch + 1, winner)
