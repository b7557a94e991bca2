"""Checks a response against the app's own /openapi.json: documented status, content type and body schema.

tests/conftest.py runs it on every response the suite's test clients see, so the document cannot drift
from what the API sends (a field marked `required` that a view leaves out fails the test that saw it).
"""
from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass

import jsonschema_rs
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

_METHODS = {"get", "put", "post", "delete", "patch"}


@dataclass
class _Operation:
    pattern: re.Pattern[str]
    method: str
    path: str
    responses: dict


class Document:
    """One app's served document, with a compiled validator per (operation, status, media type)."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.operations = [
            _Operation(re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(path)) + "$"), method,
                       path, op["responses"])
            for path, item in spec["paths"].items() for method, op in item.items() if method in _METHODS]
        self._validators: dict[tuple[str, str, str, str], jsonschema_rs.Validator] = {}

    def _resolve(self, response: dict) -> dict:
        ref = response.get("$ref")
        return self.spec["components"]["responses"][ref.rsplit("/", 1)[-1]] if ref else response

    def _validator(self, op: _Operation, status: str, media: str, schema: dict) -> jsonschema_rs.Validator:
        key = (op.method, op.path, status, media)
        if key not in self._validators:
            # The response's schema, with the components beside it so its $refs resolve.
            self._validators[key] = jsonschema_rs.Draft202012Validator(
                {"allOf": [schema], "components": self.spec["components"]})
        return self._validators[key]

    def mismatches(self, method: str, path: str, response: TestResponse) -> list[str]:
        """What about this response the document does not describe (empty when it conforms)."""
        method = method.lower()
        op = next((o for o in self.operations if o.method == method and o.pattern.match(path)), None)
        if op is None:
            return []  # not an API route (the docs, a 404 for an unknown path, HEAD, OPTIONS)
        where = f"{method.upper()} {op.path} -> {response.status_code}"
        status = str(response.status_code)
        if status not in op.responses:
            status = "default"
        if status not in op.responses:
            return [f"{where}: status not documented"]
        documented = self._resolve(op.responses[status])
        content = documented.get("content", {})
        body = response.get_data()
        if not content:
            return [] if not body or response.status_code in (301, 302, 303, 307, 308) else \
                [f"{where}: a body ({response.mimetype}) where none is documented"]
        media = response.mimetype
        if media not in content:
            return [f"{where}: content type {media} not among {sorted(content)}"]
        schema = content[media].get("schema")
        if not schema or not media.endswith("json"):
            return []
        try:
            instance = json.loads(body)
        except ValueError:
            return [f"{where}: {media} body is not JSON"]
        return [f"{where}: {error.instance_path}: {error.message}"
                for error in self._validator(op, status, media, schema).iter_errors(instance)]


_documents: weakref.WeakKeyDictionary[Flask, Document | None] = weakref.WeakKeyDictionary()


def document_of(app: Flask) -> Document | None:
    """The app's served document (fetched once per app, with a plain client so nothing recurses); None for
    a bare Flask app a test builds for itself, which serves none."""
    if app not in _documents:
        served = FlaskClient(app, app.response_class, use_cookies=False).get("/openapi.json")
        _documents[app] = Document(served.get_json()) if served.status_code == 200 else None
    return _documents[app]


def assert_conforms(app: Flask, response: TestResponse) -> None:
    """Fail with every way `response` differs from what the document says."""
    document = document_of(app)
    if document is None:
        return
    request = response.request
    problems = document.mismatches(request.method, request.path, response)
    assert not problems, "response differs from /openapi.json:\n" + "\n".join(problems)
