"""The one place request JSON is parsed, with bounds, and the argument parser every route uses.

Python's `json` module follows any nesting until the interpreter's recursion limit (a RecursionError,
not a ValueError, so `get_json(silent=True)` lets it through), turns a number of any length into an
int (past 4,300 digits that is a ValueError no caller expects), and accepts NaN and Infinity, which
are not JSON. `loads` refuses each before any route or limiter sees the body: 400 `bad_request`.

`install(app)` routes Flask's `request.get_json()` (the rate limiters' key functions read the login
email with it) through `loads`; `ApiParser`, the parser of our Blueprint, reads bodies with it too and
refuses strings no column can store (NUL, lone surrogates) in any field of any route with 422.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from flask import Flask, Request
from flask.json.provider import DefaultJSONProvider
from marshmallow import ValidationError
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from ..errors import InvalidJson
from .schemas.text import unstorable_strings

MAX_DEPTH = 32  # our bodies nest two levels; Stripe's events well under 32
MAX_NUMBER_CHARS = 100  # digits, sign, point and exponent of one number literal
MAX_JSON_BYTES = 1024 * 1024  # the largest body any route accepts (Stripe events)

_BRACKETS_AND_STRINGS = re.compile(r'[\[\]{}"\\]')


def loads(data: bytes | str, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON document within the bounds above; InvalidJson (a ValueError) otherwise."""
    if len(data) > max_bytes:
        raise InvalidJson(f"The JSON body is larger than {max_bytes} bytes.")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson("The request body is not UTF-8 text.") from exc
    else:
        text = data
    if _nesting_exceeds(text, MAX_DEPTH):
        raise InvalidJson(f"The JSON body nests deeper than {MAX_DEPTH} levels.")
    try:
        return json.loads(text, parse_int=_integer, parse_float=_float, parse_constant=_not_a_number)
    except InvalidJson:
        raise
    except ValueError as exc:  # JSONDecodeError, with the position of the fault
        raise InvalidJson(f"The request body is not valid JSON: {exc}.") from exc


def _nesting_exceeds(text: str, limit: int) -> bool:
    """Whether arrays and objects nest deeper than `limit`, found without recursing."""
    if text.count("[") + text.count("{") <= limit:
        return False  # too few brackets to nest that deep: the common case costs two counts
    depth, in_string, skip_until = 0, False, -1
    for match in _BRACKETS_AND_STRINGS.finditer(text):
        at = match.start()
        if at < skip_until:
            continue  # the character after a backslash in a string
        char = match.group()
        if in_string:
            if char == "\\":
                skip_until = at + 2
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _integer(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise InvalidJson(f"A number in the JSON body is longer than {MAX_NUMBER_CHARS} characters.")
    return int(literal)


def _float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise InvalidJson(f"A number in the JSON body is longer than {MAX_NUMBER_CHARS} characters.")
    return float(literal)


def _not_a_number(name: str) -> None:
    raise InvalidJson(f"{name} is not a JSON value.")


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with `loads` bounded: what `request.get_json()` parses with."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s)


class ApiRequest(Request):
    """A bounded-parser failure in `get_json()` keeps its own message (and stays a 400 problem)."""

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if isinstance(e, InvalidJson):
            raise e
        return super().on_json_loading_failed(e)


class ApiParser(FlaskParser):
    """webargs' Flask parser, reading JSON with `loads` and refusing unstorable strings in every field."""

    def _raw_load_json(self, req: Request) -> Any:
        if not is_json_request(req):
            return core.missing
        data = req.get_data(cache=True)
        if not data:
            return core.missing  # no body: the schema's required fields say what is missing
        return loads(data)

    def pre_load(self, location_data: Mapping, *, schema, req: Request, location: str) -> Mapping:
        errors = unstorable_strings(location_data)
        if errors:
            raise ValidationError(errors)
        return location_data


def install(app: Flask) -> None:
    """Make `request.get_json()` on this app parse with `loads`."""
    app.json = BoundedJSONProvider(app)
    app.request_class = ApiRequest
