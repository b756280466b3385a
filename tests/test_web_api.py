"""The HTTP face: every annotated route through a real web server, a secured gateway and the services."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support import InProcessService
from tests.web_support import WebServer, bearer, http, keys, secured_gateway, train, web
from web.rules import load_routes

__all__ = ["keys", "secured_gateway", "web"]  # fixtures used by this module


@pytest.fixture(scope="module")
def runs(secured_gateway: InProcessService, keys: dict[str, str]) -> Iterator[list[str]]:
    """Two completed runs (different alpha), trained through the gateway."""
    yield [
        train(secured_gateway.target, keys["trainer"], "q_learning", episodes=300, alpha=0.12),
        train(secured_gateway.target, keys["trainer"], "sarsa", episodes=300, alpha=0.3),
    ]


def violations(body: dict) -> dict[str, str]:  # type: ignore[type-arg]
    found = {}
    for detail in body.get("details", []):
        if detail["@type"].endswith("google.rpc.BadRequest"):
            found.update({v["field"]: v["description"] for v in detail["fieldViolations"]})
    return found


def test_a_run_reads_as_canonical_json(web: WebServer, keys: dict[str, str], runs: list[str]) -> None:
    with http(web, keys["reader"]) as client:
        reply = client.get(f"/database/runs/{runs[0]}")
    assert reply.status_code == 200, reply.text
    run = reply.json()["run"]
    assert run["runId"] == runs[0]
    assert run["algorithm"] == "q_learning"
    assert run["status"] == "RUN_STATUS_COMPLETED"
    assert run["params"]["alpha"] == pytest.approx(0.12)
    assert 0 <= run["testMetrics"]["success_rate"] <= 1


def test_curves_come_with_view_full(web: WebServer, keys: dict[str, str], runs: list[str]) -> None:
    with http(web, keys["reader"]) as client:
        summary = client.get(f"/database/runs/{runs[0]}").json()["run"]
        full = client.get(f"/database/runs/{runs[0]}", params={"view": "full"}).json()["run"]
        canonical = client.get(f"/database/runs/{runs[0]}", params={"view": "RUN_VIEW_FULL"}).json()["run"]
    assert "rewards" not in summary.get("curves", {})
    assert len(full["curves"]["rewards"]) == 300
    assert canonical["curves"] == full["curves"]


def test_skip_and_limit_page_like_the_seed(web: WebServer, keys: dict[str, str], runs: list[str]) -> None:
    with http(web, keys["reader"]) as client:
        first_two = client.get("/database/runs", params={"skip": 0, "limit": 2}).json()
        second = client.get("/database/runs", params={"skip": 1, "limit": 1}).json()
    assert len(first_two["runs"]) == 2
    assert [r["runId"] for r in second["runs"]] == [first_two["runs"][1]["runId"]]
    assert int(second["totalSize"]) >= 2


def test_the_algorithm_parameter_filters(web: WebServer, keys: dict[str, str], runs: list[str]) -> None:
    with http(web, keys["reader"]) as client:
        sarsa = client.get("/database/runs?skip=0&limit=100&algorithm=sarsa").json()
        both = client.get("/database/runs", params={"algorithm": "sarsa", "filter": 'algorithm = "q_learning"'})
    assert sarsa["runs"] and {r["algorithm"] for r in sarsa["runs"]} == {"sarsa"}
    assert runs[1] in {r["runId"] for r in sarsa["runs"]}
    assert both.status_code == 200 and both.json()["runs"] == []  # ANDed, not replaced


def test_search_params_go_into_the_params_struct(web: WebServer, keys: dict[str, str], runs: list[str]) -> None:
    with http(web, keys["reader"]) as client:
        found = client.get("/database/runs/search/params?alpha=0.12&training_runs=300").json()
        none = client.get("/database/runs/search/params?alpha=0.12&training_runs=301").json()
    assert runs[0] in {r["runId"] for r in found["runs"]}
    assert runs[1] not in {r["runId"] for r in found["runs"]}
    assert none["runs"] == []


def test_the_health_route_follows_the_registry(web: WebServer) -> None:
    with http(web) as client:
        reply = client.get("/database/health")
    assert reply.status_code == 200
    assert reply.json() == {"status": "SERVING"}


def test_every_annotated_route_is_served(
    web: WebServer, secured_gateway: InProcessService, keys: dict[str, str], runs: list[str]
) -> None:
    """Each route of load_routes() reaches its method and answers 200 with that method's response."""
    doomed = train(secured_gateway.target, keys["trainer"], "q_learning", episodes=100)
    sweep_spec = {
        "algorithm": "q_learning",
        "search_space": [{"name": "alpha", "low": 0.2, "high": 0.9}],
        "n_trials": 1,
        "seeds_per_trial": 1,
        "test_episodes": 3,
        "sampler": "SAMPLER_RANDOM",
        "fixed_params": {"training_episodes": 50, "max_steps": 100},
    }
    with http(web, keys["admin"]) as client:
        artifacts = client.get(f"/database/runs/{runs[0]}/artifacts").json()["artifacts"]
        models = client.get("/database/models", params={"run_id": runs[0]}).json()["models"]
        # A cancelled sweep: its watch ends at once, cancelling it again leaves it cancelled.
        reply = client.post("/sweeps", json={"spec": sweep_spec})
        assert reply.status_code == 200, reply.text
        sweep_id = reply.json()["sweep"]["sweepId"]
        assert client.post(f"/sweeps/{sweep_id}:cancel", json={}).status_code == 200
    plot = next(a for a in artifacts if a["kind"] == "ARTIFACT_KIND_PLOT")
    values = {
        "run_id": runs[0],
        "model_id": models[0]["modelId"],
        "artifact_id": plot["artifactId"],
        "algorithm": "q_learning",
        "sweep_id": sweep_id,
    }
    bodies = {
        "CompareRuns": {"run_ids": runs},
        "CreateAnnotation": {"annotation": "via http", "tags": ["http"]},
        "PurgeRuns": {"older_than_days": 3650, "validate_only": True},
        "StartRun": {"algorithm": "q_learning", "mode": "optimized", "hyperparameters": {"training_episodes": 50}},
        "CancelRun": {},
        "ResumeRun": {},
        "StartSweep": {"spec": sweep_spec},
        "CancelSweep": {},
        "SuggestParams": {},
    }
    expected_keys = {
        "GetRun": "run",
        "ListRuns": "runs",
        "ListBestRuns": "runs",
        "GetStatistics": "algorithms",
        "SearchRunsByParams": "runs",
        "CompareRuns": "paramDifferences",
        "CreateAnnotation": "annotation",
        "ListAnnotations": "annotations",
        "ListModels": "models",
        "GetModel": "model",
        "ListArtifacts": "artifacts",
        "PurgeRuns": "purgedRuns",
        "StartRun": "runId",
        "ListAlgorithms": "algorithms",
        "Check": "status",
        "GetCurrentUser": "username",
        "StartSweep": "sweep",
        "GetSweep": "sweep",
        "ListSweeps": "sweeps",
        "CancelSweep": "sweep",
        "SuggestParams": "suggestedParams",
    }
    served = set()
    for route in load_routes():
        name = route.method.name
        path = route.template.text
        for variable in route.template.variables:
            path = path.replace("{" + variable + "}", values[variable])
        with http(web, keys["admin"]) as client:
            if name == "DeleteRun":
                path = path.replace(runs[0], doomed)
            if name == "ResumeRun":
                # A completed run cannot be resumed: the route works when the service refuses it.
                reply = client.post(path, json=bodies[name])
                assert reply.status_code == 400, (path, reply.text)
                assert reply.json()["code"] == 9  # FAILED_PRECONDITION
                served.add(name)
                continue
            if name == "GetParamImportance":
                # Too few stored runs to rank parameters: the route works when the service says so.
                reply = client.get(path, params={"algorithm": "q_learning"})
                if reply.status_code == 400:
                    assert reply.json()["code"] == 9, reply.text  # FAILED_PRECONDITION
                else:
                    assert reply.status_code == 200 and "evaluator" in reply.json(), reply.text
                served.add(name)
                continue
            if route.http_method == "POST":
                body = {
                    k: v
                    for k, v in bodies[name].items()
                    if not (k == "algorithm" and "{algorithm}" in route.template.text)
                }
                reply = client.post(path, json=body)
            else:
                query = {"SearchRunsByParams": {"alpha": "0.12"}}.get(name)
                reply = client.request(route.http_method, path, params=query)
        assert reply.status_code == 200, (route.http_method, path, reply.text[:500])
        if name == "DownloadArtifact":
            assert reply.content.startswith(b"\x89PNG") and reply.headers["content-type"] == "image/png"
        elif name == "ExportModel":
            assert reply.content.startswith(b"\x93NUMPY")
            assert len(reply.content) == int(models[0]["modelSize"])
        elif name == "WatchRun":
            events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith('data: {"')]
            assert sum(len(e["event"].get("episodes", {}).get("rewards", [])) for e in events) == 300
            assert events[-1]["event"]["statusChange"]["status"] == "RUN_STATUS_COMPLETED"
            assert "event: end" in reply.text
        elif name == "WatchSweep":  # the cancelled sweep: its stream ends at once
            assert "event: end" in reply.text, reply.text[:300]
        elif name == "CancelRun":  # cancelling a finished run leaves it as it was
            assert reply.json() == {"runId": runs[0], "status": "RUN_STATUS_COMPLETED"}
        elif name == "DeleteRun":
            assert reply.json()["runId"] == doomed
        else:
            assert expected_keys[name] in reply.json(), (path, reply.text[:300])
        served.add(name)
    public = {m.name for r in load_routes() for m in [r.method]}
    assert served == public


