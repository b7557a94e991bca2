"""S3Storage against a real SigV4-checking S3 server (nanio)."""

# Fixtures are imported by name, so test parameters "redefine" them.
# ruff: noqa: F811
from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import NoReturn
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import boto3
import botocore.session
import pytest
import requests
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import ClientError

from sfx_backend.storage import s3 as s3_module
from sfx_backend.storage.base import StorageError
from sfx_backend.storage.local import MAX_TTL_SECONDS, attachment_disposition
from sfx_backend.storage.s3 import S3Storage
from tests.support.nanio_server import NanioServer, free_port, nanio, s3_storage  # noqa: F401

pytestmark = pytest.mark.slow

KEY = "audio/user-1/job-1.mp3"
AUDIO = b"ID3\x03\x00fake-mp3-bytes" * 10


def _presign(storage: S3Storage, key: str = KEY, ttl: int = 60, filename: str = "boom.mp3") -> str:
    return storage.download_url(
        key, filename=filename, content_type="audio/mpeg", ttl_seconds=ttl
    ).url


def test_nanio_rejects_requests_signed_with_a_wrong_secret(nanio: NanioServer) -> None:
    """Guards every other test here: if nanio accepted bad signatures they would prove nothing."""
    good = nanio.storage("sig-check-bucket")
    good.ensure_bucket()
    good.put(KEY, AUDIO, "audio/mpeg")
    forged = nanio.storage("sig-check-bucket", secret_access_key="not-the-secret", max_attempts=1)
    with pytest.raises(StorageError, match="SignatureDoesNotMatch"):
        forged.get(KEY)
    with pytest.raises(StorageError):
        forged.check()
    assert requests.get(_presign(forged), timeout=5).status_code == 403


def test_put_then_get_returns_the_same_bytes(s3_storage: S3Storage) -> None:
    s3_storage.put(KEY, AUDIO, "audio/mpeg")
    assert s3_storage.get(KEY) == AUDIO


def test_overwriting_a_key_keeps_only_the_latest_bytes(s3_storage: S3Storage) -> None:
    s3_storage.put(KEY, b"first attempt", "audio/mpeg")
    s3_storage.put(KEY, AUDIO, "audio/mpeg")
    assert s3_storage.get(KEY) == AUDIO


def test_deleting_a_missing_key_is_fine(s3_storage: S3Storage) -> None:
    s3_storage.delete("audio/nobody/never-written.mp3")


def test_deleted_object_can_no_longer_be_read(s3_storage: S3Storage) -> None:
    s3_storage.put(KEY, AUDIO, "audio/mpeg")
    s3_storage.delete(KEY)
    with pytest.raises(StorageError, match="no object"):
        s3_storage.get(KEY)


def test_presigned_url_downloads_the_bytes_with_the_content_type(s3_storage: S3Storage) -> None:
    s3_storage.put(KEY, AUDIO, "audio/mpeg")
    before = datetime.now(tz=UTC)
    link = s3_storage.download_url(
        KEY, filename="boom.mp3", content_type="audio/mpeg", ttl_seconds=300
    )

    response = requests.get(link.url, timeout=5)

    assert response.status_code == 200
    assert response.content == AUDIO
    assert response.headers["Content-Type"] == "audio/mpeg"
    assert link.expires_at.tzinfo is not None
    assert before + timedelta(seconds=298) <= link.expires_at <= before + timedelta(seconds=300)


def test_presigned_url_carries_a_signed_attachment_disposition(s3_storage: S3Storage) -> None:
    url = _presign(s3_storage, filename="Explosión 01.mp3")

    query = parse_qs(urlsplit(url).query)

    assert query["response-content-type"] == ["audio/mpeg"]
    assert query["response-content-disposition"] == [
        "attachment; filename=\"Explosion 01.mp3\"; filename*=UTF-8''Explosi%C3%B3n%2001.mp3"
    ]
    assert query["X-Amz-Expires"] == ["60"]


def test_presigned_url_with_a_changed_signature_is_refused(s3_storage: S3Storage) -> None:
    s3_storage.put(KEY, AUDIO, "audio/mpeg")
    url = _presign(s3_storage)
    forged = url[:-4] + ("0000" if not url.endswith("0000") else "1111")

    response = requests.get(forged, timeout=5)

    assert response.status_code == 403
    assert b"SignatureDoesNotMatch" in response.content


