"""Property: no input, however malformed, makes any route answer 5xx, and every error is a problem.

Every route of the app (its url_map, with the field and parameter names its OpenAPI operation
documents) gets bodies of arbitrary JSON, bodies shaped like its schema whose values are arbitrary
JSON and arbitrary text (NUL, lone surrogates, invisible and control characters), hostile raw bodies
(deep nesting, integers of thousands of digits, bytes that are not UTF-8), and arbitrary query
strings, path values and headers. Calls are authenticated as the operation needs (a fresh user and
token pair per example, an admin's for /admin), with the abuse limits on and a fresh client address
per example, so the limiters' key functions read every body too.

The run is bounded (EXAMPLES_PER_ROUTE, a few hundred requests in all) and derandomised, so it is
repeatable in CI and its time stays modest as routes are added.
"""
from __future__ import annotations

import itertools
import json
import re
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sfx_backend import create_app
from sfx_backend.auth import issue_tokens
from sfx_backend.extensions import db
from sfx_backend.models import UserRole, utcnow
from sfx_backend.services.users import UserService
from tests.conftest import make_environ, serve_app

PROBLEM = "application/problem+json"
EXAMPLES_PER_ROUTE = {"body": 20, "other": 6}
# Not part of the JSON API: the static folder and the interactive docs' page.
SKIPPED_ENDPOINTS = {"static", "api-docs.openapi_swagger_ui"}


class Raw(str):
    """JSON text written out as given: numbers past Python's 4,300-digit int-to-text limit, deep nesting."""


SPECIAL = ["\x00", "\ud800", "\udfff", "\u00a0", "\u200b", "\u3000", "\ufeff", "\u2028", "\u202e", "\x7f",
           "\x1b", "\t", "\n", "\u0301", "\U0001f50a", "'", '"', "\\", "@"]
characters = st.one_of(st.characters(exclude_categories=()), st.characters(categories=["Cs"]),
                       st.sampled_from(SPECIAL))
# Text around one character that broke something once, or arbitrary text (including surrogates).
poisoned = st.tuples(st.text(max_size=8), st.sampled_from(SPECIAL), st.text(max_size=8)).map("".join)
texts = st.one_of(poisoned, st.text(characters, max_size=40), poisoned,
                  st.sampled_from(SPECIAL + ["e\u0301", "%00", " \u200b "]),
                  st.from_regex(r"\A[a-z0-9.+-]{1,20}@[a-z0-9-]{1,20}\.[a-z]{2,5}\Z"))
numbers = st.one_of(st.integers(), st.floats(), st.integers(4000, 6000).map(lambda n: Raw("9" * n)),
                    st.integers(300, 400).map(lambda n: Raw(f"1e{n}")))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(texts, inner, max_size=4), max_leaves=12)


def encode(value, ascii_only: bool) -> bytes:
    """JSON text for `value`; lone surrogates are sent escaped, or raw (then the bytes are not UTF-8)."""
    def text(v) -> str:
        if isinstance(v, Raw):
            return str.__str__(v)
        if isinstance(v, dict):
            return "{" + ",".join(f"{json.dumps(k, ensure_ascii=ascii_only)}:{text(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ",".join(text(x) for x in v) + "]"
        return json.dumps(v, ensure_ascii=ascii_only)  # NaN and Infinity too: not JSON, but a client may send them
    return text(value).encode("utf-8", "surrogatepass")


def hostile_bodies(fields: list[str]) -> st.SearchStrategy[bytes]:
    """Bodies that broke parsers before: nesting thousands deep, huge integers, broken encodings."""
    field = st.sampled_from(fields or ["x"])
    depth = st.sampled_from([31, 32, 33, 1000, 20_000])
    return st.one_of(
        depth.map(lambda n: ("[" * n + "]" * n).encode()),
        st.tuples(field, depth).map(lambda p: (f'{{"{p[0]}":' + "[" * p[1] + "]" * p[1] + "}").encode()),
        st.tuples(field, st.integers(4000, 6000)).map(lambda p: f'{{"{p[0]}": {"1" * p[1]}}}'.encode()),
        st.sampled_from([b"", b"{", b'{"a": }', b"\xff\xfe", b'{"a": "\xed\xa0\x80"}', b"\xef\xbb\xbf{}",
                         b"NaN", b'{"a": Infinity}', b"null", b"[]", b'"text"']),
    )


