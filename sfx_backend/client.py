"""A small reference client for the sfx-backend HTTP API (needs only `requests`).

It is meant to be read by plugin developers as much as used: every rule below is something a
plugin has to get right, and the code shows one way to do it.

How a plugin should behave
--------------------------
* **Log in once, refresh transparently.** `POST /auth/login` (or `/auth/register`) returns an access
  token (short-lived, 15 min by default) and a refresh token (30 days). Send the access token as
  `Authorization: Bearer ...`. When a call answers `401` with `code: "unauthorized"`, call
  `POST /auth/refresh` with the *refresh* token as the bearer, store BOTH new tokens (the refresh
  token rotates: reusing an old one ends the session) and repeat the call once. If the refresh
  fails too, ask the user to log in again.
* **Or sign in with a device code** (RFC 8628), so the plugin never asks for a password:
  `POST /auth/device/code`, show `user_code` and `verification_uri` (a browser page where the
  person signs in and approves), then poll `POST /auth/device/token` every `interval` seconds. A 400
  `authorization_pending` means keep polling; `slow_down` means add 5 s to the interval; `access_denied`
  or `expired_token` ends the attempt. See `device_login()`.
* **Always send an Idempotency-Key when generating.** Generate one random key (uuid4) per user
  action, *before* the first attempt, and reuse that same key for every retry of that action.
  A generation reserves one unit of the user's quota; if the network drops after the server took
  the request, the retried POST with the same key returns the original job and charges nothing.
  A new key means a new (charged) job.
* **Retry politely.** Retry connection errors, timeouts, `5xx` and `429` with exponential backoff.
  A `429` (`rate_limited` or `too_many_jobs`) carries `Retry-After` (seconds): wait at least that
  long. Do not retry other `4xx`; they will not change by themselves.
* **`402 quota_exceeded`** means the user has no generations left this period: show an upgrade
  message (see `GET /usage/current` and `/subscription/plans`), do not retry.
* **Wait without polling.** `POST /usage/generate` answers `202` with a job (`status: queued`).
  Follow it with `GET /jobs/<id>/events` (server-sent events: an `event: job` with the job object at
  once and on every change, the stream ends after `succeeded`, `failed` or `canceled`; on a dropped
  connection reconnect with `Last-Event-ID`). Where a stream cannot get through (a proxy that buffers
  it), ask `GET /jobs/<id>` with `Prefer: wait=60`: the answer comes when the job ends, or after 60 s
  with `Preference-Applied: wait=60`; ask again at once. Only a server that answers without
  `Preference-Applied` needs polling with backoff (~0.25 s doubling to ~5 s). A failed job carries
  `error: {code, message}` and its quota unit is given back automatically.
* **Download URLs expire.** `audio.url` is a presigned URL (S3, or the API's own signed `/files/`
  URL in embedded mode). Fetch it with a plain GET and NO Authorization header. It expires at
  `audio.expires_at` (15 min by default); if it has expired or answers `403`, re-read the job (or
  call `GET /jobs/<id>/audio`, which redirects to a fresh URL) and try again. Never store the URL;
  store the job id.
* **Errors are problem+json.** Every error body is `application/problem+json` with a stable
  machine-readable `code` (switch on it, not on the human `detail`); validation errors add
  `errors: {field: [messages]}`. `ApiError` below carries all of it.

Library use::

    from sfx_backend.client import SfxClient, ApiError
    client = SfxClient("http://localhost:3000")
    client.login("me@example.com", "my long password")
    job = client.generate("heavy wooden door slam, reverb tail", duration_seconds=3)
    job = client.wait(job["id"], timeout=300)
    path = client.download(job, "./out")

Command line::

    python -m sfx_backend.client --base-url http://localhost:3000 --email E --password P \\
        generate "glass shattering on concrete" --duration 2 --format wav --out ./out
    python -m sfx_backend.client --base-url http://localhost:3000 --email E --password P login
    python -m sfx_backend.client --base-url http://localhost:3000 --device login   # no password here
"""
from __future__ import annotations

import argparse
import email.utils
import json as jsonlib
import os
import platform
import queue
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

