"""S3-compatible object store (AWS S3, MinIO, nanio, ...) over boto3, with presigned downloads."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from sfx_backend.storage.base import DownloadURL, StorageError
from sfx_backend.storage.local import MAX_TTL_SECONDS, attachment_disposition

# Error codes meaning "there is no such thing", as opposed to "the store is unhappy".
_MISSING_BUCKET_CODES = {"404", "NoSuchBucket", "NotFound"}
_MISSING_KEY_CODES = {"404", "NoSuchKey", "NotFound"}

# One session for the process: it caches the parsed service model, so clients after the first
# cost ~10 ms instead of ~200 ms. Sessions are not thread-safe, hence the lock around creation
# (the clients themselves are). Credentials are passed per client, never taken from the session.
_session: boto3.session.Session | None = None
_session_lock = threading.Lock()


def _make_client(**kwargs: Any) -> Any:
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client("s3", **kwargs)


class S3Storage:
    """Objects in one bucket of an S3-compatible store; downloads are SigV4 presigned GETs."""

    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        public_endpoint_url: str | None = None,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        max_attempts: int = 3,
    ) -> None:
        if not bucket:
            raise ValueError("S3Storage needs a bucket name")
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url
        self.public_endpoint_url = public_endpoint_url
        # Remembered only so error messages can be scrubbed of them.
        self._secrets = [s for s in (secret_access_key, access_key_id) if s]

        config = Config(
            signature_version="s3v4",
            # Path style works everywhere (MinIO, nanio, IP endpoints); virtual-host needs DNS.
            s3={"addressing_style": "path"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": max(1, max_attempts), "mode": "standard"},
        )
        client_kwargs: dict[str, Any] = {
            "region_name": region,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "config": config,
        }
        self._client = _make_client(endpoint_url=endpoint_url, **client_kwargs)
        # The host is part of the SigV4 signature, so URLs for the plugin must be signed for the
        # public host even though the worker talks to an internal one. Presigning is offline.
        if public_endpoint_url:
            self._presigner = _make_client(endpoint_url=public_endpoint_url, **client_kwargs)
        else:
            self._presigner = self._client

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Upload `data` under `key` with its Content-Type (overwrites, so retries are harmless)."""
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type
            )
        except (ClientError, BotoCoreError) as exc:
            self._raise("put", exc, key)

    def get(self, key: str) -> bytes:
        """Download the object's bytes; StorageError if it is missing or the store fails."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            # Reading is inside the try: a dropped stream raises a BotoCoreError here, not above.
            return response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            if _error_code(exc) in _MISSING_KEY_CODES:
                raise StorageError(
                    f"S3 get failed: no object {key!r} in bucket {self.bucket!r}"
                ) from exc
            self._raise("get", exc, key)

    def delete(self, key: str) -> None:
        """Delete the object; S3 already treats a missing key as success."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            if _error_code(exc) in _MISSING_KEY_CODES:
                return
            self._raise("delete", exc, key)

    def download_url(
        self, key: str, *, filename: str, content_type: str, ttl_seconds: int
    ) -> DownloadURL:
        """A presigned GET asking the store to serve the object as attachment `filename`."""
        if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
            raise ValueError(f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS}")
        # SigV4 dates have second precision; truncating first keeps expires_at conservative.
        signed_at = datetime.now(tz=UTC).replace(microsecond=0)
        try:
            url = self._presigner.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": key,
                    "ResponseContentType": content_type,
                    "ResponseContentDisposition": attachment_disposition(filename),
                },
                ExpiresIn=ttl_seconds,
                HttpMethod="GET",
            )
        except (ClientError, BotoCoreError) as exc:
            self._raise("presign", exc, key)
        return DownloadURL(url=url, expires_at=signed_at + timedelta(seconds=ttl_seconds))

    def check(self) -> None:
        """Raise StorageError unless the bucket is reachable with our credentials (HeadBucket)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            self._raise("check", exc)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet; safe to call repeatedly and concurrently."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in _MISSING_BUCKET_CODES:
                self._raise("ensure_bucket", exc)
        except BotoCoreError as exc:
            self._raise("ensure_bucket", exc)

        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        # us-east-1 is the one region that rejects an explicit LocationConstraint.
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as exc:
            # Another process won the race; the bucket is ours either way.
            if _error_code(exc) == "BucketAlreadyOwnedByYou":
                return
            self._raise("ensure_bucket", exc)
        except BotoCoreError as exc:
            self._raise("ensure_bucket", exc)

    def _raise(self, operation: str, exc: Exception, key: str | None = None) -> NoReturn:
        target = f"{self.bucket}/{key}" if key is not None else self.bucket
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            detail = f"{error.get('Code', 'unknown')} (HTTP {status}): {error.get('Message', '')}"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        message = f"S3 {operation} of {target} failed: {detail}".rstrip(": ")
        raise StorageError(self._scrub(message)) from exc

    def _scrub(self, text: str) -> str:
        # botocore does not put credentials in messages today; this keeps it that way for us.
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _error_code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


__all__ = ["S3Storage"]
