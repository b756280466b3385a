"""Clients of the public API: a thin layer over the generated stubs, and a friendlier one.

`RawClient` is just a channel and the two public stubs (for code that wants
the protos as they are). `TaxiDriverClient` is what people and the CLI use:
plain arguments, page tokens followed for you, streams of chunks joined into
bytes, and every gRPC failure turned into one `ClientError` that carries the
status code, message and the field violations of a rich error.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2, struct_pb2

from taxidriver.errors import FieldViolation, status_details
from taxidriver.keepalive import channel_options
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.settings import TAXI_DRIVER_API_KEY, TAXI_DRIVER_GATEWAY
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from taxidriver.tuner.v1 import tuner_service_pb2, tuner_service_pb2_grpc
from taxidriver.vocabulary import MODE_NUMBERS, status_word

CHUNK_BYTES = 256 * 1024
# "optimized" -> TRAINING_MODE_OPTIMIZED, from the TrainingMode enum.
MODES: dict[str, int] = MODE_NUMBERS
T = TypeVar("T")


def gateway_from_env() -> str:
    return TAXI_DRIVER_GATEWAY.read()


def api_key_from_env() -> str:
    return TAXI_DRIVER_API_KEY.read()


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: list[tuple[str, str | bytes]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class BearerKey(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <key>` to every call: the gateway's API key check."""

    def __init__(self, api_key: str) -> None:
        self.header = ("authorization", f"Bearer {api_key}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details, [*(details.metadata or ()), self.header])

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    # The same for every call kind (grpc passes the request, or request iterator, positionally).
    intercept_unary_stream = intercept_stream_unary = intercept_stream_stream = intercept_unary_unary


def status_name(status: int) -> str:
    """RUN_STATUS_COMPLETED -> "completed", the word stored in training_runs.status."""
    return status_word(status)


@dataclass
class ClientError(Exception):
    """A call failed: its status code, message and, for bad input, which fields."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    violations: list[FieldViolation] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> ClientError:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = (error.details() if hasattr(error, "details") else "") or ""
        try:
            violations, reason = status_details(error)
        except ValueError:
            # A status detail that does not match the call's status: report the call's.
            violations, reason = [], ""
        return cls(code=code, message=message, reason=reason, violations=violations)

    def __str__(self) -> str:
        lines = [f"{self.code.name}: {self.message}"]
        lines.extend(f"  - {v.field}: {v.description}" for v in self.violations)
        return "\n".join(lines)


def _call(function: Callable[[], T]) -> T:
    try:
        return function()
    except grpc.RpcError as error:
        raise ClientError.from_rpc(error) from None


def _stream(iterator_factory: Callable[[], Iterator[T]]) -> Iterator[T]:
    try:
        yield from iterator_factory()
    except grpc.RpcError as error:
        raise ClientError.from_rpc(error) from None


# The service config published for every client (docs/clients.md): deadlines, and retries of
# reads on UNAVAILABLE. protos/generate.py copies it beside this module (never committed), so an
# installed package and the containers carry it; a checkout without generated code reads protos/.
SERVICE_CONFIG_NAME = "grpc_service_config.json"
_SERVICE_CONFIG_PLACES = (
    Path(__file__).resolve().parent / SERVICE_CONFIG_NAME,
    Path(__file__).resolve().parent.parent / "protos" / "taxidriver" / SERVICE_CONFIG_NAME,
)


@functools.cache
def service_config() -> str:
    for place in _SERVICE_CONFIG_PLACES:
        if place.exists():
            return json.dumps(json.loads(place.read_text()), separators=(",", ":"))
    raise FileNotFoundError(f"{SERVICE_CONFIG_NAME} not found in {', '.join(map(str, _SERVICE_CONFIG_PLACES))}")


def client_channel_options() -> list[tuple[str, int | str]]:
    """A client's channel to the gateway (the CLI's, the web's): our channel options plus the
    published service config. Channels between our own services keep none: the gateway never
    retries (it reports an unreachable service as UNAVAILABLE naming it)."""
    return [*channel_options(), ("grpc.service_config", service_config()), ("grpc.enable_retries", 1)]


class RawClient:
    """A channel to the gateway (or a service) and the generated stubs."""

    def __init__(
        self, target: str | None = None, *, channel: grpc.Channel | None = None, api_key: str | None = None
    ) -> None:
        self.target = target or gateway_from_env()
        # Keepalive the gateway's server accepts (taxidriver.keepalive): a long `watch` stays up.
        self.channel = channel or grpc.insecure_channel(self.target, options=client_channel_options())
        key = api_key_from_env() if api_key is None else api_key
        if key:
            self.channel = grpc.intercept_channel(self.channel, BearerKey(key))
        self.registry = registry_service_pb2_grpc.RegistryServiceStub(self.channel)
        self.trainer = trainer_service_pb2_grpc.TrainerServiceStub(self.channel)
        self.tuner = tuner_service_pb2_grpc.TunerServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def to_struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(dict(values))
    return struct


class TaxiDriverClient:
    """The public API for people: plain arguments, whole results, one error type."""

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float = 30.0,
        raw: RawClient | None = None,
        api_key: str | None = None,
    ) -> None:
        self.raw = raw or RawClient(target, api_key=api_key)
        self.timeout = timeout

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> TaxiDriverClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Training -----------------------------------------------------------------------------

    def start_run(
        self,
        algorithm: str,
        *,
        mode: str = "optimized",
        hyperparameters: Mapping[str, float | int] | None = None,
        test_episodes: int = 0,
        seed: int | None = None,
        time_budget_seconds: float | None = None,
        env_id: str = "",
        request_id: str = "",
        checkpoint_every: int = 0,
    ) -> trainer_service_pb2.StartRunResponse:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        request = trainer_service_pb2.StartRunRequest(
            request_id=request_id,
            algorithm=algorithm,
            mode=MODES[mode],  # type: ignore[arg-type]
            hyperparameters=trainer_service_pb2.Hyperparameters(**dict(hyperparameters or {})),  # type: ignore[arg-type]
            test_episodes=test_episodes,
            env_id=env_id,
            checkpoint_every=checkpoint_every,
        )
        if seed is not None:
            request.seed = seed
        if time_budget_seconds is not None:
            request.time_budget.CopyFrom(duration_pb2.Duration(seconds=int(time_budget_seconds)))
            request.time_budget.nanos = round((time_budget_seconds % 1) * 1e9)
        return _call(lambda: self.raw.trainer.StartRun(request, timeout=self.timeout))

    def cancel_run(self, run_id: str) -> trainer_service_pb2.CancelRunResponse:
        request = trainer_service_pb2.CancelRunRequest(run_id=run_id)
        return _call(lambda: self.raw.trainer.CancelRun(request, timeout=self.timeout))

    def resume_run(self, run_id: str) -> trainer_service_pb2.ResumeRunResponse:
        request = trainer_service_pb2.ResumeRunRequest(run_id=run_id)
        return _call(lambda: self.raw.trainer.ResumeRun(request, timeout=self.timeout))

    def algorithms(self) -> trainer_service_pb2.ListAlgorithmsResponse:
        request = trainer_service_pb2.ListAlgorithmsRequest()
        return _call(lambda: self.raw.trainer.ListAlgorithms(request, timeout=self.timeout))

    def watch_run(
        self, run_id: str, *, from_episode: int = 0, status_only: bool = False, timeout: float | None = None
    ) -> Iterator[resources_pb2.RunEvent]:
        """Episodes and status changes until the run's terminal status."""
        request = registry_service_pb2.WatchRunRequest(
            run_id=run_id, from_episode=from_episode, status_only=status_only
        )
        for reply in _stream(lambda: self.raw.registry.WatchRun(request, timeout=timeout)):
            yield reply.event

    # Runs ---------------------------------------------------------------------------------

    def get_run(self, run_id: str, *, curves: bool = False) -> resources_pb2.Run:
        view = resources_pb2.RUN_VIEW_FULL if curves else resources_pb2.RUN_VIEW_SUMMARY
        request = registry_service_pb2.GetRunRequest(run_id=run_id, view=view)
        return _call(lambda: self.raw.registry.GetRun(request, timeout=self.timeout)).run

    def list_runs_page(
        self, *, filter: str = "", order_by: str = "", page_size: int = 50, page_token: str = ""
    ) -> tuple[list[resources_pb2.Run], str, int]:
        """One page: its runs, the token of the next page ("" at the end) and how many match."""
        request = registry_service_pb2.ListRunsRequest(
            page_size=page_size, page_token=page_token, filter=filter, order_by=order_by
        )
        reply = _call(partial(self.raw.registry.ListRuns, request, timeout=self.timeout))
        return list(reply.runs), reply.next_page_token, reply.total_size

    def list_runs(
        self, *, filter: str = "", order_by: str = "", limit: int | None = 50, page_size: int = 100
    ) -> tuple[list[resources_pb2.Run], int]:
        """Up to `limit` runs (every one when None), following page tokens, and how many match."""
        runs: list[resources_pb2.Run] = []
        token = ""
        total = 0
        while limit is None or len(runs) < limit:
            size = page_size if limit is None else min(page_size, limit - len(runs))
            page, token, total = self.list_runs_page(filter=filter, order_by=order_by, page_size=size, page_token=token)
            runs.extend(page)
            if not token:
                break
        return (runs if limit is None else runs[:limit]), total

    def best_runs(
        self, *, algorithm: str = "", limit: int = 10, order_by: str = "", filter: str = ""
    ) -> list[resources_pb2.Run]:
        request = registry_service_pb2.ListBestRunsRequest(
            algorithm=algorithm, limit=limit, order_by=order_by, filter=filter
        )
        return list(_call(lambda: self.raw.registry.ListBestRuns(request, timeout=self.timeout)).runs)

    def statistics(self, *, filter: str = "") -> registry_service_pb2.GetStatisticsResponse:
        request = registry_service_pb2.GetStatisticsRequest(filter=filter)
        return _call(lambda: self.raw.registry.GetStatistics(request, timeout=self.timeout))

    def search_by_params(self, params: Mapping[str, Any], *, limit: int = 50) -> list[resources_pb2.Run]:
        runs: list[resources_pb2.Run] = []
        token = ""
        while len(runs) < limit:
            request = registry_service_pb2.SearchRunsByParamsRequest(
                params=to_struct(params), page_size=min(100, limit - len(runs)), page_token=token
            )
            reply = _call(partial(self.raw.registry.SearchRunsByParams, request, timeout=self.timeout))
            runs.extend(reply.runs)
            token = reply.next_page_token
            if not token:
                break
        return runs[:limit]

    # Sweeps and recommendations (the tuner) ------------------------------------------------

    def start_sweep(self, spec: tuner_service_pb2.SweepSpec, *, request_id: str = "") -> tuner_service_pb2.Sweep:
        request = tuner_service_pb2.StartSweepRequest(request_id=request_id, spec=spec)
        return _call(lambda: self.raw.tuner.StartSweep(request, timeout=self.timeout)).sweep

    def get_sweep(self, sweep_id: str) -> tuner_service_pb2.Sweep:
        request = tuner_service_pb2.GetSweepRequest(sweep_id=sweep_id)
        return _call(lambda: self.raw.tuner.GetSweep(request, timeout=self.timeout)).sweep

    def list_sweeps(
        self, *, algorithm: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuner_service_pb2.ListSweepsResponse:
        request = tuner_service_pb2.ListSweepsRequest(algorithm=algorithm, page_size=page_size, page_token=page_token)
        return _call(lambda: self.raw.tuner.ListSweeps(request, timeout=self.timeout))

    def cancel_sweep(self, sweep_id: str) -> tuner_service_pb2.Sweep:
        request = tuner_service_pb2.CancelSweepRequest(sweep_id=sweep_id)
        return _call(lambda: self.raw.tuner.CancelSweep(request, timeout=self.timeout)).sweep

    def watch_sweep(
        self, sweep_id: str, *, timeout: float | None = None
    ) -> Iterator[tuner_service_pb2.WatchSweepResponse]:
        """Each finished trial as it lands, then the sweep's final state."""
        request = tuner_service_pb2.WatchSweepRequest(sweep_id=sweep_id)
        yield from _stream(lambda: self.raw.tuner.WatchSweep(request, timeout=timeout))

    def suggest_params(
        self, request: tuner_service_pb2.SuggestParamsRequest
    ) -> tuner_service_pb2.SuggestParamsResponse:
        return _call(lambda: self.raw.tuner.SuggestParams(request, timeout=self.timeout))

    def compare_runs(self, run_ids: Sequence[str]) -> registry_service_pb2.CompareRunsResponse:
        request = registry_service_pb2.CompareRunsRequest(run_ids=list(run_ids))
        return _call(lambda: self.raw.registry.CompareRuns(request, timeout=self.timeout))

    def annotate(
        self, run_id: str, annotation: str, tags: Sequence[str] = (), *, request_id: str = ""
    ) -> resources_pb2.Annotation:
        request = registry_service_pb2.CreateAnnotationRequest(
            run_id=run_id, annotation=annotation, tags=list(tags), request_id=request_id
        )
        return _call(lambda: self.raw.registry.CreateAnnotation(request, timeout=self.timeout)).annotation

    def annotations(self, run_id: str) -> list[resources_pb2.Annotation]:
        found: list[resources_pb2.Annotation] = []
        token = ""
        while True:
            request = registry_service_pb2.ListAnnotationsRequest(run_id=run_id, page_size=100, page_token=token)
            reply = _call(partial(self.raw.registry.ListAnnotations, request, timeout=self.timeout))
            found.extend(reply.annotations)
            token = reply.next_page_token
            if not token:
                return found

    def current_user(self) -> registry_service_pb2.GetCurrentUserResponse:
        """Who the gateway says the API key belongs to (empty username: keys are not checked)."""
        request = registry_service_pb2.GetCurrentUserRequest()
        return _call(lambda: self.raw.registry.GetCurrentUser(request, timeout=self.timeout))

    def delete_run(self, run_id: str) -> registry_service_pb2.DeleteRunResponse:
        request = registry_service_pb2.DeleteRunRequest(run_id=run_id)
        return _call(lambda: self.raw.registry.DeleteRun(request, timeout=self.timeout))

    def purge_runs(
        self, older_than_days: int, *, validate_only: bool = False
    ) -> registry_service_pb2.PurgeRunsResponse:
        request = registry_service_pb2.PurgeRunsRequest(older_than_days=older_than_days, validate_only=validate_only)
        return _call(lambda: self.raw.registry.PurgeRuns(request, timeout=self.timeout))

    # Models and artifacts ----------------------------------------------------------------

    def list_models(self, *, run_id: str = "") -> list[resources_pb2.Model]:
        found: list[resources_pb2.Model] = []
        token = ""
        while True:
            request = registry_service_pb2.ListModelsRequest(run_id=run_id, page_size=100, page_token=token)
            reply = _call(partial(self.raw.registry.ListModels, request, timeout=self.timeout))
            found.extend(reply.models)
            token = reply.next_page_token
            if not token:
                return found

    def export_model(self, model_id: str) -> tuple[resources_pb2.Model, bytes]:
        request = registry_service_pb2.ExportModelRequest(model_id=model_id)
        model = resources_pb2.Model()
        chunks: list[bytes] = []
        for reply in _stream(lambda: self.raw.registry.ExportModel(request, timeout=self.timeout * 4)):
            if reply.HasField("model"):
                model.CopyFrom(reply.model)
            chunks.append(reply.chunk)
        return model, b"".join(chunks)

    def import_model(
        self,
        content: bytes,
        *,
        model_name: str,
        run_id: str = "",
        metadata: Mapping[str, Any] | None = None,
        request_id: str = "",
    ) -> resources_pb2.Model:
        header = registry_service_pb2.ModelImportHeader(
            run_id=run_id, model_name=model_name, model_metadata=to_struct(metadata or {}), request_id=request_id
        )

        def requests() -> Iterator[registry_service_pb2.ImportModelRequest]:
            yield registry_service_pb2.ImportModelRequest(header=header)
            for start in range(0, len(content), CHUNK_BYTES):
                yield registry_service_pb2.ImportModelRequest(chunk=content[start : start + CHUNK_BYTES])

        return _call(lambda: self.raw.registry.ImportModel(requests(), timeout=self.timeout * 4)).model

    def list_artifacts(self, run_id: str, *, kind: int = resources_pb2.ARTIFACT_KIND_UNSPECIFIED) -> list[Any]:
        request = registry_service_pb2.ListArtifactsRequest(run_id=run_id, kind=kind)  # type: ignore[arg-type]
        return list(_call(lambda: self.raw.registry.ListArtifacts(request, timeout=self.timeout)).artifacts)

    def download_artifact(self, artifact_id: str) -> tuple[resources_pb2.Artifact, bytes]:
        request = registry_service_pb2.DownloadArtifactRequest(artifact_id=artifact_id)
        artifact = resources_pb2.Artifact()
        chunks: list[bytes] = []
        for reply in _stream(lambda: self.raw.registry.DownloadArtifact(request, timeout=self.timeout * 4)):
            if reply.HasField("artifact"):
                artifact.CopyFrom(reply.artifact)
            chunks.append(reply.chunk)
        return artifact, b"".join(chunks)
