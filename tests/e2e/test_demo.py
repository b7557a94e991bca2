"""`make demo` end to end: `python -m sfx_backend.demo` as a subprocess, on the embedded defaults.

Nothing is copied: the demo runs from a temporary working directory (so its `./out/` lands there)
with `INSTANCE_PATH` pointing at a temporary folder (SQLite database, filesystem broker, audio,
logs). The demo finds the application directory (`wsgi.py`, `workers/`) from its own package
location and runs gunicorn/celery/flask with `cwd` = that directory; only `./out` (and a relative
`INSTANCE_PATH`) are relative to the caller's directory. `PYTHONPATH` points at the repository so
`-m sfx_backend.demo` imports from any working directory.

The environment is scrubbed of anything that would leave the embedded defaults (a developer's
ELEVEN_LABS_API_KEYS, DATABASE_URL, Redis, ...), and each run gets a free port.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import wave
from pathlib import Path

import pyloudnorm
import pytest
import soundfile

from sfx_backend.providers.audio import mp3_duration_seconds

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRUBBED = ("ELEVEN_LABS_API_KEYS", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "STORAGE_BACKEND",
            "SFX_PROVIDER", "LOCAL_STORAGE_PATH", "API_BASE_URL", "APP_ENV", "PORT", "INSTANCE_PATH")
STEPS = ("[1/9] Migrating the database", "[2/9] Choosing a port", "[3/9] Starting the API",
         "[4/9] Registering the demo user", "[5/9] Submitting a generation", "[6/9] Waiting for the job",
         "[7/9] Downloading the audio", "[8/9] Usage this period", "[9/9] Stopping the API and the worker")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo_dirs(tmp_path_factory):
    """One instance folder shared by the runs in this module (the second run logs in)."""
    base = tmp_path_factory.mktemp("demo")
    (base / "cwd").mkdir()
    return base / "cwd", base / "instance"


def run_demo(cwd: Path, instance: Path, *args: str, port: int | None = None, timeout: float = 75):
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["INSTANCE_PATH"] = str(instance)
    env["PORT"] = str(port or free_port())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-m", "sfx_backend.demo", *args], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the demo stops its children on SIGTERM; SIGKILL would orphan them
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"the demo did not finish in {timeout} s:\n{out}")
    return proc.returncode, out


def assert_common(code: int, out: str, instance: Path) -> Path:
    assert code == 0, out
    for step in STEPS:
        assert step in out, f"missing {step!r} in:\n{out}"
    assert ("registered demo@sfx.local" in out) or ("logged in instead" in out), out
    assert re.search(r"job [0-9a-f-]{36}: queued", out), out
    assert "status succeeded" in out, out
    assert "provider: synth" in out and "NOT AI" in out and "ELEVEN_LABS_API_KEYS" in out, out
    assert re.search(r"plan trial, used \d+, reserved \d+, remaining \d+ of \d+", out), out
    assert "stopped with SIGTERM" in out and "killed" not in out, out
    assert re.search(r"Demo OK in \d+\.\d s total", out), out
    for log in ("api.log", "worker.log"):
        assert (instance / "logs" / log).stat().st_size > 0
    match = re.search(r"saved (\S+)", out)
    assert match, out
    return Path(match.group(1))


def test_demo_generates_a_48_khz_24_bit_normalised_trimmed_wav_into_out(demo_dirs):
    cwd, instance = demo_dirs
    code, out = run_demo(cwd, instance, "--duration", "2.5")
    saved = assert_common(code, out, instance)

    files = list((cwd / "out").glob("*.wav"))
    assert len(files) == 1, out
    assert saved.name == files[0].name
    with wave.open(str(files[0]), "rb") as w:
        assert (w.getframerate(), w.getsampwidth()) == (48000, 3)
        seconds = w.getnframes() / w.getframerate()
    assert 1.5 < seconds < 2.5  # the synth's leading and trailing silence trimmed off
    samples, rate = soundfile.read(str(files[0]), dtype="float32", always_2d=True)
    loudness = pyloudnorm.Meter(rate).integrated_loudness(samples)
    assert loudness == pytest.approx(-16.0, abs=0.5)
    match = re.search(r"loudness (-?\d+\.\d) LUFS, true peak (-?\d+\.\d) dBTP", out)
    assert match, out
    assert float(match.group(1)) == pytest.approx(loudness, abs=0.1) and float(match.group(2)) <= -1.0
    assert "content type audio/wav" in out, out


def test_demo_generates_an_mp3_and_moves_off_a_taken_port(demo_dirs):
    cwd, instance = demo_dirs
    with socket.socket() as taken:  # the configured port is busy: the demo must pick another one
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        code, out = run_demo(cwd, instance, "--format", "mp3", "--duration", "2", "--prompt", "laser zap",
                             "--no-trim", port=busy)
    assert_common(code, out, instance)
    assert f"port {busy} is taken; using free port" in out, out

    files = list((cwd / "out").glob("*.mp3"))
    assert len(files) == 1, out
    data = files[0].read_bytes()
    assert data[:3] == b"ID3"
    assert soundfile.info(str(files[0])).samplerate == 48000
    assert mp3_duration_seconds(data) == pytest.approx(2.0, abs=0.15)
    assert "content type audio/mpeg" in out, out
