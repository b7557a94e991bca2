"""Helpers shared by the blueprints."""
from __future__ import annotations

import flask_smorest
from flask import current_app, request
from flask_jwt_extended import current_user
from flask_smorest.utils import resolve_schema_instance

from ..errors import handle_http_exception
from ..extensions import db
from ..runtime import runtime
from ..services import quota
from .request_input import ApiParser
from .schemas import ProblemSchema

BEARER = [{"bearerAuth": []}]


class ProblemApi(flask_smorest.Api):
    """flask-smorest's Api, but HTTP errors render as problem+json like every other error."""

    ERROR_SCHEMA = ProblemSchema  # documents the default and 422 responses with the real shape

    def handle_http_exception(self, error):  # noqa: D102 - overrides the library's JSON body
        return handle_http_exception(error)

    def _init_spec(self, *args, **kwargs):
        super()._init_spec(*args, **kwargs)
        built = self.spec.to_dict
        # Every reader of the document (/openapi.json, `flask openapi write`) gets the finished one.
        from .openapi import finish_document
        self.spec.to_dict = lambda: finish_document(built())  # type: ignore[method-assign]

    def _register_responses(self):
        """The shared error responses (`default`, automatic 422) are problem+json, as sent."""
        self.DEFAULT_RESPONSE_CONTENT_TYPE = "application/problem+json"
        try:
            super()._register_responses()
        finally:
            del self.DEFAULT_RESPONSE_CONTENT_TYPE


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint, with each argument schema built once at import, and bodies parsed by
    `request_input.ApiParser` (bounded JSON; no NUL or lone surrogate in any field).

    Handed a schema class, webargs builds a new instance (deep-copying every field) on each request;
    in the profile of `POST /usage/generate` that was a tenth of the view's own CPU. A schema instance
    is safe to share between requests and threads: loading keeps no state on it.
    """

    ARGUMENTS_PARSER = ApiParser()

    def arguments(self, schema, *args, **kwargs):
        return super().arguments(resolve_schema_instance(schema), *args, **kwargs)


def problem_responses(blp: Blueprint, *statuses: int):
    """Document problem+json error responses on a view."""
    def decorate(fn):
        for status in statuses:
            fn = blp.alt_response(status, schema=ProblemSchema, content_type="application/problem+json",
                                  description="Problem details (RFC 9457) with a stable `code`.")(fn)
        return fn
    return decorate


def caller_allowance() -> quota.Allowance:
    """The authenticated caller's allowance now (its subscription's, else the trial's), looked up once
    per request: the generate rate limit, the submit and the usage routes share it."""
    cache = request.environ.setdefault("sfx.caller_allowance", {})
    if current_user.id not in cache:
        cache[current_user.id] = quota.allowance_for(db.session, current_user, runtime().clock(),
                                                     current_app.config["TRIAL_GENERATION_LIMIT"])
    return cache[current_user.id]
