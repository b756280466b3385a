"""A call's context is never touched after the call has ended.

grpc.aio closes a server-streaming generator late when the client stops reading
(cancels, or drops the connection, as `taxi-driver train` does once the run ends).
Reading `context.peer()` from that late exception path read a call object cygrpc
had already released: the registry died with SIGSEGV (issue 10). These tests
abandon streaming calls in every way a client can, against a real registry
process, and require the same process to still be alive and SERVING.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from taxidriver.registry.v1 import registry_service_pb2 as pb
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc
from taxidriver.registry.v1 import resources_pb2
from tests.support import free_port, spawn, stop_process, wait_for_health

REGISTRY = "taxidriver.registry.v1.RegistryService"
EPISODES = 35_000  # several WatchRun episode events (10,000 episodes each)
ROUNDS = 25  # per client thread


def _register(ingest: ingest_grpc.IngestServiceStub, planned: int) -> str:
    run_id = str(uuid.uuid4())
    ingest.RegisterRun(
        ingest_pb2.RegisterRunRequest(run_id=run_id, algorithm="sarsa", episodes_planned=planned), timeout=30
    )
    return run_id


def _store(ingest: ingest_grpc.IngestServiceStub, run_id: str, count: int) -> None:
    request = ingest_pb2.IngestEpisodesRequest(
        run_id=run_id, first_episode=0, rewards=[float(e % 7) for e in range(count)], steps=[3] * count
    )
    list(ingest.IngestEpisodes(iter([request]), timeout=60))


def _upload(ingest: ingest_grpc.IngestServiceStub, run_id: str, size: int) -> str:
    header = ingest_pb2.ArtifactHeader(
        run_id=run_id, kind=resources_pb2.ARTIFACT_KIND_MODEL, name="model", content_type="application/x-npy"
    )
    data = bytes(range(256)) * (size // 256)
    chunks = [ingest_pb2.UploadArtifactRequest(header=header)] + [
        ingest_pb2.UploadArtifactRequest(chunk=data[i : i + 65536]) for i in range(0, len(data), 65536)
    ]
    return ingest.UploadArtifact(iter(chunks), timeout=60).artifact.artifact_id


# Server-streaming calls each round of _abandon opens (call log lines per method).
STREAMS_PER_ROUND = ["WatchRun"] * 4 + ["WatchRuns", "DownloadArtifact", "ExportModel"]


def _calls_logged(log_path: Path) -> int:
    """Call log lines of the streaming methods _abandon uses: one per call, written when it ends."""
    names = {f'"method": "/{REGISTRY}/{name}"' for name in STREAMS_PER_ROUND}
    return sum(1 for line in log_path.read_text().splitlines() if any(name in line for name in names))


def _abandon(target: str, done_run: str, live_run: str, artifact_id: str, model_id: str, rounds: int) -> None:
    """Every way of walking away from a stream: cancel mid-stream, stop reading, drop the connection."""
    for round_index in range(rounds):
        channel = grpc.insecure_channel(target)
        queries = registry_grpc.RegistryServiceStub(channel)
        # 1. Read one event of a long replay, then cancel.
        call = queries.WatchRun(pb.WatchRunRequest(run_id=done_run), timeout=30)
        next(call)
        call.cancel()
        # 2. A live run: the server waits for a wake-up; the client cancels.
        call = queries.WatchRun(pb.WatchRunRequest(run_id=live_run, status_only=True), timeout=30)
        next(call)
        call.cancel()
        # 3. The CLI's way: read until the terminal status, then stop reading and close.
        call = queries.WatchRun(pb.WatchRunRequest(run_id=done_run, from_episode=EPISODES - 5), timeout=30)
        for reply in call:
            if reply.event.HasField("status_change"):
                break
        # 4. Bidirectional watch, abandoned with requests still open.
        requests = iter([pb.WatchRunsRequest(add_run_ids=[done_run, live_run])])
        call = queries.WatchRuns(requests, timeout=30)
        next(call)
        call.cancel()
        # 5. Artifact and model downloads cancelled after the first chunk.
        call = queries.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=artifact_id), timeout=30)
        next(call)
        call.cancel()
        call = queries.ExportModel(pb.ExportModelRequest(model_id=model_id), timeout=30)
        next(call)
        # 6. ... and the connection dropped under a stream still being written.
        if round_index % 2:
            call.cancel()
        call = queries.WatchRun(pb.WatchRunRequest(run_id=done_run), timeout=30)
        next(call)
        channel.close()


@pytest.mark.slow
def test_registry_and_gateway_survive_streams_abandoned_by_clients(database_url: str, registry, tmp_path: Path) -> None:
    """Half of the clients abandon their streams at the registry, half through a gateway process."""
    target = f"127.0.0.1:{free_port()}"
    gateway_target = f"127.0.0.1:{free_port()}"
    log_path, gateway_log = tmp_path / "registry.log", tmp_path / "gateway.log"
    process = spawn(
        "registry_service",
        {"DATABASE_URL": database_url, "REGISTRY_ADDRESS": target, "PYTHONFAULTHANDLER": "1"},
        log_path,
    )
    gateway = spawn(
        "gateway",
        {
            "GATEWAY_ADDRESS": gateway_target,
            "REGISTRY_TARGET": target,
            "TRAINER_TARGETS": f"127.0.0.1:{free_port()}",  # no trainer: not used here
            "GATEWAY_AUTH_REQUIRED": "false",
            "PYTHONFAULTHANDLER": "1",
        },
        gateway_log,
    )
    try:
        wait_for_health(target, REGISTRY)
        wait_for_health(gateway_target, REGISTRY)
        pids = (process.pid, gateway.pid)
        with grpc.insecure_channel(target) as channel:
            ingest = ingest_grpc.IngestServiceStub(channel)
            queries = registry_grpc.RegistryServiceStub(channel)
            done_run = _register(ingest, EPISODES)
            _store(ingest, done_run, EPISODES)
            artifact_id = _upload(ingest, done_run, 1024 * 1024)
            ingest.CompleteRun(ingest_pb2.CompleteRunRequest(run_id=done_run, episodes_total=EPISODES), timeout=30)
            live_run = _register(ingest, 10)
            model_id = queries.ListModels(pb.ListModelsRequest(run_id=done_run), timeout=30).models[0].model_id

        errors: list[BaseException] = []

        def worker(through: str) -> None:
            try:
                _abandon(through, done_run, live_run, artifact_id, model_id, rounds=ROUNDS)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in (target, target, gateway_target, gateway_target)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        # Wait until the servers have recorded (closed) every call abandoned above, or died.
        per_client = ROUNDS * len(STREAMS_PER_ROUND)
        deadline = time.monotonic() + 120
        while (
            time.monotonic() < deadline
            and process.poll() is None
            and gateway.poll() is None
            and (_calls_logged(log_path) < 4 * per_client or _calls_logged(gateway_log) < 2 * per_client)
        ):
            time.sleep(0.2)
        assert process.poll() is None, f"registry died (exit {process.returncode}):\n{log_path.read_text()[-4000:]}"
        assert gateway.poll() is None, f"gateway died (exit {gateway.returncode}):\n{gateway_log.read_text()[-4000:]}"
        assert (process.pid, gateway.pid) == pids
        wait_for_health(target, REGISTRY, timeout=10)
        wait_for_health(gateway_target, REGISTRY, timeout=10)
        # The survivors still answer real queries.
        for through in (target, gateway_target):
            with grpc.insecure_channel(through) as channel:
                stub = registry_grpc.RegistryServiceStub(channel)
                run = stub.GetRun(pb.GetRunRequest(run_id=done_run), timeout=30).run
            assert run.episodes_recorded == EPISODES
        assert not [e for e in errors if not isinstance(e, grpc.RpcError)], errors
    finally:
        gateway_code = stop_process(gateway)
        code = stop_process(process)
    assert code == 0, log_path.read_text()[-4000:]
    assert gateway_code == 0, gateway_log.read_text()[-4000:]
    for path in (log_path, gateway_log):
        assert "Segmentation fault" not in path.read_text()
