"""One webhook POST to an address already checked (services/webhook_targets.py), and nothing more.

The connection goes to `Target.address`, the IP the guard approved, never to a fresh lookup of the
name; the name still goes in the Host header, in TLS SNI and in the certificate check (urllib3's
`server_hostname` and `assert_hostname`). No redirect is followed (a 3xx is an answer like any other:
the attempt failed), no retry is made here (retries are the delivery's, with backoff), timeouts are
short, and at most `max_response_bytes` of the answer is read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import urllib3

from .webhook_targets import Target

USER_AGENT = "sfx-backend-webhooks/1"


@dataclass(frozen=True)
class PostResult:
    http_status: int | None  # None: no answer (connection refused, timeout, TLS failure...)
    error: str | None
    duration_ms: int


def _host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def post(target: Target, body: bytes, headers: dict[str, str], *, connect_timeout: float = 3.0,
         total_timeout: float = 10.0, max_response_bytes: int = 65536, ca_certs: str | None = None) -> PostResult:
    """POST `body` to the target's checked address; never raises for what the network does.

    `ca_certs`: a CA bundle to trust instead of the system's (tests with a certificate of their own).
    """
    timeout = urllib3.Timeout(connect=connect_timeout, read=total_timeout, total=total_timeout)
    common = dict(timeout=timeout, retries=False, maxsize=1, block=False)
    if target.scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            target.address, target.port, cert_reqs="CERT_REQUIRED", server_hostname=target.host,
            assert_hostname=target.host, ca_certs=ca_certs, **common)
    else:
        pool = urllib3.HTTPConnectionPool(target.address, target.port, **common)
    started = time.monotonic()
    try:
        response = pool.urlopen("POST", target.path, body=body,
                                headers={**headers, "Host": _host_header(target), "User-Agent": USER_AGENT},
                                redirect=False, retries=False, preload_content=False, assert_same_host=False,
                                release_conn=False)
        try:
            left = max_response_bytes
            # Drain a bounded amount (a receiver may send a body); stop at the limit or the deadline.
            while left > 0 and time.monotonic() - started < total_timeout:
                chunk = response.read(min(left, 16384))
                if not chunk:
                    break
                left -= len(chunk)
        except (urllib3.exceptions.HTTPError, OSError):
            pass  # the status line is what counts; a broken body does not change it
        finally:
            response.close()
        return PostResult(response.status, None, _ms(started))
    except urllib3.exceptions.NewConnectionError as exc:  # before its base class, ConnectTimeoutError
        if isinstance(exc.__cause__, TimeoutError) or "timed out" in str(exc):
            return PostResult(None, "connect timeout", _ms(started))
        return PostResult(None, "connection failed: refused or unreachable", _ms(started))
    except urllib3.exceptions.ConnectTimeoutError:
        return PostResult(None, "connect timeout", _ms(started))
    except urllib3.exceptions.ReadTimeoutError:
        return PostResult(None, "timeout waiting for the answer", _ms(started))
    except urllib3.exceptions.SSLError as exc:
        return PostResult(None, f"TLS error: {type(exc.__cause__ or exc).__name__}"[:255], _ms(started))
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return PostResult(None, f"connection failed: {type(reason).__name__}"[:255], _ms(started))
    finally:
        pool.close()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
