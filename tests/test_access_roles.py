"""Every public method's least role, declared in the protos, enforced by the real gateway.

The table below pins the roles: a method added to a public service without a row
here fails `test_the_pinned_table_covers_every_public_method`, and a method whose
option differs from its row fails the calls through the gateway.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from gateway.app import PUBLIC_SERVICES
from taxidriver.access import ROLE_NAMES, ROLES, AccessNotDeclared, least_roles
from taxidriver.auth.v1 import auth_service_pb2
from taxidriver.errors import status_details
from taxidriver.options.v1 import access_pb2
from tests.support import InProcessService, LoopThread, role_keys

# method -> least role, written out by hand (not read from the protos) so that the test pins them.
EXPECTED_ROLES = {
    "taxidriver.trainer.v1.TrainerService.StartRun": "trainer",
    "taxidriver.trainer.v1.TrainerService.CancelRun": "trainer",
    "taxidriver.trainer.v1.TrainerService.ResumeRun": "trainer",
    "taxidriver.trainer.v1.TrainerService.ListAlgorithms": "reader",
    "taxidriver.registry.v1.RegistryService.ListRuns": "reader",
    "taxidriver.registry.v1.RegistryService.GetRun": "reader",
    "taxidriver.registry.v1.RegistryService.ListBestRuns": "reader",
    "taxidriver.registry.v1.RegistryService.GetStatistics": "reader",
    "taxidriver.registry.v1.RegistryService.SearchRunsByParams": "reader",
    "taxidriver.registry.v1.RegistryService.CompareRuns": "reader",
    "taxidriver.registry.v1.RegistryService.CreateAnnotation": "trainer",
    "taxidriver.registry.v1.RegistryService.ListAnnotations": "reader",
    "taxidriver.registry.v1.RegistryService.DeleteRun": "admin",
    "taxidriver.registry.v1.RegistryService.PurgeRuns": "admin",
    "taxidriver.registry.v1.RegistryService.ListModels": "reader",
    "taxidriver.registry.v1.RegistryService.GetModel": "reader",
    "taxidriver.registry.v1.RegistryService.ExportModel": "reader",
    "taxidriver.registry.v1.RegistryService.ImportModel": "admin",
    "taxidriver.registry.v1.RegistryService.ListArtifacts": "reader",
    "taxidriver.registry.v1.RegistryService.DownloadArtifact": "reader",
    "taxidriver.registry.v1.RegistryService.WatchRun": "reader",
    "taxidriver.registry.v1.RegistryService.WatchRuns": "reader",
    "taxidriver.registry.v1.RegistryService.GetCurrentUser": "reader",
    "taxidriver.tuner.v1.TunerService.StartSweep": "trainer",
    "taxidriver.tuner.v1.TunerService.GetSweep": "reader",
    "taxidriver.tuner.v1.TunerService.ListSweeps": "reader",
    "taxidriver.tuner.v1.TunerService.CancelSweep": "trainer",
    "taxidriver.tuner.v1.TunerService.WatchSweep": "reader",
    "taxidriver.tuner.v1.TunerService.SuggestParams": "reader",
    "taxidriver.tuner.v1.TunerService.GetParamImportance": "reader",
}
PUBLIC_METHODS = [method for service in PUBLIC_SERVICES for method in service.methods]


# The conftest `secured_gateway`, with a tuner behind it and no key caching.
GATEWAY = {"tuner": True, "auth_cache_seconds": 0.0}


@pytest.fixture(scope="module")
def keys(database_url: str, registry: InProcessService) -> dict[str, str]:
    return role_keys(database_url, "access-test")


def call_code(channel: grpc.Channel, method: MethodDescriptor, key: str) -> grpc.StatusCode:
    """Calls `method` with an empty request (one message for streams) and returns its status code.

    Empty requests are invalid or harmless for every method (no run id, no purge age), so a
    call that passes the gateway's role check ends at its REQUIRED-field check or at the
    service's own validation, never changes data.
    """
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    kind = ("stream" if method.client_streaming else "unary") + "_" + ("stream" if method.server_streaming else "unary")
    callable_ = getattr(channel, kind)(
        path, request_serializer=request_class.SerializeToString, response_deserializer=response_class.FromString
    )
    request = request_class()
    argument = iter([request]) if method.client_streaming else request
    metadata = (("authorization", f"Bearer {key}"),)
    try:
        if method.server_streaming:
            call = callable_(argument, metadata=metadata, timeout=15)
            for _ in call:
                pass
            return call.code()
        callable_(argument, metadata=metadata, timeout=15)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.PERMISSION_DENIED:
            assert status_details(error)[1] == "ROLE_TOO_LOW", error.details()
        return error.code()


def test_the_pinned_table_covers_every_public_method() -> None:
    assert sorted(method.full_name for method in PUBLIC_METHODS) == sorted(EXPECTED_ROLES)
    declared = least_roles(PUBLIC_SERVICES)
    assert {path.lstrip("/").replace("/", "."): role for path, role in declared.items()} == {
        name: ROLES[role] for name, role in EXPECTED_ROLES.items()
    }


@pytest.mark.parametrize("caller_role", ROLE_NAMES)
@pytest.mark.parametrize("method", PUBLIC_METHODS, ids=lambda method: method.name)
def test_every_public_method_refuses_roles_below_its_own(
    secured_gateway: InProcessService, keys: dict[str, str], method: MethodDescriptor, caller_role: str
) -> None:
    least = EXPECTED_ROLES[method.full_name]
    with grpc.insecure_channel(secured_gateway.target) as channel:
        code = call_code(channel, method, keys[caller_role])
    if ROLES[caller_role] < ROLES[least]:
        assert code == grpc.StatusCode.PERMISSION_DENIED
    else:
        # Past the gateway: the service answered (OK, or its own verdict on an empty request).
        assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), code


def _service_without_access(unannotated_method: str) -> ServiceDescriptor:
    """A public-looking service whose one method carries the option and the other does not."""
    file = descriptor_pb2.FileDescriptorProto(
        name="taxidriver/testonly/v1/unannotated.proto",
        package="taxidriver.testonly.v1",
        syntax="proto3",
        dependency=["taxidriver/options/v1/access.proto"],
    )
    file.message_type.add(name="Empty")
    service = file.service.add(name="UnannotatedService")
    annotated = service.method.add(name="Annotated", input_type=".taxidriver.testonly.v1.Empty")
    annotated.output_type = ".taxidriver.testonly.v1.Empty"
    annotated.options.Extensions[access_pb2.access].least_role = access_pb2.ROLE_READER
    bare = service.method.add(name=unannotated_method, input_type=".taxidriver.testonly.v1.Empty")
    bare.output_type = ".taxidriver.testonly.v1.Empty"
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(file.name)
    except KeyError:
        pool.Add(file)
    return pool.FindServiceByName("taxidriver.testonly.v1.UnannotatedService")


def test_a_public_method_without_a_least_role_stops_the_gateway_from_starting(
    registry: InProcessService, trainer: InProcessService
) -> None:
    from gateway.app import REGISTRY_SERVICE, start_gateway
    from gateway.settings import GatewaySettings

    unannotated = _service_without_access("LaunchMissiles")
    settings = GatewaySettings(
        address="127.0.0.1:0", trainer_targets=(trainer.target,), registry_target=registry.target, auth_required=True
    )
    with pytest.raises(AccessNotDeclared) as refused:
        asyncio.run(start_gateway(settings, public_services=(unannotated, REGISTRY_SERVICE)))
    message = str(refused.value)
    assert "taxidriver.testonly.v1.UnannotatedService.LaunchMissiles" in message
    assert "UnannotatedService.Annotated" not in message  # only the offending method is named
    # No default role, even with keys switched off.
    with pytest.raises(AccessNotDeclared):
        asyncio.run(
            start_gateway(replace(settings, auth_required=False), public_services=(unannotated, REGISTRY_SERVICE))
        )


def test_health_and_reflection_stay_anonymous(secured_gateway: InProcessService) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(secured_gateway.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        listed = {service.name for reply in replies for service in reply.list_services_response.service}
    assert {"taxidriver.trainer.v1.TrainerService", "taxidriver.registry.v1.RegistryService"} <= listed


def test_the_public_contract_pulls_in_no_internal_file(secured_gateway: InProcessService) -> None:
    """The access option and its Role enum are public; nothing of the internal auth proto is served."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    imported: set[str] = set()
    pending = [service.file for service in PUBLIC_SERVICES]
    while pending:
        file = pending.pop()
        if file.name not in imported:
            imported.add(file.name)
            pending.extend(file.dependencies)
    assert "taxidriver/options/v1/access.proto" in imported
    assert not any(name.startswith(("taxidriver/auth/", "taxidriver/ingest/")) for name in imported), imported

    with grpc.insecure_channel(secured_gateway.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(file_by_filename="taxidriver/auth/v1/auth_service.proto"),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="taxidriver.auth.v1.AuthService"),
        ]
        replies = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    assert [reply.error_response.error_code for reply in replies] == [grpc.StatusCode.NOT_FOUND.value[0]] * 2


