"""Bad input found by real use and fuzzing (issue 10): the right code, the real field, nothing written.

Each case was INTERNAL (or named the wrong field) before: NaN/inf in Structs, NUL bytes in
text, integers too large for any column, forged page tokens, concurrent duplicates.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import uuid
from collections.abc import Iterator

import grpc
import psycopg
import pytest
from google.protobuf import struct_pb2

from taxidriver.errors import status_details
from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from taxidriver.registry.v1 import registry_service_pb2 as pb
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc
from taxidriver.registry.v1 import resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2 as tpb
from taxidriver.trainer.v1 import trainer_service_pb2_grpc as trainer_grpc
from tests.support import InProcessService, LoopThread

HUGE = "1" + "0" * 400


@pytest.fixture(scope="module")
def open_gateway(
    loop_thread: LoopThread, registry: InProcessService, trainer: InProcessService
) -> Iterator[InProcessService]:
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
    with grpc.insecure_channel(open_gateway.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def queries(channel: grpc.Channel) -> registry_grpc.RegistryServiceStub:
    return registry_grpc.RegistryServiceStub(channel)


@pytest.fixture()
def run_id(registry: InProcessService) -> Iterator[str]:
    with grpc.insecure_channel(registry.target) as channel:
        ingest = ingest_grpc.IngestServiceStub(channel)
        run_id = str(uuid.uuid4())
        ingest.RegisterRun(
            ingest_pb2.RegisterRunRequest(run_id=run_id, algorithm="sarsa", episodes_planned=2), timeout=10
        )
        yield run_id


def struct(values: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def refused(call, *args, **kwargs) -> tuple[grpc.StatusCode, list[str], str]:
    with pytest.raises(grpc.RpcError) as caught:
        reply = call(*args, timeout=30, **kwargs)
        if hasattr(reply, "__next__"):
            list(reply)
    violations, _ = status_details(caught.value)
    return caught.value.code(), [v.field for v in violations], caught.value.details() or ""


def import_model(
    queries: registry_grpc.RegistryServiceStub,
    header: pb.ModelImportHeader,
    data: bytes = b"\x01\x02\x03\x04",
    timeout: float = 30,
) -> pb.ImportModelResponse:
    return queries.ImportModel(
        iter([pb.ImportModelRequest(header=header), pb.ImportModelRequest(chunk=data)]), timeout=timeout
    )


def counts(db: psycopg.Connection) -> tuple[int, ...]:
    return tuple(
        int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
        for table in ("training_runs", "run_annotations", "saved_models", "artifacts")
    )


# ---------------------------------------------------------------- non-finite numbers


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_params_search_is_invalid_naming_the_param(
    queries: registry_grpc.RegistryServiceStub, value: float
) -> None:
    code, fields, _ = refused(
        queries.SearchRunsByParams, pb.SearchRunsByParamsRequest(params=struct({"gamma": 0.9, "alpha": value}))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["params.alpha"]


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_model_metadata_is_invalid_and_stores_nothing(
    queries: registry_grpc.RegistryServiceStub, db: psycopg.Connection, value: float
) -> None:
    before = counts(db)
    header = pb.ModelImportHeader(model_name="m", model_metadata=struct({"score": {"best": value}}))
    code, fields, _ = refused(import_model, queries, header)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["header.model_metadata.score.best"]
    assert counts(db) == before


# ---------------------------------------------------------------- NUL bytes


def test_nul_bytes_in_annotations_are_invalid_naming_the_field(
    queries: registry_grpc.RegistryServiceStub, db: psycopg.Connection, run_id: str
) -> None:
    before = counts(db)
    for request, field in [
        (pb.CreateAnnotationRequest(run_id=run_id, annotation="ok", request_id="a\x00b"), "request_id"),
        (pb.CreateAnnotationRequest(run_id=run_id, annotation="bad\x00text"), "annotation"),
    ]:
        code, fields, _ = refused(queries.CreateAnnotation, request)
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    assert counts(db) == before


def test_nul_bytes_in_model_imports_are_invalid_naming_the_field(
    queries: registry_grpc.RegistryServiceStub, db: psycopg.Connection
) -> None:
    before = counts(db)
    for header, field in [
        (pb.ModelImportHeader(model_name="m\x00"), "header.model_name"),
        (pb.ModelImportHeader(model_name="m", request_id="r\x00"), "header.request_id"),
        (pb.ModelImportHeader(model_name="m", model_metadata=struct({"k": "v\x00"})), "header.model_metadata.k"),
        (pb.ModelImportHeader(model_name="m", model_metadata=struct({"k\x00": 1})), "header.model_metadata"),
    ]:
        code, fields, _ = refused(import_model, queries, header)
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field]), header
    assert counts(db) == before


def test_nul_byte_in_a_start_run_request_id_is_invalid(channel: grpc.Channel, db: psycopg.Connection) -> None:
    before = counts(db)
    request = tpb.StartRunRequest(
        request_id="x\x00y", algorithm="q_learning", mode=tpb.TRAINING_MODE_OPTIMIZED, test_episodes=1
    )
    code, fields, _ = refused(trainer_grpc.TrainerServiceStub(channel).StartRun, request)
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["request_id"])
    assert counts(db) == before


# ---------------------------------------------------------------- filters


@pytest.mark.parametrize(
    "text",
    [
        f"episodes_recorded > {HUGE}",
        f"params.alpha > {HUGE}",
        f"params.alpha = {HUGE}",
        f"test_metrics.success_rate < -{HUGE}",
        "params.alpha = 1e999",
        'algorithm = "sar\x00sa"',
        'params.note = "a\x00b"',
    ],
)
def test_out_of_range_numbers_and_nul_in_filters_are_invalid(
    queries: registry_grpc.RegistryServiceStub, text: str
) -> None:
    for call, request in [
        (queries.ListRuns, pb.ListRunsRequest(filter=text)),
        (queries.ListBestRuns, pb.ListBestRunsRequest(filter=text)),
        (queries.GetStatistics, pb.GetStatisticsRequest(filter=text)),
    ]:
        code, fields, _ = refused(call, request)
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["filter"]), (call, text)


# ---------------------------------------------------------------- page tokens


def forge(payload: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def real_token(queries: registry_grpc.RegistryServiceStub, run_id: str, order_by: str = "") -> dict:
    # Two runs at least exist (the fixture's, and the ones tests share), so page_size 1 has a next page.
    reply = queries.ListRuns(pb.ListRunsRequest(page_size=1, order_by=order_by), timeout=30)
    assert reply.next_page_token
    return json.loads(base64.urlsafe_b64decode(reply.next_page_token))


def test_forged_page_tokens_are_invalid_naming_page_token(
    queries: registry_grpc.RegistryServiceStub, run_id: str, registry: InProcessService
) -> None:
    with grpc.insecure_channel(registry.target) as direct:
        ingest_grpc.IngestServiceStub(direct).RegisterRun(
            ingest_pb2.RegisterRunRequest(run_id=str(uuid.uuid4()), algorithm="sarsa"), timeout=10
        )
    genuine = real_token(queries, run_id)
    by_episodes = real_token(queries, run_id, "episodes_recorded desc")
    by_alpha = real_token(queries, run_id, "params.alpha desc")
    cases = [
        (pb.ListRunsRequest(page_token=forge({**genuine, "id": 12345})), queries.ListRuns),
        (pb.ListRunsRequest(page_token=forge({**genuine, "id": None})), queries.ListRuns),
        (
            pb.ListRunsRequest(order_by="episodes_recorded desc", page_token=forge({**by_episodes, "k": [int(HUGE)]})),
            queries.ListRuns,
        ),
        (
            pb.ListRunsRequest(order_by="episodes_recorded desc", page_token=forge({**by_episodes, "k": [2**40]})),
            queries.ListRuns,
        ),
        (
            pb.ListRunsRequest(
                order_by="params.alpha desc",
                page_token=base64.urlsafe_b64encode(json.dumps({**by_alpha, "k": [float("nan")]}).encode()).decode(),
            ),
            queries.ListRuns,
        ),
        (
            pb.ListModelsRequest(page_token=forge({"s": "x", "t": "2026-01-01T00:00:00+00:00", "id": 7})),
            queries.ListModels,
        ),
        (
            pb.ListAnnotationsRequest(run_id=run_id, page_token=forge({"s": "x", "t": 5, "id": [1]})),
            queries.ListAnnotations,
        ),
    ]
    for request, call in cases:
        code, fields, _ = refused(call, request)
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"]), request


def test_a_page_token_is_refused_by_any_other_listing(
    queries: registry_grpc.RegistryServiceStub, run_id: str, registry: InProcessService
) -> None:
    from taxidriver.ingest.v1 import sweep_store_pb2 as spb
    from taxidriver.ingest.v1 import sweep_store_pb2_grpc

    for text in ("first", "second"):
        queries.CreateAnnotation(pb.CreateAnnotationRequest(run_id=run_id, annotation=text), timeout=10)
    annotations = queries.ListAnnotations(pb.ListAnnotationsRequest(run_id=run_id, page_size=1), timeout=10)
    assert annotations.next_page_token
    algorithm = f"tokens_{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(registry.target) as direct:
        store = sweep_store_pb2_grpc.SweepStoreServiceStub(direct)
        for _ in range(2):
            store.CreateSweep(spb.CreateSweepRequest(algorithm=algorithm), timeout=10)
        sweeps = store.ListSweepRecords(spb.ListSweepRecordsRequest(algorithm=algorithm, page_size=1), timeout=10)
        assert len(sweeps.sweeps) == 1 and sweeps.next_page_token
        following = store.ListSweepRecords(
            spb.ListSweepRecordsRequest(algorithm=algorithm, page_size=1, page_token=sweeps.next_page_token), timeout=10
        )
        assert [s.sweep_id for s in following.sweeps] != [s.sweep_id for s in sweeps.sweeps]
        # A sweep token lists the algorithm it was issued for, not another one.
        code, fields, _ = refused(
            store.ListSweepRecords,
            spb.ListSweepRecordsRequest(algorithm="sarsa", page_token=sweeps.next_page_token),
        )
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])
    cases = [
        (pb.ListModelsRequest(page_token=annotations.next_page_token), queries.ListModels),
        (pb.ListRunsRequest(page_token=annotations.next_page_token), queries.ListRuns),
        (
            pb.ListAnnotationsRequest(run_id=str(uuid.uuid4()), page_token=annotations.next_page_token),
            queries.ListAnnotations,
        ),
    ]
    for request, call in cases:
        code, fields, _ = refused(call, request)
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"]), request


def test_params_search_errors_name_params(queries: registry_grpc.RegistryServiceStub) -> None:
    code, fields, _ = refused(
        queries.SearchRunsByParams, pb.SearchRunsByParamsRequest(params=struct({"note": "a\x00b"}))
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["params.note"])
    code, fields, _ = refused(
        queries.SearchRunsByParams, pb.SearchRunsByParamsRequest(params=struct({"a": 1}), page_token="garbage")
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])


# ---------------------------------------------------------------- concurrent duplicates


def test_concurrent_annotations_with_one_request_id_create_exactly_one(
    open_gateway: InProcessService, db: psycopg.Connection, run_id: str
) -> None:
    request_id = f"annotate-{uuid.uuid4()}"
    results: list[object] = []
    barrier = threading.Barrier(30)

    def annotate() -> None:
        with grpc.insecure_channel(open_gateway.target) as channel:
            stub = registry_grpc.RegistryServiceStub(channel)
            request = pb.CreateAnnotationRequest(run_id=run_id, annotation="same", tags=["t"], request_id=request_id)
            barrier.wait(30)
            try:
                results.append(stub.CreateAnnotation(request, timeout=30).annotation.annotation_id)
            except grpc.RpcError as error:
                results.append(error.code())

    threads = [threading.Thread(target=annotate) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 30
    assert all(isinstance(r, str) for r in results), results
    assert len(set(results)) == 1
    stored = db.execute("SELECT count(*) FROM run_annotations WHERE request_id = %s", (request_id,)).fetchone()
    assert stored == (1,)


# ---------------------------------------------------------------- imports never overwrite


def trained_model(registry: InProcessService, run_id: str, data: bytes) -> None:
    """What a finished training leaves: its Q-table uploaded as the run's model."""
    with grpc.insecure_channel(registry.target) as channel:
        header = ingest_pb2.ArtifactHeader(
            run_id=run_id, kind=resources_pb2.ARTIFACT_KIND_MODEL, name="q_table.npy", content_type="application/x-npy"
        )
        ingest_grpc.IngestServiceStub(channel).UploadArtifact(
            iter([ingest_pb2.UploadArtifactRequest(header=header), ingest_pb2.UploadArtifactRequest(chunk=data)]),
            timeout=30,
        )