def test_the_seeds_curl_examples_work_with_the_header(web: WebServer, keys: dict[str, str], runs: list[str]) -> None:
    """The seed README's five curl commands, verbatim but for the host and the added header."""
    header = ["-H", f"Authorization: Bearer {keys['trainer']}"]
    base = web.url

    def curl(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        done = subprocess.run(
            ["curl", "-sS", "-w", "\n%{http_code}", *args, *header], capture_output=True, text=True, timeout=60
        )
        body, _, code = done.stdout.rpartition("\n")
        return int(code), json.loads(body)

    code, started = curl(
        "-X", "POST", f"{base}/sarsa", "-H", "Content-Type: application/json",
        "-d", '{\n       "mode": "optimized",\n       "test_episodes": 250\n     }',
    )  # fmt: skip
    assert code == 200, started
    assert uuid.UUID(started["runId"]) and started["status"] == "RUN_STATUS_QUEUED"
    code, listing = curl(f"{base}/database/runs?limit=10")
    assert code == 200 and 1 <= len(listing["runs"]) <= 10
    code, best = curl(f"{base}/database/runs/best?limit=5")
    assert code == 200 and len(best["runs"]) <= 5 and best["runs"]
    code, compared = curl(
        "-X", "POST", f"{base}/database/runs/compare", "-H", "Content-Type: application/json",
        "-d", json.dumps({"run_ids": runs}),
    )  # fmt: skip
    assert code == 200 and [r["runId"] for r in compared["runs"]] == runs
    code, found = curl(f"{base}/database/runs/search/params?alpha=0.12&training_runs=300")
    assert code == 200 and runs[0] in {r["runId"] for r in found["runs"]}
    with http(web, keys["trainer"]) as client:  # leave no run training behind
        client.post(f"/database/runs/{started['runId']}:cancel", json={})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"mode": "optimized",', "body"),
        (b"[1, 2]", "body"),
        (b'{"test_episodes": "many"}', "test_episodes"),
        (b'{"test_episodes": 1.5}', "test_episodes"),
        (b'{"mode": "fastest"}', "mode"),
        (b'{"mode": 7}', "mode"),
        (b'{"bogus": 1}', "bogus"),
        (b'{"hyperparameters": {"alpha": "high"}}', "hyperparameters.alpha"),
        (b'{"hyperparameters": {"learning_rate": 0.1}}', "hyperparameters.learning_rate"),
        (b'{"hyperparameters": 3}', "hyperparameters"),
        (b'{"time_budget": "soon"}', "time_budget"),
        (b'{"test_episodes": 99999999999}', "test_episodes"),
        (b"\xff\xfe", "body"),
    ],
)
def test_bad_json_is_400_naming_the_field(web: WebServer, keys: dict[str, str], body: bytes, field: str) -> None:
    with http(web, keys["trainer"]) as client:
        reply = client.post("/sarsa", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    status = reply.json()
    assert status["code"] == 3
    assert field in violations(status), status


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=abc", "limit"),
        ("page_size=-1", "page_size"),
        ("skip=-3", "skip"),
        ("view=everything", "view"),
        ("colour=blue", "colour"),
        ("filter=algorithm%20%3D", "filter"),
    ],
)
def test_bad_query_parameters_are_400_naming_them(web: WebServer, keys: dict[str, str], query: str, field: str) -> None:
    with http(web, keys["reader"]) as client:
        reply = client.get(f"/database/runs?{query}")
    assert reply.status_code == 400, reply.text
    assert field in violations(reply.json()), reply.text


