"""The SSRF guard for webhook URLs (sfx_backend/services/webhook_targets.py)."""
from __future__ import annotations

import socket

import pytest

from sfx_backend.services.webhook_targets import MAX_URL_LENGTH, ForbiddenTarget, check


def resolving(*addresses: str):
    """A resolver that answers `addresses` for any name, and remembers what it was asked."""
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return list(addresses)

    resolve.asked = asked
    return resolve


def refuse(url: str, allow_loopback: bool = False, resolver=None) -> str:
    with pytest.raises(ForbiddenTarget) as caught:
        check(url, allow_loopback=allow_loopback, resolver=resolver or resolving("93.184.215.14"))
    return str(caught.value)


def test_a_public_https_url_is_checked_and_pinned_to_the_address_it_resolved_to():
    resolver = resolving("93.184.215.14")
    target = check("https://hooks.example.com:8443/sfx?x=1", allow_loopback=False, resolver=resolver)
    assert (target.scheme, target.host, target.port, target.path, target.address) == (
        "https", "hooks.example.com", 8443, "/sfx?x=1", "93.184.215.14")
    assert resolver.asked == [("hooks.example.com", 8443)]
    assert check("http://hooks.example.com", allow_loopback=False, resolver=resolver).port == 80


@pytest.mark.parametrize("url", [
    "ftp://example.com/x", "file:///etc/passwd", "gopher://example.com", "javascript:alert(1)", "example.com/x",
    "http://", "https://user:pass@example.com/", "http://exa mple.com/", "http://example.com:0/",
    "http://example.com:99999/", "http://[::1", "",
])
def test_malformed_urls_and_other_schemes_are_refused(url):
    refuse(url, allow_loopback=True)


def test_a_url_longer_than_the_limit_is_refused():
    url = "https://example.com/" + "a" * (MAX_URL_LENGTH - 19)
    assert "2000" in refuse(url)
    check(url[:MAX_URL_LENGTH], allow_loopback=False, resolver=resolving("93.184.215.14"))


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.1.2.3", "::1", "10.0.0.5", "172.16.3.4", "192.168.1.1", "169.254.10.10", "0.0.0.0", "::",
    "100.64.0.1", "100.127.255.254", "224.0.0.1", "ff02::1", "240.0.0.1", "255.255.255.255", "fc00::1", "fe80::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a00:1", "192.0.0.8", "198.18.0.1",
])
def test_inside_addresses_are_refused_in_production_as_literals_and_as_what_a_name_resolves_to(address):
    literal = f"[{address}]" if ":" in address else address
    refuse(f"http://{literal}:8080/hook")
    refuse("https://innocent.example.com/hook", resolver=resolving(address))


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "168.63.129.16", "100.100.100.200",
                                     "::ffff:169.254.169.254", "169.254.170.2"])
def test_metadata_addresses_are_refused_even_where_loopback_is_allowed(address):
    literal = f"[{address}]" if ":" in address else address
    assert "metadata" in refuse(f"http://{literal}/latest/meta-data/", allow_loopback=True)
    assert "metadata" in refuse("http://metadata.example.internal/", allow_loopback=True, resolver=resolving(address))


def test_outside_production_loopback_is_allowed_and_private_ranges_still_are_not():
    assert check("http://127.0.0.1:9000/h", allow_loopback=True).address == "127.0.0.1"
    assert check("http://[::1]:9000/h", allow_loopback=True).address == "::1"
    assert check("http://[::ffff:127.0.0.1]:9000/h", allow_loopback=True).address == "127.0.0.1"
    refuse("http://10.1.1.1/", allow_loopback=True)
    refuse("http://192.168.0.10/", allow_loopback=True)


def test_localhost_resolves_to_loopback_and_is_refused_in_production():
    # The system resolver, as deliveries use it: localhost is 127.0.0.1 (and ::1) on every machine.
    with pytest.raises(ForbiddenTarget, match="loopback"):
        check("http://localhost:9000/hook", allow_loopback=False)
    assert check("http://localhost:9000/hook", allow_loopback=True).address in ("127.0.0.1", "::1")


def test_a_name_with_any_inside_address_is_refused_even_when_the_first_is_public():
    assert "private" in refuse("https://mixed.example.com/", resolver=resolving("93.184.215.14", "10.0.0.7"))


def test_a_name_that_does_not_resolve_is_refused():
    def fail(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    assert "does not resolve" in refuse("https://no-such-host.invalid/", resolver=fail)
    assert "does not resolve" in refuse("https://empty.example.com/", resolver=resolving())


def test_scoped_ipv6_literals_are_refused():
    refuse("http://[fe80::1%25eth0]/", allow_loopback=True)
