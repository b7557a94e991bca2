"""/openapi.json describes every route: schemas, problem+json errors, the bearer scheme, Idempotency-Key."""
from __future__ import annotations

import json
import re
import uuid

import pytest

NOT_API = {"/static/<path:filename>", "/docs", "/openapi.json", "/docs/<path:filename>"}
PROBLEM = "application/problem+json"


def _console_page(path: str) -> bool:
    """The console's HTML pages and assets; its cookie sign-in routes (/console/auth/...) are API."""
    return (path == "/console" or path.startswith("/console/")) and not path.startswith("/console/auth/")


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
        if rule.rule in NOT_API or _console_page(rule.rule):
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


def test_the_docs_page_and_every_asset_it_references_come_from_the_app(client):
    page = client.get("/docs").get_data(as_text=True)
    assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]", page), "the docs page names another host"
    assert '"validatorUrl": null' in page  # Swagger UI would otherwise post the document to its validator
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {"swagger-ui.css", "swagger-ui-bundle.js"}
    for asset in assets:
        assert asset.startswith("/"), asset
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.data) > 1000, asset
        assert served.mimetype in {"text/css", "text/javascript", "application/javascript"}, asset


def test_the_document_is_openapi_3_1_with_a_unique_readable_operation_id_everywhere(spec):
    assert spec["openapi"] == "3.1.0"
    ids = [op.get("operationId") for _, _, op in operations(spec)]
    assert all(i and re.fullmatch(r"[a-z][A-Za-z]+", i) for i in ids), ids
    assert len(ids) == len(set(ids))
    assert spec["paths"]["/usage/generate"]["post"]["operationId"] == "generateSound"
    assert spec["paths"]["/jobs/{job_id}"]["get"]["operationId"] == "getJob"


def test_fields_always_sent_are_required_and_nullable_ones_admit_null(spec):
    schemas = spec["components"]["schemas"]
    job = schemas["Job"]
    assert set(job["required"]) == set(job["properties"])
    assert {"type": "null"} in job["properties"]["audio"]["anyOf"]
    assert {"$ref": "#/components/schemas/Audio"} in job["properties"]["audio"]["anyOf"]
    assert job["properties"]["finished_at"]["type"] == ["string", "null"]
    assert "url" in schemas["Audio"]["required"]
    assert {"id", "email", "created_at"} <= set(schemas["User"]["required"])
    assert set(schemas["Problem"]["required"]) == {"type", "title", "status", "detail", "code"}
    assert schemas["Generate"]["required"] == ["prompt"]  # a request body keeps its own optional fields


def test_job_and_problem_responses_carry_examples(spec):
    for path, method, status in (("/usage/generate", "post", "202"), ("/jobs/{job_id}", "get", "200")):
        examples = spec["paths"][path][method]["responses"][status]["content"]["application/json"]["examples"]
        assert {name: e["value"]["status"] for name, e in examples.items()} == {
            "queued": "queued", "succeeded": "succeeded", "failed": "failed"}
        assert examples["succeeded"]["value"]["audio"]["url"]
        assert examples["failed"]["value"]["error"]["code"]
    problem = spec["paths"]["/jobs/{job_id}"]["get"]["responses"]["404"]["content"][PROBLEM]["example"]
    assert {"type", "title", "status", "detail", "code"} <= set(problem)


def test_retry_after_and_rate_limit_headers_are_documented_where_they_are_sent(spec):
    generate = spec["paths"]["/usage/generate"]["post"]["responses"]
    assert {"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(
        generate["429"]["headers"])
    assert {"X-RateLimit-Remaining", "Location"} <= set(generate["202"]["headers"])
    assert "Retry-After" in spec["paths"]["/health/ready"]["get"]["responses"]["503"]["headers"]
    assert "X-RateLimit-Limit" not in spec["paths"]["/jobs/{job_id}"]["get"]["responses"]["200"].get("headers", {})


def test_the_usage_export_is_documented_as_csv(spec):
    assert set(spec["paths"]["/usage/export"]["get"]["responses"]["200"]["content"]) == {"text/csv"}


def test_the_response_check_the_suite_runs_catches_what_the_document_does_not_say(app, spec):
    from tests.support.openapi_check import Document

    document = Document(spec)
    job = {"id": str(uuid.uuid4()), "status": "queued", "prompt": "x", "duration_seconds": None,
           "prompt_influence": 0.3, "loop": False, "output_format": "mp3_44100_128", "provider": None,
           "sample_rate": 44100, "bit_depth": None, "loudness_lufs": None, "trim_silence": False,
           "created_at": "2026-01-05T10:00:00Z", "started_at": None, "finished_at": None, "attempts": 0,
           "queue_reason": None, "error": None, "audio": None, "webhook": None}
    path = f"/jobs/{job['id']}"

    def sent(body, status=200, mimetype="application/json"):
        return app.response_class(body if isinstance(body, str) else json.dumps(body), status=status,
                                  mimetype=mimetype)

    assert document.mismatches("GET", path, sent(job)) == []
    missing = document.mismatches("GET", path, sent({k: v for k, v in job.items() if k != "audio"}))
    assert len(missing) == 1 and '"audio" is a required property' in missing[0]
    assert "not valid" in " ".join(document.mismatches("GET", path, sent({**job, "audio": {"url": 1}})))
    assert "content type text/plain" in document.mismatches("GET", path, sent("ok", mimetype="text/plain"))[0]
    assert document.mismatches("GET", "/not-a-route", sent("nope", status=404, mimetype="text/plain")) == []
