"""Every run and annotation belongs to someone (issue 17), through the real gateway with real keys.

Owners come from the key the gateway checked, never from the client; the ownership rule of
CancelRun and ResumeRun (their access option: a trainer on its own runs, an admin on any) is
enforced by the trainer against the registry's record of the run's creator.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf import struct_pb2

from registry_service import users
from taxidriver.errors import status_details
from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from taxidriver.registry.v1 import registry_service_pb2 as rpb
from taxidriver.registry.v1 import registry_service_pb2_grpc as rgrpc
from taxidriver.registry.v1 import resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2 as tpb
from taxidriver.trainer.v1 import trainer_service_pb2_grpc as tgrpc
from tests.support import InProcessService
from trainer_service.params import resolve

TERMINAL = {resources_pb2.RUN_STATUS_COMPLETED, resources_pb2.RUN_STATUS_FAILED, resources_pb2.RUN_STATUS_CANCELLED}


@pytest.fixture(scope="module")
def people(database_url: str, registry: InProcessService) -> dict[str, tuple[str, str]]:
    """name -> (username, key): two trainers, an admin, a reader; fresh names per run of the module."""
    suffix = uuid.uuid4().hex[:6]
    roles = {"alice": "trainer", "bob": "trainer", "root": "admin", "rita": "reader"}
    with psycopg.connect(database_url, autocommit=True) as conn:
        return {
            name: (f"{name}-{suffix}", users.ensure_user_with_key(conn, f"{name}-{suffix}", role))
            for name, role in roles.items()
        }


@pytest.fixture()
def channel(secured_gateway: InProcessService) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(secured_gateway.target) as opened:
        yield opened


def as_(people: dict[str, tuple[str, str]], name: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {people[name][1]}"), *extra)


def long_run(seed: int) -> tpb.StartRunRequest:
    """Stays active until cancelled."""
    return tpb.StartRunRequest(
        algorithm="q_learning",
        mode=tpb.TRAINING_MODE_USER,
        hyperparameters=tpb.Hyperparameters(
            alpha=0.5, gamma=0.9, epsilon=1.0, epsilon_min=0.1, epsilon_decay=0.999,
            training_episodes=1_000_000, max_steps=200,
        ),
        seed=seed,
        test_episodes=1,
    )  # fmt: skip


def get_run(channel: grpc.Channel, people: dict[str, tuple[str, str]], run_id: str) -> resources_pb2.Run:
    return (
        rgrpc.RegistryServiceStub(channel)
        .GetRun(rpb.GetRunRequest(run_id=run_id), metadata=as_(people, "rita"), timeout=10)
        .run
    )


def wait_terminal(channel: grpc.Channel, people: dict[str, tuple[str, str]], run_id: str) -> resources_pb2.Run:
    deadline = time.monotonic() + 60
    run = get_run(channel, people, run_id)
    while run.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.1)
        run = get_run(channel, people, run_id)
    return run


def failed_run(registry: InProcessService, creator: str) -> str:
    """A small FAILED run registered by a trainer for `creator`: ResumeRun's raw material."""
    spec = resolve(
        tpb.StartRunRequest(
            algorithm="q_learning",
            mode=tpb.TRAINING_MODE_USER,
            hyperparameters=tpb.Hyperparameters(
                alpha=0.5, gamma=0.9, epsilon=1.0, epsilon_min=0.1, epsilon_decay=0.99,
                training_episodes=20, max_steps=50,
            ),
            test_episodes=1,
        ),
        random_seed=7,
    )  # fmt: skip
    params = struct_pb2.Struct()
    params.update(spec.to_params())
    run_id = str(uuid.uuid4())
    with grpc.insecure_channel(registry.target) as raw:
        ingest = ingest_grpc.IngestServiceStub(raw)
        ingest.RegisterRun(
            ingest_pb2.RegisterRunRequest(
                run_id=run_id, algorithm=spec.algorithm, mode=spec.mode, env_id=spec.env_id, params=params,
                episodes_planned=20, creator=creator,
            ),
            timeout=10,
        )  # fmt: skip
        ingest.UpdateRunStatus(
            ingest_pb2.UpdateRunStatusRequest(
                run_id=run_id, status=resources_pb2.RUN_STATUS_FAILED, error_message="worker lost (test)"
            ),
            timeout=10,
        )
    return run_id


