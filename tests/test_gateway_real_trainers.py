"""With the real services: StartRun through the gateway lands on both trainers in turn."""

from __future__ import annotations

import grpc
import psycopg

from gateway.app import start_gateway
from gateway.settings import GatewaySettings
from taxidriver.client import TaxiDriverClient
from taxidriver.vocabulary import STOPPED_STATUSES
from tests.support import InProcessService, LoopThread, wait_for_health

TRAINER = "taxidriver.trainer.v1.TrainerService"


def test_runs_are_spread_over_two_trainers(
    loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService, db: psycopg.Connection
) -> None:
    from trainer_service.app import start_trainer
    from trainer_service.settings import TrainerSettings

    second = InProcessService(
        loop_thread,
        lambda: start_trainer(TrainerSettings(address="127.0.0.1:0", registry_target=registry.target, workers=1)),
    )
    # A trainer still warming up is NOT_SERVING and the gateway rightly skips it.
    wait_for_health(second.target, TRAINER, timeout=300)
    gateway = InProcessService(
        loop_thread,
        lambda: start_gateway(
            GatewaySettings(
                auth_required=False,
                address="127.0.0.1:0",
                trainer_targets=(trainer.target, second.target),
                registry_target=registry.target,
            )
        ),
    )
    try:
        wait_for_health(gateway.target, TRAINER, timeout=30)
        with TaxiDriverClient(gateway.target) as client:
            run_ids = [
                client.start_run("brute_force", mode="optimized", test_episodes=3, seed=seed).run_id
                for seed in range(4)
            ]
            for run_id in run_ids:
                for event in client.watch_run(run_id, status_only=True, timeout=120):
                    if event.status_change.status in STOPPED_STATUSES:
                        break
        rows = db.execute(
            "SELECT trainer_id, count(*) FROM training_runs WHERE run_id = ANY(%s::uuid[]) GROUP BY trainer_id",
            (run_ids,),
        ).fetchall()
        expected = {trainer.app.runs.trainer_id, second.app.runs.trainer_id}
        assert {row[0] for row in rows} == expected
        assert sorted(row[1] for row in rows) == [2, 2]
    finally:
        gateway.stop(0.5)
        second.stop(1.0)


def test_gateway_fixture_serves_both_public_services(gateway: InProcessService) -> None:
    for service in ("", TRAINER, "taxidriver.registry.v1.RegistryService"):
        wait_for_health(gateway.target, service, timeout=30)
    with grpc.insecure_channel(gateway.target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
