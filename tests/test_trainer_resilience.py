"""Cancel, interrupt + resume (exactly the same Q-table), and streaming through a registry outage."""

from __future__ import annotations

import asyncio
import io
import time
import uuid

import grpc
import numpy as np
import psycopg
import pytest

from taxidriver.ingest.v1 import ingest_service_pb2
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from tests.support import InProcessService, LoopThread, free_port
from tests.test_trainer_service import wait_terminal
from trainer_service.engine import EpisodeColumns
from trainer_service.registry_client import RegistryClient, to_struct
from trainer_service.streamer import EpisodeStreamer


def long_request(seed: int) -> trainer_service_pb2.StartRunRequest:
    return trainer_service_pb2.StartRunRequest(
        algorithm="q_learning",
        mode=trainer_service_pb2.TRAINING_MODE_USER,
        hyperparameters=trainer_service_pb2.Hyperparameters(
            alpha=0.5,
            gamma=0.9,
            epsilon=1.0,
            epsilon_min=0.1,
            epsilon_decay=0.995,
            training_episodes=300_000,
            max_steps=200,
        ),
        seed=seed,
        test_episodes=10,
        checkpoint_every=20_000,
    )


def wait_running(stub: registry_service_pb2_grpc.RegistryServiceStub, run_id: str, min_episodes: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = stub.GetRun(registry_service_pb2.GetRunRequest(run_id=run_id)).run
        if run.status == resources_pb2.RUN_STATUS_RUNNING and run.episodes_recorded >= min_episodes:
            return
        time.sleep(0.01)
    raise TimeoutError(f"run {run_id} did not reach {min_episodes} episodes")


def model(stub: registry_service_pb2_grpc.RegistryServiceStub, run: resources_pb2.Run) -> np.ndarray:
    request = registry_service_pb2.DownloadArtifactRequest(artifact_id=run.model_path.removeprefix("artifacts/"))
    return np.load(io.BytesIO(b"".join(m.chunk for m in stub.DownloadArtifact(request))))


def test_interrupted_run_resumes_to_exactly_the_same_q_table(
    trainer: InProcessService,
    trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub,
    registry_stub: registry_service_pb2_grpc.RegistryServiceStub,
) -> None:
    interrupted = trainer_stub.StartRun(long_request(seed=11)).run_id
    wait_running(registry_stub, interrupted, 20_000)
    # What SIGTERM does to every running run: checkpoint, stop, INTERRUPTED.
    assert trainer.app.runs.pool.signal(interrupted, cancel=False)
    run = wait_terminal(registry_stub, interrupted)
    assert run.status == resources_pb2.RUN_STATUS_INTERRUPTED
    assert 0 < run.episodes_recorded < 300_000
    resumed = trainer_stub.ResumeRun(trainer_service_pb2.ResumeRunRequest(run_id=interrupted))
    # The newest checkpoint: a periodic one (a multiple of 20,000) or the one
    # taken when the run was interrupted; never beyond what was stored.
    assert 20_000 <= resumed.resumed_from_episode <= run.episodes_recorded
    straight = trainer_stub.StartRun(long_request(seed=11)).run_id
    first = wait_terminal(registry_stub, interrupted)
    second = wait_terminal(registry_stub, straight)
    assert first.status == second.status == resources_pb2.RUN_STATUS_COMPLETED, first.error_message
    assert first.episodes_recorded == second.episodes_recorded == 300_000
    assert np.array_equal(model(registry_stub, first), model(registry_stub, second))
    assert first.training_metrics["avg_reward"] == second.training_metrics["avg_reward"]
    assert first.system_metrics["resumed_from_episode"] == resumed.resumed_from_episode


def test_cancel_stops_a_running_run(
    trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub,
    registry_stub: registry_service_pb2_grpc.RegistryServiceStub,
) -> None:
    run_id = trainer_stub.StartRun(long_request(seed=12)).run_id
    wait_running(registry_stub, run_id, 1)
    reply = trainer_stub.CancelRun(trainer_service_pb2.CancelRunRequest(run_id=run_id))
    assert reply.status == resources_pb2.RUN_STATUS_CANCELLED
    run = wait_terminal(registry_stub, run_id)
    assert run.status == resources_pb2.RUN_STATUS_CANCELLED
    assert 0 < run.episodes_recorded < 300_000
    with pytest.raises(grpc.RpcError) as caught:
        trainer_stub.ResumeRun(trainer_service_pb2.ResumeRunRequest(run_id=run_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_streamer_buffers_spills_and_replays_through_a_registry_outage(
    loop_thread: LoopThread, database_url: str, registry: InProcessService, db: psycopg.Connection, tmp_path
) -> None:
    from registry_service.app import start_registry
    from registry_service.settings import RegistrySettings

    run_id = str(uuid.uuid4())
    port = free_port()

    async def register() -> None:
        client = RegistryClient(registry.target)
        await client.register_run(
            ingest_service_pb2.RegisterRunRequest(
                run_id=run_id,
                algorithm="q_learning",
                mode="user",
                env_id="Taxi-v3",
                params=to_struct({"alpha": 0.5}),
                episodes_planned=5000,
            )
        )
        await client.close()

    loop_thread.run(register())
    # The streamer talks to a registry address where nobody listens yet.
    client_box: dict[str, object] = {}

    async def start_streaming() -> None:
        client = RegistryClient(f"127.0.0.1:{port}")
        streamer = EpisodeStreamer(client, run_id, max_buffered_episodes=1500, spill_dir=tmp_path)
        streamer.start()
        for first in range(0, 5000, 500):
            columns = EpisodeColumns.empty(first, 500)
            columns.rewards[:] = np.arange(first, first + 500)
            columns.steps[:] = 7
            streamer.add(columns)
        client_box.update(client=client, streamer=streamer)
        await asyncio.sleep(0.5)

    loop_thread.run(start_streaming())
    streamer = client_box["streamer"]
    assert isinstance(streamer, EpisodeStreamer)
    assert streamer.acked == 0 and streamer.buffered_episodes == 5000
    assert streamer.spilled_batches == 7  # 1500 in memory, the rest on disk
    assert any(tmp_path.iterdir())
    # The registry comes back on that address: everything is replayed, once.
    second = InProcessService(
        loop_thread,
        lambda: start_registry(RegistrySettings(address=f"127.0.0.1:{port}", database_url=database_url)),
    )
    try:
        recorded = loop_thread.run(streamer.flush(wait_s=60))
        assert recorded == 5000
        loop_thread.run(streamer.close())
        client = client_box["client"]
        assert isinstance(client, RegistryClient)
        loop_thread.run(client.close())
    finally:
        second.stop()
    assert not any(tmp_path.iterdir())  # spill files are removed once acked
    with grpc.insecure_channel(registry.target) as channel:
        run = (
            registry_service_pb2_grpc.RegistryServiceStub(channel)
            .GetRun(registry_service_pb2.GetRunRequest(run_id=run_id, view=resources_pb2.RUN_VIEW_FULL))
            .run
        )
    assert run.episodes_recorded == 5000
    assert list(run.curves.rewards) == [float(i) for i in range(5000)]
    assert streamer.reconnects > 0
