"""The web service for tests: a real uvicorn server on a loopback port, in front of a secured gateway.

Test modules import the fixtures they use (`from tests.web_support import ...`).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
import uvicorn

from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from tests.support import InProcessService, LoopThread, role_keys, start_gateway_for
from web.app import create_app
from web.settings import WebSettings


class WebServer:
    """uvicorn serving create_app(settings) in a thread, on a socket bound to port 0."""

    def __init__(self, settings: WebSettings) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), log_config=None, access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("web server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


@pytest.fixture(scope="module")
def secured_gateway(
    loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService, tuner: InProcessService
) -> Iterator[InProcessService]:
    """The gateway with keys required, in front of the registry, a trainer and a tuner (conftest's)."""
    service = start_gateway_for(loop_thread, registry=registry, trainer=trainer, tuner=tuner)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def keys(database_url: str, registry: InProcessService) -> dict[str, str]:
    """One API key per role: {"reader": ..., "trainer": ..., "admin": ...}."""
    return role_keys(database_url, "web-test")


@pytest.fixture(scope="module")
def web(secured_gateway: InProcessService) -> Iterator[WebServer]:
    server = WebServer(WebSettings(host="127.0.0.1", port=0, gateway_target=secured_gateway.target))
    yield server
    server.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def http(web: WebServer, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=web.url, headers=bearer(key) if key else {}, timeout=60)


def train(gateway_target: str, key: str, algorithm: str = "q_learning", episodes: int = 300, **extra: Any) -> str:
    """Start a small run through the gateway and wait until it is completed; its id."""
    metadata = (("authorization", f"Bearer {key}"),)
    with grpc.insecure_channel(gateway_target) as channel:
        trainer = trainer_service_pb2_grpc.TrainerServiceStub(channel)
        reply = trainer.StartRun(
            trainer_service_pb2.StartRunRequest(
                algorithm=algorithm,
                mode=trainer_service_pb2.TRAINING_MODE_USER,
                hyperparameters=trainer_service_pb2.Hyperparameters(
                    alpha=extra.get("alpha", 0.5),
                    gamma=0.95,
                    epsilon=1.0,
                    epsilon_min=0.05,
                    epsilon_decay=0.99,
                    training_episodes=episodes,
                    max_steps=200,
                ),
                test_episodes=10,
                seed=extra.get("seed", 7),
            ),
            metadata=metadata,
            timeout=30,
        )
        registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
        for event in registry.WatchRun(
            registry_service_pb2.WatchRunRequest(run_id=reply.run_id, status_only=True), metadata=metadata, timeout=300
        ):
            status = event.event.status_change.status
            if status in (resources_pb2.RUN_STATUS_FAILED, resources_pb2.RUN_STATUS_CANCELLED):
                raise AssertionError(f"run {reply.run_id} ended {status}")
        return reply.run_id
