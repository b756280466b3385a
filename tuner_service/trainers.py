"""The trainers, balanced per call the way the gateway balances them (round robin over targets,
each target itself round robin over its resolved addresses: a headless Service in a cluster)."""

from __future__ import annotations

import itertools
from typing import Any

import grpc

from taxidriver.internal_auth import client_interceptors
from taxidriver.keepalive import channel_options
from taxidriver.trainer.v1 import trainer_service_pb2_grpc

# The gateway's upstream options (gateway/forwarding.py UPSTREAM_OPTIONS): per-call round robin
# over a dns:/// target's addresses, no hidden retries, quick reconnects to a restarted trainer.
BALANCED_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


class TrainerPool:
    def __init__(self, targets: tuple[str, ...], *, internal_token: str = "") -> None:
        self.targets = targets
        options = [*channel_options(), *BALANCED_OPTIONS]
        self.channels = [
            grpc.aio.insecure_channel(target, options=options, interceptors=client_interceptors(internal_token))
            for target in targets
        ]
        self.stubs = [trainer_service_pb2_grpc.TrainerServiceStub(channel) for channel in self.channels]
        self._counter = itertools.count()

    def pick(self) -> trainer_service_pb2_grpc.TrainerServiceStub:
        return self.stubs[next(self._counter) % len(self.stubs)]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