def test_the_internal_role_enum_mirrors_the_public_one() -> None:
    """AuthenticateResponse.role (internal, older) must mean what the public Role means."""
    assert dict(auth_service_pb2.Role.items()) == dict(access_pb2.Role.items())


def test_an_ownership_rule_that_cannot_be_enforced_stops_the_gateway_from_starting() -> None:
    """any_owner_role on a method whose request names no run or sweep, or not above least_role, is refused."""
    file = descriptor_pb2.FileDescriptorProto(
        name="taxidriver/testonly/v1/bad_owner.proto",
        package="taxidriver.testonly.v1",
        syntax="proto3",
        dependency=["taxidriver/options/v1/access.proto"],
    )
    file.message_type.add(name="NoRun")
    service = file.service.add(name="BadOwnerService")
    no_run = service.method.add(name="Sweep", input_type=".taxidriver.testonly.v1.NoRun")
    no_run.output_type = ".taxidriver.testonly.v1.NoRun"
    access = no_run.options.Extensions[access_pb2.access]
    access.least_role = access_pb2.ROLE_TRAINER
    access.any_owner_role = access_pb2.ROLE_READER
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(file.name)
    except KeyError:
        pool.Add(file)
    with pytest.raises(AccessNotDeclared) as refused:
        least_roles([pool.FindServiceByName("taxidriver.testonly.v1.BadOwnerService")])
    assert "Sweep (any_owner_role must be above least_role)" in str(refused.value)
    assert "Sweep (an ownership rule needs a run_id or a sweep_id in the request)" in str(refused.value)