def export(queries: registry_grpc.RegistryServiceStub, model_id: str) -> bytes:
    return b"".join(r.chunk for r in queries.ExportModel(pb.ExportModelRequest(model_id=model_id), timeout=30))


def test_an_import_never_replaces_a_trained_model(
    queries: registry_grpc.RegistryServiceStub, registry: InProcessService, run_id: str
) -> None:
    q_table = bytes(range(256)) * 96  # 24 KB, like Taxi's 500 x 6 float64 table
    trained_model(registry, run_id, q_table)
    (original,) = queries.ListModels(pb.ListModelsRequest(run_id=run_id), timeout=30).models
    code, fields, _ = refused(import_model, queries, pb.ModelImportHeader(run_id=run_id, model_name="q_table.npy"))
    assert (code, fields) == (grpc.StatusCode.ALREADY_EXISTS, ["header.model_name"])
    assert export(queries, original.model_id) == q_table
    imported = import_model(queries, pb.ModelImportHeader(run_id=run_id, model_name="tuned.npy")).model
    assert imported.model_id != original.model_id
    assert export(queries, original.model_id) == q_table
    assert export(queries, imported.model_id) == b"\x01\x02\x03\x04"
    names = sorted(m.model_name for m in queries.ListModels(pb.ListModelsRequest(run_id=run_id), timeout=30).models)
    assert names == ["q_table.npy", "tuned.npy"]


