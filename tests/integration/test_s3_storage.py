"""S3Storage against a real SigV4-checking S3 server (nanio)."""

# Fixtures are imported by name, so test parameters "redefine" them.
# ruff: noqa: F811
from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import NoReturn
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests
from botocore.exceptions import ClientError

from sfx_backend.storage.base import StorageError
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
