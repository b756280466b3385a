"""Watching several runs at once, lease expiry, and the registry as a real process."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from taxidriver.registry.v1 import registry_service_pb2 as pb
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc
from taxidriver.registry.v1 import resources_pb2
from tests.support import free_port, spawn, stop_process, wait_for_health


@pytest.fixture()
def channel(registry) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(registry.target) as channel:
        yield channel


def new_run(ingest: ingest_grpc.IngestServiceStub, planned: int = 5) -> str:
    run_id = str(uuid.uuid4())
    ingest.RegisterRun(ingest_pb2.RegisterRunRequest(run_id=run_id, algorithm="sarsa", episodes_planned=planned))
    return run_id


def store(ingest: ingest_grpc.IngestServiceStub, run_id: str, first: int, count: int) -> None:
    episodes = range(first, first + count)
    request = ingest_pb2.IngestEpisodesRequest(
        run_id=run_id, first_episode=first, rewards=[float(e) for e in episodes], steps=[1 for _ in episodes]
    )
    list(ingest.IngestEpisodes(iter([request])))


def test_watch_runs_interleaves_runs_and_ends_after_both_finish(channel: grpc.Channel) -> None:
    ingest = ingest_grpc.IngestServiceStub(channel)
    queries = registry_grpc.RegistryServiceStub(channel)
    first, second = new_run(ingest), new_run(ingest)
    store(ingest, first, 0, 2)
    requests: queue.Queue[pb.WatchRunsRequest | None] = queue.Queue()
    requests.put(pb.WatchRunsRequest(add_run_ids=[first, second]))

    def request_stream() -> Iterator[pb.WatchRunsRequest]:
        while (item := requests.get()) is not None:
            yield item

    events: list[resources_pb2.RunEvent] = []
    seen_replay = threading.Event()

    def watch() -> None:
        for reply in queries.WatchRuns(request_stream(), timeout=60):
            events.append(reply.event)
            if reply.event.HasField("episodes"):
                seen_replay.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert seen_replay.wait(30)
    store(ingest, second, 0, 5)
    requests.put(None)  # half-close: the stream still ends only when both runs are terminal
    ingest.CompleteRun(ingest_pb2.CompleteRunRequest(run_id=second, episodes_total=5))
    ingest.CompleteRun(
        ingest_pb2.CompleteRunRequest(run_id=first, episodes_total=2, status=resources_pb2.RUN_STATUS_FAILED)
    )
    watcher.join(30)
    assert not watcher.is_alive()
    episodes = {}
    for event in events:
        if event.HasField("episodes"):
            episodes.setdefault(event.run_id, []).extend(event.episodes.rewards)
    assert episodes == {first: [0.0, 1.0], second: [0.0, 1.0, 2.0, 3.0, 4.0]}
    finals = {e.run_id: e.status_change.status for e in events if e.HasField("status_change")}
    assert finals == {first: resources_pb2.RUN_STATUS_FAILED, second: resources_pb2.RUN_STATUS_COMPLETED}


def test_watch_of_an_unknown_run_is_not_found(channel: grpc.Channel) -> None:
    queries = registry_grpc.RegistryServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        list(queries.WatchRun(pb.WatchRunRequest(run_id=str(uuid.uuid4())), timeout=10))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_status_only_watch_skips_episodes(channel: grpc.Channel) -> None:
    ingest = ingest_grpc.IngestServiceStub(channel)
    queries = registry_grpc.RegistryServiceStub(channel)
    run_id = new_run(ingest, planned=3)
    store(ingest, run_id, 0, 3)
    ingest.CompleteRun(ingest_pb2.CompleteRunRequest(run_id=run_id, episodes_total=3))
    events = [r.event for r in queries.WatchRun(pb.WatchRunRequest(run_id=run_id, status_only=True), timeout=10)]
    assert [e.WhichOneof("event") for e in events] == ["status_change"]
    assert events[0].status_change.episodes_recorded == 3


def test_expired_lease_interrupts_the_run(channel: grpc.Channel, db) -> None:
    ingest = ingest_grpc.IngestServiceStub(channel)
    run_id = new_run(ingest)
    ingest.UpdateRunStatus(
        ingest_pb2.UpdateRunStatusRequest(run_id=run_id, status=resources_pb2.RUN_STATUS_RUNNING, trainer_id="gone")
    )
    db.execute("UPDATE training_runs SET lease_expires_at = now() - interval '1 second' WHERE run_id = %s", (run_id,))
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        status = db.execute("SELECT status, stop_reason FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
        if status[0] == "interrupted":
            break
        time.sleep(0.2)
    assert status == ("interrupted", "lease_expired")


@pytest.mark.slow
def test_registry_process_serves_and_drains_on_sigterm(database_url: str, registry, tmp_path: Path) -> None:
    port = free_port()
    process = spawn(
        "registry_service",
        {"DATABASE_URL": database_url, "REGISTRY_ADDRESS": f"127.0.0.1:{port}"},
        tmp_path / "registry.log",
    )
    try:
        wait_for_health(f"127.0.0.1:{port}", "taxidriver.registry.v1.RegistryService")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = registry_grpc.RegistryServiceStub(channel).ListRuns(pb.ListRunsRequest(page_size=1))
        assert reply.total_size >= 0
    finally:
        code = stop_process(process)
    assert code == 0, (tmp_path / "registry.log").read_text()[-3000:]
    assert '"level": "info"' in (tmp_path / "registry.log").read_text()
