"""An algorithm added to the trainer is trained and stored end to end: the trainer's registry of
algorithms is the only list (the registry used to keep its own and refused every other name)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from tests.support import ROOT, InProcessService, free_port, spawn, stop_process, wait_for_health

# Loaded at start-up by the trainer process and by every worker it spawns (sitecustomize on
# PYTHONPATH): the trainer gains Q-learning under a name nothing else has ever heard of.
PLUGIN = """
from dataclasses import replace

from trainer_service import algorithms, params

twin = replace(algorithms.ALGORITHMS["q_learning"], name="q_learning_twin", description="Q-learning, renamed")
algorithms.ALGORITHMS[twin.name] = twin
params.PRESETS[twin.name] = params.PRESETS["q_learning"]
"""


@pytest.mark.slow
def test_a_trainer_with_an_extra_algorithm_trains_it_and_the_registry_stores_it(
    registry: InProcessService, tmp_path: Path
) -> None:
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "sitecustomize.py").write_text(PLUGIN)
    target = f"127.0.0.1:{free_port()}"
    env = {
        "PYTHONPATH": os.pathsep.join([str(plugin), str(ROOT)]),
        "TRAINER_ADDRESS": target,
        "REGISTRY_TARGET": registry.target,
        "TRAINER_WORKERS": "1",
    }
    trainer = spawn("trainer_service", env, tmp_path / "trainer.log")
    try:
        wait_for_health(target, "taxidriver.trainer.v1.TrainerService", timeout=300)
        with grpc.insecure_channel(target) as channel, grpc.insecure_channel(registry.target) as registry_channel:
            stub = trainer_service_pb2_grpc.TrainerServiceStub(channel)
            offered = [a.name for a in stub.ListAlgorithms(trainer_service_pb2.ListAlgorithmsRequest()).algorithms]
            assert "q_learning_twin" in offered
            started = stub.StartRun(
                trainer_service_pb2.StartRunRequest(
                    algorithm="q_learning_twin",
                    mode=trainer_service_pb2.TRAINING_MODE_OPTIMIZED,
                    hyperparameters=trainer_service_pb2.Hyperparameters(training_episodes=300),
                    test_episodes=10,
                    seed=3,
                )
            )
            queries = registry_service_pb2_grpc.RegistryServiceStub(registry_channel)
            request = registry_service_pb2.GetRunRequest(run_id=started.run_id)
            deadline = time.monotonic() + 120
            run = queries.GetRun(request).run
            while run.status != resources_pb2.RUN_STATUS_COMPLETED and time.monotonic() < deadline:
                assert run.status not in (resources_pb2.RUN_STATUS_FAILED, resources_pb2.RUN_STATUS_CANCELLED), run
                time.sleep(0.2)
                run = queries.GetRun(request).run
        assert (run.algorithm, run.status, run.episodes_recorded) == (
            "q_learning_twin",
            resources_pb2.RUN_STATUS_COMPLETED,
            300,
        )
    finally:
        stop_process(trainer)
