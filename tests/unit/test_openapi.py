"""The OpenAPI document: valid 3.1, every SPEC §3 endpoint, and exactly the app's routes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from coordinator.openapi import build_openapi

METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}

# Every endpoint SPEC §3 names (plus the websocket of §4), as method and full path.
SPEC_ENDPOINTS = {
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/latest"),
    ("get", "/v1/jobs/history"),
    ("get", "/v1/jobs/{job_id}"),
    ("put", "/v1/jobs/{job_id}"),
    ("delete", "/v1/jobs/{job_id}"),
    ("get", "/v1/jobs/{job_id}/download"),
    ("get", "/v1/jobs/{job_id}/receipt"),
    ("get", "/v1/jobs/{job_id}/events"),
    ("post", "/v1/files"),
    ("get", "/v1/me"),
    ("get", "/v1/wallets/{address}/balance"),
    ("get", "/v1/wallets/{address}/history"),
    ("post", "/v1/faucet"),
    ("get", "/v1/chain/{chain_id}/blocks"),
    ("get", "/v1/chain/{chain_id}/blocks/{height}"),
    ("get", "/v1/chains"),
    ("get", "/v1/miners"),
    ("get", "/v1/models"),
    ("get", "/v1/miners/ws"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
}
# Endpoints beyond SPEC §3 (docs/api.md): batch submits and the stream of all jobs.
EXTENSIONS = {("post", "/v1/jobs/batch"), ("get", "/v1/jobs/events")}
PUBLIC = {"/healthz", "/readyz", "/metrics", "/v1/openapi.json"}


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def test_document_is_valid_openapi_3_1() -> None:
    document = build_openapi()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_spec_endpoint_and_extension_is_documented() -> None:
    assert operations(build_openapi()) == SPEC_ENDPOINTS | EXTENSIONS


def test_path_parameters_are_declared_with_the_spec_names() -> None:
    for path, item in build_openapi()["paths"].items():
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), path


def test_auth_schemes_and_public_endpoints() -> None:
    document = build_openapi()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}
    assert schemes["apiKey"]["name"] == "X-Api-Key"
    for method, path in operations(document):
        operation = document["paths"][path][method]
        public = operation.get("security") == []
        assert public == (path in PUBLIC), (method, path)
        if not public:
            assert "401" in operation["responses"], (method, path)


def test_errors_are_problem_details() -> None:
    document = build_openapi()
    for method, path in operations(document):
        for code, response in document["paths"][path][method]["responses"].items():
            if int(code) >= 400:
                assert "application/problem+json" in response["content"], (method, path, code)


def test_job_schema_names_the_spec_fields() -> None:
    job = build_openapi()["components"]["schemas"]["Job"]["properties"]
    for field in [
        "job_id",
        "status",
        "progress",
        "miner_id",
        "created_at",
        "started_at",
        "completed_at",
        "result",
        "model",
        "name",
        "estimated_cost",
        "cost",
        "error",
        "attempts",
        "chain_id",
        "queue_reason",
    ]:
        assert field in job


def test_document_is_a_fresh_copy() -> None:
    first = build_openapi()
    first["paths"].clear()
    assert build_openapi()["paths"]


def _app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    app_module = pytest.importorskip("coordinator.app", reason="coordinator.app not built yet")
    from coordinator.settings import Settings

    app = app_module.create_app(Settings(data_dir=tmp_path))
    routes = set()
    for route in app.router.routes():
        method = route.method.lower()
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if method != "head" and path:
            routes.add((method, path))
    return routes


def test_document_lists_exactly_the_served_routes(tmp_path: Path) -> None:
    served = _app_routes(tmp_path)
    documented = operations(build_openapi())
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


def test_job_events_describe_each_event_and_its_json_data() -> None:
    document = build_openapi()
    response = document["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]
    event = response["content"]["text/event-stream"]["schema"]
    data = {
        branch["properties"]["event"]["const"]: branch["properties"]["data"]
        for branch in event["oneOf"]
    }
    assert set(data) == {"status", "progress", "end"}
    for schema in data.values():
        assert schema["type"] == "string" and schema["contentMediaType"] == "application/json"
        assert schema["contentSchema"]["$ref"].split("/")[-1] in document["components"]["schemas"]
    assert data["status"]["contentSchema"] == {"$ref": "#/components/schemas/Job"}


def test_faucet_request_states_the_handlers_bounds() -> None:
    faucet = build_openapi()["components"]["schemas"]["FaucetRequest"]
    assert faucet["required"] == ["amount"] and faucet["additionalProperties"] is False
    amount = faucet["properties"]["amount"]
    assert (amount["type"], amount["minimum"], amount["maximum"]) == ("number", 0.000001, 1000)
    assert faucet["properties"]["chain_id"]["maxLength"] == 64
