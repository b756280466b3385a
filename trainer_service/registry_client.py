"""The trainer's thin client for the registry's internal ingest API.

Calls retry on UNAVAILABLE / DEADLINE_EXCEEDED (taxidriver.retry: jittered, capped backoff): a
registry that restarts must not fail a run that trained fine. Writes for a run this trainer holds retry for
as long as it holds the run (a registry outage of any length must not strand the run); other
calls give up after `retry_for`. Every other error is the caller's, except that a refusal
meaning "this trainer no longer holds the run" is raised as RunLost for held-run writes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2

from taxidriver.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from taxidriver.internal_auth import client_interceptors
from taxidriver.keepalive import channel_options
from taxidriver.reasons.v1.error_reason_pb2 import ErrorReason
from taxidriver.registry.v1 import resources_pb2
from taxidriver.retry import Backoff, RetryPolicy
from taxidriver.vocabulary import error_reason, reason

log = logging.getLogger(__name__)

T = TypeVar("T")
# Backoff between retries of an unreachable registry (seconds).
BACKOFF = Backoff(first=0.05, cap=2.0)
# Registry refusals that mean the run is no longer this trainer's to write: another trainer
# took it (LEASE_LOST), it was deleted (NOT_FOUND) or it already ended (RUN_FINISHED, e.g.
# cancelled while this trainer was cut off).
LOST_REASONS = frozenset({reason(ErrorReason.ERROR_REASON_LEASE_LOST), reason(ErrorReason.ERROR_REASON_RUN_FINISHED)})
CHECKPOINT_NOT_FOUND = reason(ErrorReason.ERROR_REASON_CHECKPOINT_NOT_FOUND)
ARTIFACT_CHUNK_BYTES = 64 * 1024
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def to_struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


class RunLost(Exception):
    """The registry refused a write because this trainer no longer holds the run."""

    def __init__(self, run_id: str, reason: str, details: str) -> None:
        super().__init__(f"run {run_id}: {reason}: {details}")
        self.run_id = run_id
        self.reason = reason


def lost_reason(error: grpc.aio.AioRpcError) -> str:
    """Why a refused write means the run is lost ("" when it does not)."""
    if error.code() == grpc.StatusCode.NOT_FOUND:
        return "RUN_DELETED"
    if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
        refusal = error_reason(error)
        if refusal in LOST_REASONS:
            return refusal
    return ""


class RegistryClient:
    def __init__(
        self, target: str, *, call_timeout: float = 10.0, retry_for: float = 60.0, internal_token: str = ""
    ) -> None:
        self.target = target
        # Message limits and keepalive shared with the registry's server (taxidriver.keepalive);
        # the internal token, when the deployment sets one, on every call.
        self.channel = grpc.aio.insecure_channel(
            target, options=[*channel_options(), *CHANNEL_OPTIONS], interceptors=client_interceptors(internal_token)
        )
        self.stub = ingest_service_pb2_grpc.IngestServiceStub(self.channel)
        self.call_timeout = call_timeout
        self.retry_for = retry_for
        # Other calls give up after `retry_for` seconds; writes for a run we hold never do.
        self.retry = RetryPolicy(backoff=BACKOFF, budget=retry_for)
        self.retry_held = dataclasses.replace(self.retry, budget=None)

    async def close(self) -> None:
        await self.channel.close()

    async def _retry(self, call: Callable[[], Awaitable[T]], what: str, *, held_run: str = "") -> T:
        """Retries an unreachable registry; `held_run`: a write for a run we hold (no time limit)."""
        if not held_run:
            return await self.retry.call(call, f"{what}: registry")

        def refused(error: grpc.aio.AioRpcError) -> None:
            if reason := lost_reason(error):
                raise RunLost(held_run, reason, error.details() or "") from error

        return await self.retry_held.call(call, f"{what}: registry", refused=refused)

    async def register_run(
        self, request: ingest_service_pb2.RegisterRunRequest
    ) -> ingest_service_pb2.RegisterRunResponse:
        return await self._retry(lambda: self.stub.RegisterRun(request, timeout=self.call_timeout), "RegisterRun")

    async def update_status(
        self,
        run_id: str,
        status: resources_pb2.RunStatus,
        *,
        lease_epoch: int,
        trainer_id: str = "",
        stop_reason: str = "",
        error_message: str = "",
    ) -> resources_pb2.Run:
        request = ingest_service_pb2.UpdateRunStatusRequest(
            run_id=run_id,
            status=status,
            trainer_id=trainer_id,
            stop_reason=stop_reason,
            error_message=error_message,
            lease_epoch=lease_epoch,
        )
        reply = await self._retry(
            lambda: self.stub.UpdateRunStatus(request, timeout=self.call_timeout), "UpdateRunStatus", held_run=run_id
        )
        return reply.run

    async def complete_run(self, request: ingest_service_pb2.CompleteRunRequest) -> resources_pb2.Run:
        """`request.lease_epoch` must be set: completing is a write for a run we hold."""
        reply = await self._retry(
            lambda: self.stub.CompleteRun(request, timeout=self.call_timeout), "CompleteRun", held_run=request.run_id
        )
        return reply.run

    async def claim_run(
        self, run_id: str, trainer_id: str, *, requested_by: str = ""
    ) -> ingest_service_pb2.ClaimRunResponse:
        request = ingest_service_pb2.ClaimRunRequest(run_id=run_id, trainer_id=trainer_id, requested_by=requested_by)
        return await self._retry(lambda: self.stub.ClaimRun(request, timeout=self.call_timeout), "ClaimRun")

    async def upload_artifact(
        self,
        run_id: str,
        kind: resources_pb2.ArtifactKind,
        name: str,
        data: bytes,
        *,
        content_type: str,
        lease_epoch: int,
        episode: int = 0,
        metadata: dict[str, Any] | None = None,
    ) -> resources_pb2.Artifact:
        header = ingest_service_pb2.ArtifactHeader(
            run_id=run_id,
            kind=kind,
            name=name,
            content_type=content_type,
            episode=episode,
            metadata=to_struct(metadata or {}),
            lease_epoch=lease_epoch,
        )

        async def requests() -> AsyncIterator[ingest_service_pb2.UploadArtifactRequest]:
            yield ingest_service_pb2.UploadArtifactRequest(header=header)
            for start in range(0, len(data), ARTIFACT_CHUNK_BYTES):
                yield ingest_service_pb2.UploadArtifactRequest(chunk=data[start : start + ARTIFACT_CHUNK_BYTES])

        reply = await self._retry(
            lambda: self.stub.UploadArtifact(requests(), timeout=self.call_timeout * 3),
            f"UploadArtifact {name}",
            held_run=run_id,
        )
        return reply.artifact

    async def get_run(self, run_id: str) -> resources_pb2.Run:
        request = ingest_service_pb2.GetRunSpecRequest(run_id=run_id)
        reply = await self._retry(lambda: self.stub.GetRunSpec(request, timeout=self.call_timeout), "GetRunSpec")
        return reply.run

    async def latest_checkpoint(self, run_id: str) -> tuple[resources_pb2.Artifact, bytes] | None:
        """The newest checkpoint and its bytes; None when the run has none."""

        async def fetch() -> tuple[resources_pb2.Artifact, bytes] | None:
            artifact: resources_pb2.Artifact | None = None
            chunks: list[bytes] = []
            try:
                async for message in self.stub.GetLatestCheckpoint(
                    ingest_service_pb2.GetLatestCheckpointRequest(run_id=run_id), timeout=self.call_timeout * 3
                ):
                    if message.HasField("artifact"):
                        artifact = message.artifact
                    chunks.append(message.chunk)
            except grpc.aio.AioRpcError as error:
                if error_reason(error) == CHECKPOINT_NOT_FOUND:
                    return None
                raise
            if artifact is None:
                return None
            return artifact, b"".join(chunks)

        return await self._retry(fetch, "GetLatestCheckpoint")

    async def heartbeat(
        self, run_id: str, trainer_id: str, episodes_done: int, lease_epoch: int, status: resources_pb2.RunStatus
    ) -> bool:
        """True when a cancel was requested; one attempt (the next beat retries); RunLost if lost."""
        request = ingest_service_pb2.HeartbeatRequest(
            run_id=run_id, trainer_id=trainer_id, episodes_done=episodes_done, lease_epoch=lease_epoch, status=status
        )
        try:
            reply = await self.stub.Heartbeat(request, timeout=self.call_timeout)
        except grpc.aio.AioRpcError as error:
            if reason := lost_reason(error):
                raise RunLost(run_id, reason, error.details() or "") from error
            raise
        return bool(reply.cancel_requested)

    async def request_cancel(self, run_id: str, *, requested_by: str = "") -> resources_pb2.Run:
        request = ingest_service_pb2.RequestCancelRequest(run_id=run_id, requested_by=requested_by)
        reply = await self._retry(lambda: self.stub.RequestCancel(request, timeout=self.call_timeout), "RequestCancel")
        return reply.run
