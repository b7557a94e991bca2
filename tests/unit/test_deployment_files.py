"""The Dockerfile, docker-compose.yml and scripts/deploy.sh say what docs/deployment.md promises."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _command(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def test_the_image_is_multi_stage_runs_as_a_non_root_user_and_has_a_healthcheck():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", dockerfile, re.M)
    assert len(stages) >= 2 and stages[-1] == "runtime"
    runtime = dockerfile.split("AS runtime", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert users and users[-1] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK .*scripts/healthcheck.py", runtime, re.M | re.S)
    assert "COPY --from=build" in runtime
    for copied in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", runtime, re.M):
        for path in copied.split():
            if not path.startswith("--"):
                assert (ROOT / path).exists(), f"the image copies {path}, which does not exist"


def test_compose_runs_every_process_from_one_image_with_migrations_first(compose):
    services = compose["services"]
    assert {"api", "worker", "beat", "flower", "postgres", "redis", "minio", "minio-init", "migrate"} <= set(services)
    images = {services[name]["image"] for name in ("api", "worker", "beat", "flower", "migrate")}
    assert len(images) == 1
    assert "scripts/migrate" in _command(services["migrate"])
    for name in ("api", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_processes_are_the_production_ones(compose):
    services = compose["services"]
    assert services["api"].get("command") is None  # the image's gunicorn command
    assert "gunicorn wsgi:app" in (ROOT / "Dockerfile").read_text()
    assert "--pool threads" in _command(services["worker"])
    assert "beat" in _command(services["beat"])
    assert "flower" in _command(services["flower"])
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert services["api"]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert services["worker"]["environment"]["WORKER_METRICS_PORT"]


def test_compose_creates_the_bucket_and_keeps_state_in_volumes(compose):
    services = compose["services"]
    init = " ".join(services["minio-init"]["command"])
    assert "mc mb --ignore-existing" in init and "mc ilm rule add" in init
    assert services["api"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert {"postgres-data", "redis-data", "minio-data"} <= set(compose["volumes"])
    for name in ("postgres", "redis", "minio"):
        assert "healthcheck" in services[name], name


def test_compose_takes_secrets_from_the_environment_and_refuses_to_run_without_them():
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in ("JWT_SECRET", "KEY_ENCRYPTION_KEY", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD",
                   "FLOWER_BASIC_AUTH", "METRICS_TOKEN"):
        assert f"${{{secret}:?" in text, secret


def test_deploy_builds_then_migrates_then_rolls_api_before_workers():
    env = {**os.environ, "DRY_RUN": "1", "SEED": "1", "TAG": "t1"}
    out = subprocess.run(["bash", str(ROOT / "scripts/deploy.sh")], env=env, capture_output=True, text=True,
                         check=True).stdout
    steps = [line for line in out.splitlines() if line.startswith("+ ")]
    order = [next(i for i, s in enumerate(steps) if marker in s)
             for marker in ("build", "minio-init", "run --rm migrate", "scripts/seed", "--no-deps api",
                            "api is healthy", "--no-deps worker", "beat flower")]
    assert order == sorted(order), steps
    assert "sfx-backend:t1" in out


def test_scripts_are_executable():
    for name in ("migrate", "seed", "deploy.sh", "healthcheck.py"):
        assert os.access(ROOT / "scripts" / name, os.X_OK), name
