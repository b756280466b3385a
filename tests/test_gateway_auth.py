"""API keys and roles at the gateway; optional TLS on its public port."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.auth import Principal, current_principal
from gateway.forwarding import request_metadata
from registry_service import users
from taxidriver.auth.v1 import auth_service_pb2
from taxidriver.errors import status_details
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from tests.support import InProcessService, LoopThread, role_keys

# No key caching, so a revoked key is refused on the next call (the conftest `secured_gateway`).
GATEWAY = {"auth_cache_seconds": 0.0}


@pytest.fixture(scope="module")
def keys(database_url: str, registry: InProcessService) -> dict[str, str]:
    return role_keys(database_url, "auth-test")


def bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


def call_error(call, request, metadata=()) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=metadata, timeout=10)
    return caught.value


def test_a_call_without_a_key_is_unauthenticated(secured_gateway: InProcessService) -> None:
    with grpc.insecure_channel(secured_gateway.target) as channel:
        stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
        error = call_error(stub.ListRuns, registry_service_pb2.ListRunsRequest())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in (error.details() or "")
    assert status_details(error)[1] == "API_KEY_MISSING"


def test_an_unknown_key_is_unauthenticated(secured_gateway: InProcessService) -> None:
    with grpc.insecure_channel(secured_gateway.target) as channel:
        stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
        error = call_error(stub.ListRuns, registry_service_pb2.ListRunsRequest(), bearer("tdk_not-a-real-key"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert status_details(error)[1] == "API_KEY_INVALID"


def test_a_reader_reads_but_cannot_train_or_delete(secured_gateway: InProcessService, keys: dict[str, str]) -> None:
    with grpc.insecure_channel(secured_gateway.target) as channel:
        registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
        trainer = trainer_service_pb2_grpc.TrainerServiceStub(channel)
        reader = bearer(keys["reader"])
        listed = registry.ListRuns(registry_service_pb2.ListRunsRequest(page_size=1), metadata=reader, timeout=10)
        assert listed.total_size >= 0
        assert len(trainer.ListAlgorithms(trainer_service_pb2.ListAlgorithmsRequest(), metadata=reader).algorithms) == 6
        denied = call_error(trainer.StartRun, trainer_service_pb2.StartRunRequest(algorithm="sarsa"), reader)
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "StartRun needs the trainer role" in (denied.details() or "")
        assert status_details(denied)[1] == "ROLE_TOO_LOW"
        denied = call_error(
            registry.DeleteRun,
            registry_service_pb2.DeleteRunRequest(run_id="00000000-0000-0000-0000-000000000000"),
            reader,
        )
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_trainer_reaches_the_trainer_but_not_admin_methods(
    secured_gateway: InProcessService, keys: dict[str, str]
) -> None:
    with grpc.insecure_channel(secured_gateway.target) as channel:
        registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
        trainer = trainer_service_pb2_grpc.TrainerServiceStub(channel)
        # Past the gateway (every REQUIRED field set): the trainer itself validates (and refuses) the request.
        request = trainer_service_pb2.StartRunRequest(
            algorithm="nope", mode=trainer_service_pb2.TRAINING_MODE_OPTIMIZED
        )
        error = call_error(trainer.StartRun, request, bearer(keys["trainer"]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "algorithm" in [v.field for v in status_details(error)[0]]
        denied = call_error(
            registry.PurgeRuns, registry_service_pb2.PurgeRunsRequest(older_than_days=30), bearer(keys["trainer"])
        )
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "PurgeRuns needs the admin role" in (denied.details() or "")


def test_an_admin_reaches_admin_methods(secured_gateway: InProcessService, keys: dict[str, str]) -> None:
    with grpc.insecure_channel(secured_gateway.target) as channel:
        registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
        error = call_error(
            registry.DeleteRun,
            registry_service_pb2.DeleteRunRequest(run_id="00000000-0000-0000-0000-000000000000"),
            bearer(keys["admin"]),
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        purged = registry.PurgeRuns(
            registry_service_pb2.PurgeRunsRequest(older_than_days=36500, validate_only=True),
            metadata=bearer(keys["admin"]),
            timeout=10,
        )
        assert purged.purged_runs == 0


def test_a_revoked_key_is_refused(secured_gateway: InProcessService, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        key = users.ensure_user_with_key(conn, "auth-test-revoked", "reader")
        with grpc.insecure_channel(secured_gateway.target) as channel:
            stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
            stub.ListRuns(registry_service_pb2.ListRunsRequest(page_size=1), metadata=bearer(key), timeout=10)
            conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_sha256 = %s", (users.hash_key(key),))
            error = call_error(stub.ListRuns, registry_service_pb2.ListRunsRequest(page_size=1), bearer(key))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_keys_are_stored_only_as_hashes(database_url: str, keys: dict[str, str]) -> None:
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT key_sha256 FROM api_keys").fetchall()
    hashes = {row[0] for row in stored}
    assert users.hash_key(keys["admin"]) in hashes
    assert not any(key in hashes for key in keys.values())


def test_health_and_reflection_need_no_key(secured_gateway: InProcessService) -> None:
    with grpc.insecure_channel(secured_gateway.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        )


def test_the_key_stops_at_the_gateway_and_the_caller_travels_upstream() -> None:
    token = current_principal.set(Principal(user_id="u-1", username="alice", role=auth_service_pb2.ROLE_TRAINER))
    try:
        forwarded = dict(
            request_metadata(
                [
                    ("authorization", "Bearer tdk_secret"),
                    ("x-caller", "spoofed"),
                    ("x-caller-name", "mallory"),
                    ("x-caller-role", "admin"),
                    ("x-request-id", "r1"),
                ]
            )
        )
    finally:
        current_principal.reset(token)
    assert "authorization" not in forwarded
    assert forwarded["x-caller"] == "u-1"
    assert forwarded["x-caller-name"] == "alice"
    assert forwarded["x-caller-role"] == "trainer"
    assert forwarded["x-request-id"] == "r1"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_the_gateway_serves_tls_when_given_a_certificate(
    loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService, tmp_path: Path
) -> None:
    from gateway.app import start_gateway
    from gateway.settings import GatewaySettings

    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    settings = GatewaySettings(
        address="127.0.0.1:0",
        trainer_targets=(trainer.target,),
        registry_target=registry.target,
        auth_required=False,
        tls_cert_file=str(cert),
        tls_key_file=str(key),
    )
    service = InProcessService(loop_thread, lambda: start_gateway(settings))
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{service.port}", credentials) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(service.target) as channel, pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    finally:
        service.stop()


def test_the_cli_sends_its_api_key(secured_gateway: InProcessService, keys: dict[str, str]) -> None:
    import io

    from taxidriver.cli import main

    out, err = io.StringIO(), io.StringIO()
    assert (
        main(
            ["--gateway", secured_gateway.target, "--api-key", keys["reader"], "--json", "algorithms"],
            stdout=out,
            stderr=err,
        )
        == 0
    )
    assert "q_learning" in out.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert main(["--gateway", secured_gateway.target, "--api-key", "", "algorithms"], stdout=out, stderr=err) == 1
    assert "UNAUTHENTICATED" in err.getvalue()
    assert "TAXI_DRIVER_API_KEY" in err.getvalue()