def test_presigned_url_pointed_at_another_key_is_refused(s3_storage: S3Storage) -> None:
    other = "audio/user-2/job-9.mp3"
    s3_storage.put(KEY, AUDIO, "audio/mpeg")
    s3_storage.put(other, b"someone else's audio", "audio/mpeg")
    url = _presign(s3_storage)
    forged = url.replace(quote(KEY), quote(other), 1)
    assert forged != url

    response = requests.get(forged, timeout=5)

    assert response.status_code == 403
    assert b"someone else" not in response.content


def test_presigned_url_with_a_changed_filename_is_refused(s3_storage: S3Storage) -> None:
    s3_storage.put(KEY, AUDIO, "audio/mpeg")
    url = _presign(s3_storage, filename="boom.mp3")
    assert "boom.mp3" in url

    response = requests.get(url.replace("boom.mp3", "evil.exe"), timeout=5)

    assert response.status_code == 403


def test_expired_presigned_url_is_refused(s3_storage: S3Storage) -> None:
    s3_storage.put(KEY, AUDIO, "audio/mpeg")
    url = _presign(s3_storage, ttl=1)
    signed_at = datetime.strptime(
        parse_qs(urlsplit(url).query)["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"
    ).replace(tzinfo=UTC)
    # The store measures expiry from X-Amz-Date (whole seconds): sleep just past it.
    time.sleep(
        max(0.0, (signed_at + timedelta(seconds=1.3) - datetime.now(tz=UTC)).total_seconds())
    )

    response = requests.get(url, timeout=5)

    assert response.status_code == 403
    assert AUDIO not in response.content


def test_presigned_url_names_the_public_host_and_still_downloads(nanio: NanioServer) -> None:
    public = f"http://localhost:{nanio.port}"
    storage = nanio.storage("public-host-bucket", public_endpoint_url=public)
    storage.ensure_bucket()
    storage.put(KEY, AUDIO, "audio/mpeg")

    url = _presign(storage)

    assert url.startswith(public + "/public-host-bucket/")
    response = requests.get(url, timeout=5)
    assert response.status_code == 200
    assert response.content == AUDIO
    # Signed for the public host: replaying it against the internal host must not verify.
    internal = requests.get(url.replace(public, nanio.endpoint_url), timeout=5)
    assert internal.status_code == 403


# Keys whose quoting differs between careless encoders: space vs "+", UTF-8, S3's own "~" and "/".
ODD_KEYS = [
    "audio/user 1/job 1.mp3",
    "audio/a+b/c+d.mp3",
    "audio/爆発/Explosión ☃.mp3",
    "audio/deep/er/and/deeper/still/job.mp3",
    "audio/~me/it's (1)&=;,$@!*[x].mp3",
]


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _on_server(url: str, nanio: NanioServer) -> str:
    """The same URL (path and query untouched) sent to the nanio server."""
    parts = urlsplit(url)
    return urlunsplit(("http", f"{nanio.host}:{nanio.port}", parts.path, parts.query, ""))


@pytest.mark.parametrize("key", ODD_KEYS)
def test_presigned_url_downloads_odd_keys_and_is_refused_once_tampered(
    s3_storage: S3Storage, key: str
) -> None:
    s3_storage.put(key, b"bytes of " + key.encode(), "audio/mpeg")
    link = s3_storage.download_url(
        key, filename="Explosión 01.mp3", content_type="audio/mpeg", ttl_seconds=60
    )

    response = requests.get(link.url, timeout=5)

    assert response.status_code == 200
    assert response.content == b"bytes of " + key.encode()
    assert response.headers["Content-Type"] == "audio/mpeg"
    # nanio stores but does not apply response-* overrides; they are signed (see the tamper tests).
    query = _query(link.url)
    assert query["response-content-type"] == "audio/mpeg"
    assert query["response-content-disposition"] == attachment_disposition("Explosión 01.mp3")
    signature = query["X-Amz-Signature"]
    tampered = link.url.replace(signature, signature[::-1])
    assert requests.get(tampered, timeout=5).status_code == 403


def test_keys_differing_only_by_plus_or_space_get_their_own_bytes(s3_storage: S3Storage) -> None:
    s3_storage.put("audio/a+b.mp3", b"plus", "audio/mpeg")
    s3_storage.put("audio/a b.mp3", b"space", "audio/mpeg")

    plus = requests.get(_presign(s3_storage, "audio/a+b.mp3"), timeout=5)
    space = requests.get(_presign(s3_storage, "audio/a b.mp3"), timeout=5)

    assert (plus.status_code, plus.content) == (200, b"plus")
    assert (space.status_code, space.content) == (200, b"space")


@pytest.mark.parametrize("ttl", [1, 3600, MAX_TTL_SECONDS])
def test_expires_at_agrees_with_the_signed_expiry(s3_storage: S3Storage, ttl: int) -> None:
    link = s3_storage.download_url(
        KEY, filename="a.mp3", content_type="audio/mpeg", ttl_seconds=ttl
    )

    query = _query(link.url)
    signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert query["X-Amz-Expires"] == str(ttl)
    # Never later than the store's own expiry, and at most the one second a tick can cost.
    server_expiry = signed_at + timedelta(seconds=ttl)
    assert server_expiry - timedelta(seconds=1) <= link.expires_at <= server_expiry


def test_presigned_url_for_an_unreachable_public_host_verifies_under_that_host(
    nanio: NanioServer,
) -> None:
    public = "https://downloads.example.test"
    storage = nanio.storage("unreachable-public-host", public_endpoint_url=public)
    storage.ensure_bucket()
    storage.put(KEY, AUDIO, "audio/mpeg")

    url = _presign(storage)

    assert url.startswith(public + "/unreachable-public-host/" + KEY + "?")
    # What the public host (a proxy in front of the store, say) would forward.
    as_public = requests.get(
        _on_server(url, nanio), headers={"Host": "downloads.example.test"}, timeout=5
    )
    assert (as_public.status_code, as_public.content) == (200, AUDIO)
    assert requests.get(_on_server(url, nanio), timeout=5).status_code == 403


def test_session_token_is_signed_into_the_url(nanio: NanioServer) -> None:
    token = "session/token+with=odd chars"
    storage = nanio.storage("session-token-bucket", session_token=token)
    storage.ensure_bucket()  # nanio ignores the token's value but it is part of the signature
    storage.put(KEY, AUDIO, "audio/mpeg")

    url = _presign(storage)

    assert _query(url)["X-Amz-Security-Token"] == token
    assert requests.get(url, timeout=5).status_code == 200
    forged = url.replace(quote(token, safe=""), quote("another-token", safe=""))
    assert forged != url
    assert requests.get(forged, timeout=5).status_code == 403


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"session_token": "tok/en+="},
        {"public_endpoint_url": "https://cdn.example.test:8443"},
        {"endpoint_url": "http://127.0.0.1:1/some/prefix", "region": "eu-west-3"},
        {"endpoint_url": None, "region": "eu-west-3"},  # AWS itself, as botocore resolves it
    ],
    ids=["plain", "session-token", "public-host", "path-prefix", "aws"],
)
def test_presigned_url_is_the_one_boto3_would_sign(nanio: NanioServer, options: dict) -> None:
    storage = nanio.storage("same-as-boto3", **options)
    for key in [KEY, *ODD_KEYS]:
        # Both sign with the current second: retry the rare pair that straddles a tick.
        for _ in range(5):
            ours = _presign(storage, key, ttl=123, filename="Explosión 01.mp3")
            theirs = storage._presigner.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": "same-as-boto3",
                    "Key": key,
                    "ResponseContentType": "audio/mpeg",
                    "ResponseContentDisposition": attachment_disposition("Explosión 01.mp3"),
                },
                ExpiresIn=123,
            )
            if _query(ours)["X-Amz-Date"] == _query(theirs)["X-Amz-Date"]:
                break
        assert ours == theirs


