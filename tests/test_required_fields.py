"""REQUIRED fields (google.api.field_behavior) are refused at the gateway, before any service.

Table-driven from the descriptors: every public method whose request declares a REQUIRED
field (at any depth) is called through a real gateway, in front of a recording upstream
that answers anything; a method added to the protos is checked without touching this file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from gateway.app import PUBLIC_SERVICES
from gateway.required import MISSING, is_required
from taxidriver.access import method_path
from taxidriver.errors import status_details
from taxidriver.server import RunningServer, ServiceBinding, create_server
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
        kinds = {method_path(m): (m.client_streaming, m.server_streaming) for m in PUBLIC_METHODS}
        recorder = self

        class Any_(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                path = details.method
                if path not in kinds:
                    return None
                client_streaming, server_streaming = kinds[path]

                async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                    recorder.seen.append((path, request))
                    return b""

                async def stream_in(requests: Any, context: grpc.aio.ServicerContext) -> bytes:
                    async for request in requests:
                        recorder.seen.append((path, request))
                    return b""

                async def unary_out(request: bytes, context: grpc.aio.ServicerContext) -> Any:
                    recorder.seen.append((path, request))
                    yield b""

                async def stream_out(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                    async for request in requests:
                        recorder.seen.append((path, request))
                    yield b""

                behavior = {
                    (False, False): grpc.unary_unary_rpc_method_handler(unary),
                    (True, False): grpc.stream_unary_rpc_method_handler(stream_in),
                    (False, True): grpc.unary_stream_rpc_method_handler(unary_out),
                    (True, True): grpc.stream_stream_rpc_method_handler(stream_out),
                }
                return behavior[(client_streaming, server_streaming)]

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


def call(channel: grpc.Channel, method: MethodDescriptor, request: Message) -> None:
    """One call of `method` with `request` (the only message of a client stream), raw bytes both ways."""
    kind = f"{'stream' if method.client_streaming else 'unary'}_{'stream' if method.server_streaming else 'unary'}"
    stub = getattr(channel, kind)(method_path(method))
    payload = request.SerializeToString()
    argument: Any = iter([payload]) if method.client_streaming else payload
    reply = stub(argument, timeout=10)
    if method.server_streaming:
        list(reply)


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
