"""RegistryService queries over runs written through IngestService, each test scoped by its own marker."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import struct_pb2

from registry_service.plots import PLOT_NAMES
from taxidriver.errors import status_details
from taxidriver.ingest.v1 import ingest_service_pb2 as ingest_pb2
from taxidriver.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from taxidriver.registry.v1 import registry_service_pb2 as pb
from taxidriver.registry.v1 import registry_service_pb2_grpc as registry_grpc
from taxidriver.registry.v1 import resources_pb2


@pytest.fixture()
def marker() -> str:
    """A value only this test's runs carry in params.marker."""
    return uuid.uuid4().hex


def struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def make_run(
    ingest: ingest_grpc.IngestServiceStub,
    marker: str,
    *,
    algorithm: str = "q_learning",
    alpha: float = 0.1,
    success: float | None = 0.9,
    steps: float = 14.0,
    reward: float = 7.0,
    episodes: int = 4,
    complete: bool = True,
    test_metrics: dict[str, Any] | None = None,
    system_metrics: dict[str, Any] | None = None,
    **extra: Any,
) -> str:
    """A run with `episodes` stored; completed with the seed's three test metrics (`success`,
    `steps`, `reward`; none when success is None) plus `test_metrics` and `system_metrics`."""
    run_id = str(uuid.uuid4())
    ingest.RegisterRun(
        ingest_pb2.RegisterRunRequest(
            run_id=run_id,
            algorithm=algorithm,
            mode="user",
            env_id="Taxi-v3",
            params=struct(marker=marker, alpha=alpha, gamma=0.99, training_runs=episodes, **extra),
            episodes_planned=episodes,
        )
    )
    acks = ingest.IngestEpisodes(
        iter(
            [
                ingest_pb2.IngestEpisodesRequest(
                    run_id=run_id,
                    first_episode=0,
                    rewards=[float(e) for e in range(episodes)],
                    steps=[e + 1 for e in range(episodes)],
                    epsilons=[0.5] * episodes,
                    td_errors=[0.1] * episodes,
                    successes=[True] * episodes,
                )
            ]
        )
    )
    assert [a.episodes_recorded for a in acks] == [episodes]
    if not complete:
        ingest.UpdateRunStatus(
            ingest_pb2.UpdateRunStatusRequest(run_id=run_id, status=resources_pb2.RUN_STATUS_RUNNING, trainer_id="t")
        )
    else:
        metrics = {} if success is None else {"success_rate": success, "avg_steps": steps, "avg_reward": reward}
        ingest.CompleteRun(
            ingest_pb2.CompleteRunRequest(
                run_id=run_id,
                episodes_total=episodes,
                test_metrics=struct(**metrics, **(test_metrics or {})),
                system_metrics=struct(**(system_metrics or {})),
                execution_time=steps / 10,
            )
        )
    return run_id


def list_ids(queries, filter_text: str, order_by: str = "", page_size: int = 0) -> list[str]:
    reply = queries.ListRuns(pb.ListRunsRequest(filter=filter_text, order_by=order_by, page_size=page_size))
    return [run.run_id for run in reply.runs]


def violation_fields(error: grpc.RpcError) -> set[str]:
    return {v.field for v in status_details(error)[0]}


