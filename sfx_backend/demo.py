"""`make demo`: run the whole system on its embedded defaults and generate one sound end to end.

    .venv/bin/python -m sfx_backend.demo [--prompt TEXT] [--duration 3] [--format mp3|wav] [--out ./out]

What it does, printing each step: migrates the database, picks a port, starts the API (gunicorn)
and a worker (celery, threads pool) as child processes, waits until the API is ready, registers
(or logs in) a demo user, submits a generation, polls it, downloads the audio into `./out/`, prints
the usage counters and the console's address with the demo sign-in (checked against the console),
and finally stops both children (also on Ctrl-C); `--keep` leaves them running for the console.

Directories: the children run with `cwd` = the application directory (the one holding `wsgi.py`
and `workers/`; computed from this package's location, or `--app-dir`), because `flask --app wsgi`,
`gunicorn wsgi:app` and `celery -A workers` import from there. `--out` (default `./out`) stays
relative to the directory the demo was started from, and so does a relative `INSTANCE_PATH`
(it is made absolute before it is handed to the children). Logs go to `<instance>/logs/`.

Environment: the children get this process's environment unchanged (so `ELEVEN_LABS_API_KEYS`,
`DATABASE_URL`, ... are honored if you set them), plus `PORT` and `API_BASE_URL` for the chosen
port. Nothing else is set, so with an empty environment the embedded defaults apply: SQLite in
`instance/sfx.sqlite3`, the `filesystem://` broker, local storage, and the offline `synth` provider.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from pathlib import Path

import requests

from .client import ApiError, JobTimeout, SfxClient, SfxError

DEMO_EMAIL = "demo@sfx.local"
DEMO_PASSWORD = "demo-password-2024"  # fixed and printed: this is a local demo account
DEFAULT_PROMPT = "heavy wooden door slam, reverb tail"
TOTAL_STEPS = 9
STOP_TIMEOUT = 10.0


class DemoFailed(Exception):
    """A step failed; the message says which and why."""


class Printer:
    """Numbered step lines with timings, and indented detail lines."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.step_started = self.started

    def step(self, number: int, title: str) -> None:
        self.step_started = time.monotonic()
        print(f"\n[{number}/{TOTAL_STEPS}] {title}", flush=True)

    def info(self, message: str) -> None:
        print(f"      {message}", flush=True)

    def done(self, message: str = "ok") -> None:
        print(f"      {message} ({time.monotonic() - self.step_started:.1f} s)", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


# ---------------------------------------------------------------------- helpers
def find_app_dir(explicit: str | None) -> Path:
    """The directory with `wsgi.py` and `workers/`: `--app-dir`, else this package's parent."""
    if explicit:
        root = Path(explicit).resolve()
    else:
        root = Path(__file__).resolve().parent.parent
    if not (root / "wsgi.py").is_file() or not (root / "workers").is_dir():
        raise DemoFailed(f"{root} does not hold wsgi.py and workers/; pass --app-dir /path/to/sfx-backend")
    return root


def tool(name: str) -> list[str]:
    """`<venv>/bin/<name>` next to the running interpreter, else `python -m <name>`."""
    here = Path(sys.executable).parent  # not resolved: a venv's python is often a symlink
    for candidate in (here / name, here / f"{name}.exe"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    return [sys.executable, "-m", name]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def gunicorn_has_option(env: dict[str, str], option: str) -> bool:
    try:
        result = subprocess.run(tool("gunicorn") + ["--help"], check=False, env=env, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in result.stdout


def tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError as exc:
        return f"(cannot read {path}: {exc})\n"


def show_path(path: Path) -> str:
    """`path` relative to the current directory when it is below it, else absolute."""
    try:
        return "./" + str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run_flask(args: list[str], app_dir: Path, env: dict[str, str], timeout: float = 120) -> str:
    cmd = tool("flask") + ["--app", "wsgi", *args]
    try:
        result = subprocess.run(cmd, check=False, cwd=app_dir, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise DemoFailed(f"`flask --app wsgi {' '.join(args)}` did not finish in {timeout:g} s") from exc
    if result.returncode != 0:
        raise DemoFailed(f"`flask --app wsgi {' '.join(args)}` failed (exit {result.returncode}):\n"
                         + (result.stdout + result.stderr)[-3000:])
    return result.stdout + result.stderr


def audio_duration(path: Path, fmt: str) -> float | None:
    """Seconds of audio in the downloaded file, if we can tell."""
    try:
        from .providers.audio import mp3_duration_seconds, wav_info
        data = path.read_bytes()
        if fmt == "wav":
            rate, _channels, frames = wav_info(data)
            return frames / rate if rate else None
        if fmt == "flac":
            import soundfile
            return soundfile.info(str(path)).duration or None
        return mp3_duration_seconds(data) or None
    except Exception:  # noqa: BLE001 - purely informative
        return None


class Child:
    """A child process with its output in a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the child
        # Own session: a Ctrl-C in the terminal reaches only the demo, which then stops the
        # children in order (instead of everything dying at once mid-request).
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def exited(self) -> int | None:
        return self.proc.poll()

    def terminate(self) -> bool:
        """Send SIGTERM (graceful: gunicorn finishes requests, celery finishes tasks); False if gone."""
        if self.proc.poll() is not None:
            return False
        try:
            self.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True

    def wait_stopped(self, printer: Printer, deadline: float, signaled: bool, started: float) -> None:
        """Wait for the exit until `deadline` (monotonic), then SIGKILL the child's process group."""
        try:
            if not signaled:
                printer.info(f"{self.name} (pid {self.proc.pid}) had already exited with code "
                             f"{self.proc.returncode}")
                return
            try:
                self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                printer.info(f"{self.name} (pid {self.proc.pid}) stopped with SIGTERM "
                             f"in {time.monotonic() - started:.1f} s (exit {self.proc.returncode})")
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                self.kill()
                printer.info(f"{self.name} (pid {self.proc.pid}) did not stop in time: killed (SIGKILL)")
        finally:
            self._log.close()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group we created: the child and its workers
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def stop_all(children: list[Child], printer: Printer, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM every child at once, then wait for each (SIGKILL whatever outlives `timeout`)."""
    started = time.monotonic()
    deadline = started + timeout
    try:
        signaled = [child.terminate() for child in children]
        for child, was_signaled in zip(children, signaled, strict=True):
            child.wait_stopped(printer, deadline, was_signaled, started)
    except KeyboardInterrupt:  # a second Ctrl-C: no more patience
        for child in children:
            child.kill()
        printer.info("interrupted again: killed the children")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# ---------------------------------------------------------------------- the demo
def run(args: argparse.Namespace, printer: Printer, children: list[Child]) -> int:
    app_dir = find_app_dir(args.app_dir)
    out_dir = Path(args.out).expanduser().resolve()  # relative to where the demo was started
    env = dict(os.environ)
    if env.get("INSTANCE_PATH"):
        env["INSTANCE_PATH"] = str(Path(env["INSTANCE_PATH"]).expanduser().resolve())
    instance = Path(env.get("INSTANCE_PATH") or app_dir / "instance")
    log_dir = instance / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"sfx-backend demo: app directory {app_dir}, instance folder {instance}")

    # (a) migrate
    printer.step(1, "Migrating the database: flask --app wsgi db upgrade")
    if env.get("DATABASE_URL"):
        printer.info("database: DATABASE_URL from your environment")
    else:
        printer.info(f"database: embedded SQLite at {instance / 'sfx.sqlite3'}")
    run_flask(["db", "upgrade"], app_dir, env)
    if env.get("ELEVEN_LABS_API_KEYS"):
        printer.info("ELEVEN_LABS_API_KEYS is set: the worker syncs it into the key pool when it starts")
    printer.done("database is at the latest migration")

    # (b) port
    printer.step(2, "Choosing a port")
    raw_port = env.get("PORT") or "3000"
    try:
        wanted = int(raw_port)
    except ValueError as exc:
        raise DemoFailed(f"PORT must be a number, got {raw_port!r}") from exc
    if port_is_free(wanted):
        port = wanted
        printer.info(f"port {port} is free")
    else:
        port = free_port()
        printer.info(f"port {wanted} is taken; using free port {port} instead")
    base_url = f"http://127.0.0.1:{port}"
    env["PORT"] = str(port)
    env["API_BASE_URL"] = base_url  # the local storage signs download URLs with this base
    env.setdefault("PYTHONUNBUFFERED", "1")  # complete logs if a child dies
    printer.done(f"API_BASE_URL={base_url}")

    # (c) start API and worker
    printer.step(3, "Starting the API (gunicorn) and a worker (celery, threads pool)")
    api_cmd = tool("gunicorn") + ["wsgi:app", "--bind", f"127.0.0.1:{port}", "--chdir", str(app_dir),
                                  "--workers", "1", "--graceful-timeout", "5",
                                  "--access-logfile", "-"]
    if gunicorn_has_option(env, "--no-control-socket"):
        # Newer gunicorn opens ~/.gunicorn/gunicorn.ctl by default; two demos would fight over it.
        api_cmd.append("--no-control-socket")
    worker_cmd = tool("celery") + ["-A", "workers", "worker", "--pool", "threads", "--concurrency", "4",
                                   "--loglevel", "INFO", "--hostname", f"demo-{os.getpid()}@%h"]
    api = Child("API", api_cmd, log_dir / "api.log", app_dir, env)
    children.append(api)
    worker = Child("worker", worker_cmd, log_dir / "worker.log", app_dir, env)
    children.append(worker)
    # gunicorn.conf.py (read from the app directory) makes it a gevent worker: waiting clients hold no thread.
    printer.info(f"API    pid {api.proc.pid}: gunicorn wsgi:app --bind 127.0.0.1:{port} (gevent worker)"
                 f"  (log {api.log_path})")
    printer.info(f"worker pid {worker.proc.pid}: celery -A workers worker --pool threads"
                 f"  (log {worker.log_path})")
    wait_until_ready(base_url, api, worker, printer, args.ready_timeout)

    # (d) user
    printer.step(4, "Registering the demo user")
    client = SfxClient(base_url)
    email = DEMO_EMAIL
    try:
        client.register(email, DEMO_PASSWORD)
        printer.info(f"registered {email}")
    except ApiError as exc:
        if exc.code != "email_taken":
            raise
        client.login(email, DEMO_PASSWORD)
        printer.info(f"{email} already exists (409 email_taken): logged in instead")
    printer.done(f"email {email}  password {DEMO_PASSWORD}")

    # (e) submit
    printer.step(5, "Submitting a generation: POST /usage/generate")
    options = {"sample_rate": args.sample_rate, "bit_depth": None if args.format == "mp3" else args.bit_depth,
               "loudness_lufs": args.loudness, "trim_silence": not args.no_trim}
    printer.info(f"prompt {args.prompt!r}, {args.duration:g} s, {args.format}, {args.sample_rate} Hz"
                 + (f", {args.bit_depth}-bit" if args.format != "mp3" else "")
                 + f", {args.loudness:g} LUFS" + (", trimmed" if not args.no_trim else ""))
    try:
        job = client.generate(args.prompt, duration_seconds=args.duration, output_format=args.format, **options)
    except ApiError as exc:
        if exc.code != "quota_exceeded":
            raise
        # Reruns of the demo eventually use up the trial allowance of the shared demo user.
        email = f"demo+{uuid.uuid4().hex[:8]}@sfx.local"
        printer.info(f"402 quota_exceeded: {exc.detail}")
        printer.info(f"(the demo user's trial allowance is used up; registering {email} to go on)")
        client.register(email, DEMO_PASSWORD)
        job = client.generate(args.prompt, duration_seconds=args.duration, output_format=args.format, **options)
    printer.info(f"job {job['id']}: {job['status']}  (Idempotency-Key {job['idempotency_key']})")
    printer.done()

    # (f) poll
    printer.step(6, f"Waiting for the job: GET /jobs/{job['id']} with backoff")
    poll_started = time.monotonic()

    def show(j: dict) -> None:
        reason = f" ({j['queue_reason']})" if j.get("queue_reason") else ""
        printer.info(f"{time.monotonic() - poll_started:6.2f} s  status {j['status']}{reason}")

    try:
        job = client.wait(job["id"], timeout=args.timeout, on_update=show)
    except JobTimeout as exc:
        raise DemoFailed(f"{exc}; see {worker.log_path}\n{tail(worker.log_path)}") from exc
    if job["status"] != "succeeded":
        err = job.get("error") or {}
        raise DemoFailed(f"job {job['status']}: {err.get('code', '-')}: {err.get('message', '')}\n"
                         f"worker log tail:\n{tail(worker.log_path)}")
    printer.done(f"succeeded after {job.get('attempts')} attempt(s)")

    # (g) download
    printer.step(7, "Downloading the audio (signed URL, no auth header)")
    path = client.download(job, out_dir)
    size = path.stat().st_size if path.exists() else 0
    audio = job["audio"]
    provider = job.get("provider") or "?"
    seconds = audio_duration(path, args.format)
    printer.info(f"saved {show_path(path)}")
    printer.info(f"size {size} bytes, content type {audio['content_type']}"
                 + (f", {seconds:.2f} s of audio" if seconds else ""))
    measured = [f"{audio['duration_seconds']:.2f} s" if audio.get("duration_seconds") else None,
                f"{audio['sample_rate']} Hz" if audio.get("sample_rate") else None,
                f"{audio['bit_depth']}-bit" if audio.get("bit_depth") else None,
                f"loudness {audio['loudness_lufs']:.1f} LUFS" if audio.get("loudness_lufs") is not None else None,
                f"true peak {audio['true_peak_dbtp']:.1f} dBTP" if audio.get("true_peak_dbtp") is not None else None]
    printer.info("measured on the stored file: " + ", ".join(m for m in measured if m))
    printer.info(f"provider: {provider}")
    if provider == "synth":
        printer.info("NOTE: provider 'synth' is an OFFLINE PROCEDURAL PLACEHOLDER, NOT AI. The sound is")
        printer.info("      noise and tone sweeps seeded by the prompt; it does not follow its meaning.")
        printer.info("      For real AI sound effects, set your ElevenLabs keys and run the demo again:")
        printer.info("        export ELEVEN_LABS_API_KEYS=sk_key1,sk_key2   # comma-separated")
        printer.info("        make demo      # the worker syncs them into the upstream key pool")
    printer.done()

    # (h) usage
    printer.step(8, "Usage this period: GET /usage/current")
    usage = client.usage()
    printer.info(f"{email}: plan {usage['plan']}, used {usage['used']}, reserved {usage['reserved']}, "
                 f"remaining {usage['remaining']} of {usage['monthly_limit']}")
    signed_in = requests.post(f"{base_url}/console/auth/login", json={"email": email, "password": DEMO_PASSWORD},
                              timeout=10)
    if signed_in.status_code != 200 or "access_token_cookie" not in signed_in.cookies:
        raise DemoFailed(f"the console's sign-in answered {signed_in.status_code}: {signed_in.text[:200]}")
    printer.info(f"console: {base_url}/console/  sign in with {email} / {DEMO_PASSWORD} (checked)")
    printer.done()
    if args.keep:
        printer.info("--keep: the API and worker stay up for the console; Ctrl-C stops them")
        while api.exited is None and worker.exited is None:
            time.sleep(0.5)
    return 0 if size > 0 else 1


def wait_until_ready(base_url: str, api: Child, worker: Child, printer: Printer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        for child in (api, worker):
            if child.exited is not None:
                raise DemoFailed(f"the {child.name} exited with code {child.exited} during startup\n"
                                 f"--- tail of {child.log_path} ---\n{tail(child.log_path)}")
        try:
            response = requests.get(f"{base_url}/health/ready", timeout=2)
            if response.status_code == 200:
                break
            last = f"{response.status_code} {response.text.strip()[:200]}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        if time.monotonic() > deadline:
            raise DemoFailed(f"GET /health/ready not 200 after {timeout:g} s (last: {last})\n"
                             f"--- tail of {api.log_path} ---\n{tail(api.log_path)}"
                             f"--- tail of {worker.log_path} ---\n{tail(worker.log_path)}")
        time.sleep(0.25)
    printer.info("GET /health/ready: 200 (database, broker and storage answer)")
    # The worker needs no port; its "ready." log line says it consumes the queue. Informative only:
    # a job submitted before then simply waits in the broker.
    while time.monotonic() < deadline:
        if worker.exited is not None:
            raise DemoFailed(f"the worker exited with code {worker.exited}\n{tail(worker.log_path)}")
        if " ready." in tail(worker.log_path, 200):
            printer.info("worker: ready")
            break
        time.sleep(0.2)
    else:
        printer.info("worker: no 'ready' line yet; jobs wait in the broker until it is")
    printer.done("API and worker are up")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sfx_backend.demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds (0.5..30), default 3")
    parser.add_argument("--format", choices=("wav", "flac", "mp3"), default="wav",
                        help="default wav: 48 kHz, 24-bit, loudness-normalised and trimmed, as a DAW wants it")
    parser.add_argument("--sample-rate", type=int, choices=(44100, 48000), default=48000)
    parser.add_argument("--bit-depth", type=int, choices=(16, 24), default=24, help="wav and flac only")
    parser.add_argument("--loudness", type=float, default=-16.0, help="integrated LUFS (-40..-6), default -16")
    parser.add_argument("--no-trim", action="store_true", help="keep leading and trailing silence")
    parser.add_argument("--out", default="./out", help="download folder, relative to the current directory")
    parser.add_argument("--app-dir", default=None,
                        help="directory holding wsgi.py and workers/ (default: next to this package)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the job")
    parser.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for startup")
    parser.add_argument("--keep", action="store_true",
                        help="keep the API and worker running afterwards (for the console) until Ctrl-C")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    printer = Printer()
    children: list[Child] = []
    code = 1
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill <demo>` also cleans up
    try:
        code = run(args, printer, children)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        code = 130
    except DemoFailed as exc:
        print(f"\nDEMO FAILED: {exc}", flush=True)
    except ApiError as exc:
        print(f"\nDEMO FAILED: API error {exc.status} {exc.code}: {exc.detail}", flush=True)
    except (SfxError, requests.RequestException, OSError) as exc:
        print(f"\nDEMO FAILED: {type(exc).__name__}: {exc}", flush=True)
    finally:
        printer.step(TOTAL_STEPS, "Stopping the API and the worker (SIGTERM, SIGKILL after "
                                  f"{STOP_TIMEOUT:g} s)")
        stop_all(children, printer)
        if not children:
            printer.info("nothing was started")
        printer.done()
        signal.signal(signal.SIGTERM, previous)
    verdict = "OK" if code == 0 else f"FAILED (exit {code})"
    print(f"\nDemo {verdict} in {printer.elapsed():.1f} s total.", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
