"""S3-compatible object store (AWS S3, MinIO, nanio, ...) over boto3, with presigned downloads."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import parse_qs

import boto3
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
from botocore.utils import percent_encode

from sfx_backend.storage.base import DownloadURL, StorageError
from sfx_backend.storage.local import MAX_TTL_SECONDS, attachment_disposition

# Error codes meaning "there is no such thing", as opposed to "the store is unhappy".
_MISSING_BUCKET_CODES = {"404", "NoSuchBucket", "NotFound"}
_MISSING_KEY_CODES = {"404", "NoSuchKey", "NotFound"}
# Presigned once to learn how the presigning client addresses (and signs for) an object.
_PROBE_KEY = "probe"

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


def _session_credentials() -> Any:
    # The session caches what the default chain found (possibly refreshing credentials, e.g. an
    # instance role): the very object its clients were given and sign with.
    with _session_lock:
        assert _session is not None  # a client was made first
        return _session.get_credentials()


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
        session_token: str | None = None,
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
        self._secrets = [s for s in (secret_access_key, session_token, access_key_id) if s]

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
            "aws_session_token": session_token,
            "config": config,
        }
        self._client = _make_client(endpoint_url=endpoint_url, **client_kwargs)
        # The host is part of the SigV4 signature, so URLs for the plugin must be signed for the
        # public host even though the worker talks to an internal one. Presigning is offline.
        if public_endpoint_url:
            self._presigner = _make_client(endpoint_url=public_endpoint_url, **client_kwargs)
        else:
            self._presigner = self._client
        # Explicit keys are used as given (like botocore does); otherwise the default chain's
        # credentials are looked up with the presign target, see _presign_target().
        self._credentials: Any = None
        if access_key_id is not None and secret_access_key is not None:
            self._credentials = Credentials(access_key_id, secret_access_key, session_token)
        self._target: tuple[str, str, str] | None = None

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
        # Signed here rather than with generate_presigned_url: profiled on GET /jobs/<id>, that
        # cost ~0.6 ms a call, half of it the client re-resolving the endpoint, validating and
        # serialising the same request every time. Same signer, URL and query as botocore's.
        try:
            if not isinstance(key, str) or not key:
                # botocore's check; an empty key would presign a listing of the bucket.
                raise ParamValidationError(report="Key must be a non-empty string")
            base, region, signing_name = self._target or self._presign_target()
            request = AWSRequest(
                method="GET",
                # How botocore's serializer quotes the greedy {Key+} label of an S3 path.
                url=base + percent_encode(key, safe="/~"),
                params={
                    "response-content-type": content_type,
                    "response-content-disposition": attachment_disposition(filename),
                },
            )
            # Frozen per call, so refreshed (e.g. instance-role) credentials are picked up.
            credentials = self._credentials.get_frozen_credentials()
            S3SigV4QueryAuth(credentials, signing_name, region, expires=ttl_seconds).add_auth(
                request
            )
        except (ClientError, BotoCoreError) as exc:
            self._raise("presign", exc, key)
        return DownloadURL(url=request.url, expires_at=signed_at + timedelta(seconds=ttl_seconds))

    def _presign_target(self) -> tuple[str, str, str]:
        """(URL base that the quoted key is appended to, signing region, signing name).

        Taken from one offline presign by the presigning client itself, so the endpoint is what
        botocore resolves (AWS regions, MinIO, custom hosts and path prefixes). Done on first use
        rather than in __init__ so that, as before, missing credentials fail the presign and not
        the constructor. Concurrent first calls just probe twice and store the same answer.
        """
        probe = self._presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": _PROBE_KEY}, ExpiresIn=1
        )
        url, _, query = probe.partition("?")
        if not url.endswith("/" + _PROBE_KEY):
            raise RuntimeError(f"unexpected presigned URL layout: {url!r}")
        # X-Amz-Credential is <access key>/<date>/<region>/<service>/aws4_request.
        _, _, region, signing_name, _ = parse_qs(query)["X-Amz-Credential"][0].rsplit("/", 4)
        if self._credentials is None:
            self._credentials = _session_credentials()
        self._target = (url[: -len(_PROBE_KEY)], region, signing_name)
        return self._target

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