def test_a_run_records_the_key_holder_as_creator_whatever_the_client_claims(
    channel: grpc.Channel, people: dict[str, tuple[str, str]]
) -> None:
    trainer = tgrpc.TrainerServiceStub(channel)
    spoof = (("x-caller-name", people["root"][0]), ("x-caller-role", "admin"), ("x-caller", "root"))
    started = trainer.StartRun(long_run(1), metadata=as_(people, "alice", *spoof), timeout=30)
    try:
        assert get_run(channel, people, started.run_id).creator == people["alice"][0]
    finally:
        trainer.CancelRun(tpb.CancelRunRequest(run_id=started.run_id), metadata=as_(people, "alice"), timeout=30)
    run = wait_terminal(channel, people, started.run_id)
    assert run.creator == people["alice"][0]
    assert run.cancelled_by == people["alice"][0]


def test_a_trainer_cannot_cancel_another_users_run_but_an_admin_can(
    channel: grpc.Channel, people: dict[str, tuple[str, str]]
) -> None:
    trainer = tgrpc.TrainerServiceStub(channel)
    run_id = trainer.StartRun(long_run(2), metadata=as_(people, "alice"), timeout=30).run_id
    with pytest.raises(grpc.RpcError) as refused:
        trainer.CancelRun(tpb.CancelRunRequest(run_id=run_id), metadata=as_(people, "bob"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert status_details(refused.value)[1] == "NOT_RUN_OWNER"
    assert people["alice"][0] in (refused.value.details() or "")
    assert get_run(channel, people, run_id).status not in TERMINAL  # still training
    trainer.CancelRun(tpb.CancelRunRequest(run_id=run_id), metadata=as_(people, "root"), timeout=30)
    run = wait_terminal(channel, people, run_id)
    assert run.status == resources_pb2.RUN_STATUS_CANCELLED
    assert run.cancelled_by == people["root"][0]


def test_a_trainer_resumes_only_its_own_runs_and_an_admin_any(
    channel: grpc.Channel, people: dict[str, tuple[str, str]], registry: InProcessService
) -> None:
    trainer = tgrpc.TrainerServiceStub(channel)
    run_id = failed_run(registry, people["alice"][0])
    with pytest.raises(grpc.RpcError) as refused:
        trainer.ResumeRun(tpb.ResumeRunRequest(run_id=run_id), metadata=as_(people, "bob"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert status_details(refused.value)[1] == "NOT_RUN_OWNER"
    assert get_run(channel, people, run_id).status == resources_pb2.RUN_STATUS_FAILED  # untouched
    trainer.ResumeRun(tpb.ResumeRunRequest(run_id=run_id), metadata=as_(people, "alice"), timeout=30)
    run = wait_terminal(channel, people, run_id)
    assert run.status == resources_pb2.RUN_STATUS_COMPLETED
    assert (run.creator, run.resumed_by) == (people["alice"][0], people["alice"][0])

    other = failed_run(registry, people["bob"][0])
    trainer.ResumeRun(tpb.ResumeRunRequest(run_id=other), metadata=as_(people, "root"), timeout=30)
    run = wait_terminal(channel, people, other)
    assert (run.creator, run.resumed_by) == (people["bob"][0], people["root"][0])


def test_a_run_of_unknown_owner_is_left_to_admins(
    channel: grpc.Channel, people: dict[str, tuple[str, str]], registry: InProcessService
) -> None:
    """Runs recorded before owners were (migration 0013 leaves their creator NULL) belong to nobody."""
    trainer = tgrpc.TrainerServiceStub(channel)
    run_id = failed_run(registry, "")
    assert get_run(channel, people, run_id).creator == ""
    with pytest.raises(grpc.RpcError) as refused:
        trainer.ResumeRun(tpb.ResumeRunRequest(run_id=run_id), metadata=as_(people, "alice"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "an unknown user" in (refused.value.details() or "")
    trainer.ResumeRun(tpb.ResumeRunRequest(run_id=run_id), metadata=as_(people, "root"), timeout=30)
    assert wait_terminal(channel, people, run_id).resumed_by == people["root"][0]


def test_list_runs_filters_and_orders_by_creator(
    channel: grpc.Channel, people: dict[str, tuple[str, str]], registry: InProcessService
) -> None:
    mine = {failed_run(registry, people["alice"][0]) for _ in range(2)}
    theirs = failed_run(registry, people["bob"][0])
    stub = rgrpc.RegistryServiceStub(channel)
    listed = stub.ListRuns(
        rpb.ListRunsRequest(filter=f'creator = "{people["alice"][0]}"', page_size=1000),
        metadata=as_(people, "rita"),
        timeout=10,
    )
    assert mine <= {run.run_id for run in listed.runs}
    assert theirs not in {run.run_id for run in listed.runs}
    assert {run.creator for run in listed.runs} == {people["alice"][0]}
    both = f'(creator = "{people["alice"][0]}" OR creator = "{people["bob"][0]}")'
    first = stub.ListRuns(
        rpb.ListRunsRequest(filter=both, order_by="creator desc", page_size=1), metadata=as_(people, "rita"), timeout=10
    )
    assert first.runs[0].creator == people["bob"][0]  # "bob-…" sorts after "alice-…"
    pages, token = [], first.next_page_token
    while token:
        page = stub.ListRuns(
            rpb.ListRunsRequest(filter=both, order_by="creator desc", page_size=1, page_token=token),
            metadata=as_(people, "rita"),
            timeout=10,
        )
        pages.extend(run.creator for run in page.runs)
        token = page.next_page_token
    assert [first.runs[0].creator, *pages] == sorted([first.runs[0].creator, *pages], reverse=True)


def test_annotations_record_their_author_and_imports_their_importer(
    channel: grpc.Channel, people: dict[str, tuple[str, str]], registry: InProcessService
) -> None:
    run_id = failed_run(registry, people["alice"][0])
    stub = rgrpc.RegistryServiceStub(channel)
    spoof = ("x-caller-name", "mallory")
    created = stub.CreateAnnotation(
        rpb.CreateAnnotationRequest(run_id=run_id, annotation="diverged early", tags=["why"]),
        metadata=as_(people, "bob", spoof),
        timeout=10,
    ).annotation
    assert created.author == people["bob"][0]
    listed = stub.ListAnnotations(rpb.ListAnnotationsRequest(run_id=run_id), metadata=as_(people, "rita"), timeout=10)
    assert [annotation.author for annotation in listed.annotations] == [people["bob"][0]]

    header = rpb.ImportModelRequest(
        header=rpb.ModelImportHeader(model_name=f"imported-{uuid.uuid4().hex[:6]}", run_id=run_id)
    )
    model = stub.ImportModel(
        iter([header, rpb.ImportModelRequest(chunk=b"\x93NUMPY")]), metadata=as_(people, "root"), timeout=10
    ).model
    assert model.imported_by == people["root"][0]
    fetched = stub.GetModel(rpb.GetModelRequest(model_id=model.model_id), metadata=as_(people, "rita"), timeout=10)
    assert fetched.model.imported_by == people["root"][0]


def test_the_cli_lists_my_runs_and_shows_owners(
    secured_gateway: InProcessService, people: dict[str, tuple[str, str]], registry: InProcessService
) -> None:
    import io

    from taxidriver.cli import main

    mine = failed_run(registry, people["alice"][0])
    theirs = failed_run(registry, people["bob"][0])
    unknown = failed_run(registry, "")
    base = ["--gateway", secured_gateway.target, "--api-key", people["alice"][1]]
    out, err = io.StringIO(), io.StringIO()
    assert main([*base, "--json", "runs", "list", "--mine", "--limit", "1000"], stdout=out, stderr=err) == 0, (
        err.getvalue()
    )
    listed = json.loads(out.getvalue())["runs"]
    assert mine in {run["run_id"] for run in listed}
    assert theirs not in {run["run_id"] for run in listed}
    assert {run["creator"] for run in listed} == {people["alice"][0]}

    out, err = io.StringIO(), io.StringIO()
    assert main([*base, "runs", "list", "--limit", "1000"], stdout=out, stderr=err) == 0, err.getvalue()
    rows = {line.split()[0]: line for line in out.getvalue().splitlines() if line.strip()}
    assert rows[theirs].rstrip().endswith(people["bob"][0])
    assert rows[unknown].rstrip().endswith("(unknown)")

    out, err = io.StringIO(), io.StringIO()
    assert main([*base, "runs", "show", mine], stdout=out, stderr=err) == 0, err.getvalue()
    assert f"creator:         {people['alice'][0]}" in out.getvalue()


def test_the_cli_models_table_shows_who_imported_each_model(
    secured_gateway: InProcessService, people: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    import io

    from taxidriver.cli import main

    source = tmp_path / "weights.npy"
    source.write_bytes(b"\x93NUMPY-test")
    base = ["--gateway", secured_gateway.target, "--api-key", people["root"][1]]
    out, err = io.StringIO(), io.StringIO()
    assert main([*base, "--json", "models", "import", str(source)], stdout=out, stderr=err) == 0, err.getvalue()
    model_id = json.loads(out.getvalue())["model_id"]
    out, err = io.StringIO(), io.StringIO()
    assert main([*base, "models", "list"], stdout=out, stderr=err) == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert "IMPORTED_BY" in lines[0]
    row = next(line for line in lines if line.startswith(model_id))
    assert people["root"][0] in row.split()


def test_the_cli_refuses_mine_without_authentication(gateway: InProcessService) -> None:
    import io

    from taxidriver.cli import main

    out, err = io.StringIO(), io.StringIO()
    assert main(["--gateway", gateway.target, "runs", "list", "--mine"], stdout=out, stderr=err) == 2
    assert "--mine needs a gateway that checks API keys" in err.getvalue()
