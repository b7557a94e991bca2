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


def test_compose_passes_trusted_proxy_hops_with_a_default_of_no_proxy_and_says_why(compose):
    for name in ("api", "worker", "beat", "flower", "migrate"):
        assert compose["services"][name]["environment"]["TRUSTED_PROXY_HOPS"] == "${TRUSTED_PROXY_HOPS:-0}", name
    lines = (ROOT / "docker-compose.yml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("TRUSTED_PROXY_HOPS:"))
    comment = " ".join(line.strip() for line in lines[max(0, at - 6):at] if line.strip().startswith("#"))
    assert "X-Forwarded-For" in comment and "proxy" in comment.lower()


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


# --- .env.example: one file that bash, docker compose and the app all read the same way ----------------

ENV_EXAMPLE = ROOT / ".env.example"
_ASSIGNMENT = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<rest>.*)$")


def _read_as_compose(text: str) -> dict[str, str]:
    """An env file read by the rules docker compose documents (docs.docker.com/compose/env-file/,
    "Syntax"): `#` lines and blank lines are ignored; `VAR="VAL"` and `VAR='VAL'` lose their quotes;
    an unquoted value's inline comment must follow a space; a comment may follow a closing quote."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ASSIGNMENT.match(stripped)
        assert match, f"line {number} is neither a comment nor VAR=VAL: {line!r}"
        rest = match["rest"]
        if rest[:1] in {'"', "'"}:
            quote = rest[0]
            end = rest.index(quote, 1)
            value, after = rest[1:end], rest[end + 1:].strip()
            assert not after or after.startswith("#"), f"line {number}: text after the closing quote"
            assert "\\" not in value, f"line {number}: escapes read differently by bash and compose"
        else:
            value = re.split(r"\s#", rest, maxsplit=1)[0].strip()
        # `$` is interpolated by both, by different rules: the example keeps none.
        assert "$" not in value, f"line {number}: {match['key']} would be interpolated"
        values[match["key"]] = value
    return values


def _read_as_bash(path: Path) -> dict[str, str]:
    """What `set -a; . ./.env; set +a` (the header's instruction) exports, from an empty environment."""
    script = 'set -a; . "$1" || exit 97; set +a; env -0'
    done = subprocess.run(["bash", "-c", script, "_", str(path)], env={"PATH": os.defpath},
                          capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return dict(entry.split("=", 1) for entry in done.stdout.split("\0") if "=" in entry)


def test_env_example_is_sourceable_by_bash_and_reads_as_compose_reads_it():
    as_compose = _read_as_compose(ENV_EXAMPLE.read_text())
    as_bash = _read_as_bash(ENV_EXAMPLE)
    assert len(as_compose) > 50
    differing = {key: (as_bash.get(key), value) for key, value in as_compose.items()
                 if as_bash.get(key) != value}
    assert not differing, f"bash and compose read these differently (bash, compose): {differing}"


def test_env_example_lists_every_variable_the_configuration_reads():
    import ast

    tree = ast.parse((ROOT / "sfx_backend" / "config.py").read_text())
    read: set[str] = set()

    def names(*nodes: ast.AST) -> set[str]:
        return {node.value for node in nodes if isinstance(node, ast.Constant) and isinstance(node.value, str)}

    for node in ast.walk(tree):  # env.get("X"), env["X"] and helpers called as _int(env, "X", ...)
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "env":
            read |= names(node.slice)
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and getattr(func.value, "id", None) == "env" and func.attr == "get":
                read |= names(node.args[0])
            elif any(getattr(arg, "id", None) == "env" for arg in node.args):
                read |= names(*node.args)
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    assert len(read) > 60
    assert read - listed == set(), "read by sfx_backend/config.py but missing from .env.example"


def test_env_example_values_are_the_defaults_so_copying_it_changes_nothing():
    from sfx_backend.config import load_config

    defaults = load_config({})
    for key, value in _read_as_compose(ENV_EXAMPLE.read_text()).items():
        if value:
            changed = {name for name, setting in load_config({key: value}).items() if setting != defaults.get(name)}
            assert not changed, f"{key}={value} in .env.example is not the default: it changes {changed}"


def test_compose_pins_every_image_to_a_published_tag(compose):
    images = {name: service["image"] for name, service in compose["services"].items() if "image" in service}
    for name, image in images.items():
        if image.startswith("${SFX_IMAGE"):
            continue  # the project's own image, built from the Dockerfile
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image} floats"
        # MinIO removed its images from Docker Hub (minio/minio, minio/mc); quay.io still serves them.
        if "minio" in repository:
            assert repository.startswith("quay.io/minio/"), f"{name}: {image} is no longer published there"


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