__all__ = ["TERMINAL_STATUSES", "ApiError", "DeviceLoginFailed", "JobTimeout", "SfxClient", "SfxError", "main"]

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})
# Statuses worth retrying: the server (or something in front of it) may answer differently soon.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
DEFAULT_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds per HTTP request
MAX_PREFER_WAIT = 60  # the server holds a `Prefer: wait` answer at most this long
# The server sends a keep-alive comment at least every 15 s: a stream quiet for longer is dead.
STREAM_READ_TIMEOUT = 45.0
USER_AGENT = "sfx-backend-client/0.1 (+python-requests)"


class SfxError(Exception):
    """Base class for everything this client raises on purpose."""


class ApiError(SfxError):
    """An error answer from the API, built from its problem+json body.

    `status` is the HTTP status, `code` the contract's machine-readable code (e.g. `quota_exceeded`),
    `detail` a human sentence. `errors` holds per-field validation messages, `retry_after` the
    seconds from a Retry-After header, if any.
    """

    def __init__(self, status: int, code: str, detail: str, *, title: str | None = None,
                 errors: Mapping[str, list[str]] | None = None, retry_after: float | None = None,
                 request_id: str | None = None, body: Any = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title
        self.errors = dict(errors or {})
        self.retry_after = retry_after
        self.request_id = request_id
        self.body = body

    @classmethod
    def from_response(cls, response: requests.Response) -> ApiError:
        """Parse a problem+json (or any JSON, or a non-JSON proxy page) error response."""
        body: Any = None
        try:
            body = response.json()
        except ValueError:
            body = None
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if isinstance(body, dict) and ("code" in body or "detail" in body or "title" in body):
            return cls(response.status_code, str(body.get("code") or f"http_{response.status_code}"),
                       str(body.get("detail") or body.get("title") or response.reason or ""),
                       title=body.get("title"), errors=body.get("errors"), retry_after=retry_after,
                       request_id=body.get("request_id") or response.headers.get("X-Request-ID"),
                       body=body)
        text = (response.text or "").strip().replace("\n", " ")
        return cls(response.status_code, f"http_{response.status_code}",
                   text[:200] or response.reason or "HTTP error", retry_after=retry_after,
                   request_id=response.headers.get("X-Request-ID"), body=body)


class DeviceLoginFailed(SfxError):
    """Device sign-in ended without tokens: `code` is `access_denied` or `expired_token`."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"device sign-in failed: {code}: {detail}")
        self.code = code
        self.detail = detail


class JobTimeout(SfxError, TimeoutError):
    """`wait()` gave up before the job finished; `job` is the last state seen."""

    def __init__(self, job: Mapping[str, Any], timeout: float) -> None:
        super().__init__(f"job {job.get('id')} still {job.get('status')} after {timeout:g} s")
        self.job = dict(job)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)  # 3.11+ reads a "Z" suffix
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class SfxClient:
    """A thin, retrying client for the sfx-backend API.

    `on_tokens(access_token, refresh_token)` is called whenever the tokens change (login, register,
    refresh) so an application can persist them. `max_retries` bounds the retries of one call;
    a Retry-After longer than `max_retry_after` seconds is not waited for (the ApiError is raised
    with `retry_after` set, so the caller can schedule a later attempt).
    """

    def __init__(self, base_url: str, access_token: str | None = None, refresh_token: str | None = None,
                 timeout: float | tuple[float, float] = DEFAULT_TIMEOUT, *, max_retries: int = 4,
                 backoff_base: float = 0.5, backoff_max: float = 8.0, max_retry_after: float = 60.0,
                 session: requests.Session | None = None,
                 on_tokens: Callable[[str, str | None], None] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.access_token = access_token
        self.refresh_token = refresh_token
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
        self.session = session
        self.on_tokens = on_tokens
        # Swappable for tests (and for hosts with their own event loop / clock).
        self.sleep: Callable[[float], None] = time.sleep
        self.clock: Callable[[], float] = time.monotonic

    # ------------------------------------------------------------------ plumbing
    def _url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with a little jitter: ~0.5, 1, 2, 4, 8 s."""
        delay = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        return delay * random.uniform(0.8, 1.0)

    def _set_tokens(self, access: str | None, refresh: str | None) -> None:
        if access:
            self.access_token = access
        if refresh:
            self.refresh_token = refresh
        if self.on_tokens and access:
            self.on_tokens(self.access_token, self.refresh_token)

    def request(self, method: str, path: str, *, json: Any = None, headers: Mapping[str, str] | None = None,
                auth: bool = True, retry: bool = True, bearer: str | None = None,
                expected: Iterable[int] = (), stream: bool = False,
                timeout: float | tuple[float, float] | None = None) -> requests.Response:
        """Send one API call; raise ApiError for any status >= 400 not in `expected`.

        `retry`: retry connection errors, timeouts, 5xx and 429 (only pass True for calls that are
        safe to repeat: GETs, and POSTs made idempotent by an Idempotency-Key). A 401 `unauthorized`
        triggers one token refresh and one repeat, whatever `retry` says.
        """
        expected = set(expected)
        attempt = 0
        refreshed = False
        while True:
            send_headers = dict(headers or {})
            token = bearer or (self.access_token if auth else None)
            if token:
                send_headers["Authorization"] = f"Bearer {token}"
            try:
                response = self.session.request(method, self._url(path), json=json, headers=send_headers,
                                                timeout=timeout or self.timeout, allow_redirects=False,
                                                stream=stream)
            except (requests.ConnectionError, requests.Timeout):
                if not retry or attempt >= self.max_retries:
                    raise
                self.sleep(self._backoff(attempt))
                attempt += 1
                continue

            status = response.status_code
            if status < 400 or status in expected:
                return response
            error = ApiError.from_response(response)
            if (status == 401 and error.code == "unauthorized" and auth and bearer is None
                    and not refreshed and self.refresh_token):
                refreshed = True
                self.refresh()  # raises ApiError if the refresh token is no good either
                continue
            if retry and status in RETRYABLE_STATUSES and attempt < self.max_retries:
                delay = error.retry_after if error.retry_after is not None else self._backoff(attempt)
                if delay <= self.max_retry_after:
                    self.sleep(delay)
                    attempt += 1
                    continue
            raise error

    # ------------------------------------------------------------------ auth
    def register(self, email: str, password: str, first_name: str | None = None,
                 last_name: str | None = None) -> dict:
        """Create an account and keep its tokens. 409 `email_taken` if it exists: call login()."""
        body = {"email": email, "password": password}
        if first_name:
            body["first_name"] = first_name
        if last_name:
            body["last_name"] = last_name
        # Not retried: a repeat after a lost answer would look like email_taken.
        data = self.request("POST", "/auth/register", json=body, auth=False, retry=False).json()
        self._set_tokens(data["access_token"], data["refresh_token"])
        return data

    def login(self, email: str, password: str) -> dict:
        """Exchange email and password for a token pair (kept on the client); returns the body."""
        data = self.request("POST", "/auth/login", json={"email": email, "password": password},
                            auth=False).json()
        self._set_tokens(data["access_token"], data["refresh_token"])
        return data

    def device_login(self, client_name: str | None = None,
                     on_code: Callable[[dict], None] | None = None) -> dict:
        """Sign in without a password (RFC 8628): get a code, hand it to `on_code` (show the person
        `user_code` and `verification_uri`), then poll every `interval` seconds until they approve.

        `slow_down` adds 5 s to the interval for the rest of the sign-in, as RFC 8628 section 3.5 asks;
        `access_denied` and `expired_token` (also past `expires_in`) raise DeviceLoginFailed. Keeps the
        tokens and returns the body ({user, access_token, refresh_token}).
        """
        body = {"client_name": client_name} if client_name else {}
        code = self.request("POST", "/auth/device/code", json=body, auth=False).json()
        if on_code is not None:
            on_code(code)
        interval = float(code["interval"])
        deadline = self.clock() + float(code["expires_in"])
        while True:
            self.sleep(interval)
            if self.clock() >= deadline:
                raise DeviceLoginFailed("expired_token", "The code expired before it was approved.")
            # Retried like any call (a 429 waits its Retry-After); 400s are the flow's states.
            response = self.request("POST", "/auth/device/token", json={"device_code": code["device_code"]},
                                    auth=False, expected={400})
            if response.status_code < 400:
                data = response.json()
                self._set_tokens(data["access_token"], data["refresh_token"])
                return data
            error = ApiError.from_response(response)
            if error.code == "slow_down":
                interval += 5
            elif error.code != "authorization_pending":
                raise DeviceLoginFailed(error.code, error.detail)

    def refresh(self) -> dict:
        """Rotate the token pair with the refresh token. Not retried: the old refresh token dies."""
        if not self.refresh_token:
            raise ApiError(401, "unauthorized", "No refresh token; log in again.")
        data = self.request("POST", "/auth/refresh", bearer=self.refresh_token, retry=False).json()
        self._set_tokens(data["access_token"], data.get("refresh_token"))
        return data

    def verify(self) -> dict:
        return self.request("GET", "/auth/verify").json()

    # ------------------------------------------------------------------ jobs
    def generate(self, prompt: str, duration_seconds: float | None = None, prompt_influence: float | None = None,
                 loop: bool = False, output_format: str = "mp3", idempotency_key: str | None = None,
                 **audio_options: Any) -> dict:
        """Submit a generation and return the job (status `queued` on a fresh submit).

        Always sends an Idempotency-Key (a new uuid4 unless given) and retries connection errors,
        5xx and 429 with that same key, so one call never charges more than one generation.
        The key used is in the returned dict's `idempotency_key`. `audio_options`: the generate body's
        audio options (`sample_rate`, `bit_depth`, `loudness_lufs`, `trim_silence`).
        """
        key = idempotency_key or str(uuid.uuid4())
        body: dict[str, Any] = {"prompt": prompt, "loop": bool(loop), "output_format": output_format}
        if duration_seconds is not None:
            body["duration_seconds"] = duration_seconds
        if prompt_influence is not None:
            body["prompt_influence"] = prompt_influence
        # sample_rate, bit_depth, loudness_lufs, trim_silence (see docs/api.md); unset ones are not sent.
        body.update({k: v for k, v in audio_options.items() if v is not None})
        job = self.request("POST", "/usage/generate", json=body, headers={"Idempotency-Key": key}).json()
        job["idempotency_key"] = key
        return job

    def get_job(self, job_id: str) -> dict:
        return self.request("GET", f"/jobs/{job_id}").json()

    def list_jobs(self, page: int = 1, per_page: int = 20) -> dict:
        return self.request("GET", f"/jobs?page={page}&per_page={per_page}").json()

    def cancel(self, job_id: str) -> dict:
        return self.request("POST", f"/jobs/{job_id}/cancel", retry=False).json()

    def usage(self) -> dict:
        """GET /usage/current: plan, monthly_limit, used, reserved, remaining, ..."""
        return self.request("GET", "/usage/current").json()

    def wait(self, job_id: str, timeout: float = 300.0, *, initial_delay: float = 0.25, max_delay: float = 5.0,
             on_update: Callable[[dict], None] | None = None,
             on_progress: Callable[[dict, float], None] | None = None, progress_interval: float = 1.0,
             stream: bool = True) -> dict:
        """Follow the job until it is succeeded/failed/canceled and return it.

        With `stream`, it follows GET /jobs/<id>/events (reconnecting with Last-Event-ID when the stream
        drops); when no stream gets through it asks `GET /jobs/<id>` with `Prefer: wait`, which the
        server holds until the job ends; a server that does not hold it (no Preference-Applied) is
        polled after `initial_delay`, doubling up to `max_delay`. 429s are waited out per Retry-After.
        `on_update(job)` is called on every status change; `on_progress(job, elapsed_seconds)` on every
        state received and at least every `progress_interval` seconds while nothing changes (the
        waiting runs in a thread of its own meanwhile). Raises JobTimeout after `timeout` seconds.
        """
        deadline = self.clock() + timeout
        started = time.monotonic()
        updates: queue.Queue = queue.Queue()
        stop = threading.Event()
        open_stream: dict[str, requests.Response] = {}
        follower = threading.Thread(target=self._follow, daemon=True, name=f"wait-{job_id}",
                                    args=(job_id, timeout, deadline, initial_delay, max_delay, stream, updates, stop,
                                          open_stream))
        follower.start()
        last_status, last_job = None, None
        try:
            while True:
                try:
                    kind, value = updates.get(timeout=progress_interval)
                except queue.Empty:
                    if on_progress and last_job is not None:
                        on_progress(last_job, time.monotonic() - started)
                    continue
                if kind == "error":
                    raise value
                last_job = value
                if value.get("status") != last_status:
                    last_status = value.get("status")
                    if on_update:
                        on_update(value)
                if on_progress:
                    on_progress(value, time.monotonic() - started)
                if kind == "done":
                    return value
        finally:
            stop.set()
            response = open_stream.get("response")
            if response is not None:
                response.close()  # ends a stream the follower may still be reading

    def _follow(self, job_id: str, timeout: float, deadline: float, initial_delay: float, max_delay: float,
                stream: bool, updates: queue.Queue, stop: threading.Event, open_stream: dict) -> None:
        """The waiting itself (in `wait`'s thread): every state seen goes to `updates`, then done or error."""
        try:
            job = self._follow_stream(job_id, deadline, updates, stop, open_stream) if stream else None
            if job is None and not stop.is_set():
                job = self._long_poll(job_id, timeout, deadline, initial_delay, max_delay, updates, stop)
            if job is not None:
                updates.put(("done", job))
        except BaseException as error:  # noqa: BLE001 - handed to the waiting caller
            updates.put(("error", error))

    def _follow_stream(self, job_id: str, deadline: float, updates: queue.Queue, stop: threading.Event,
                       open_stream: dict) -> dict | None:
        """The terminal job from the event stream, or None when no stream gets through (fall back)."""
        last_id, drops = None, 0
        connect = self.timeout[0] if isinstance(self.timeout, tuple) else self.timeout
        while not stop.is_set() and self.clock() < deadline:
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                response = self.request("GET", f"/jobs/{job_id}/events", headers=headers, retry=False,
                                        stream=True, timeout=(connect, STREAM_READ_TIMEOUT))
            except (ApiError, requests.RequestException):
                return None  # no such route (an older server), a proxy in the way...: Prefer: wait decides
            open_stream["response"] = response
            try:
                if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
                    return None
                for event_id, data in _server_sent_events(response):
                    last_id = event_id or last_id
                    job = jsonlib.loads(data)
                    if job.get("status") in TERMINAL_STATUSES:
                        return job
                    updates.put(("update", job))
            except (requests.RequestException, ValueError, AttributeError):
                pass  # dropped (or closed by `wait`): reconnect below, with Last-Event-ID
            finally:
                open_stream.pop("response", None)
                response.close()
            drops += 1
            if drops > 3 or stop.is_set():
                return None
            self.sleep(self._backoff(drops - 1))
        return None

    def _long_poll(self, job_id: str, timeout: float, deadline: float, initial_delay: float, max_delay: float,
                   updates: queue.Queue, stop: threading.Event) -> dict | None:
        """`GET /jobs/<id>` with `Prefer: wait`, again at once whenever the server held the answer."""
        delay = initial_delay
        connect = self.timeout[0] if isinstance(self.timeout, tuple) else self.timeout
        read = self.timeout[1] if isinstance(self.timeout, tuple) else self.timeout
        while not stop.is_set():
            seconds = int(min(MAX_PREFER_WAIT, max(deadline - self.clock(), 0)))
            headers = {"Prefer": f"wait={seconds}"} if seconds >= 1 else {}
            response = self.request("GET", f"/jobs/{job_id}", headers=headers, timeout=(connect, read + seconds))
            job = response.json()
            if job.get("status") in TERMINAL_STATUSES:
                return job
            updates.put(("update", job))
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise JobTimeout(job, timeout)
            if "Preference-Applied" in response.headers:
                delay = initial_delay  # it was held: ask again at once
                continue
            self.sleep(min(delay, remaining))
            delay = min(max_delay, delay * 2)
        return None

    def download(self, job: Mapping[str, Any] | str, dest_dir: str | os.PathLike = ".",
                 filename: str | None = None) -> Path:
        """Save a succeeded job's audio into `dest_dir` and return the file's path.

        Uses `audio.url` (plain GET, no Authorization header: the URL carries its own signature).
        If the URL has expired (by `expires_at`, or the store answers 403), the job is re-read
        for a fresh URL, once. The file is written under a temporary name and renamed when complete.
        """
        if isinstance(job, str):
            job = self.get_job(job)
        job = dict(job)
        if job.get("status") != "succeeded" or not job.get("audio"):
            raise SfxError(f"job {job.get('id')} is {job.get('status')}; it has no audio to download")
        expires = _parse_time(job["audio"].get("expires_at"))
        if expires is not None and expires <= datetime.now(UTC):
            job = self.get_job(job["id"])
        ext = job.get("output_format") or "mp3"
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / (filename or f"sfx-{job['id']}.{ext}")
        tmp = path.with_name(f".{path.name}.part")

        refreshed = False
        attempt = 0
        while True:
            url = job["audio"]["url"]
            try:
                # A fresh requests call (not self.session) so no Authorization or cookie is ever sent.
                with requests.get(url, stream=True, timeout=self.timeout,
                                  headers={"User-Agent": USER_AGENT}) as response:
                    if response.status_code in (401, 403) and not refreshed:
                        refreshed = True
                        job = self.get_job(job["id"])
                        if not job.get("audio"):
                            raise SfxError(f"job {job['id']} has no audio any more")
                        continue
                    if response.status_code in RETRYABLE_STATUSES and attempt < self.max_retries:
                        retry_after = parse_retry_after(response.headers.get("Retry-After"))
                        self.sleep(retry_after if retry_after is not None else self._backoff(attempt))
                        attempt += 1
                        continue
                    if response.status_code >= 400:
                        raise ApiError.from_response(response)
                    size = 0
                    with open(tmp, "wb") as fh:
                        for chunk in response.iter_content(64 * 1024):
                            fh.write(chunk)
                            size += len(chunk)
            except (requests.ConnectionError, requests.Timeout):
                tmp.unlink(missing_ok=True)
                if attempt >= self.max_retries:
                    raise
                self.sleep(self._backoff(attempt))
                attempt += 1
                continue
            expected = job["audio"].get("size_bytes")
            if expected is not None and size != expected:
                tmp.unlink(missing_ok=True)
                raise SfxError(f"download of job {job['id']} was {size} bytes, expected {expected}")
            os.replace(tmp, path)
            return path


# ---------------------------------------------------------------------- command line
def _server_sent_events(response: requests.Response) -> Iterable[tuple[str | None, str]]:
    """(id, data) of each event in a `text/event-stream` body (the WHATWG format: comment lines start
    with a colon, fields are `name: value`, a blank line ends an event, several data lines join)."""
    event_id, data = None, []
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if data:
                yield event_id, "\n".join(data)
            data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
    if data:
        yield event_id, "\n".join(data)


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sfx_backend.client",
        description="Talk to an sfx-backend API: log in, generate a sound effect, download it.")
    parser.add_argument("--base-url", default=_env("SFX_BASE_URL") or "http://localhost:3000",
                        help="API base URL (env SFX_BASE_URL; default http://localhost:3000)")
    parser.add_argument("--email", default=_env("SFX_EMAIL"), help="account email (env SFX_EMAIL)")
    parser.add_argument("--password", default=_env("SFX_PASSWORD"), help="account password (env SFX_PASSWORD)")
    parser.add_argument("--access-token", default=_env("SFX_ACCESS_TOKEN"),
                        help="use this access token instead of logging in (env SFX_ACCESS_TOKEN)")
    parser.add_argument("--device", action="store_true",
                        help="sign in with a device code approved in a browser (no password here)")
    parser.add_argument("--register", action="store_true",
                        help="create the account first if it does not exist yet")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("login", help="log in and print the account and an access token")

    gen = sub.add_parser("generate", help="generate a sound effect and download it")
    gen.add_argument("prompt")
    gen.add_argument("--duration", type=float, default=None, help="seconds, 0.5..30 (default: model chooses)")
    gen.add_argument("--prompt-influence", type=float, default=None, help="0..1 (server default 0.3)")
    gen.add_argument("--format", choices=("mp3", "wav", "flac"), default="mp3")
    gen.add_argument("--loop", action="store_true", help="ask for a seamless loop")
    gen.add_argument("--sample-rate", type=int, choices=(44100, 48000), default=None, help="Hz (default 44100)")
    gen.add_argument("--bit-depth", type=int, choices=(16, 24), default=None, help="wav and flac (default 16)")
    gen.add_argument("--loudness", type=float, default=None, help="integrated LUFS, -40..-6 (default: as made)")
    gen.add_argument("--trim", action="store_true", help="remove leading and trailing silence")
    gen.add_argument("--out", default="./out", help="download folder (default ./out)")
    gen.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the job")
    gen.add_argument("--idempotency-key", default=None, help="reuse a key to replay a previous submit")

    job = sub.add_parser("job", help="print a job")
    job.add_argument("job_id")
    sub.add_parser("usage", help="print this period's usage")
    return parser