# ---------------------------------------------------------------- AIP-155: a reused request_id


def assert_reused(call, *args) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args)
    violations, reason = status_details(caught.value)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS, caught.value.details()
    assert reason == "REQUEST_ID_REUSED"
    assert [v.field for v in violations][-1:] in (["request_id"], ["header.request_id"])


def short_run(request_id: str, alpha: float = 0.5) -> tpb.StartRunRequest:
    return tpb.StartRunRequest(
        request_id=request_id,
        algorithm="q_learning",
        mode=tpb.TRAINING_MODE_USER,
        hyperparameters=tpb.Hyperparameters(
            alpha=alpha,
            gamma=0.9,
            epsilon=1.0,
            epsilon_min=0.1,
            epsilon_decay=0.99,
            training_episodes=20,
            max_steps=20,
        ),
        test_episodes=1,
    )


def test_start_run_request_id_reused_by_another_request_or_caller_is_refused(
    trainer: InProcessService, db: psycopg.Connection
) -> None:
    request_id = f"start-{uuid.uuid4()}"
    with grpc.insecure_channel(trainer.target) as channel:
        stub = trainer_grpc.TrainerServiceStub(channel)
        alice = (("x-caller", "alice"),)
        first = stub.StartRun(short_run(request_id), metadata=alice, timeout=30)
        retry = stub.StartRun(short_run(request_id), metadata=alice, timeout=30)
        assert retry.run_id == first.run_id
        assert_reused(lambda: stub.StartRun(short_run(request_id, alpha=0.1), metadata=alice, timeout=30))
        assert_reused(lambda: stub.StartRun(short_run(request_id), metadata=(("x-caller", "bob"),), timeout=30))
    stored = db.execute("SELECT run_id::text FROM training_runs WHERE request_id = %s", (request_id,)).fetchall()
    assert stored == [(first.run_id,)]


