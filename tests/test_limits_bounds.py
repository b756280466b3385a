"""Limits: every request a client can make is bounded, and the bound is reported clearly.

- message size: a request above the servers' max receive size (16 MiB) is RESOURCE_EXHAUSTED
  at the gateway, and nothing is written;
- page size: above 1000 it is clamped (AIP-158), negative is INVALID_ARGUMENT naming the field;
- episodes per run: training_episodes above 1,000,000 is INVALID_ARGUMENT naming the field;
- active runs per caller: a trainer refuses the (N+1)th queued/running run of one caller with
  RESOURCE_EXHAUSTED naming TRAINER_MAX_ACTIVE_RUNS_PER_CALLER; other callers are not affected.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import grpc
import psycopg
import pytest

from taxidriver.errors import status_details
from taxidriver.keepalive import channel_options
from taxidriver.registry.v1 import registry_service_pb2 as pb
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc
from taxidriver.registry.v1 import resources_pb2
from taxidriver.server import MAX_MESSAGE_BYTES
from taxidriver.trainer.v1 import trainer_service_pb2 as tpb
from taxidriver.trainer.v1 import trainer_service_pb2_grpc as trainer_grpc
from taxidriver.vocabulary import STOPPED_STATUSES
from tests.support import InProcessService, LoopThread

# Stopped: terminal or INTERRUPTED (taxidriver.vocabulary, from RunStatus).
TERMINAL = STOPPED_STATUSES


def run_count(db: psycopg.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM training_runs").fetchone()[0])  # type: ignore[index]


def violation_fields(error: grpc.RpcError) -> list[str]:
    violations, _ = status_details(error)
    return [v.field for v in violations]


def long_run(seed: int) -> tpb.StartRunRequest:
    """A run that stays active for a while (cancelled by the test)."""
    return tpb.StartRunRequest(
        algorithm="q_learning",
        mode=tpb.TRAINING_MODE_USER,
        hyperparameters=tpb.Hyperparameters(
            alpha=0.5,
            gamma=0.9,
            epsilon=1.0,
            epsilon_min=0.1,
            epsilon_decay=0.999,
            training_episodes=1_000_000,
            max_steps=200,
        ),
        seed=seed,
        test_episodes=1,
    )


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


@pytest.fixture()
def gateway_channel(open_gateway: InProcessService) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(open_gateway.target) as channel:
        yield channel


def test_a_message_above_the_receive_limit_is_resource_exhausted_and_writes_nothing(
    gateway_channel: grpc.Channel, db: psycopg.Connection
) -> None:
    annotations_before = db.execute("SELECT count(*) FROM run_annotations").fetchone()
    stub = registry_grpc.RegistryServiceStub(gateway_channel)
    huge = pb.CreateAnnotationRequest(run_id=str(uuid.uuid4()), annotation="x" * (MAX_MESSAGE_BYTES + 1024))
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateAnnotation(huge, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert db.execute("SELECT count(*) FROM run_annotations").fetchone() == annotations_before
    # The gateway is fine afterwards.
    assert stub.GetStatistics(pb.GetStatisticsRequest(), timeout=10) is not None


def test_page_size_above_1000_is_clamped_and_negative_is_invalid(
    gateway_channel: grpc.Channel, db: psycopg.Connection
) -> None:
    scope = f"limits-{uuid.uuid4().hex[:8]}"
    db.execute(
        """
        INSERT INTO training_runs (run_id, algorithm, env_id, status)
        SELECT gen_random_uuid(), 'q_learning', %s, 'completed' FROM generate_series(1, 1005)
        """,
        (scope,),
    )
    try:
        stub = registry_grpc.RegistryServiceStub(gateway_channel)
        reply = stub.ListRuns(pb.ListRunsRequest(filter=f'env_id = "{scope}"', page_size=50_000), timeout=30)
        assert len(reply.runs) == 1000
        assert reply.next_page_token
        rest = stub.ListRuns(
            pb.ListRunsRequest(filter=f'env_id = "{scope}"', page_size=50_000, page_token=reply.next_page_token),
            timeout=30,
        )
        assert len(rest.runs) == 5 and not rest.next_page_token
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListRuns(pb.ListRunsRequest(page_size=-1), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violation_fields(caught.value) == ["page_size"]
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListBestRuns(pb.ListBestRunsRequest(limit=-5), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violation_fields(caught.value) == ["limit"]
        best = stub.ListBestRuns(pb.ListBestRunsRequest(limit=1_000_000), timeout=30)
        assert len(best.runs) <= 1000
    finally:
        db.execute("DELETE FROM training_runs WHERE env_id = %s", (scope,))


def test_more_than_a_million_episodes_is_invalid_and_registers_nothing(
    gateway_channel: grpc.Channel, db: psycopg.Connection
) -> None:
    before = run_count(db)
    stub = trainer_grpc.TrainerServiceStub(gateway_channel)
    request = long_run(seed=1)
    request.hyperparameters.training_episodes = 1_000_001
    with pytest.raises(grpc.RpcError) as caught:
        stub.StartRun(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any("training_episodes" in field for field in violation_fields(caught.value))
    request.hyperparameters.max_steps = 10_001
    with pytest.raises(grpc.RpcError) as caught:
        stub.StartRun(request, timeout=30)
    assert any("max_steps" in field for field in violation_fields(caught.value))
    assert run_count(db) == before


def test_the_cap_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from taxidriver.config import SettingsError
    from trainer_service.settings import TrainerSettings

    assert TrainerSettings().max_active_runs_per_caller == 8
    monkeypatch.setenv("TRAINER_MAX_ACTIVE_RUNS_PER_CALLER", "3")
    assert TrainerSettings.from_env().max_active_runs_per_caller == 3
    with pytest.raises(SettingsError):
        TrainerSettings(max_active_runs_per_caller=0)


@pytest.fixture()
def capped(trainer: InProcessService) -> Iterator[InProcessService]:
    """The session trainer with a cap of 2 for one test (a new trainer would pay a JIT warm-up)."""
    runs = trainer.app.runs
    saved = runs.max_active_runs_per_caller
    runs.max_active_runs_per_caller = 2
    yield trainer
    runs.max_active_runs_per_caller = saved


def wait_status(db: psycopg.Connection, ids: list[str], status: str, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [r[0] for r in db.execute("SELECT status FROM training_runs WHERE run_id = ANY(%s::uuid[])", (ids,))]
        if (len(rows) == len(ids) and set(rows) == {status}) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_active_runs_per_caller_are_capped(capped: InProcessService, db: psycopg.Connection) -> None:
    with grpc.insecure_channel(capped.target) as channel:
        stub = trainer_grpc.TrainerServiceStub(channel)
        alice = (("x-caller", f"alice-{uuid.uuid4().hex[:6]}"),)
        started = [stub.StartRun(long_run(seed), metadata=alice, timeout=30).run_id for seed in (1, 2)]
        before = run_count(db)
        with pytest.raises(grpc.RpcError) as caught:
            stub.StartRun(long_run(3), metadata=alice, timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "TRAINER_MAX_ACTIVE_RUNS_PER_CALLER" in (caught.value.details() or "")
        assert "limit is 2" in (caught.value.details() or "")
        assert run_count(db) == before  # refused before anything was registered
        # Another caller has its own quota.
        bob = stub.StartRun(long_run(4), metadata=(("x-caller", f"bob-{uuid.uuid4().hex[:6]}"),), timeout=30).run_id
        # Once one of alice's runs is over, she has a slot again.
        stub.CancelRun(tpb.CancelRunRequest(run_id=started[0]), timeout=30)
        assert wait_status(db, started[:1], "cancelled") == ["cancelled"]
        deadline = time.monotonic() + 30
        while started[0] in capped.app.runs.active and time.monotonic() < deadline:
            time.sleep(0.05)
        third = stub.StartRun(long_run(5), metadata=alice, timeout=30).run_id
        for run_id in (started[1], bob, third):
            stub.CancelRun(tpb.CancelRunRequest(run_id=run_id), timeout=30)
    # The cap is what this test is about: a run may finish its episodes before its cancel
    # lands on a loaded machine (seen in CI), so each must be over, cancelled or completed.
    rows = wait_status(db, [*started, bob, third], "cancelled")
    assert len(rows) == 4 and set(rows) <= {"cancelled", "completed"}, rows


def test_full_view_pages_are_bounded_by_size_and_continue_with_a_token(
    open_gateway: InProcessService, registry: InProcessService, db: psycopg.Connection
) -> None:
    """Three runs of 400,000 episodes: ~18 MB as one FULL page, above the 16 MiB message limit
    (issue 10 saw RESOURCE_EXHAUSTED for page_size 2). Pages now stop at a byte budget."""
    from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2
    from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc

    scope = f"big-{uuid.uuid4().hex[:8]}"
    episodes, batch = 400_000, 100_000
    run_ids = []
    with grpc.insecure_channel(registry.target) as channel:
        ingest = ingest_grpc.IngestServiceStub(channel)
        for _ in range(3):
            run_id = str(uuid.uuid4())
            ingest.RegisterRun(
                ingest_pb2.RegisterRunRequest(
                    run_id=run_id, algorithm="sarsa", env_id=scope, episodes_planned=episodes
                ),
                timeout=30,
            )
            for first in range(0, episodes, batch):
                request = ingest_pb2.IngestEpisodesRequest(
                    run_id=run_id,
                    first_episode=first,
                    rewards=[-1.5] * batch,
                    steps=[200] * batch,
                    epsilons=[0.5] * batch,
                    td_errors=[0.25] * batch,
                    successes=[True] * batch,
                )
                list(ingest.IngestEpisodes(iter([request]), timeout=120))
            run_ids.append(run_id)
    # Our clients' channel options (taxidriver.client): 16 MiB messages, like the servers'.
    gateway_channel = grpc.insecure_channel(open_gateway.target, options=channel_options())
    try:
        stub = registry_grpc.RegistryServiceStub(gateway_channel)
        seen: list[str] = []
        token = ""
        pages = 0
        while True:
            reply = stub.ListRuns(
                pb.ListRunsRequest(
                    filter=f'env_id = "{scope}"', page_size=3, view=resources_pb2.RUN_VIEW_FULL, page_token=token
                ),
                timeout=120,
            )
            pages += 1
            assert reply.runs, "a page always holds at least one run"
            assert reply.ByteSize() < MAX_MESSAGE_BYTES
            for run in reply.runs:
                assert len(run.curves.rewards) == episodes
                assert len(run.curves.successes) == episodes
                seen.append(run.run_id)
            token = reply.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(run_ids)
        assert pages > 1
    finally:
        gateway_channel.close()
        db.execute("DELETE FROM training_runs WHERE env_id = %s", (scope,))