def _use_default_chain(monkeypatch: pytest.MonkeyPatch, chain: object) -> None:
    """Make S3Storage's process-wide session find its default credentials with `chain` only."""
    session = botocore.session.get_session()
    session.register_component("credential_provider", chain)
    monkeypatch.setattr(s3_module, "_session", boto3.session.Session(botocore_session=session))


class _NoCredentials:
    """A default chain that finds nothing (no env, files, instance role...)."""

    def load_credentials(self) -> None:
        return None


class _RotatingCredentials:
    """A default chain whose credentials refresh on every use (as if always near expiry)."""

    def __init__(self, access_key: str, secret_key: str) -> None:
        self.current = (access_key, secret_key, "token-1")

    def _metadata(self) -> dict[str, str]:
        access_key, secret_key, token = self.current
        # Inside botocore's 15-minute advisory window, outside the 10-minute mandatory one.
        expiry = datetime.now(tz=UTC) + timedelta(minutes=12)
        return {
            "access_key": access_key,
            "secret_key": secret_key,
            "token": token,
            "expiry_time": expiry.isoformat(),
        }

    def load_credentials(self) -> RefreshableCredentials:
        return RefreshableCredentials.create_from_metadata(
            self._metadata(), refresh_using=self._metadata, method="test-rotating"
        )