def test_annotation_request_id_reused_on_another_run_or_text_is_refused(
    queries: registry_grpc.RegistryServiceStub, registry: InProcessService, run_id: str, db: psycopg.Connection
) -> None:
    with grpc.insecure_channel(registry.target) as channel:
        other_run = str(uuid.uuid4())
        ingest_grpc.IngestServiceStub(channel).RegisterRun(
            ingest_pb2.RegisterRunRequest(run_id=other_run, algorithm="sarsa"), timeout=10
        )
    request_id = f"note-{uuid.uuid4()}"

    def annotate(run: str, text: str, tags: tuple[str, ...] = ("a",)) -> str:
        request = pb.CreateAnnotationRequest(run_id=run, annotation=text, tags=list(tags), request_id=request_id)
        return queries.CreateAnnotation(request, timeout=30).annotation.annotation_id

    first = annotate(run_id, "first")
    assert annotate(run_id, "first") == first
    assert_reused(lambda: annotate(other_run, "first"))
    assert_reused(lambda: annotate(run_id, "second"))
    assert_reused(lambda: annotate(run_id, "first", ("b",)))
    stored = db.execute("SELECT run_id::text, annotation FROM run_annotations WHERE request_id = %s", (request_id,))
    assert stored.fetchall() == [(run_id, "first")]


def test_import_request_id_reused_with_other_content_is_refused(
    queries: registry_grpc.RegistryServiceStub, db: psycopg.Connection
) -> None:
    request_id = f"import-{uuid.uuid4()}"
    header = pb.ModelImportHeader(model_name="m", request_id=request_id)
    first = import_model(queries, header).model.model_id
    assert import_model(queries, header).model.model_id == first
    assert_reused(lambda: import_model(queries, header, data=b"other bytes"))
    assert_reused(lambda: import_model(queries, pb.ModelImportHeader(model_name="n", request_id=request_id)))
    assert export(queries, first) == b"\x01\x02\x03\x04"