def expect_invalid(call, *fields: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert violation_fields(caught.value) == set(fields)


def test_filter_combines_columns_json_paths_and_boolean_operators(ingest, queries, marker) -> None:
    sarsa_good = make_run(ingest, marker, algorithm="sarsa", alpha=0.2, success=0.95)
    sarsa_poor = make_run(ingest, marker, algorithm="sarsa", alpha=0.05, success=0.5)
    q_good = make_run(ingest, marker, algorithm="q_learning", alpha=0.3, success=0.99)
    running = make_run(ingest, marker, algorithm="sarsa", alpha=0.4, complete=False)
    scope = f'params.marker = "{marker}"'
    assert set(list_ids(queries, f'{scope} AND algorithm = "sarsa"')) == {sarsa_good, sarsa_poor, running}
    assert set(list_ids(queries, f"{scope} AND params.alpha >= 0.2")) == {sarsa_good, q_good, running}
    assert set(
        list_ids(
            queries, f'{scope} AND algorithm = "sarsa" AND (test_metrics.success_rate > 0.9 OR status = "running")'
        )
    ) == {sarsa_good, running}
    assert set(list_ids(queries, f'{scope} AND NOT algorithm = "sarsa"')) == {q_good}
    assert set(list_ids(queries, f"{scope} AND status = RUN_STATUS_RUNNING")) == {running}
    assert list_ids(queries, f'{scope} AND run_id = "{q_good}"') == [q_good]
    assert set(list_ids(queries, f'{scope} AND params.marker != "other" AND episodes_recorded = 4')) == {
        sarsa_good,
        sarsa_poor,
        q_good,
        running,
    }
    reply = queries.ListRuns(pb.ListRunsRequest(filter=f'{scope} AND create_time > "2000-01-01T00:00:00Z"'))
    assert reply.total_size == 4


def test_order_by_and_page_tokens_walk_every_run_once(ingest, queries, marker) -> None:
    rates = [0.5, 0.9, 0.7, 0.9, 0.1, 0.3, 0.8]
    ids = {make_run(ingest, marker, success=rate, steps=10 + i): rate for i, rate in enumerate(rates)}
    no_metrics = make_run(ingest, marker, success=None)
    scope = f'params.marker = "{marker}"'
    order = "test_metrics.success_rate desc, test_metrics.avg_steps asc"
    expected = list_ids(queries, scope, order)
    assert expected[-1] == no_metrics  # NULLs last
    assert [ids[r] for r in expected[:-1]] == sorted(rates, reverse=True)
    seen: list[str] = []
    token = ""
    while True:
        reply = queries.ListRuns(pb.ListRunsRequest(filter=scope, order_by=order, page_size=3, page_token=token))
        assert reply.total_size == (8 if len(seen) == 0 else 9)
        seen.extend(run.run_id for run in reply.runs)
        if len(seen) == 3:
            make_run(ingest, marker, success=0.95)  # added while paging: lands on an earlier page
        token = reply.next_page_token
        if not token:
            break
    assert seen == expected


def test_page_token_and_page_size_are_validated(ingest, queries, marker) -> None:
    make_run(ingest, marker)
    make_run(ingest, marker)
    scope = f'params.marker = "{marker}"'
    token = queries.ListRuns(pb.ListRunsRequest(filter=scope, page_size=1)).next_page_token
    assert token
    expect_invalid(lambda: queries.ListRuns(pb.ListRunsRequest(filter="", page_token=token)), "page_token")
    expect_invalid(lambda: queries.ListRuns(pb.ListRunsRequest(page_token="garbage!")), "page_token")
    expect_invalid(lambda: queries.ListRuns(pb.ListRunsRequest(page_size=-1)), "page_size")
    assert len(queries.ListRuns(pb.ListRunsRequest(filter=scope, page_size=5000)).runs) == 2


@pytest.mark.parametrize(
    ("filter_text", "order_by", "field"),
    [
        ("nope = 1", "", "filter"),
        ("algorithm =", "", "filter"),
        ('(algorithm = "sarsa"', "", "filter"),
        ("algorithm = 3", "", "filter"),
        ('test_metrics.success_rate > "high"', "", "filter"),
        ('create_time > "yesterday"', "", "filter"),
        ("params.a-b = 1", "", "filter"),
        ("", "algorithm sideways", "order_by"),
        ("", "secret_column", "order_by"),
    ],
)
def test_bad_filters_and_orderings_name_the_field(queries, filter_text: str, order_by: str, field: str) -> None:
    expect_invalid(lambda: queries.ListRuns(pb.ListRunsRequest(filter=filter_text, order_by=order_by)), field)


@pytest.mark.parametrize(
    "hostile",
    [
        'algorithm = "x\'; DROP TABLE training_runs; --"',
        'params.marker = "\') OR 1=1 --"',
        'algorithm = "sarsa" OR "1" = "1"',
        "params.x;DROP = 1",
        "test_metrics.success_rate > 0 UNION SELECT 1",
        'status = "completed\'--"',
    ],
)
def test_injection_strings_never_reach_sql(queries, db: psycopg.Connection, hostile: str) -> None:
    try:
        reply = queries.ListRuns(pb.ListRunsRequest(filter=hostile))
        assert all(run.algorithm != "" for run in reply.runs)
        assert not hostile.startswith("algorithm") or reply.runs == [] or "OR" in hostile
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert db.execute("SELECT to_regclass('training_runs') IS NOT NULL").fetchone() == (True,)


def test_injection_in_param_search_matches_nothing(queries, db: psycopg.Connection) -> None:
    reply = queries.SearchRunsByParams(
        pb.SearchRunsByParamsRequest(params=struct(**{"alpha'); DROP TABLE training_runs; --": "x' OR '1'='1"}))
    )
    assert list(reply.runs) == []
    assert db.execute("SELECT to_regclass('training_runs') IS NOT NULL").fetchone() == (True,)


def test_best_runs_are_ranked_in_sql(ingest, queries, marker) -> None:
    a = make_run(ingest, marker, algorithm="sarsa", success=0.9, steps=15)
    b = make_run(ingest, marker, algorithm="sarsa", success=0.9, steps=13)
    c = make_run(ingest, marker, algorithm="q_learning", success=1.0, steps=20)
    make_run(ingest, marker, algorithm="sarsa", success=1.0, complete=False)
    scope = f'params.marker = "{marker}"'
    best = queries.ListBestRuns(pb.ListBestRunsRequest(filter=scope)).runs
    assert [r.run_id for r in best] == [c, b, a]
    sarsa = queries.ListBestRuns(pb.ListBestRunsRequest(filter=scope, algorithm="sarsa", limit=1)).runs
    assert [r.run_id for r in sarsa] == [b]
    fastest = queries.ListBestRuns(pb.ListBestRunsRequest(filter=scope, order_by="test_metrics.avg_steps asc")).runs
    assert [r.run_id for r in fastest] == [b, a, c]
    # The trainer's registry decides which algorithms exist: a well-formed name no run used has no runs.
    assert not queries.ListBestRuns(pb.ListBestRunsRequest(filter=scope, algorithm="dqn")).runs
    expect_invalid(lambda: queries.ListBestRuns(pb.ListBestRunsRequest(algorithm="DQN!")), "algorithm")


def test_statistics_per_algorithm_and_day(ingest, queries, marker) -> None:
    make_run(ingest, marker, algorithm="sarsa", success=0.8, steps=16, reward=6.0)
    best = make_run(ingest, marker, algorithm="sarsa", success=1.0, steps=14, reward=8.0)
    make_run(ingest, marker, algorithm="monte_carlo", success=0.5, steps=30, reward=1.0)
    make_run(ingest, marker, algorithm="sarsa", complete=False)
    stats = queries.GetStatistics(pb.GetStatisticsRequest(filter=f'params.marker = "{marker}"'))
    assert (stats.total_runs, stats.completed_runs) == (4, 3)
    by_name = {a.algorithm: a for a in stats.algorithms}
    sarsa = by_name["sarsa"]
    assert (sarsa.total_runs, sarsa.completed_runs, sarsa.best_run_id) == (3, 2, best)
    assert sarsa.avg_success_rate == pytest.approx(0.9)
    assert sarsa.avg_steps == pytest.approx(15.0)
    assert sarsa.avg_reward == pytest.approx(7.0)
    assert (sarsa.best_success_rate, sarsa.best_avg_steps) == (pytest.approx(1.0), pytest.approx(14.0))
    assert sarsa.avg_execution_time == pytest.approx(1.5)
    assert by_name["monte_carlo"].avg_success_rate == pytest.approx(0.5)
    assert sum(day.runs for day in stats.daily) == 4


def test_search_by_params_matches_numbers_exactly(ingest, queries, marker) -> None:
    match = make_run(ingest, marker, alpha=0.1, episodes=6)
    make_run(ingest, marker, alpha=0.12, episodes=6)
    make_run(ingest, marker, alpha=0.1, episodes=5)
    reply = queries.SearchRunsByParams(
        pb.SearchRunsByParamsRequest(params=struct(marker=marker, alpha=0.1, gamma=0.99, training_runs=6))
    )
    assert [r.run_id for r in reply.runs] == [match]
    assert reply.runs[0].params["training_runs"] == 6
    expect_invalid(lambda: queries.SearchRunsByParams(pb.SearchRunsByParamsRequest()), "params")


def test_compare_runs_side_by_side(ingest, queries, marker) -> None:
    first = make_run(ingest, marker, alpha=0.1, success=0.9, steps=14)
    second = make_run(ingest, marker, alpha=0.2, success=0.95, steps=16)
    reply = queries.CompareRuns(pb.CompareRunsRequest(run_ids=[first, second]))
    assert [r.run_id for r in reply.runs] == [first, second]
    differences = {d.key: [v.number_value for v in d.values] for d in reply.param_differences}
    assert differences == {"alpha": [0.1, 0.2]}
    metrics = {m.metric: m for m in reply.metrics}
    assert metrics["test_metrics.success_rate"].best_run_id == second
    assert metrics["test_metrics.success_rate"].higher_is_better
    assert metrics["test_metrics.avg_steps"].best_run_id == first
    expect_invalid(lambda: queries.CompareRuns(pb.CompareRunsRequest(run_ids=[first])), "run_ids")
    expect_invalid(lambda: queries.CompareRuns(pb.CompareRunsRequest(run_ids=[first, "x"])), "run_ids[1]")
    with pytest.raises(grpc.RpcError) as caught:
        queries.CompareRuns(pb.CompareRunsRequest(run_ids=[first, str(uuid.uuid4())]))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_annotations_are_validated_idempotent_and_filterable(ingest, queries, marker) -> None:
    run_id = make_run(ingest, marker)
    other = make_run(ingest, marker)
    request = pb.CreateAnnotationRequest(
        run_id=run_id, annotation="Excellent résultat", tags=["optimized", "best_performance"], request_id=marker
    )
    created = queries.CreateAnnotation(request).annotation
    assert queries.CreateAnnotation(request).annotation.annotation_id == created.annotation_id
    queries.CreateAnnotation(pb.CreateAnnotationRequest(run_id=run_id, annotation="second", tags=["optimized"]))
    listed = queries.ListAnnotations(pb.ListAnnotationsRequest(run_id=run_id, page_size=1))
    assert [a.annotation for a in listed.annotations] == ["Excellent résultat"]
    rest = queries.ListAnnotations(pb.ListAnnotationsRequest(run_id=run_id, page_token=listed.next_page_token))
    assert [a.annotation for a in rest.annotations] == ["second"] and not rest.next_page_token
    assert list_ids(queries, f'params.marker = "{marker}" AND tags:"best_performance"') == [run_id]
    assert set(list_ids(queries, f'params.marker = "{marker}"')) == {run_id, other}
    run = queries.GetRun(pb.GetRunRequest(run_id=run_id)).run
    assert list(run.tags) == ["best_performance", "optimized"]
    expect_invalid(
        lambda: queries.CreateAnnotation(
            pb.CreateAnnotationRequest(run_id=run_id, annotation="x" * 10_001, tags=["Bad Tag"])
        ),
        "annotation",
        "tags[0]",
    )
    expect_invalid(
        lambda: queries.CreateAnnotation(pb.CreateAnnotationRequest(run_id=run_id, annotation="x", tags=["t"] * 33)),
        "tags",
    )


def upload(ingest, run_id: str, kind: int, name: str, data: bytes) -> resources_pb2.Artifact:
    messages = [
        ingest_pb2.UploadArtifactRequest(header=ingest_pb2.ArtifactHeader(run_id=run_id, kind=kind, name=name)),
        ingest_pb2.UploadArtifactRequest(chunk=data),
    ]
    return ingest.UploadArtifact(iter(messages)).artifact


def test_delete_run_reports_what_it_removed(ingest, queries, marker) -> None:
    run_id = make_run(ingest, marker, episodes=7)
    upload(ingest, run_id, resources_pb2.ARTIFACT_KIND_MODEL, "q_table.npy", b"model")
    upload(ingest, run_id, resources_pb2.ARTIFACT_KIND_PLOT, "rewards.png", b"png")
    queries.CreateAnnotation(pb.CreateAnnotationRequest(run_id=run_id, annotation="bye"))
    reply = queries.DeleteRun(pb.DeleteRunRequest(run_id=run_id))
    assert (reply.episodes_deleted, reply.annotations_deleted, reply.models_deleted, reply.artifacts_deleted) == (
        7,
        1,
        1,
        2,
    )
    with pytest.raises(grpc.RpcError) as caught:
        queries.DeleteRun(pb.DeleteRunRequest(run_id=run_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_purge_deletes_only_old_finished_runs(ingest, queries, marker, db: psycopg.Connection) -> None:
    old = make_run(ingest, marker)
    old_running = make_run(ingest, marker, complete=False)
    recent = make_run(ingest, marker)
    db.execute("UPDATE training_runs SET created_at = '1990-01-01' WHERE run_id = ANY(%s)", ([old, old_running],))
    days = 365 * 30
    dry = queries.PurgeRuns(pb.PurgeRunsRequest(older_than_days=days, validate_only=True))
    assert dry.purged_runs >= 1
    assert set(list_ids(queries, f'params.marker = "{marker}"')) == {old, old_running, recent}
    queries.PurgeRuns(pb.PurgeRunsRequest(older_than_days=days))
    assert set(list_ids(queries, f'params.marker = "{marker}"')) == {old_running, recent}
    expect_invalid(lambda: queries.PurgeRuns(pb.PurgeRunsRequest(older_than_days=0)), "older_than_days")


def test_models_export_import_and_artifact_download(ingest, queries, marker) -> None:
    run_id = make_run(ingest, marker)
    payload = bytes(range(256)) * 600  # 150 KiB: three chunks
    upload(ingest, run_id, resources_pb2.ARTIFACT_KIND_MODEL, "q_table.npy", payload)
    models = queries.ListModels(pb.ListModelsRequest(run_id=run_id)).models
    assert [(m.model_name, m.model_size) for m in models] == [("q_table.npy", len(payload))]
    model = queries.GetModel(pb.GetModelRequest(model_id=models[0].model_id)).model
    exported = list(queries.ExportModel(pb.ExportModelRequest(model_id=model.model_id)))
    assert exported[0].model.model_id == model.model_id and len(exported) == 3
    assert b"".join(m.chunk for m in exported) == payload

    def import_messages(request_id: str) -> Iterator[pb.ImportModelRequest]:
        yield pb.ImportModelRequest(
            header=pb.ModelImportHeader(
                model_name="imported", model_metadata=struct(shape=[500, 6]), request_id=request_id
            )
        )
        yield pb.ImportModelRequest(chunk=payload[:1000])
        yield pb.ImportModelRequest(chunk=payload[1000:])

    imported = queries.ImportModel(import_messages(marker)).model
    again = queries.ImportModel(import_messages(marker)).model
    assert imported.model_id == again.model_id and imported.run_id == "" and imported.model_size == len(payload)
    round_trip = b"".join(m.chunk for m in queries.ExportModel(pb.ExportModelRequest(model_id=imported.model_id)))
    assert round_trip == payload

    # The completed run's first listing also renders its plots (registry_service/plot_rendering.py).
    listed = queries.ListArtifacts(pb.ListArtifactsRequest(run_id=run_id)).artifacts
    assert sorted(a.name for a in listed if a.kind == resources_pb2.ARTIFACT_KIND_PLOT) == sorted(PLOT_NAMES)
    artifacts = queries.ListArtifacts(
        pb.ListArtifactsRequest(run_id=run_id, kind=resources_pb2.ARTIFACT_KIND_MODEL)
    ).artifacts
    assert [a.name for a in artifacts] == ["q_table.npy"]
    chunks = list(queries.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=artifacts[0].artifact_id)))
    assert chunks[0].artifact.sha256 == artifacts[0].sha256
    assert b"".join(c.chunk for c in chunks) == payload
    with pytest.raises(grpc.RpcError) as caught:
        queries.GetModel(pb.GetModelRequest(model_id=str(uuid.uuid4())))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_watch_run_replays_then_follows_live_until_terminal(ingest, queries, marker) -> None:
    run_id = make_run(ingest, marker, episodes=10, complete=False)
    events: list[resources_pb2.RunEvent] = []
    started = threading.Event()

    def watch() -> None:
        for reply in queries.WatchRun(pb.WatchRunRequest(run_id=run_id, from_episode=6), timeout=60):
            events.append(reply.event)
            started.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert started.wait(30)
    ingest.IngestEpisodes(
        iter([ingest_pb2.IngestEpisodesRequest(run_id=run_id, first_episode=10, rewards=[10.0], steps=[11])])
    )
    # episodes_planned is 10: the 11th episode is refused, so complete with what is stored.
    ingest.CompleteRun(ingest_pb2.CompleteRunRequest(run_id=run_id, episodes_total=10))
    watcher.join(30)
    assert not watcher.is_alive()
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "episodes"
    assert events[0].episodes.first_episode == 6
    assert list(events[0].episodes.rewards) == [6.0, 7.0, 8.0, 9.0]
    assert events[-1].status_change.status == resources_pb2.RUN_STATUS_COMPLETED


def test_unfiltered_statistics_match_a_full_scan(ingest, queries, marker) -> None:
    """The trigger-maintained sums agree with aggregating every run, after inserts, updates and deletes."""
    make_run(ingest, marker, algorithm="expected_sarsa", success=0.7, steps=20)
    gone = make_run(ingest, marker, algorithm="expected_sarsa", success=0.9, steps=18)
    make_run(ingest, marker, algorithm="double_q_learning", complete=False)
    queries.DeleteRun(pb.DeleteRunRequest(run_id=gone))
    summary = queries.GetStatistics(pb.GetStatisticsRequest())
    scan = queries.GetStatistics(pb.GetStatisticsRequest(filter='create_time > "1900-01-01T00:00:00Z"'))
    assert (summary.total_runs, summary.completed_runs) == (scan.total_runs, scan.completed_runs)
    assert len(summary.algorithms) == len(scan.algorithms)
    for fast, slow in zip(summary.algorithms, scan.algorithms, strict=True):
        assert (fast.algorithm, fast.total_runs, fast.completed_runs, fast.best_run_id) == (
            slow.algorithm,
            slow.total_runs,
            slow.completed_runs,
            slow.best_run_id,
        )
        for name in ("avg_success_rate", "avg_steps", "avg_reward", "best_success_rate", "best_avg_steps"):
            assert getattr(fast, name) == pytest.approx(getattr(slow, name)), name
        assert fast.avg_execution_time == pytest.approx(slow.avg_execution_time)
    assert [(d.day.seconds, d.runs) for d in summary.daily] == [(d.day.seconds, d.runs) for d in scan.daily]
    total = queries.ListRuns(pb.ListRunsRequest(page_size=1)).total_size
    assert total == summary.total_runs


def test_uploads_beyond_the_size_limit_are_refused(database_url: str, registry) -> None:
    """A second registry with a 1 KiB limit: oversized imports fail RESOURCE_EXHAUSTED, nothing stored."""
    import asyncio

    from registry_service.app import start_registry
    from registry_service.settings import RegistrySettings

    async def scenario() -> tuple[grpc.StatusCode, int]:
        app = await start_registry(
            RegistrySettings(address="127.0.0.1:0", database_url=database_url, max_artifact_bytes=1024, pool_min_size=1)
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                stub = registry_grpc.RegistryServiceStub(channel)
                name = f"too-big-{uuid.uuid4().hex}"

                async def messages():
                    yield pb.ImportModelRequest(header=pb.ModelImportHeader(model_name=name))
                    for _ in range(3):
                        yield pb.ImportModelRequest(chunk=b"x" * 600)

                try:
                    await stub.ImportModel(messages())
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as error:
                    code = error.code()
                async with app.pool.connection() as conn:
                    row = await (
                        await conn.execute("SELECT count(*) FROM saved_models WHERE model_name = %s", (name,))
                    ).fetchone()
                return code, row[0] if row else -1
        finally:
            await app.stop(0)

    assert asyncio.run(scenario()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, 0)


def test_compare_runs_groups_seeds_of_one_configuration(ingest, queries, marker) -> None:
    # Four seeds of alpha 0.1 and two of alpha 0.2: two groups with across-seed statistics.
    first = [make_run(ingest, marker, alpha=0.1, success=s, seed=i) for i, s in enumerate([0.2, 0.4, 0.6, 1.0])]
    second = [make_run(ingest, marker, alpha=0.2, success=0.9, seed=i) for i in range(2)]
    reply = queries.CompareRuns(pb.CompareRunsRequest(run_ids=[first[0], second[0], *first[1:], second[1]]))
    assert [list(g.run_ids) for g in reply.param_groups] == [first, second]
    assert [g.params["alpha"] for g in reply.param_groups] == [0.1, 0.2]
    assert "seed" not in reply.param_groups[0].params
    success = {
        g.params["alpha"]: next(m.statistics for m in g.metrics if m.metric == "test_metrics.success_rate")
        for g in reply.param_groups
    }
    assert success[0.1].seeds == 4
    assert success[0.1].mean == pytest.approx(0.55)
    assert success[0.1].iqm == pytest.approx(0.5)  # (0.4 + 0.6) / 2
    assert 0.2 <= success[0.1].ci_low < success[0.1].ci_high <= 1.0
    assert (success[0.2].mean, success[0.2].iqm, success[0.2].ci_low, success[0.2].ci_high) == pytest.approx(
        (0.9, 0.9, 0.9, 0.9)
    )
