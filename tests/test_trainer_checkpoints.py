"""Checkpoints superseded while waiting for their upload are not uploaded (issue 15).

A fast run checkpoints faster than its checkpoints upload; uploading every one of them held
its completion back. Only the latest checkpoint can resume a run, so one with a newer
checkpoint (or the run's completion) queued behind it is skipped.
"""

from __future__ import annotations

import time

import grpc

from taxidriver.registry.v1 import registry_service_pb2 as rpb
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc
from taxidriver.registry.v1 import resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2 as tpb
from taxidriver.trainer.v1 import trainer_service_pb2_grpc as trainer_grpc
from tests.support import InProcessService, LoopThread
from trainer_service.messages import CheckpointTaken


def checkpoint_names(registry: registry_grpc.RegistryServiceStub, run_id: str) -> list[str]:
    listed = registry.ListArtifacts(
        rpb.ListArtifactsRequest(run_id=run_id, kind=resources_pb2.ARTIFACT_KIND_CHECKPOINT)
    )
    return [artifact.name for artifact in listed.artifacts]


def test_a_checkpoint_with_a_newer_one_queued_behind_it_is_not_uploaded(
    loop_thread: LoopThread, trainer: InProcessService, registry: InProcessService
) -> None:
    request = tpb.StartRunRequest(
        algorithm="q_learning",
        mode=tpb.TRAINING_MODE_USER,
        hyperparameters=tpb.Hyperparameters(
            alpha=0.5,
            gamma=0.95,
            epsilon=1.0,
            epsilon_min=0.05,
            epsilon_decay=0.999,
            training_episodes=1_000_000,
            max_steps=200,
        ),
        test_episodes=10,
        checkpoint_every=1_000_000,  # no real checkpoint of its own while the test looks
    )
    with grpc.insecure_channel(trainer.target) as tc, grpc.insecure_channel(registry.target) as rc:
        trainers, registry_stub = trainer_grpc.TrainerServiceStub(tc), registry_grpc.RegistryServiceStub(rc)
        run_id = trainers.StartRun(request).run_id
        runs = trainer.app.runs
        deadline = time.monotonic() + 60
        while run_id not in runs.active and time.monotonic() < deadline:
            time.sleep(0.01)
        data = b"not a real checkpoint: never loaded by this test"
        older = CheckpointTaken(run_id, episode=7, epsilon=0.5, data=data)
        newer = CheckpointTaken(run_id, episode=8, epsilon=0.5, data=data)

        def queue_both() -> None:  # one callback on the trainer's loop: both queued before either is handled
            runs._on_message(older)
            runs._on_message(newer)

        loop_thread.loop.call_soon_threadsafe(queue_both)
        deadline = time.monotonic() + 60
        while "episode-000000008" not in checkpoint_names(registry_stub, run_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        names = checkpoint_names(registry_stub, run_id)
        trainers.CancelRun(tpb.CancelRunRequest(run_id=run_id))
    assert "episode-000000008" in names
    assert "episode-000000007" not in names
