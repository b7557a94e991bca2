"""Rules for text a client sends, by Unicode category (`unicodedata`), not by lists of characters.

- Anywhere (every field, key and query value of every route, see `unstorable_strings`): no NUL and
  no lone surrogate. PostgreSQL cannot store the one and UTF-8 cannot encode the other; both used to
  reach the database and end as a 500.
- `Text` fields (names, labels, the prompt): no control characters (category Cc: C0, DEL, C1), so a
  name cannot break a line of an email or a log.
- `Prompt`: also at least one visible character, a letter, digit, punctuation or symbol
  (categories L, N, P, S). A prompt of spaces of any kind (U+00A0, U+3000: category Zs) or format
  characters (U+200B, U+FEFF: Cf) would otherwise be sent upstream and paid for.
"""
from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from marshmallow import ValidationError, fields

NUL_MESSAGE = "Must not contain NUL characters."
SURROGATE_MESSAGE = "Must be valid Unicode text (a lone surrogate is not)."
CONTROL_MESSAGE = "Must not contain control characters."
INVISIBLE_MESSAGE = "Must contain at least one visible character."
_VISIBLE_CATEGORIES = frozenset("LNPS")


def unstorable(value: str) -> str | None:
    """Why `value` cannot be stored as text (NUL, lone surrogate), or None when it can."""
    if "\x00" in value:
        return NUL_MESSAGE
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return SURROGATE_MESSAGE
    return None


def _printable_name(key: Any) -> str:
    """A field name fit for an error message even when the name itself is a bad string."""
    return str(key).encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def unstorable_strings(data: Any) -> dict[str, Any]:
    """Messages, by field (nested as the data is), for every unstorable string key or value in `data`."""
    errors: dict[str, Any] = {}
    for key, value in _entries(data):
        name = _printable_name(key)
        if isinstance(key, str) and unstorable(key):
            errors[name] = [f"The field name: {unstorable(key)}"]
            continue
        found = _unstorable_in(value)
        if found:
            errors[name] = found
    return errors


def _entries(data: Any):
    raw = getattr(data, "data", data)  # webargs' MultiDictProxy wraps the request's MultiDict
    if hasattr(raw, "lists"):  # a query string: every value of a repeated parameter
        for key, values in raw.lists():
            yield key, values[0] if len(values) == 1 else values
    elif isinstance(raw, Mapping):
        yield from raw.items()
    elif isinstance(raw, list):
        yield from enumerate(raw)


def _unstorable_in(value: Any) -> Any:
    if isinstance(value, str):
        message = unstorable(value)
        return [message] if message else None
    if isinstance(value, (Mapping, list)):
        return unstorable_strings(value) or None
    return None


class Text(fields.String):
    """A string with no control characters (one line of human text)."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        message = unstorable(text)
        if message:
            raise ValidationError(message)
        if any(unicodedata.category(char) == "Cc" for char in text):
            raise ValidationError(CONTROL_MESSAGE)
        return text


class Prompt(Text):
    """A prompt: one line of text with at least one visible character."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if not any(unicodedata.category(char)[0] in _VISIBLE_CATEGORIES for char in text):
            raise ValidationError(INVISIBLE_MESSAGE)
        return text
