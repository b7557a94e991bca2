"""`gunicorn wsgi:app` as the contract types it holds many waiting clients (Prefer: wait, the event stream)
without holding its workers: other requests are answered meanwhile, and a real worker's results reach
every waiter, through PostgreSQL and Redis pub/sub."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid

import pytest
import requests

from tests.conftest import TEST_REDIS_URL, make_environ
from tests.support.nanio_server import nanio  # noqa: F401 - fixture
from tests.support.pipeline import free_port
from tests.support.processes import BIN, REPO_ROOT, start_worker, stop, wait_for

pytestmark = pytest.mark.slow

WAITERS = 100  # far more than any thread count: `gunicorn wsgi:app` runs one process, and threads are moot


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _stream_until_end(url: str, headers: dict, connected: threading.Event) -> list[dict]:
    events, data = [], None
    with requests.get(url, headers=headers, stream=True, timeout=(5, 120)) as response:
        assert response.status_code == 200
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and data is not None:
                events.append(data)
                data = None
                connected.set()
    return events


def test_one_gunicorn_process_serves_a_hundred_waiters_and_everything_else(
        app, database_url, tmp_path, encryption_key, redis_db, nanio):  # noqa: F811
    redis_url = TEST_REDIS_URL.format(db=redis_db)
    import redis
    redis.Redis.from_url(redis_url).flushdb()
    nanio.start()  # a no-op unless an earlier test left it down
    bucket = f"waiting-{uuid.uuid4().hex[:10]}"
    nanio.storage(bucket).ensure_bucket()
    # PostgreSQL (psycopg2 made to yield), Redis (broker, limits, pub/sub) and S3 (boto3): each under gevent.
    env = {**os.environ, **make_environ(database_url, tmp_path / "instance", encryption_key,
                                        REDIS_URL=redis_url, CELERY_BROKER_URL=redis_url,
                                        CELERY_QUEUE=f"sfx-wait-{uuid.uuid4().hex[:8]}",
                                        TRIAL_GENERATION_LIMIT="1000", STORAGE_BACKEND="s3",
                                        S3_ENDPOINT_URL=nanio.endpoint_url, S3_BUCKET=bucket,
                                        AWS_ACCESS_KEY_ID=nanio.access_key, AWS_SECRET_ACCESS_KEY=nanio.secret_key)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")
    server = subprocess.Popen([str(BIN / "gunicorn"), "wsgi:app", "--bind", f"127.0.0.1:{port}",
                               "--no-control-socket"], cwd=REPO_ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    worker = None
    results: dict[int, object] = {}
    try:
        wait_for(lambda: _ok(f"{base}/health/ready"), 30, what="gunicorn to answer")
        body = requests.post(f"{base}/auth/register", json={"email": f"wait-{uuid.uuid4().hex[:8]}@example.com",
                                                            "password": "correct horse battery"}, timeout=10).json()
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        job_ids = []
        for i in range(20):
            response = requests.post(f"{base}/usage/generate", json={"prompt": f"footsteps on gravel {i}"},
                                     headers=headers, timeout=10)
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])

        connected = [threading.Event() for _ in range(WAITERS)]

        def waiter(n: int) -> None:
            job_id = job_ids[n % len(job_ids)]
            try:
                if n % 2:
                    results[n] = _stream_until_end(f"{base}/jobs/{job_id}/events", headers, connected[n])
                else:
                    connected[n].set()
                    response = requests.get(f"{base}/jobs/{job_id}", headers={**headers, "Prefer": "wait=60"},
                                            timeout=(5, 120))
                    results[n] = (response.status_code, response.headers.get("Preference-Applied"),
                                  response.json())
            except Exception as error:  # noqa: BLE001 - reported by the assertions below
                results[n] = error

        threads = [threading.Thread(target=waiter, args=(n,), daemon=True) for n in range(WAITERS)]
        for thread in threads:
            thread.start()
        for event in connected:
            assert event.wait(30), "a stream never sent its first event"
        # Every waiter is held now; the process still answers other requests at once.
        assert requests.get(f"{base}/health", timeout=5).status_code == 200
        assert requests.get(f"{base}/health/ready", timeout=10).status_code == 200  # database, broker, storage
        submitted = requests.post(f"{base}/usage/generate", json={"prompt": "one more while they wait"},
                                  headers=headers, timeout=10)
        assert submitted.status_code == 202
        assert requests.get(f"{base}/jobs/{job_ids[0]}", headers=headers, timeout=5).json()["status"] == "queued"
        assert not results, f"a waiter came back before any job ran: {list(results.values())[:3]}"

        worker = start_worker(env, tmp_path / "worker.log", concurrency=8)
        for thread in threads:
            thread.join(90)
        assert all(not t.is_alive() for t in threads), "some waiters never got their job"
    finally:
        if worker is not None:
            stop(worker)
        stop(server)
    output = (tmp_path / "gunicorn.log").read_text()
    failures = [r for r in results.values() if isinstance(r, Exception)]
    assert not failures, (failures[:3], output[-3000:])
    for n, result in sorted(results.items()):
        if n % 2:
            statuses = [event["status"] for event in result]
            assert statuses[0] == "queued" and statuses[-1] == "succeeded", statuses
            assert result[-1]["audio"]["url"]
        else:
            status, applied, job = result
            assert (status, applied, job["status"]) == (200, "wait=60", "succeeded")
    assert len(results) == WAITERS
    audio = requests.get(results[1][-1]["audio"]["url"], timeout=10)
    assert audio.status_code == 200 and len(audio.content) == results[1][-1]["audio"]["size_bytes"]
    assert "Using worker: gevent" in output
    assert "Traceback" not in output, output[-3000:]


def test_rate_limits_on_redis_still_count_under_the_gevent_workers(app, database_url, tmp_path, encryption_key,
                                                                     redis_db):
    redis_url = TEST_REDIS_URL.format(db=redis_db)
    import redis
    redis.Redis.from_url(redis_url).flushdb()
    env = {**os.environ, **make_environ(database_url, tmp_path / "instance", encryption_key, REDIS_URL=redis_url,
                                        CELERY_BROKER_URL=redis_url, RATELIMIT_ENABLED="true")}
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")
    server = subprocess.Popen([str(BIN / "gunicorn"), "wsgi:app", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                               "--no-control-socket"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ok(f"{base}/health"), 30, what="gunicorn to answer")
        codes = [requests.post(f"{base}/auth/login", json={"email": "nobody@example.com", "password": "wrong pass 1"},
                               headers={"Connection": "close"}, timeout=10).status_code for _ in range(12)]
    finally:
        stop(server)
    # 5 failed attempts a minute per (email, address), counted in Redis across both processes.
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}, codes
