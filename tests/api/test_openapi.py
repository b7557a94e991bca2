"""/openapi.json describes every route: schemas, problem+json errors, the bearer scheme, Idempotency-Key."""
from __future__ import annotations

import re
import uuid

import pytest

NOT_API = {"/static/<path:filename>", "/docs", "/openapi.json", "/docs/<path:filename>"}
PROBLEM = "application/problem+json"


@pytest.fixture
def spec(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def operations(spec: dict):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield method, path, op


def _as_openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z_]+:)?([a-z_]+)>", r"{\1}", rule)


def test_every_route_of_the_app_is_described(app, spec):
    described = {(m, p) for m, p, _ in operations(spec)}
    for rule in app.url_map.iter_rules():
        if rule.rule in NOT_API:
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (method.lower(), _as_openapi_path(rule.rule)) in described, f"{method} {rule.rule}"


def test_the_bearer_scheme_is_declared_by_every_route_that_asks_for_a_token(client, spec):
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    for method, path, op in operations(spec):
        if op.get("security"):
            continue
        url = re.sub(r"\{[a-z_]+\}", str(uuid.uuid4()), path)
        response = client.open(url, method=method.upper(), json={} if method != "get" else None)
        assert response.status_code != 401, f"{method.upper()} {path} wants a token but declares no security"


def test_routes_that_declare_the_bearer_scheme_answer_401_without_a_token(client, spec):
    for method, path, op in operations(spec):
        if {"bearerAuth": []} not in op.get("security", []):
            continue
        url = re.sub(r"\{[a-z_]+\}", str(uuid.uuid4()), path)
        response = client.open(url, method=method.upper(), json={} if method != "get" else None)
        assert response.status_code == 401, f"{method.upper()} {path} answered {response.status_code}"
        assert response.content_type == PROBLEM
        assert "401" in op["responses"], f"{method.upper()} {path} does not document its 401"


def test_every_error_response_is_described_as_problem_json(spec):
    problem = spec["components"]["schemas"]["Problem"]["properties"]
    assert {"type", "title", "status", "detail", "code", "errors"} <= set(problem)
    assert set(spec["components"]["responses"]["DEFAULT_ERROR"]["content"]) == {PROBLEM}
    for method, path, op in operations(spec):
        assert "default" in op["responses"], f"{method.upper()} {path}"
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                assert set(response.get("content", {PROBLEM: None})) == {PROBLEM}, f"{method} {path} {status}"


def test_json_bodies_and_successes_have_schemas(spec):
    for method, path, op in operations(spec):
        if "requestBody" in op:
            assert op["requestBody"]["content"]["application/json"]["schema"], f"{method} {path}"
        successes = {s: r for s, r in op["responses"].items() if s.startswith(("2", "3"))}
        assert successes, f"{method.upper()} {path} documents no success"
        for status, response in successes.items():
            for media in response.get("content", {}).values():
                assert media.get("schema"), f"{method.upper()} {path} {status}"


@pytest.mark.parametrize("path", ["/usage/generate", "/jobs"])
def test_submitting_a_job_documents_the_idempotency_key_header(spec, path):
    params = {p["name"]: p for p in spec["paths"][path]["post"].get("parameters", [])}
    assert params["Idempotency-Key"]["in"] == "header"
    assert params["Idempotency-Key"]["required"] is False
    responses = spec["paths"][path]["post"]["responses"]
    assert {"202", "402", "422", "429"} <= set(responses)
    assert "Location" in responses["202"]["headers"]


def test_interactive_docs_are_served(client):
    response = client.get("/docs")
    assert response.status_code == 200
    assert "swagger-ui" in response.get_data(as_text=True)
