"""Helpers shared by the blueprints."""
from __future__ import annotations

from flask_smorest import Blueprint

from .schemas import ProblemSchema

BEARER = [{"bearerAuth": []}]


def problem_responses(blp: Blueprint, *statuses: int):
    """Document problem+json error responses on a view."""
    def decorate(fn):
        for status in statuses:
            fn = blp.alt_response(status, schema=ProblemSchema, content_type="application/problem+json",
                                  description="Problem details (RFC 9457) with a stable `code`.")(fn)
        return fn
    return decorate
