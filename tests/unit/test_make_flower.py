"""`make flower` refuses to run Flower open unless that is said explicitly, and keeps the password off argv."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_CELERY = """#!/bin/sh
# Stands in for the venv's celery: records how make started it, then exits.
{ printf '%s\\n' "$*"; printf 'auth=%s\\n' "${FLOWER_BASIC_AUTH-<unset>}"; } > "$RECORD"
"""


@pytest.fixture
def make_flower(tmp_path):
    """Run `make flower` with a fake celery (BIN) and a fresh install stamp, so nothing is installed or started."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "celery").write_text(FAKE_CELERY)
    (bin_dir / "celery").chmod(0o755)
    stamp = tmp_path / "stamp"
    stamp.touch()  # newer than pyproject.toml and the lock: the install step is up to date
    record = tmp_path / "record"

    def run(*make_vars: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str] | None]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
        result = subprocess.run(["make", "--no-print-directory", "flower", f"BIN={bin_dir}", f"STAMP={stamp}",
                                 *make_vars], cwd=ROOT, env={**base, **env, "RECORD": str(record)},
                                capture_output=True, text=True, timeout=60)
        started = record.read_text().splitlines() if record.exists() else None
        record.unlink(missing_ok=True)
        return result, started
    return run


def test_without_credentials_make_flower_refuses_to_start_flower(make_flower):
    result, started = make_flower()
    assert result.returncode != 0 and started is None
    assert "FLOWER_BASIC_AUTH" in result.stderr and "FLOWER_UNAUTHENTICATED=1" in result.stderr
    # An empty value (what `FLOWER_BASIC_AUTH=` in .env exports) is no credential either.
    result, started = make_flower(FLOWER_BASIC_AUTH="")
    assert result.returncode != 0 and started is None


@pytest.mark.parametrize("how", ["environment", "make variable"])
def test_an_open_flower_must_be_asked_for_explicitly(make_flower, how):
    if how == "environment":
        result, started = make_flower(FLOWER_UNAUTHENTICATED="1", FLOWER_BASIC_AUTH="")
    else:
        result, started = make_flower("FLOWER_UNAUTHENTICATED=1", FLOWER_BASIC_AUTH="")
    assert result.returncode == 0, result.stderr
    assert started[0] == "-A workers flower --address=127.0.0.1 --port=5555"
    # An empty FLOWER_BASIC_AUTH would lock Flower with a credential nobody can send: it is dropped.
    assert started[1] == "auth=<unset>"
    assert "without authentication" in result.stderr


def test_with_credentials_flower_reads_them_from_the_environment_never_the_command_line(make_flower):
    result, started = make_flower(FLOWER_BASIC_AUTH="operator:s3cret-flower")
    assert result.returncode == 0, result.stderr
    assert "s3cret-flower" not in started[0]  # argv is visible to every local user (ps)
    assert started[0].startswith("-A workers flower --address=127.0.0.1 --port=5555")
    assert started[1] == "auth=operator:s3cret-flower"
    assert "s3cret-flower" not in result.stdout + result.stderr
