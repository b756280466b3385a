"""A disabled user or revoked key is refused at once, though the gateway caches keys for an hour.

Real registry and gateway servers, the real `python -m registry_service.users` command as a
process; the gateway learns of changes through the registry's AuthService.WatchKeyChanges.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid

import grpc
import psycopg
import pytest

from registry_service import users
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc
from tests.support import ROOT, InProcessService, LoopThread

# The conftest `secured_gateway`, caching keys far longer than any test: only the key-change stream can refuse.
GATEWAY = {"auth_cache_seconds": 3600.0}


def users_command(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "registry_service.users", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def list_runs_code(target: str, key: str) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
        try:
            stub.ListRuns(
                registry_service_pb2.ListRunsRequest(page_size=1),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=10,
            )
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def wait_for_code(target: str, key: str, expected: grpc.StatusCode, within: float = 15.0) -> grpc.StatusCode:
    """Bounded polling: the change travels by NOTIFY, a few milliseconds after the command commits."""
    deadline = time.monotonic() + within
    code = list_runs_code(target, key)
    while code != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        code = list_runs_code(target, key)
    return code


def cached_and_watching(gateway: InProcessService, key: str) -> bool:
    authenticator = gateway.app.authenticator
    digest = hashlib.sha256(key.encode()).hexdigest()
    return authenticator.watching.is_set() and digest in authenticator._cache


def new_user(database_url: str, role: str) -> tuple[str, str]:
    username = f"revoke-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        return username, users.ensure_user_with_key(conn, username, role)


def wait_until_watching(gateway: InProcessService, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not gateway.app.authenticator.watching.is_set():
        assert time.monotonic() < deadline, "the gateway never subscribed to key changes"
        time.sleep(0.05)


def test_disabling_a_user_refuses_its_cached_keys_at_once(secured_gateway: InProcessService, database_url: str) -> None:
    wait_until_watching(secured_gateway)
    username, key = new_user(database_url, "reader")
    assert list_runs_code(secured_gateway.target, key) == grpc.StatusCode.OK
    assert cached_and_watching(secured_gateway, key)  # the next call would be answered from the cache
    done = users_command(database_url, "disable", username)
    assert done.returncode == 0, done.stderr
    assert wait_for_code(secured_gateway.target, key, grpc.StatusCode.UNAUTHENTICATED) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    with psycopg.connect(database_url) as conn:
        revoked = conn.execute(
            "SELECT count(*) FILTER (WHERE revoked_at IS NULL) FROM api_keys k JOIN users u USING (user_id)"
            " WHERE u.username = %s",
            (username,),
        ).fetchone()
    assert revoked == (0,)  # disabling revoked every key of the user


def test_revoking_a_key_refuses_it_at_once(secured_gateway: InProcessService, database_url: str) -> None:
    wait_until_watching(secured_gateway)
    _, key = new_user(database_url, "reader")
    assert list_runs_code(secured_gateway.target, key) == grpc.StatusCode.OK
    assert cached_and_watching(secured_gateway, key)
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT key_id FROM api_keys WHERE key_sha256 = %s", (users.hash_key(key),)).fetchone()
    assert row is not None
    done = users_command(database_url, "revoke", str(row[0]))
    assert done.returncode == 0, done.stderr
    assert wait_for_code(secured_gateway.target, key, grpc.StatusCode.UNAUTHENTICATED) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


def test_a_lowered_role_applies_at_once(secured_gateway: InProcessService, database_url: str) -> None:
    wait_until_watching(secured_gateway)
    username, key = new_user(database_url, "admin")
    with grpc.insecure_channel(secured_gateway.target) as channel:
        stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
        purge = registry_service_pb2.PurgeRunsRequest(older_than_days=36500, validate_only=True)
        metadata = (("authorization", f"Bearer {key}"),)
        assert stub.PurgeRuns(purge, metadata=metadata, timeout=10).purged_runs >= 0
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE users SET role = 'reader' WHERE username = %s", (username,))
        deadline = time.monotonic() + 15
        code = grpc.StatusCode.OK
        while code != grpc.StatusCode.PERMISSION_DENIED and time.monotonic() < deadline:
            try:
                stub.PurgeRuns(purge, metadata=metadata, timeout=10)
                time.sleep(0.05)
            except grpc.RpcError as error:
                code = error.code()
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_keys_are_not_cached_while_the_key_change_stream_is_down(
    loop_thread: LoopThread, trainer: InProcessService, database_url: str
) -> None:
    """A registry that cannot report changes (here: none at all) must not leave keys cached."""
    from gateway.app import start_gateway
    from gateway.settings import GatewaySettings
    from tests.support import free_port

    settings = GatewaySettings(
        address="127.0.0.1:0",
        trainer_targets=(trainer.target,),
        registry_target=f"127.0.0.1:{free_port()}",
        auth_required=True,
        auth_cache_seconds=3600.0,
    )
    gateway = InProcessService(loop_thread, lambda: start_gateway(settings))
    try:
        _, key = new_user(database_url, "reader")
        assert list_runs_code(gateway.target, key) == grpc.StatusCode.UNAVAILABLE
        assert not gateway.app.authenticator.watching.is_set()
        assert not gateway.app.authenticator._cache
    finally:
        gateway.stop()


def test_a_restarted_registry_is_watched_again_and_what_changed_meanwhile_is_not_served(
    loop_thread: LoopThread, trainer: InProcessService, database_url: str
) -> None:
    """Keys revoked while the registry was down are refused once it is back, not after the ttl."""
    from gateway.app import start_gateway
    from gateway.settings import GatewaySettings
    from registry_service.app import start_registry
    from registry_service.settings import RegistrySettings
    from tests.support import free_port

    address = f"127.0.0.1:{free_port()}"
    registry_settings = RegistrySettings(address=address, database_url=database_url)
    own_registry = InProcessService(loop_thread, lambda: start_registry(registry_settings))
    settings = GatewaySettings(
        address="127.0.0.1:0",
        trainer_targets=(trainer.target,),
        registry_target=address,
        auth_required=True,
        auth_cache_seconds=3600.0,
    )
    gateway = InProcessService(loop_thread, lambda: start_gateway(settings))
    try:
        wait_until_watching(gateway)
        username, key = new_user(database_url, "reader")
        assert list_runs_code(gateway.target, key) == grpc.StatusCode.OK
        assert cached_and_watching(gateway, key)
        own_registry.stop()
        deadline = time.monotonic() + 15
        while gateway.app.authenticator.watching.is_set():
            assert time.monotonic() < deadline, "the gateway did not notice the registry was gone"
            time.sleep(0.05)
        assert not gateway.app.authenticator._cache  # nothing cached survives the loss of the stream
        assert users_command(database_url, "disable", username).returncode == 0  # no registry to notify
        own_registry = InProcessService(loop_thread, lambda: start_registry(registry_settings))
        wait_until_watching(gateway)
        assert list_runs_code(gateway.target, key) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        gateway.stop()
        own_registry.stop()


def test_with_the_internal_token_keys_are_watched_and_a_direct_caller_claim_is_refused(
    loop_thread: LoopThread, trainer: InProcessService, database_url: str
) -> None:
    """INTERNAL_TOKEN on: the gateway's key-change stream carries the token (the cache works and
    revocations still apply at once), and a client calling the registry directly with a forged
    x-caller-name is refused before anything believes it."""
    from gateway.app import start_gateway
    from gateway.settings import GatewaySettings
    from registry_service.app import start_registry
    from registry_service.settings import RegistrySettings
    from taxidriver.errors import status_details

    token = "owner-test-internal-token"
    own_registry = InProcessService(
        loop_thread,
        lambda: start_registry(
            RegistrySettings(address="127.0.0.1:0", database_url=database_url, internal_token=token)
        ),
    )
    settings = GatewaySettings(
        address="127.0.0.1:0",
        trainer_targets=(trainer.target,),
        registry_target=own_registry.target,
        auth_required=True,
        auth_cache_seconds=3600.0,
        internal_token=token,
    )
    gateway = InProcessService(loop_thread, lambda: start_gateway(settings))
    try:
        wait_until_watching(gateway)
        username, key = new_user(database_url, "reader")
        assert list_runs_code(gateway.target, key) == grpc.StatusCode.OK
        assert cached_and_watching(gateway, key)
        assert users_command(database_url, "disable", username).returncode == 0
        assert wait_for_code(gateway.target, key, grpc.StatusCode.UNAUTHENTICATED) == grpc.StatusCode.UNAUTHENTICATED

        with grpc.insecure_channel(own_registry.target) as channel:
            forged = (("x-caller-name", "root"), ("x-caller-role", "admin"), ("x-caller", "root"))
            with pytest.raises(grpc.RpcError) as refused:
                registry_service_pb2_grpc.RegistryServiceStub(channel).GetCurrentUser(
                    registry_service_pb2.GetCurrentUserRequest(), metadata=forged, timeout=10
                )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert status_details(refused.value)[1] == "INTERNAL_TOKEN_MISSING"
    finally:
        gateway.stop()
        own_registry.stop()


def test_a_full_key_cache_drops_only_its_least_recently_used_answer(
    loop_thread: LoopThread, registry: InProcessService, database_url: str
) -> None:
    """A full cache makes room for one key by dropping one (was: it dropped every cached key)."""
    from gateway.auth import KeyAuthenticator

    async def start() -> KeyAuthenticator:
        authenticator = KeyAuthenticator(registry.target, ttl=3600.0, max_entries=2)
        authenticator.start()
        return authenticator

    authenticator = loop_thread.run(start())
    try:
        deadline = time.monotonic() + 15
        while not authenticator.watching.is_set():
            assert time.monotonic() < deadline, "never subscribed to key changes"
            time.sleep(0.05)
        keys = [new_user(database_url, "reader")[1] for _ in range(3)]
        digests = [hashlib.sha256(key.encode()).hexdigest() for key in keys]
        for key in keys[:2]:
            loop_thread.run(authenticator.authenticate(f"Bearer {key}"))
        loop_thread.run(authenticator.authenticate(f"Bearer {keys[0]}"))  # the first key is used again
        loop_thread.run(authenticator.authenticate(f"Bearer {keys[2]}"))
        assert [digest in authenticator._cache for digest in digests] == [True, False, True]
    finally:
        loop_thread.run(authenticator.close())