def test_service_errors_keep_their_code_and_details(web: WebServer, keys: dict[str, str]) -> None:
    with http(web, keys["reader"]) as client:
        missing = client.get(f"/database/runs/{uuid.uuid4()}")
        not_uuid = client.get("/database/runs/not-a-uuid")
        no_route = client.get("/nothing/here")
        wrong_method = client.put("/database/runs")
    assert missing.status_code == 404 and missing.json()["code"] == 5
    reasons = [d.get("reason") for d in missing.json()["details"] if d["@type"].endswith("ErrorInfo")]
    assert reasons == ["NOT_FOUND"] or (reasons and reasons[0])
    assert not_uuid.status_code == 400 and "run_id" in violations(not_uuid.json())
    assert no_route.status_code == 404
    assert wrong_method.status_code == 405


def test_keys_and_roles_are_the_gateways(web: WebServer, keys: dict[str, str], runs: list[str]) -> None:
    with http(web) as anonymous:
        unauthenticated = anonymous.get("/database/runs")
    with http(web, "not-a-key") as stranger:
        unknown = stranger.get("/database/runs")
    with http(web, keys["reader"]) as reader:
        denied = reader.delete(f"/database/runs/{runs[1]}")
        still_there = reader.get(f"/database/runs/{runs[1]}")
    assert unauthenticated.status_code == 401 and unauthenticated.json()["code"] == 16
    assert unknown.status_code == 401
    assert denied.status_code == 403 and denied.json()["code"] == 7
    assert still_there.status_code == 200


def test_a_cookie_session_needs_its_csrf_token_to_change_anything(
    web: WebServer, keys: dict[str, str], runs: list[str]
) -> None:
    from web.session import COOKIE

    with httpx.Client(base_url=web.url, cookies={COOKIE: keys["admin"]}, timeout=30) as browser:
        readable = browser.get(f"/database/runs/{runs[1]}")
        forged = browser.delete(f"/database/runs/{runs[1]}")
        after = browser.get(f"/database/runs/{runs[1]}")
    assert readable.status_code == 200
    assert forged.status_code == 403 and forged.json()["code"] == 7
    assert after.status_code == 200


def test_unauthorised_header_is_never_mixed_with_a_cookie(web: WebServer, keys: dict[str, str]) -> None:
    """An explicit header wins: a reader's header over an admin's cookie stays a reader."""
    from web.session import COOKIE

    with httpx.Client(
        base_url=web.url, cookies={COOKIE: keys["admin"]}, headers=bearer(keys["reader"]), timeout=30
    ) as client:
        reply = client.post("/database/runs:purge", json={"older_than_days": 3650, "validate_only": True})
    assert reply.status_code == 403
