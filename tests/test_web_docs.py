"""/openapi.json documents every transcoded route; /docs renders it from this service's own assets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.web_support import WebServer
from web.rules import load_routes
from web.settings import WebSettings


@pytest.fixture(scope="module")
def docs_server() -> Iterator[WebServer]:
    # The documentation needs no gateway: nothing listens on port 1.
    server = WebServer(WebSettings(host="127.0.0.1", port=0, gateway_target="127.0.0.1:1"))
    yield server
    server.stop()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_openapi_has_every_route_with_its_parameters(docs_server: WebServer) -> None:
    document = httpx.get(f"{docs_server.url}/openapi.json", timeout=30).json()
    assert document["openapi"].startswith("3.1")
    for route in load_routes():
        operation = document["paths"][route.template.text][route.http_method.lower()]
        path_params = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
        assert path_params == set(route.template.variables), route.template.text
        assert operation["responses"]["default"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "google.rpc.Status"
        )
        assert ("requestBody" in operation) == bool(route.body)
    ids = [op["operationId"] for methods in document["paths"].values() for op in methods.values()]
    assert len(ids) == len(set(ids))


def test_openapi_documents_the_seed_aliases(docs_server: WebServer) -> None:
    document = httpx.get(f"{docs_server.url}/openapi.json", timeout=30).json()
    listing = {p["name"]: p for p in document["paths"]["/database/runs"]["get"]["parameters"]}
    assert {"skip", "limit", "algorithm", "page_size", "page_token", "filter", "order_by", "view"} <= set(listing)
    search = {p["name"]: p for p in document["paths"]["/database/runs/search/params"]["get"]["parameters"]}
    assert search["params"]["style"] == "form" and search["params"]["explode"] is True
    health = document["paths"]["/database/health"]["get"]
    assert health["security"] == []


def test_every_schema_reference_resolves(docs_server: WebServer) -> None:
    document = httpx.get(f"{docs_server.url}/openapi.json", timeout=30).json()
    schemas = document["components"]["schemas"]
    refs = set(_refs(document))
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    run = schemas["taxidriver.registry.v1.Run"]["properties"]
    assert run["runId"]["type"] == "string" and run["runId"]["description"] == "UUID of the run."
    assert run["createTime"]["format"] == "date-time"
    assert run["params"]["type"] == "object"
    statuses = schemas["taxidriver.registry.v1.RunStatus"]
    assert "RUN_STATUS_COMPLETED" in statuses["enum"] and "completed" in statuses["description"]


def test_docs_load_only_local_assets(docs_server: WebServer) -> None:
    page = httpx.get(f"{docs_server.url}/docs", timeout=30)
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/static/") for a in assets), assets
    for asset in assets:
        reply = httpx.get(f"{docs_server.url}{asset}", timeout=30)
        assert reply.status_code == 200 and len(reply.content) > 100, asset
    script = httpx.get(f"{docs_server.url}/static/docs.js", timeout=30).text
    assert '"/openapi.json"' in script and "validatorUrl: null" in script


def test_openapi_carries_the_protos_comments(docs_server: WebServer) -> None:
    """protos/generate.py keeps the comments (api_descriptors.binpb); the document shows them."""
    document = httpx.get(f"{docs_server.url}/openapi.json", timeout=30).json()
    listing = document["paths"]["/database/runs"]["get"]
    assert "AIP-160" in listing["description"]
    page_size = next(p for p in listing["parameters"] if p["name"] == "page_size")
    assert page_size["description"].startswith("At most this many runs")
    run = document["components"]["schemas"]["taxidriver.registry.v1.Run"]
    assert "training_runs" in run["description"]
    assert run["properties"]["episodesRecorded"]["description"].startswith("Episodes durably stored")


def test_openapi_marks_required_and_output_only_fields_as_the_protos_do(docs_server: WebServer) -> None:
    """google.api.field_behavior (AIP-203): REQUIRED → `required`, OUTPUT_ONLY → `readOnly`."""
    from taxidriver.field_behavior import is_output_only, is_required

    document = httpx.get(f"{docs_server.url}/openapi.json", timeout=30).json()
    schemas = document["components"]["schemas"]
    checked_body = checked_query = 0
    for route in load_routes():
        operation = document["paths"][route.template.text][route.http_method.lower()]
        request = route.method.input_type
        variables = set(route.template.variables)
        for parameter in operation["parameters"]:
            field = request.fields_by_name.get(parameter["name"])
            if parameter["in"] == "query" and field is not None:
                assert parameter["required"] is is_required(field), (route.template.text, parameter["name"])
                checked_query += 1
        if route.body == "*":
            wanted = sorted(f.json_name for f in request.fields if is_required(f) and f.name not in variables)
            body = operation["requestBody"]
            assert sorted(body["content"]["application/json"]["schema"].get("required", [])) == wanted
            assert body["required"] is bool(wanted)
            checked_body += 1
    assert checked_body > 0 and checked_query > 0
    run = schemas["taxidriver.registry.v1.Run"]
    from taxidriver.registry.v1 import resources_pb2

    for field in resources_pb2.Run.DESCRIPTOR.fields:
        schema = run["properties"][field.json_name]
        assert schema.get("readOnly", False) is is_output_only(field), field.name
    assert run["properties"]["runId"]["readOnly"] is True
    create = document["paths"]["/database/runs/{run_id}/annotations"]["post"]["requestBody"]
    assert create["content"]["application/json"]["schema"]["required"] == ["annotation"]
