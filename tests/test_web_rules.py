"""google.api.http path templates and rule loading (web/rules.py), without servers."""

from __future__ import annotations

import pytest
from google.api import http_pb2

from taxidriver.registry.v1 import registry_service_pb2
from web.rules import PathTemplate, RuleError, _routes_of, load_routes

GET_RUN = registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].methods_by_name["GetRun"]


def test_templates_match_literals_variables_verbs_and_the_rest() -> None:
    template = PathTemplate.parse("/v1/{name=projects/*/runs/*}:cancel")
    assert template.variables == ("name",) and template.verb == "cancel"
    assert template.match("/v1/projects/p1/runs/r%2F2:cancel") == {"name": "projects/p1/runs/r/2"}
    assert template.match("/v1/projects/p1/runs/r2") is None
    assert template.match("/v1/projects/p1/other/r2:cancel") is None
    rest = PathTemplate.parse("/files/{path=**}")
    assert rest.match("/files/a/b/c.txt") == {"path": "a/b/c.txt"}
    assert PathTemplate.parse("/database/runs/{run_id}").match("/database/runs/") is None


def test_double_wildcard_must_be_last() -> None:
    with pytest.raises(RuleError):
        PathTemplate.parse("/a/**/b")


def test_a_variable_must_be_a_request_field() -> None:
    with pytest.raises(RuleError, match="not a field path"):
        _routes_of(GET_RUN, http_pb2.HttpRule(get="/runs/{nope}"), ())
    with pytest.raises(RuleError, match="body"):
        _routes_of(GET_RUN, http_pb2.HttpRule(post="/runs", body="nope"), ())


def test_literal_routes_win_over_variables_and_verbs_over_plain_paths() -> None:
    routes = load_routes()

    def matched(method: str, path: str) -> str:
        for route in routes:
            if route.http_method == method and route.template.match(path) is not None:
                return route.method.name
        return ""

    assert matched("GET", "/database/runs/best") == "ListBestRuns"
    assert matched("GET", "/database/runs/3f0c") == "GetRun"
    assert matched("GET", "/database/runs/3f0c:watch") == "WatchRun"
    assert matched("POST", "/database/runs/compare") == "CompareRuns"
    assert matched("POST", "/database/runs/3f0c:cancel") == "CancelRun"
    assert matched("POST", "/runs") == "StartRun" and matched("POST", "/sarsa") == "StartRun"
    assert matched("GET", "/database/health") == "Check"


def test_every_public_method_but_the_client_streams_has_a_route() -> None:
    served = {route.method.full_name for route in load_routes()}
    from taxidriver.trainer.v1 import trainer_service_pb2
    from taxidriver.tuner.v1 import tuner_service_pb2

    for module, service in (
        (registry_service_pb2, "RegistryService"),
        (trainer_service_pb2, "TrainerService"),
        (tuner_service_pb2, "TunerService"),
    ):
        for method in module.DESCRIPTOR.services_by_name[service].methods:
            if method.client_streaming:
                assert method.full_name not in served
            else:
                assert method.full_name in served, method.full_name
