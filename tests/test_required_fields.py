"""REQUIRED fields (google.api.field_behavior) are refused at the gateway, before any service.

Table-driven from the descriptors: every public method whose request declares a REQUIRED
field (at any depth) is called through a real gateway, in front of a recording upstream
that answers anything; a method added to the protos is checked without touching this file.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from gateway.app import PUBLIC_SERVICES
from gateway.required import MISSING, RequiredFields, is_required
from registry_service.convert import dict_to_struct
from taxidriver.access import method_path
from taxidriver.errors import status_details
from taxidriver.handlers import make_handler, method_kind, responds_with_stream
from taxidriver.registry.v1 import registry_service_pb2 as registry_pb
from taxidriver.server import RunningServer, ServiceBinding, create_server
from taxidriver.trainer.v1 import trainer_service_pb2 as trainer_pb
from taxidriver.tuner.v1 import tuner_service_pb2 as tuner_pb
from tests.support import InProcessService, LoopThread

PUBLIC_METHODS = [method for service in PUBLIC_SERVICES for method in service.methods]


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _nested(fd: FieldDescriptor) -> bool:
    """A message field worth descending into (not a map, not a well-known type)."""
    return fd.message_type is not None and not _is_map(fd) and not fd.message_type.full_name.startswith("google.")


def skeleton(message: Descriptor, prefix: str = "") -> tuple[Message, list[str]]:
    """A request with every nested message present but empty (one element in a repeated one),
    and the paths of the REQUIRED fields it leaves unset."""
    instance = message_factory.GetMessageClass(message)()
    missing: list[str] = []
    for fd in message.fields:
        nested = fd.message_type
        if nested is None or not _nested(fd):
            if is_required(fd):
                missing.append(f"{prefix}{fd.name}")
            continue
        if fd.is_repeated:
            child, below = skeleton(nested, f"{prefix}{fd.name}[0].")
            getattr(instance, fd.name).append(child)
        elif fd.containing_oneof is not None and instance.WhichOneof(fd.containing_oneof.name):
            if is_required(fd):
                missing.append(f"{prefix}{fd.name}")
            continue  # one member of a oneof at a time: the first
        else:
            child, below = skeleton(nested, f"{prefix}{fd.name}.")
            getattr(instance, fd.name).CopyFrom(child)
        missing.extend(below)
    return instance, missing


def filled(message: Descriptor) -> Message:
    """A request with every REQUIRED field set (to a value of the right type), nothing else."""
    instance = message_factory.GetMessageClass(message)()
    for fd in message.fields:
        if not is_required(fd):
            continue
        if fd.message_type is not None:
            child = filled(fd.message_type)
            target = getattr(instance, fd.name)
            target.add().CopyFrom(child) if fd.is_repeated else target.CopyFrom(child)
            continue
        value: Any = {
            FieldDescriptor.CPPTYPE_STRING: "x",
            FieldDescriptor.CPPTYPE_ENUM: 1,
            FieldDescriptor.CPPTYPE_BOOL: True,
            FieldDescriptor.CPPTYPE_DOUBLE: 1.0,
            FieldDescriptor.CPPTYPE_FLOAT: 1.0,
        }.get(fd.cpp_type, 1)
        if fd.is_repeated:
            getattr(instance, fd.name).append(value)
        else:
            setattr(instance, fd.name, value)
    return instance


def methods_with_required() -> list[tuple[MethodDescriptor, list[str]]]:
    cases = []
    for method in PUBLIC_METHODS:
        _, missing = skeleton(method.input_type)
        if missing:
            cases.append((method, missing))
    return cases


CASES = methods_with_required()


@dataclass
class Recorder:
    """An upstream for every public service that records what reaches it and answers empty."""

    seen: list[tuple[str, bytes]] = field(default_factory=list)

    def handler(self) -> grpc.GenericRpcHandler:
        kinds = {method_path(m): method_kind(m) for m in PUBLIC_METHODS}
        recorder = self

        class Any_(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                path = details.method
                if path not in kinds:
                    return None
                kind = kinds[path]

                async def record(request: Any, context: grpc.aio.ServicerContext) -> bytes:
                    for message in [m async for m in request] if kind.startswith("stream_") else [request]:
                        recorder.seen.append((path, message))
                    return b""

                async def record_then_answer(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    yield await record(request, context)

                return make_handler(kind, record_then_answer if responds_with_stream(kind) else record)

        return Any_()


@pytest.fixture(scope="module")
def recorder_gateway(loop_thread: LoopThread) -> Iterator[tuple[Recorder, InProcessService]]:
    from gateway.app import start_gateway
    from gateway.settings import GatewaySettings

    recorder = Recorder()

    async def start_upstream() -> RunningServer:
        return await create_server(
            address="127.0.0.1:0",
            services=[
                ServiceBinding(
                    name=service.full_name, register=lambda s: s.add_generic_rpc_handlers((recorder.handler(),))
                )
                for service in PUBLIC_SERVICES
            ],
            error_mapping=False,
        )

    upstream = loop_thread.run(start_upstream())
    target = f"127.0.0.1:{upstream.port}"
    settings = GatewaySettings(
        auth_required=False,
        address="127.0.0.1:0",
        trainer_targets=(target,),
        registry_target=target,
        tuner_target=target,
    )
    gateway = InProcessService(loop_thread, lambda: start_gateway(settings))
    yield recorder, gateway
    gateway.stop()
    loop_thread.run(upstream.server.stop(0))


def call(channel: grpc.Channel, method: MethodDescriptor, request: Message, *rest: Message) -> list[bytes]:
    """One call of `method` with `request` (the first message of a client stream, then `rest`), raw bytes."""
    stub = getattr(channel, method_kind(method))(method_path(method))
    payload = request.SerializeToString()
    argument: Any = iter([payload, *(m.SerializeToString() for m in rest)]) if method.client_streaming else payload
    reply = stub(argument, timeout=30)
    return list(reply) if method.server_streaming else [reply]


def test_the_table_covers_the_methods_we_know_need_fields() -> None:
    named = {method.name: missing for method, missing in CASES}
    assert named["GetRun"] == ["run_id"]
    assert named["StartRun"] == ["algorithm", "mode"]
    assert named["CreateAnnotation"] == ["run_id", "annotation"]
    assert named["ImportModel"] == ["header.model_name"]
    assert named["StartSweep"] == ["spec.algorithm", "spec.search_space[0].name", "spec.n_trials"]
    # Every field of these requests may be left out.
    assert not {"ListRuns", "ListModels", "GetCurrentUser", "WatchRuns", "GetParamImportance"} & set(named)


@pytest.mark.parametrize(("method", "missing"), CASES, ids=[m.full_name for m, _ in CASES])
def test_a_request_missing_a_required_field_never_reaches_a_service(
    recorder_gateway: tuple[Recorder, InProcessService], method: MethodDescriptor, missing: list[str]
) -> None:
    recorder, gateway = recorder_gateway
    request, _ = skeleton(method.input_type)
    before = len(recorder.seen)
    with grpc.insecure_channel(gateway.target) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            call(channel, method, request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, reason = status_details(refused.value)
    assert reason == "INVALID_ARGUMENT"
    # Absent nested messages are not reported: only fields at the levels the request reached.
    assert [(v.field, v.description) for v in violations] == [(path, MISSING) for path in missing]
    assert recorder.seen[before:] == []


@pytest.mark.parametrize(("method", "missing"), CASES, ids=[m.full_name for m, _ in CASES])
def test_a_request_with_its_required_fields_reaches_the_service_unchanged(
    recorder_gateway: tuple[Recorder, InProcessService], method: MethodDescriptor, missing: list[str]
) -> None:
    recorder, gateway = recorder_gateway
    request = filled(method.input_type)
    before = len(recorder.seen)
    with grpc.insecure_channel(gateway.target) as channel:
        call(channel, method, request)
    assert recorder.seen[before:] == [(method_path(method), request.SerializeToString())]


def test_only_the_top_level_is_reported_when_a_required_message_is_absent(
    recorder_gateway: tuple[Recorder, InProcessService],
) -> None:
    recorder, gateway = recorder_gateway
    start_sweep = next(m for m in PUBLIC_METHODS if m.name == "StartSweep")
    request = message_factory.GetMessageClass(start_sweep.input_type)(request_id="r-1")
    before = len(recorder.seen)
    with grpc.insecure_channel(gateway.target) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            call(channel, start_sweep, request)
    violations, _ = status_details(refused.value)
    assert [v.field for v in violations] == ["spec"]
    assert refused.value.details() == "invalid request: spec: is required"
    assert recorder.seen[before:] == []


def test_a_request_that_does_not_parse_is_left_to_the_service(
    recorder_gateway: tuple[Recorder, InProcessService],
) -> None:
    recorder, gateway = recorder_gateway
    get_run = next(m for m in PUBLIC_METHODS if m.name == "GetRun")
    garbage = b"\xff\xff\xff"
    before = len(recorder.seen)
    with grpc.insecure_channel(gateway.target) as channel:
        channel.unary_unary(method_path(get_run))(garbage, timeout=10)
    assert recorder.seen[before:] == [(method_path(get_run), garbage)]


# ---------------------------------------------------------------------------------------------
# The REQUIRED set is what the services already refuse: called directly (no gateway), each
# example is accepted (whatever it answers, never INVALID_ARGUMENT) and the same request with
# any one REQUIRED field cleared is refused INVALID_ARGUMENT naming that field. Each example
# sets its REQUIRED fields only, so every other field may be left at its zero value.

RUN = str(uuid.uuid4())
OTHER = str(uuid.uuid4())
# Filled in as the examples run (in this order): a run StartRun made, a sweep StartSweep made.
MADE: dict[str, str] = {}

# A client stream's example is its messages; its first one is checked (the header of an upload).
EXAMPLES: dict[str, Callable[[], Message | list[Message]]] = {
    "TrainerService.StartRun": lambda: trainer_pb.StartRunRequest(
        algorithm="q_learning", mode=trainer_pb.TRAINING_MODE_OPTIMIZED
    ),
    "TrainerService.CancelRun": lambda: trainer_pb.CancelRunRequest(run_id=MADE["run"]),
    "TrainerService.ResumeRun": lambda: trainer_pb.ResumeRunRequest(run_id=RUN),
    "RegistryService.GetRun": lambda: registry_pb.GetRunRequest(run_id=MADE["run"]),
    "RegistryService.SearchRunsByParams": lambda: registry_pb.SearchRunsByParamsRequest(
        params=dict_to_struct({"alpha": 0.1})
    ),
    "RegistryService.CompareRuns": lambda: registry_pb.CompareRunsRequest(run_ids=[RUN, OTHER]),
    "RegistryService.CreateAnnotation": lambda: registry_pb.CreateAnnotationRequest(
        run_id=MADE["run"], annotation="required-fields example"
    ),
    "RegistryService.ListAnnotations": lambda: registry_pb.ListAnnotationsRequest(run_id=MADE["run"]),
    "RegistryService.DeleteRun": lambda: registry_pb.DeleteRunRequest(run_id=RUN),
    "RegistryService.PurgeRuns": lambda: registry_pb.PurgeRunsRequest(older_than_days=36_500),
    "RegistryService.GetModel": lambda: registry_pb.GetModelRequest(model_id=RUN),
    "RegistryService.ExportModel": lambda: registry_pb.ExportModelRequest(model_id=RUN),
    "RegistryService.ImportModel": lambda: [
        registry_pb.ImportModelRequest(header=registry_pb.ModelImportHeader(model_name="required-fields example")),
        registry_pb.ImportModelRequest(chunk=b"model bytes"),
    ],
    "RegistryService.ListArtifacts": lambda: registry_pb.ListArtifactsRequest(run_id=MADE["run"]),
    "RegistryService.DownloadArtifact": lambda: registry_pb.DownloadArtifactRequest(artifact_id=RUN),
    "RegistryService.WatchRun": lambda: registry_pb.WatchRunRequest(run_id=RUN),
    "TunerService.StartSweep": lambda: tuner_pb.StartSweepRequest(
        spec=tuner_pb.SweepSpec(algorithm="q_learning", n_trials=1)
    ),
    "TunerService.CancelSweep": lambda: tuner_pb.CancelSweepRequest(sweep_id=MADE["sweep"]),
    "TunerService.GetSweep": lambda: tuner_pb.GetSweepRequest(sweep_id=MADE["sweep"]),
    "TunerService.WatchSweep": lambda: tuner_pb.WatchSweepRequest(sweep_id=MADE["sweep"]),
    "TunerService.SuggestParams": lambda: tuner_pb.SuggestParamsRequest(algorithm="q_learning"),
}


def _short(method: MethodDescriptor) -> str:
    return f"{method.containing_service.name}.{method.name}"


def set_required_paths(message: Message, prefix: str = "") -> list[str]:
    """Paths of the REQUIRED fields set in `message` (inside the messages it holds, too)."""
    paths: list[str] = []
    descriptor: Any = message.DESCRIPTOR
    for fd in descriptor.fields:
        value = getattr(message, fd.name)
        if is_required(fd):
            paths.append(f"{prefix}{fd.name}")
        if fd.message_type is None or _is_map(fd):
            continue
        if fd.is_repeated:
            for index, item in enumerate(value):
                paths.extend(set_required_paths(item, f"{prefix}{fd.name}[{index}]."))
        elif message.HasField(fd.name):
            paths.extend(set_required_paths(value, f"{prefix}{fd.name}."))
    return paths


def without(message: Message, path: str) -> Message:
    """A copy of `message` with the field at `path` cleared."""
    copy = type(message)()
    copy.CopyFrom(message)
    holder: Any = copy
    *parents, leaf = path.split(".")
    for part in parents:
        name, _, index = part.partition("[")
        holder = getattr(holder, name)[int(index.rstrip("]"))] if index else getattr(holder, name)
    holder.ClearField(leaf)
    return copy


def outcome(
    target: str, method: MethodDescriptor, request: Message, *rest: Message
) -> tuple[list[bytes], grpc.RpcError | None]:
    """The replies of a direct call to the service, or its error."""
    with grpc.insecure_channel(target) as channel:
        try:
            return call(channel, method, request, *rest), None
        except grpc.RpcError as error:
            return [], error


@pytest.fixture(scope="module")
def services(
    loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService
) -> Iterator[dict[str, str]]:
    from tuner_service.app import start_tuner
    from tuner_service.settings import TunerSettings

    settings = TunerSettings(address="127.0.0.1:0", registry_target=registry.target, trainer_targets=(trainer.target,))
    tuner = InProcessService(loop_thread, lambda: start_tuner(settings))
    yield {"TrainerService": trainer.target, "RegistryService": registry.target, "TunerService": tuner.target}
    tuner.stop(0.5)


def test_every_method_with_a_required_field_has_an_example() -> None:
    assert sorted(_short(method) for method, _ in CASES) == sorted(EXAMPLES)


def test_the_services_refuse_exactly_the_required_fields(services: dict[str, str]) -> None:
    methods = {_short(method): method for method, _ in CASES}
    checked: list[str] = []
    for name, example in EXAMPLES.items():
        method = methods[name]
        target = services[method.containing_service.name]
        messages = example()
        request, *rest = messages if isinstance(messages, list) else [messages]
        assert RequiredFields().missing(request) == [], name
        replies, error = outcome(target, method, request, *rest)
        assert error is None or error.code() != grpc.StatusCode.INVALID_ARGUMENT, (name, error)
        if name == "TrainerService.StartRun":
            MADE["run"] = trainer_pb.StartRunResponse.FromString(replies[0]).run_id
        if name == "TunerService.StartSweep":
            MADE["sweep"] = tuner_pb.StartSweepResponse.FromString(replies[0]).sweep.sweep_id
        for path in set_required_paths(request):
            _, error = outcome(target, method, without(request, path), *rest)
            assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, path, error)
            named = [v.field for v in status_details(error)[0]]
            assert any(f == path or f.startswith((f"{path}.", f"{path}[")) for f in named), (name, path, named)
            checked.append(f"{name}:{path}")
    assert "TunerService.StartSweep:spec.n_trials" in checked
    assert "RegistryService.ImportModel:header.model_name" in checked