def _authenticate(client: SfxClient, args: argparse.Namespace) -> None:
    if args.access_token:
        client.access_token = args.access_token
        return
    if args.device:
        def show(code: dict) -> None:
            print(f"To sign in, open {code['verification_uri']} and enter the code {code['user_code']}")
            print(f"  (or open {code['verification_uri_complete']}); waiting for approval...", flush=True)

        user = client.device_login(client_name=f"{USER_AGENT} on {platform.node() or 'this computer'}",
                                   on_code=show)["user"]
        print(f"signed in as {user['email']} (status {user['status']}, role {user['role']})")
        return
    if not (args.email and args.password):
        raise SystemExit("error: give --email and --password (or --access-token)")
    if args.register:
        try:
            data = client.register(args.email, args.password)
            print(f"registered {data['user']['email']} (status {data['user']['status']})")
            return
        except ApiError as exc:
            if exc.code != "email_taken":
                raise
    data = client.login(args.email, args.password)
    user = data["user"]
    print(f"logged in as {user['email']} (status {user['status']}, role {user['role']})")


def _describe_error(exc: ApiError) -> str:
    hints = {
        "quota_exceeded": "no generations left this period; upgrade the plan (GET /subscription/plans)",
        "rate_limited": "too many requests; slow down",
        "too_many_jobs": "too many jobs in progress; wait for one to finish",
        "unauthorized": "log in again (wrong credentials or an expired session)",
        "account_suspended": "this account may not generate",
    }
    line = f"error: {exc.status} {exc.code}: {exc.detail}"
    if exc.errors:
        line += " " + "; ".join(f"{k}: {', '.join(v)}" for k, v in exc.errors.items())
    if exc.retry_after is not None:
        line += f" (retry after {exc.retry_after:g} s)"
    if exc.code in hints:
        line += f"\nhint: {hints[exc.code]}"
    return line


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    client = SfxClient(args.base_url)
    try:
        _authenticate(client, args)
        if args.command == "login":
            print(f"access_token: {client.access_token}")
            return 0
        if args.command == "usage":
            u = client.usage()
            print(f"plan {u['plan']}: used {u['used']}, reserved {u['reserved']}, "
                  f"remaining {u['remaining']} of {u['monthly_limit']} "
                  f"(period {u['period_start']} .. {u['period_end']})")
            return 0
        if args.command == "job":
            job = client.get_job(args.job_id)
            print(f"job {job['id']}: {job['status']}" + (f" ({job['error']['code']})" if job.get("error") else ""))
            return 0

        started = time.monotonic()
        job = client.generate(args.prompt, duration_seconds=args.duration, prompt_influence=args.prompt_influence,
                              loop=args.loop, output_format=args.format, idempotency_key=args.idempotency_key,
                              sample_rate=args.sample_rate, bit_depth=args.bit_depth, loudness_lufs=args.loudness,
                              trim_silence=args.trim or None)
        print(f"submitted job {job['id']} (status {job['status']}, idempotency key {job['idempotency_key']})")

        def show(j: dict, elapsed: float) -> None:
            # Every second while waiting, not only on a change: the person sees it is alive and why it waits.
            reason = f" ({j['queue_reason']})" if j.get("queue_reason") else ""
            print(f"  {time.monotonic() - started:6.1f} s  {j['status']}{reason}", flush=True)

        job = client.wait(job["id"], timeout=args.timeout, on_progress=show)
        if job["status"] != "succeeded":
            err = job.get("error") or {}
            print(f"job {job['status']}: {err.get('code', '-')}: {err.get('message', '')}")
            return 1
        path = client.download(job, args.out)
        audio = job["audio"]
        print(f"saved {path} ({path.stat().st_size} bytes, {audio['content_type']}, "
              f"provider {job.get('provider', '?')})")
        if job.get("provider") == "synth":
            print("note: provider 'synth' is an offline procedural placeholder, not AI-generated sound")
        return 0
    except ApiError as exc:
        print(_describe_error(exc), file=sys.stderr)
        return 1
    except JobTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (requests.ConnectionError, requests.Timeout) as exc:
        print(f"error: cannot reach {args.base_url}: {exc}", file=sys.stderr)
        return 1
    except SfxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
