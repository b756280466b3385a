"""The trainer when the registry takes a run away from it: it stops the run's worker, writes nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import psycopg

from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from taxidriver.vocabulary import STOPPED_WORDS
from tests.support import InProcessService, LoopThread

# Purely random episodes of up to 200 steps: about a minute of training here, far longer
# than the trainer needs to notice that its run is gone (one heartbeat, then one chunk).
LONG_RANDOM_RUN = trainer_service_pb2.Hyperparameters(
    alpha=0.5,
    gamma=0.9,
    epsilon=1.0,
    epsilon_min=1.0,
    epsilon_decay=0.99,
    training_episodes=1_000_000,
    max_steps=200,
)


def wait_until(condition: object, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not true after {timeout}s: {what}"
        time.sleep(0.05)


def test_deleting_a_live_run_stops_its_worker(
    trainer: InProcessService,
    trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub,
    registry_stub: registry_service_pb2_grpc.RegistryServiceStub,
    db: psycopg.Connection,
) -> None:
    request = trainer_service_pb2.StartRunRequest(
        algorithm="q_learning", mode=trainer_service_pb2.TRAINING_MODE_USER, hyperparameters=LONG_RANDOM_RUN, seed=3
    )
    run_id = trainer_stub.StartRun(request, timeout=60).run_id
    pool = trainer.app.runs.pool

    def recorded() -> int:
        found = db.execute("SELECT episodes_recorded FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
        return int(found[0]) if found else 0

    wait_until(lambda: run_id in pool.running() and recorded() > 0, "the run is training", timeout=60)
    deleted = registry_stub.DeleteRun(registry_service_pb2.DeleteRunRequest(run_id=run_id), timeout=30)
    assert deleted.run_id == run_id
    # The worker is freed long before the run could have finished training.
    wait_until(lambda: run_id not in pool.running(), "the worker stopped", timeout=30)
    assert run_id not in trainer.app.runs.active
    # Nothing re-created the run meanwhile.
    assert db.execute("SELECT count(*) FROM training_runs WHERE run_id = %s", (run_id,)).fetchone() == (0,)


def test_cancelling_a_run_whose_trainer_vanished_cancels_it(
    trainer_stub: trainer_service_pb2_grpc.TrainerServiceStub, registry: InProcessService, db: psycopg.Connection
) -> None:
    """A run registered by a trainer that is gone has nobody to act on a cancel request."""
    run_id = str(uuid.uuid4())
    with grpc.insecure_channel(registry.target) as channel:
        ingest_grpc.IngestServiceStub(channel).RegisterRun(
            ingest_pb2.RegisterRunRequest(run_id=run_id, algorithm="q_learning", episodes_planned=10, trainer_id="gone")
        )
    db.execute("UPDATE training_runs SET lease_expires_at = now() - interval '1 second' WHERE run_id = %s", (run_id,))
    reply = trainer_stub.CancelRun(trainer_service_pb2.CancelRunRequest(run_id=run_id), timeout=30)
    assert reply.status == resources_pb2.RUN_STATUS_CANCELLED
    found = db.execute("SELECT status, stop_reason FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
    assert found == ("cancelled", "cancelled")


REGISTER_RUN = "/taxidriver.ingest.v1.IngestService/RegisterRun"


class ReplyLosingProxy(grpc.GenericRpcHandler):
    """A loopback proxy to the registry that forwards every call as raw bytes, except that
    the first RegisterRun's answer is lost on the way back (the run *is* stored)."""

    def __init__(self, upstream: grpc.aio.Channel) -> None:
        self.upstream = upstream
        self.lost_replies = 0

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method

        async def forward(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            call = self.upstream.stream_stream(method)(requests, timeout=context.time_remaining())
            async for reply in call:
                if method == REGISTER_RUN and self.lost_replies == 0:
                    self.lost_replies += 1
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (injected)")
                yield reply

        return grpc.stream_stream_rpc_method_handler(forward)


def test_a_run_whose_registration_answer_was_lost_is_still_trained(
    loop_thread: LoopThread, registry: InProcessService, db: psycopg.Connection
) -> None:
    """RegisterRun stored the run but its answer was lost; the retry finds it: it is ours to train."""
    from trainer_service.app import start_trainer
    from trainer_service.settings import TrainerSettings

    async def start_proxy() -> tuple[grpc.aio.Server, grpc.aio.Channel, ReplyLosingProxy, int]:
        upstream = grpc.aio.insecure_channel(registry.target)
        proxy = ReplyLosingProxy(upstream)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((proxy,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, upstream, proxy, port

    server, upstream, proxy, port = loop_thread.run(start_proxy())
    trainer = InProcessService(
        loop_thread,
        lambda: start_trainer(TrainerSettings(address="127.0.0.1:0", registry_target=f"127.0.0.1:{port}", workers=1)),
    )
    try:
        hyperparameters = trainer_service_pb2.Hyperparameters(
            alpha=0.9, gamma=1.0, epsilon=1.0, epsilon_min=0.0, epsilon_decay=0.99, training_episodes=500, max_steps=200
        )
        request = trainer_service_pb2.StartRunRequest(
            algorithm="q_learning",
            mode=trainer_service_pb2.TRAINING_MODE_USER,
            hyperparameters=hyperparameters,
            seed=5,
            request_id=str(uuid.uuid4()),
        )
        with grpc.insecure_channel(trainer.target) as channel:
            started = trainer_service_pb2_grpc.TrainerServiceStub(channel).StartRun(request, timeout=60)
        assert proxy.lost_replies == 1
        assert db.execute(
            "SELECT count(*) FROM training_runs WHERE request_id = %s", (request.request_id,)
        ).fetchone() == (1,)

        def status() -> str:
            found = db.execute("SELECT status FROM training_runs WHERE run_id = %s", (started.run_id,)).fetchone()
            return str(found[0]) if found else ""

        wait_until(lambda: status() in STOPPED_WORDS, "run finished", 60)
        assert status() == "completed"
    finally:
        trainer.stop()
        loop_thread.run(server.stop(0))
        loop_thread.run(upstream.close())