def kind_of(schema: dict) -> str | None:
    """The JSON type a property takes besides null (OpenAPI 3.1 writes a nullable one as `[type, "null"]`)."""
    kind = schema.get("type")
    if isinstance(kind, list):
        return next((k for k in kind if k != "null"), None)
    return kind


def plausible(schema: dict):
    """A value the documented property schema accepts, so a mutation of one field reaches the code behind it."""
    if "example" in schema:
        return schema["example"]
    if schema.get("enum"):
        return next(v for v in schema["enum"] if v is not None)
    kind = kind_of(schema)
    if kind == "string":
        by_format = {"email": "fuzz@example.com", "url": "http://localhost/back", "uri": "http://localhost/back",
                     "uuid": "00000000-0000-4000-8000-000000000000", "date": "2024-01-31",
                     "date-time": "2024-01-31T12:00:00Z"}
        return by_format.get(schema.get("format"), "fuzz" + "z" * max(schema.get("minLength", 0) - 4, 0))
    if kind in {"integer", "number"}:
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    return None


def _operations() -> list[dict]:
    """Every route and method, with what its OpenAPI operation says about inputs and security."""
    with tempfile.TemporaryDirectory() as instance:
        env = make_environ("postgresql://unused@127.0.0.1/unused", Path(instance), Fernet.generate_key().decode())
        app = create_app(environ=env)
        doc = app.test_client().get("/openapi.json").get_json()
        rules = list(app.url_map.iter_rules())
    components = doc["components"]["schemas"]
    found = []
    for rule in rules:
        if rule.endpoint in SKIPPED_ENDPOINTS:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operation = doc["paths"].get(path, {}).get(method.lower(), {})
            schema = (operation.get("requestBody", {}).get("content", {}).get("application/json", {})
                      .get("schema", {}))
            if "$ref" in schema:
                schema = components[schema["$ref"].rsplit("/", 1)[1]]
            params = operation.get("parameters", [])
            found.append({
                "rule": rule.rule, "method": method,
                "fields": {name: prop for name, prop in sorted(schema.get("properties", {}).items())},
                "takes_body": method in {"POST", "PUT", "PATCH", "DELETE"},
                "query": {p["name"]: p.get("schema", {}) for p in params if p["in"] == "query"},
                "headers": sorted(p["name"] for p in params if p["in"] == "header"),
                "bearer": any("bearerAuth" in s for s in operation.get("security", [])),
            })
    return found


def mutations(properties: dict[str, dict], values: st.SearchStrategy) -> st.SearchStrategy[dict]:
    """A plausible body (or query) with up to two fields replaced by `values`, sometimes one left out or
    one unknown field added: mostly one fault at a time, so each reaches the code behind the schema."""
    names = sorted(properties)
    if not names:
        return st.dictionaries(texts, values, max_size=2)
    no_extra = st.just({})
    return st.tuples(st.sets(st.sampled_from(names), max_size=1),
                     st.dictionaries(st.sampled_from(names), values, min_size=1, max_size=2),
                     st.one_of(no_extra, no_extra, no_extra, st.dictionaries(texts, values, min_size=1, max_size=1)),
                     ).map(lambda p: {**{n: plausible(properties[n]) for n in names if n not in p[0]}, **p[1], **p[2]})


OPERATIONS = _operations()


@pytest.fixture
def fuzz_app(_migrated, database_url, tmp_path, encryption_key):
    """The app with its abuse limits on (in memory) and no upstream or Stripe reachable."""
    env = make_environ(database_url, tmp_path / "instance", encryption_key, RATELIMIT_ENABLED="true",
                       ELEVEN_LABS_BASE_URL="http://127.0.0.1:9", STRIPE_API_BASE="http://127.0.0.1:9")
    yield from serve_app(env)


def _bearer(app, operation: dict) -> str:
    """A token of a fresh account: the refresh token for /auth/refresh, an admin's for /admin."""
    role = UserRole.ADMIN if operation["rule"].startswith("/admin") else UserRole.USER
    person = UserService(db.session, app.extensions["sfx"].hasher).register(
        f"fuzz-{uuid.uuid4().hex[:12]}@example.com", "correct horse battery", role=role)
    db.session.flush()
    tokens = issue_tokens(person, utcnow())
    db.session.commit()
    return tokens["refresh_token"] if operation["rule"] == "/auth/refresh" else tokens["access_token"]


