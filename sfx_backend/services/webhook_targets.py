"""Which webhook URLs the service may call: the SSRF guard, in one place.

A webhook URL is typed by a user and called by a worker inside our network, so it must never reach
an address that only makes sense from the inside: loopback, private and link-local ranges, carrier-
grade NAT, multicast, reserved and unspecified addresses, and the clouds' metadata services. The
check runs when a job is submitted (422 `invalid_webhook_url`) and again before every delivery, and
the delivery connects to the very address that passed (`Target.address`), so a DNS answer that
changes between the check and the connection cannot move the call elsewhere.

Outside production loopback is allowed, for a receiver on the developer's own machine; metadata
addresses never are.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2000

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services. Most sit in ranges refused anyway (169.254.0.0/16, fd00::/8, 100.64.0.0/10),
# but they are named so that loopback being allowed in development never lets one through, and
# Azure's wireserver (168.63.129.16) is a public address refused only by this list.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
    "169.254.170.2",  # AWS ECS task metadata
    "169.254.169.253",  # AWS VPC DNS
    "168.63.129.16",  # Azure wireserver
    "100.100.100.200",  # Alibaba Cloud
    "192.0.0.192",  # Oracle Cloud
    "fd00:ec2::254",  # AWS over IPv6
    "fd00:ec2::253",
))
# Ranges Python's `is_global` does not cover by name, refused explicitly (RFC 6598 CGNAT, NAT64 prefix).
# 192.0.0.0/24 (IETF protocol assignments) too: Python 3.11 counts most of it as global.
EXTRA_REFUSED = tuple(ipaddress.ip_network(n) for n in ("100.64.0.0/10", "192.0.0.0/24", "64:ff9b::/96",
                                                        "64:ff9b:1::/48"))


class ForbiddenTarget(ValueError):
    """The URL is malformed or points at an address webhooks may not reach; `str()` says why."""


@dataclass(frozen=True)
class Target:
    """A checked URL and the one address to connect to."""

    scheme: str
    host: str  # as typed (a name, or an address without brackets): the Host header, TLS SNI and cert check
    port: int
    path: str  # path and query, as sent in the request line
    address: str  # the checked IP address the connection must use


Resolver = Callable[[str, int], Iterable[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host` (TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [info[4][0] for info in infos]


def parse(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an http(s) URL, or ForbiddenTarget for anything else."""
    if not isinstance(url, str) or not url:
        raise ForbiddenTarget("Give an http or https URL.")
    if len(url) > MAX_URL_LENGTH:
        raise ForbiddenTarget(f"At most {MAX_URL_LENGTH} characters.")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise ForbiddenTarget("No spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ForbiddenTarget("Not a valid URL.") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ForbiddenTarget("Only http and https URLs are allowed.")
    if parts.username is not None or parts.password is not None:
        raise ForbiddenTarget("Credentials in the URL are not allowed.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ForbiddenTarget("The URL has no host.")
    if port == 0:
        raise ForbiddenTarget("Port 0 is not allowed.")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port or (443 if scheme == "https" else 80), path


def refusal(address: IPAddress, allow_loopback: bool) -> str | None:
    """Why webhooks may not call `address`, or None if they may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refusal(address.ipv4_mapped, allow_loopback)  # ::ffff:127.0.0.1 is 127.0.0.1
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if any(address in network for network in EXTRA_REFUSED if network.version == address.version):
        return "a shared or translated address"
    if not address.is_global:
        return "an address that is not public"
    return None


def check(url: str, *, allow_loopback: bool, resolver: Resolver = system_resolver) -> Target:
    """The URL as a Target to connect to, or ForbiddenTarget.

    A name is resolved, and refused if ANY of its addresses is forbidden (a name that also points
    inside is not trusted for its public addresses either); the first address is the one used.
    """
    scheme, host, port, path = parse(url)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.split("%", 1)[0] if "%" in host else host)
    except ValueError:
        literal = None
    if literal is not None:
        if "%" in host:
            raise ForbiddenTarget("Scoped IPv6 addresses are not allowed.")
        addresses: list[IPAddress] = [literal]
    else:
        try:
            resolved = list(resolver(host, port))
        except (OSError, UnicodeError) as exc:
            raise ForbiddenTarget(f"The host {host!r} does not resolve.") from exc
        addresses = []
        for text in resolved:
            try:
                addresses.append(ipaddress.ip_address(text.split("%", 1)[0]))
            except ValueError:
                continue
        if not addresses:
            raise ForbiddenTarget(f"The host {host!r} does not resolve.")
    for address in addresses:
        reason = refusal(address, allow_loopback)
        if reason is not None:
            raise ForbiddenTarget(f"The URL points at {reason}.")
    first = addresses[0]
    if isinstance(first, ipaddress.IPv6Address) and first.ipv4_mapped is not None:
        first = first.ipv4_mapped  # connect over IPv4 to what the mapped form names
    return Target(scheme=scheme, host=host, port=port, path=path, address=str(first))
