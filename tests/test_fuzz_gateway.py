"""Property-based attacks on every public RPC through the gateway.

Two kinds of input per RPC: random byte strings sent as the request message (the gateway
forwards bytes, so the upstream parses them), and structurally valid messages with random
field values (odd unicode and NUL bytes, huge and negative numbers, NaN and infinities in
numbers and Structs, unknown enum values, random Structs, filters with out-of-range numbers,
forged page tokens). Plus concurrent duplicates: many clients sending one request_id at once.
The properties: never INTERNAL or UNKNOWN, the stack stays healthy, and nothing
is half-written (row counts move only for calls that answered OK, and every run's
episodes_recorded still equals the episodes stored for it).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import descriptor as pd
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taxidriver.registry.v1 import registry_service_pb2
from taxidriver.trainer.v1 import trainer_service_pb2
from tests.support import InProcessService, LoopThread

FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# A request that does not parse is INVALID_ARGUMENT: taxidriver.errors.ErrorInterceptor parses
# requests inside the handler (left to grpc it would be UNKNOWN or INTERNAL).
SERVICES = [
    registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    trainer_service_pb2.DESCRIPTOR.services_by_name["TrainerService"],
]
METHODS = [(service, method) for service in SERVICES for method in service.methods]
METHOD_IDS = [method.name for _, method in METHODS]
# Calls that may change rows when they answer OK.
MUTATING = {"StartRun", "ImportModel", "CreateAnnotation", "DeleteRun", "PurgeRuns", "CancelRun", "ResumeRun"}
VALID_NAMES = ["q_learning", "sarsa", "brute_force", "expected_sarsa", "double_q_learning", "monte_carlo"]
FUZZ_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)

nasty_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "'; DROP TABLE training_runs; --",
            'algorithm = "q_learning" OR 1=1',
            "status = ",
            "((((((",
            "\x00",
            "é" * 300,
            str(uuid.uuid4()),
            "00000000-0000-0000-0000-000000000000",
            *VALID_NAMES,
            'create_time > "not a time"',
            "-success_rate",
            "params.alpha desc, , ",
            "a\x00b",
            "\x00" * 3,
        ]
    ),
)
HUGE = "9" * 400
# Filters that were INTERNAL (issue 10): numbers beyond any column or double, NUL in strings.
nasty_filters = st.one_of(
    st.sampled_from(
        [
            f"episodes_recorded > {HUGE}",
            f"params.alpha = {HUGE}",
            f"params.alpha > -{HUGE}",
            f"test_metrics.success_rate < {HUGE}.5",
            "params.alpha = 1e999",
            "execution_time > -1e400",
            'algorithm = "sar\x00sa"',
            'params.note = "a\x00"',
            'tags:"x\x00"',
            f"episodes_planned = {2**63}",
        ]
    ),
    st.builds(
        lambda field, op, number: f"{field} {op} {number}",
        st.sampled_from(["episodes_recorded", "params.alpha", "test_metrics.avg_steps", "execution_time"]),
        st.sampled_from(["=", "!=", "<", ">="]),
        st.one_of(st.integers(-(10**30), 10**30), st.sampled_from(["1e308", "1e309", "-1e999", HUGE])),
    ),
)


def _token(payload: Any) -> str:
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**40), 10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["\x00", "2026-01-01T00:00:00+00:00", str(uuid.uuid4())]),
)
# Page tokens a client can forge: our payload shapes with values of every JSON type.
forged_tokens = st.one_of(
    st.builds(
        lambda b, k, ident: _token({"b": b, "k": k, "id": ident}),
        st.one_of(st.text(max_size=16), json_scalars),
        st.one_of(st.lists(json_scalars, max_size=3), json_scalars),
        json_scalars,
    ),
    st.builds(
        lambda scope, moment, ident: _token({"s": scope, "t": moment, "id": ident}),
        json_scalars,
        json_scalars,
        json_scalars,
    ),
    st.sampled_from(["e30=", "bnVsbA==", "W10=", "!!", "eyJpZCI6IE5hTn0="]),
)

nasty_int32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, -1, 1, 1000, 1001, 10**6, 10**6 + 1]))
nasty_int64 = st.integers(-(2**63), 2**63 - 1)
nasty_uint64 = st.integers(0, 2**64 - 1)
nasty_float = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1.0, 1e308]))


def value_strategy() -> st.SearchStrategy[Any]:
    # NaN and infinities too: a Struct carries them (JSON and JSONB cannot).
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([math.nan, math.inf, -math.inf, 1e308]),
        nasty_text,
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(nasty_text, children, max_size=3)),
        max_leaves=6,
    )


def struct_strategy() -> st.SearchStrategy[struct_pb2.Struct]:
    def build(values: dict[str, Any]) -> struct_pb2.Struct:
        struct = struct_pb2.Struct()
        struct.update(values)
        return struct

    return st.dictionaries(nasty_text, value_strategy(), max_size=4).map(build)


def scalar_strategy(field: pd.FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == pd.FieldDescriptor.TYPE_STRING:
        return nasty_text
    if kind == pd.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == pd.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (pd.FieldDescriptor.TYPE_DOUBLE, pd.FieldDescriptor.TYPE_FLOAT):
        return nasty_float if kind == pd.FieldDescriptor.TYPE_DOUBLE else st.floats(width=32)
    if kind == pd.FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-5, 50))
    if kind in (pd.FieldDescriptor.TYPE_INT64, pd.FieldDescriptor.TYPE_SINT64, pd.FieldDescriptor.TYPE_SFIXED64):
        return nasty_int64
    if kind in (pd.FieldDescriptor.TYPE_UINT64, pd.FieldDescriptor.TYPE_FIXED64):
        return nasty_uint64
    if kind in (pd.FieldDescriptor.TYPE_UINT32, pd.FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    return nasty_int32


def message_strategy(descriptor: pd.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """A random instance of any request message, fields set or left unset at random."""
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Struct":
        return struct_strategy()
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.type == pd.FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2 or field.message_type.GetOptions().map_entry:
                continue
            inner = message_strategy(field.message_type, depth + 1)
        elif field.name == "filter":
            inner = st.one_of(nasty_text, nasty_filters)
        elif field.name == "page_token":
            inner = st.one_of(nasty_text, forged_tokens)
        else:
            inner = scalar_strategy(field)
        is_repeated = getattr(field, "is_repeated", None)
        repeated = is_repeated if isinstance(is_repeated, bool) else field.label == pd.FieldDescriptor.LABEL_REPEATED
        parts[field.name] = st.lists(inner, max_size=4) if repeated else st.one_of(st.none(), inner)

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            if value is None:
                continue
            target = getattr(message, name)
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, Message):
                        target.add().CopyFrom(item)
                    else:
                        target.append(item)
            elif isinstance(value, Message):
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        # A oneof keeps only its last member: fine, that is what a client would send.
        return message

    return st.fixed_dictionaries({}, optional=parts).map(build)


@pytest.fixture(scope="module")
def open_gateway(
    loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService
) -> Iterator[InProcessService]:
    """The gateway in-process without API keys: these tests attack the API, not authentication."""
    from gateway.app import start_gateway
    from gateway.settings import GatewaySettings

    settings = GatewaySettings(
        address="127.0.0.1:0", trainer_targets=(trainer.target,), registry_target=registry.target, auth_required=False
    )
    service = InProcessService(loop_thread, lambda: start_gateway(settings))
    yield service
    service.stop()


@pytest.fixture(scope="module")
def channel(open_gateway: InProcessService) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        open_gateway.target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    ) as channel:
        yield channel


def call_raw(
    channel: grpc.Channel, service: pd.ServiceDescriptor, method: pd.MethodDescriptor, payload: bytes
) -> grpc.StatusCode | str:
    """One call with `payload` as the (only) request message; bytes in, bytes out."""
    path = f"/{service.full_name}/{method.name}"
    metadata = (("x-caller", "fuzz"),)
    try:
        if method.client_streaming and method.server_streaming:
            for _ in channel.stream_stream(path)(iter([payload]), timeout=10, metadata=metadata):
                break  # one reply is enough: a watch would stream until the run ends
        elif method.client_streaming:
            channel.stream_unary(path)(iter([payload]), timeout=10, metadata=metadata)
        elif method.server_streaming:
            for _ in channel.unary_stream(path)(payload, timeout=10, metadata=metadata):
                break
        else:
            reply = channel.unary_unary(path)(payload, timeout=10, metadata=metadata)
            cleanup(channel, method, reply)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def cleanup(channel: grpc.Channel, method: pd.MethodDescriptor, reply: bytes) -> None:
    """A fuzzed StartRun that happened to be valid trains for real: cancel it at once."""
    if method.name not in ("StartRun", "ResumeRun"):
        return
    run_id = trainer_service_pb2.StartRunResponse.FromString(reply).run_id
    if run_id:
        stub = channel.unary_unary(
            "/taxidriver.trainer.v1.TrainerService/CancelRun",
            request_serializer=trainer_service_pb2.CancelRunRequest.SerializeToString,
            response_deserializer=trainer_service_pb2.CancelRunResponse.FromString,
        )
        stub(trainer_service_pb2.CancelRunRequest(run_id=run_id), timeout=30)


def snapshot(db: psycopg.Connection) -> dict[str, int]:
    counts = {
        table: int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
        for table in ("training_runs", "run_annotations")
    }
    return counts


def assert_consistent(db: psycopg.Connection) -> None:
    """No run claims episodes it does not store (or stores episodes it does not count)."""
    broken = db.execute(
        """
        SELECT r.run_id, r.episodes_recorded, coalesce(sum(e.episode_count), 0)
        FROM training_runs r LEFT JOIN run_episodes e ON e.run_id = r.run_id
        GROUP BY r.run_id, r.episodes_recorded
        HAVING r.episodes_recorded <> coalesce(sum(e.episode_count), 0)
        """
    ).fetchall()
    assert broken == []


def assert_healthy(gateway: InProcessService) -> None:
    with grpc.insecure_channel(gateway.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in SERVICES:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service.full_name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service.full_name


def fuzz(
    method: pd.MethodDescriptor,
    send: Any,
    strategy: st.SearchStrategy[Any],
    db: psycopg.Connection,
    gateway: InProcessService,
) -> None:
    before = snapshot(db)
    codes: list[grpc.StatusCode] = []

    @FUZZ_SETTINGS
    @given(strategy)
    def attack(payload: Any) -> None:
        code = send(payload)
        codes.append(code)
        assert code not in FORBIDDEN, (method.name, payload)

    attack()
    assert codes
    if method.name not in MUTATING or grpc.StatusCode.OK not in codes:
        assert snapshot(db) == before, method.name
    assert_consistent(db)
    assert_healthy(gateway)


@pytest.mark.parametrize(("service", "method"), METHODS, ids=METHOD_IDS)
def test_random_bytes_never_crash_a_public_rpc(
    service: pd.ServiceDescriptor,
    method: pd.MethodDescriptor,
    channel: grpc.Channel,
    open_gateway: InProcessService,
    db: psycopg.Connection,
) -> None:
    payloads = st.one_of(
        st.binary(max_size=256),
        st.binary(min_size=1, max_size=8).map(lambda b: b"\x0a\xff\xff\xff\xff\x0f" + b),  # a lying length
        st.sampled_from([b"", b"\x00", b"\xff" * 16, b"\x08" + b"\xff" * 10]),
    )
    from google.protobuf import message_factory
    from google.protobuf.message import DecodeError

    cls = message_factory.GetMessageClass(method.input_type)

    def send(payload: bytes) -> grpc.StatusCode | str:
        code = call_raw(channel, service, method, payload)
        try:
            cls.FromString(payload)
        except DecodeError:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"unparsable request answered {code}"
        return code

    fuzz(method, send, payloads, db, open_gateway)


@pytest.mark.parametrize(("service", "method"), METHODS, ids=METHOD_IDS)
def test_random_messages_never_crash_a_public_rpc(
    service: pd.ServiceDescriptor,
    method: pd.MethodDescriptor,
    channel: grpc.Channel,
    open_gateway: InProcessService,
    db: psycopg.Connection,
) -> None:
    strategy = message_strategy(method.input_type).map(lambda message: message.SerializeToString())
    fuzz(method, lambda payload: call_raw(channel, service, method, payload), strategy, db, open_gateway)


@pytest.mark.parametrize(("service", "method"), METHODS[:1] + METHODS[-4:-3], ids=["ListRuns", "StartRun"])
def test_an_unparsable_request_is_invalid_argument(
    service: pd.ServiceDescriptor, method: pd.MethodDescriptor, channel: grpc.Channel
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(f"/{service.full_name}/{method.name}")(b"\x00", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request is not a valid message" in (caught.value.details() or "")


def test_non_finite_numbers_are_refused_by_name(channel: grpc.Channel) -> None:
    """NaN and infinities in hyper-parameters are INVALID_ARGUMENT, naming the field."""
    from taxidriver.errors import status_details
    from taxidriver.trainer.v1 import trainer_service_pb2_grpc

    stub = trainer_service_pb2_grpc.TrainerServiceStub(channel)
    for value in (math.nan, math.inf, -math.inf):
        request = trainer_service_pb2.StartRunRequest(
            algorithm="q_learning",
            mode=trainer_service_pb2.TRAINING_MODE_USER,
            hyperparameters=trainer_service_pb2.Hyperparameters(
                alpha=value,
                gamma=0.9,
                epsilon=1.0,
                epsilon_min=0.1,
                epsilon_decay=0.99,
                training_episodes=10,
                max_steps=10,
            ),
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.StartRun(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        violations, _ = status_details(caught.value)
        assert any("alpha" in v.field for v in violations)


def _new_run(registry: InProcessService) -> str:
    from taxidriver.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc

    run_id = str(uuid.uuid4())
    with grpc.insecure_channel(registry.target) as direct:
        ingest_service_pb2_grpc.IngestServiceStub(direct).RegisterRun(
            ingest_service_pb2.RegisterRunRequest(run_id=run_id, algorithm="sarsa"), timeout=10
        )
    return run_id


TABLES = {"CreateAnnotation": "run_annotations", "ImportModel": "artifacts", "StartRun": "training_runs"}


@pytest.mark.parametrize("method_name", ["CreateAnnotation", "ImportModel", "StartRun"])
def test_concurrent_duplicates_of_one_request_id_create_one_thing(
    method_name: str, open_gateway: InProcessService, registry: InProcessService, db: psycopg.Connection
) -> None:
    """30 clients at once with one request_id, a third of them with a different request: one row,
    every identical call answered with it, every different one ALREADY_EXISTS, never INTERNAL."""
    import threading

    from taxidriver.registry.v1 import registry_service_pb2_grpc
    from taxidriver.trainer.v1 import trainer_service_pb2_grpc

    request_id = f"dup-{method_name}-{uuid.uuid4()}"
    run_id = _new_run(registry)
    outcomes: list[tuple[bool, str | grpc.StatusCode]] = []
    barrier = threading.Barrier(30)

    def call(stub_channel: grpc.Channel, variant: bool) -> str:
        if method_name == "CreateAnnotation":
            stub = registry_service_pb2_grpc.RegistryServiceStub(stub_channel)
            request = registry_service_pb2.CreateAnnotationRequest(
                run_id=run_id, annotation="other" if variant else "same", request_id=request_id
            )
            return stub.CreateAnnotation(request, timeout=30).annotation.annotation_id
        if method_name == "ImportModel":
            stub = registry_service_pb2_grpc.RegistryServiceStub(stub_channel)
            header = registry_service_pb2.ModelImportHeader(model_name="dup", request_id=request_id)
            data = b"other" if variant else b"same"
            messages = [
                registry_service_pb2.ImportModelRequest(header=header),
                registry_service_pb2.ImportModelRequest(chunk=data),
            ]
            return stub.ImportModel(iter(messages), timeout=30).model.model_id
        trainer = trainer_service_pb2_grpc.TrainerServiceStub(stub_channel)
        request = trainer_service_pb2.StartRunRequest(
            request_id=request_id,
            algorithm="sarsa" if variant else "q_learning",
            mode=trainer_service_pb2.TRAINING_MODE_USER,
            hyperparameters=trainer_service_pb2.Hyperparameters(
                alpha=0.5,
                gamma=0.9,
                epsilon=1.0,
                epsilon_min=0.1,
                epsilon_decay=0.99,
                training_episodes=10,
                max_steps=10,
            ),
            test_episodes=1,
        )
        return trainer.StartRun(request, timeout=60).run_id

    def client(index: int) -> None:
        variant = index % 3 == 0
        with grpc.insecure_channel(open_gateway.target) as own:
            barrier.wait(30)
            try:
                outcomes.append((variant, call(own, variant)))
            except grpc.RpcError as error:
                outcomes.append((variant, error.code()))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(outcomes) == 30
    assert not [code for _, code in outcomes if code in FORBIDDEN], outcomes
    stored = db.execute(f"SELECT count(*) FROM {TABLES[method_name]} WHERE request_id = %s", (request_id,)).fetchone()
    assert stored == (1,)
    # Whichever request came first owns the id; the others are retries of it or refused.
    ids = {answer for _, answer in outcomes if isinstance(answer, str)}
    assert len(ids) == 1, outcomes
    refused = {answer for _, answer in outcomes if not isinstance(answer, str)}
    assert refused <= {grpc.StatusCode.ALREADY_EXISTS}, outcomes
    # AIP-155: only calls identical to the first one get its answer; the other request is refused.
    answered = {variant for variant, answer in outcomes if isinstance(answer, str)}
    assert len(answered) == 1, outcomes