def _path(rule: str, values: dict[str, str]) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], rule)


def _query(pairs: list[tuple[str, object]]) -> str:
    def part(v) -> str:
        return quote(("" if v is None else str(v)).encode("utf-8", "surrogatepass"), safe="")
    return "&".join(f"{part(k)}={part(v)}" for k, v in pairs)


def audited(operation: dict) -> list[tuple[bytes, list]]:
    """What the audit sent (each a 500 once), in this route's plausible body: tried before the generated examples."""
    fields = operation["fields"]
    body = {name: plausible(prop) for name, prop in fields.items()}
    strings = [name for name, prop in fields.items() if kind_of(prop) == "string"] or ["x"]
    first = min(fields) if fields else "x"
    query = [("page", "1" * 5000), ("q", "\x00"), ("status", "\ud800"), ("from", "\x00")]
    cases = [
        (encode({**body, **{name: "a\x00b" for name in strings}}, True), query),
        (encode({**body, **{name: "a\ud800" for name in strings}}, True), []),
        (encode({**body, first: Raw("[" * 20_000 + "]" * 20_000)}, True), []),
        (encode({**body, first: Raw("1" * 5000)}, True), []),
    ]
    return cases if operation["takes_body"] else [(b"", query)]


def _assert_answer(response) -> None:
    text = response.get_data(as_text=True)
    assert response.status_code < 500, text
    if response.status_code >= 400:
        assert response.content_type == PROBLEM, (response.status_code, response.content_type, text[:300])
        problem = response.get_json()
        assert isinstance(problem.get("code"), str) and problem["code"], problem
        assert problem["status"] == response.status_code
        if problem["code"] == "validation_error":
            assert isinstance(problem.get("errors"), dict) and problem["errors"], problem


@pytest.mark.parametrize("operation", OPERATIONS, ids=[f"{o['method']} {o['rule']}" for o in OPERATIONS])
def test_no_input_makes_a_route_fail_with_5xx_or_a_non_problem(fuzz_app, operation):
    client = fuzz_app.test_client()
    fields = operation["fields"]
    anything = st.one_of(texts, texts, json_values)
    shaped = mutations(fields, anything).map(lambda v: encode(v, True))
    bodies = st.one_of(
        shaped, shaped, shaped,
        st.tuples(st.one_of(mutations(fields, anything), json_values), st.booleans()).map(lambda p: encode(*p)),
        hostile_bodies(sorted(fields)),
    ) if operation["takes_body"] else st.just(b"")
    queries = mutations(operation["query"], st.one_of(texts, numbers.map(str))).map(lambda d: sorted(d.items()))
    path_values = st.one_of(st.uuids().map(str), texts.filter(lambda s: s and "/" not in s).map(
        lambda s: quote(s.encode("utf-8", "surrogatepass"), safe="")))
    header_text = st.text(st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=300)
    kind = "body" if operation["takes_body"] else "other"
    addresses = itertools.count(1)

    def run(body, query, path_value, headers):
        names = re.findall(r"<(?:\w+:)?(\w+)>", operation["rule"])
        url = _path(operation["rule"], {name: path_value for name in names})
        if operation["bearer"]:
            headers = {**headers, "Authorization": f"Bearer {_bearer(fuzz_app, operation)}"}
        n = next(addresses)  # a fresh client address each time: the per-address limits stay out of the way
        response = client.open(url, method=operation["method"], data=body, query_string=_query(query),
                               headers=headers, content_type="application/json",
                               environ_base={"REMOTE_ADDR": f"10.0.{n // 250}.{n % 250 + 1}"})
        _assert_answer(response)

    run = given(body=bodies, query=queries, path_value=path_values,
                headers=st.dictionaries(st.sampled_from(operation["headers"] or ["X-Unused"]), header_text,
                                        max_size=1))(run)
    for body, query in audited(operation):
        run = example(body=body, query=query, path_value="00000000-0000-4000-8000-000000000000", headers={})(run)
    settings(max_examples=EXAMPLES_PER_ROUTE[kind], deadline=None, derandomize=True, database=None,
             suppress_health_check=list(HealthCheck))(run)()