def test_default_chain_credentials_are_taken_fresh_for_every_url(
    nanio: NanioServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = _RotatingCredentials(nanio.access_key, nanio.secret_key)
    _use_default_chain(monkeypatch, provider)
    storage = nanio.storage("default-chain-bucket", access_key_id=None, secret_access_key=None)
    storage.ensure_bucket()
    storage.put(KEY, AUDIO, "audio/mpeg")

    first = _presign(storage)
    provider.current = (nanio.access_key, nanio.secret_key, "token-2")
    second = _presign(storage)
    provider.current = (nanio.access_key, "a-secret-the-store-does-not-know", "token-3")
    third = _presign(storage)

    assert _query(first)["X-Amz-Security-Token"] == "token-1"
    assert requests.get(first, timeout=5).status_code == 200
    assert _query(second)["X-Amz-Security-Token"] == "token-2"
    assert requests.get(second, timeout=5).status_code == 200
    assert _query(third)["X-Amz-Security-Token"] == "token-3"
    assert requests.get(third, timeout=5).status_code == 403


def test_presigning_without_any_credentials_is_a_storage_error(
    nanio: NanioServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_default_chain(monkeypatch, _NoCredentials())
    storage = nanio.storage("no-creds-bucket", access_key_id=None, secret_access_key=None)

    with pytest.raises(StorageError, match="presign.*NoCredentialsError"):
        _presign(storage)


def test_presigning_an_empty_key_is_a_storage_error(s3_storage: S3Storage) -> None:
    # Signed as is, it would be a URL listing the whole bucket.
    with pytest.raises(StorageError, match="presign"):
        _presign(s3_storage, key="")


def test_check_passes_for_an_existing_bucket(s3_storage: S3Storage) -> None:
    s3_storage.check()


def test_check_fails_for_a_missing_bucket(nanio: NanioServer) -> None:
    with pytest.raises(StorageError, match="404"):
        nanio.storage("bucket-that-was-never-made", max_attempts=1).check()


def test_check_fails_while_the_store_is_down_and_recovers_after_restart(
    nanio: NanioServer, s3_storage: S3Storage
) -> None:
    fast = nanio.storage(s3_storage.bucket, max_attempts=1, connect_timeout=1, read_timeout=2)
    fast.put(KEY, AUDIO, "audio/mpeg")
    nanio.stop()
    try:
        with pytest.raises(StorageError) as excinfo:
            fast.check()
        assert "EndpointConnectionError" in str(excinfo.value)
        assert nanio.secret_key not in str(excinfo.value)
        with pytest.raises(StorageError):
            fast.put("audio/user-1/while-down.mp3", AUDIO, "audio/mpeg")
    finally:
        nanio.start()

    fast.check()
    assert fast.get(KEY) == AUDIO


def test_ensure_bucket_is_idempotent_and_keeps_existing_objects(nanio: NanioServer) -> None:
    storage = nanio.storage("ensure-bucket-twice")
    storage.ensure_bucket()
    storage.put(KEY, AUDIO, "audio/mpeg")

    storage.ensure_bucket()

    storage.check()
    assert storage.get(KEY) == AUDIO


def test_ensure_bucket_tolerates_losing_the_creation_race(
    s3_storage: S3Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process creates the bucket between our HeadBucket and CreateBucket.
    def bucket_looks_missing(**kwargs: object) -> NoReturn:
        raise ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadBucket")

    monkeypatch.setattr(s3_storage._client, "head_bucket", bucket_looks_missing)

    s3_storage.ensure_bucket()

    s3_storage.put(KEY, AUDIO, "audio/mpeg")
    assert s3_storage.get(KEY) == AUDIO


def test_storage_errors_never_reveal_credentials(nanio: NanioServer) -> None:
    wrong_secret = "wrong-secret-" + nanio.secret_key[::-1]
    storages = [
        nanio.storage("creds-bucket", secret_access_key=wrong_secret, max_attempts=1),
        nanio.storage("creds-bucket", max_attempts=1),  # right creds, missing bucket
        nanio.storage(
            "creds-bucket", endpoint_url=f"http://127.0.0.1:{_closed_port()}", max_attempts=1
        ),
    ]
    messages: list[str] = []
    for storage in storages:
        calls = (storage.check, partial(storage.get, KEY), partial(storage.put, KEY, b"x", "a/b"))
        for call in calls:
            with pytest.raises(StorageError) as excinfo:
                call()
            messages.append(f"{excinfo.value} {excinfo.value!r}")

    assert len(messages) == 9
    for message in messages:
        for secret in (nanio.secret_key, wrong_secret, nanio.access_key):
            assert secret not in message


def _closed_port() -> int:
    return free_port()
