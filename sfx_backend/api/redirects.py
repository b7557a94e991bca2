"""Where Stripe may send a user back to: only URLs on the hosts in BILLING_REDIRECT_HOSTS.

Checkout and the billing portal are pages a user trusts; a `success_url` of the caller's choosing
would make them a redirect to anywhere (a phishing page, a metadata address). A URL passes when it
is http(s), carries no credentials and no characters browsers and parsers read differently, and its
host is one of the configured ones: `host` (any port), `host:port`, or `*.domain` (subdomains only).
"""
from __future__ import annotations

from typing import Iterable
from urllib.parse import urlsplit

from flask import current_app
from marshmallow import ValidationError, validate

_DEFAULT_PORTS = {"http": 80, "https": 443}


def redirect_problem(url: str, hosts: Iterable[str]) -> str | None:
    """Why `url` may not be a billing redirect, or None when it may."""
    # A backslash reads as "/" to browsers but not to urllib; control characters and spaces split
    # parsers too. None belongs in a URL we hand to Stripe.
    if "\\" in url or any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        return "Must not contain backslashes, spaces or control characters."
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "Not a valid URL."
    if parts.scheme not in _DEFAULT_PORTS:
        return "Must be an http or https URL."
    if "@" in parts.netloc:
        return "Must not carry a user name or password."
    host = (parts.hostname or "").lower()
    if not host:
        return "Must name a host."
    effective_port = port or _DEFAULT_PORTS[parts.scheme]
    for allowed in hosts:
        if allowed.startswith("*."):
            if host.endswith(allowed[1:]) and len(host) > len(allowed) - 1:
                return None
        elif ":" in allowed:
            name, _, wanted = allowed.rpartition(":")
            if host == name and effective_port == int(wanted):
                return None
        elif host == allowed:
            return None
    return "This host is not allowed; the URL must be on one of the hosts in BILLING_REDIRECT_HOSTS."


class BillingRedirect(validate.Validator):
    """Marshmallow validator: the URL must pass `redirect_problem` for the app's configured hosts."""

    def __call__(self, value: str) -> str:
        problem = redirect_problem(value, current_app.config.get("BILLING_REDIRECT_HOSTS") or [])
        if problem is not None:
            raise ValidationError(problem)
        return value
