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


# --- the lock files: what CI tested is what a fresh clone and the image install --------------------------

def _pins(path: Path) -> dict[tuple[str, str], str]:
    """(name, environment marker) -> version, for each `name==version [; marker]` of a lock file."""
    from packaging.utils import canonicalize_name

    pins = {}
    for match in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\#\n]+?))?\s*\\?$",
                             path.read_text(), re.M):
        pins[(canonicalize_name(match[1]), (match[3] or "").strip())] = match[2]
    return pins


def test_every_declared_dependency_is_locked_within_its_range_and_hashed():
    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(text) for text in project["dependencies"]]
    declared += [Requirement(text) for extra in project["optional-dependencies"].values() for text in extra]
    dev, runtime = _pins(ROOT / "requirements/dev.lock"), _pins(ROOT / "requirements/runtime.lock")
    for requirement in declared:
        name = canonicalize_name(requirement.name)
        if name == "sfx-backend":
            continue
        versions = [version for (pinned, _), version in dev.items() if pinned == name]
        assert versions, f"{name} is declared in pyproject.toml but not in requirements/dev.lock: run make lock"
        for version in versions:
            assert requirement.specifier.contains(version, prereleases=True), \
                f"{name}=={version} in the lock is outside pyproject's {requirement.specifier}: run make lock"
    for requirement in (Requirement(text) for text in project["dependencies"]):
        assert any(pinned == canonicalize_name(requirement.name) for pinned, _ in runtime), requirement.name
    # The image runs the versions the tests ran.
    assert {pin: version for pin, version in runtime.items() if dev.get(pin) != version} == {}
    for lock in ("dev.lock", "runtime.lock"):
        text = (ROOT / "requirements" / lock).read_text()
        pins = re.findall(r"^\S+==.*$", text, re.M)
        hashed = re.findall(r"^\S+==.*\\\n\s+--hash=sha256:", text, re.M)
        assert len(pins) > 20 and len(hashed) == len(pins), f"{lock}: a pin without hashes"


def test_make_and_the_image_install_from_the_locks_with_hashes_checked():
    makefile, dockerfile = (ROOT / "Makefile").read_text(), (ROOT / "Dockerfile").read_text()
    assert "pip install --quiet --require-hashes --no-deps -r $(DEV_LOCK)" in makefile
    assert "DEV_LOCK := requirements/dev.lock" in makefile
    # The editable install adds the project only: no unpinned dependency or build backend sneaks in.
    assert re.search(r"pip install --quiet --no-deps --no-build-isolation -e \.", makefile)
    assert "pip install --require-hashes --no-deps -r runtime.lock" in dockerfile
    assert "COPY requirements/runtime.lock" in dockerfile
    for line in re.findall(r"pip install [^\n]*", makefile + dockerfile):
        assert "--require-hashes --no-deps -r" in line or "--no-deps --no-build-isolation -e ." in line, line