@pytest.mark.skipif(not (Path(sys.executable).parent / "grpcurl").exists(), reason="grpcurl is installed by make venv")
def test_grpcurl_describes_each_methods_access_but_not_the_auth_service(secured_gateway: InProcessService) -> None:
    grpcurl = str(Path(sys.executable).parent / "grpcurl")

    def describe(symbol: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [grpcurl, "-plaintext", secured_gateway.target, "describe", symbol],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    cancel = describe("taxidriver.trainer.v1.TrainerService.CancelRun")
    assert cancel.returncode == 0, cancel.stderr
    assert "least_role" in cancel.stdout and "ROLE_TRAINER" in cancel.stdout, cancel.stdout
    assert "any_owner_role" in cancel.stdout and "ROLE_ADMIN" in cancel.stdout, cancel.stdout
    whoami = describe("taxidriver.registry.v1.GetCurrentUserResponse")
    assert whoami.returncode == 0, whoami.stderr
    assert ".taxidriver.options.v1.Role role = 2;" in whoami.stdout
    hidden = describe("taxidriver.auth.v1.AuthService")
    assert hidden.returncode != 0


def test_the_database_accepts_exactly_the_roles_of_the_enum(db: psycopg.Connection) -> None:
    """users.role's CHECK (migration 0010) is SQL and cannot import the enum: this pins them together."""
    import re

    definitions = [
        row[0]
        for row in db.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'users'::regclass AND contype = 'c'"
        ).fetchall()
    ]
    role_checks = [definition for definition in definitions if "role" in definition]
    assert len(role_checks) == 1, definitions
    assert set(re.findall(r"'([a-z_]+)'", role_checks[0])) == set(ROLE_NAMES)


def test_a_served_method_outside_the_access_table_is_refused_even_to_an_admin(
    loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService, keys: dict[str, str]
) -> None:
    """Deny by default: the registry's methods are served but left out of the table here."""
    from gateway.app import TRAINER_SERVICE, start_gateway
    from gateway.settings import GatewaySettings
    from taxidriver.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
    from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc

    settings = GatewaySettings(
        address="127.0.0.1:0", trainer_targets=(trainer.target,), registry_target=registry.target, auth_required=True
    )
    gateway = InProcessService(loop_thread, lambda: start_gateway(settings, public_services=(TRAINER_SERVICE,)))
    admin = (("authorization", f"Bearer {keys['admin']}"),)
    try:
        with grpc.insecure_channel(gateway.target) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                registry_service_pb2_grpc.RegistryServiceStub(channel).ListRuns(
                    registry_service_pb2.ListRunsRequest(), metadata=admin, timeout=10
                )
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert status_details(refused.value)[1] == "NOT_PUBLIC"
            with pytest.raises(grpc.RpcError) as internal:
                ingest_service_pb2_grpc.IngestServiceStub(channel).RegisterRun(
                    ingest_service_pb2.RegisterRunRequest(), metadata=admin, timeout=10
                )
            assert internal.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "not routed by the gateway" in (internal.value.details() or "")
    finally:
        gateway.stop()


def test_a_sweep_records_its_owner_by_username_like_runs_record_their_creator(
    secured_gateway: InProcessService, keys: dict[str, str]
) -> None:
    from taxidriver.tuner.v1 import tuner_service_pb2 as tuner_pb
    from taxidriver.tuner.v1 import tuner_service_pb2_grpc
    from tests.test_tuner_sweeps import small_spec

    spec = small_spec(n_trials=1, parallelism=1, seeds_per_trial=1)
    metadata = (("authorization", f"Bearer {keys['trainer']}"),)
    with grpc.insecure_channel(secured_gateway.target) as channel:
        stub = tuner_service_pb2_grpc.TunerServiceStub(channel)
        sweep = stub.StartSweep(tuner_pb.StartSweepRequest(spec=spec), metadata=metadata, timeout=30).sweep
        try:
            # The username (what Run.creator holds), not the user id the gateway sends as x-caller.
            assert sweep.owner == "access-test-trainer"
            got = stub.GetSweep(tuner_pb.GetSweepRequest(sweep_id=sweep.sweep_id), metadata=metadata, timeout=30)
            assert got.sweep.owner == "access-test-trainer"
        finally:
            stub.CancelSweep(tuner_pb.CancelSweepRequest(sweep_id=sweep.sweep_id), metadata=metadata, timeout=30)
