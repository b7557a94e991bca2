"""The worker's pool as the command line asks for it, and what a forked pool child starts from."""
from __future__ import annotations

import os
import pickle
import types
from pathlib import Path

import pytest
import sqlalchemy as sa
from billiard import cpu_count
from celery.bin.base import CLIContext
from celery.bin.worker import worker as worker_command
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.solo import TaskPool as SoloPool
from celery.concurrency.thread import TaskPool as ThreadPool
from prometheus_client import CollectorRegistry, Counter, values
from prometheus_client.multiprocess import MultiProcessCollector

from sfx_backend import create_app
from sfx_backend.config import ConfigError, load_config, prepare_worker_metrics
from sfx_backend.extensions import db
from sfx_backend.metrics import use_multiprocess_values
from sfx_backend.services import generation
from sfx_backend.worker_process import DefaultThreadPool, UnsupportedPool, choose_pool, reset_after_fork
from tests.conftest import TEST_SECRETS


@pytest.fixture(scope="module")
def celery_app(tmp_path_factory):
    app = create_app(environ={"APP_ENV": "test", "INSTANCE_PATH": str(tmp_path_factory.mktemp("cli")),
                              **TEST_SECRETS,
                              "CELERY_BROKER_URL": "memory://", "WORKER_CONCURRENCY": "24"})
    return app.extensions["celery"]


def _worker_as_typed(celery_app, *args: str) -> types.SimpleNamespace:
    """Parse `celery -A workers worker ARGS` with Celery's own command, then settle the pool as worker_init does."""
    ctx = worker_command.make_context("worker", list(args), obj=CLIContext(celery_app, True, None, quiet=True))
    worker = types.SimpleNamespace(pool_cls=ctx.params["pool"], concurrency=ctx.params["concurrency"])
    with ctx:
        choose_pool(worker)
    return worker


def test_the_command_as_typed_runs_the_configured_threads(celery_app):
    worker = _worker_as_typed(celery_app)
    assert (worker.pool_cls, worker.concurrency) == (ThreadPool, 24)


def test_celery_hands_over_the_configured_pool_for_a_typed_prefork_and_the_worker_gives_prefork_back(celery_app):
    # Celery's command line cannot tell a typed `--pool prefork` from its default (celery/celery#6711).
    ctx = worker_command.make_context("worker", ["--pool", "prefork"], obj=CLIContext(celery_app, True, None))
    assert ctx.params["pool"] is DefaultThreadPool

    assert _worker_as_typed(celery_app, "--pool", "prefork").pool_cls is PreforkPool
    assert _worker_as_typed(celery_app, "-Pprefork").pool_cls is PreforkPool
    assert _worker_as_typed(celery_app, "--pool=processes").pool_cls is PreforkPool


@pytest.mark.parametrize("args, pool, concurrency", [
    (("--pool", "prefork"), PreforkPool, cpu_count()),  # Celery's own default: a child per CPU
    (("--pool", "prefork", "-c", "3"), PreforkPool, 3),
    (("--pool", "threads"), ThreadPool, 24),
    (("--pool", "threads", "--concurrency", "5"), ThreadPool, 5),
    (("--pool", "solo"), SoloPool, 1),  # one message reserved, not WORKER_CONCURRENCY of them
    (("--pool", "solo", "-c", "2"), SoloPool, 2),  # the operator's figure stands
])
def test_each_pool_gets_the_concurrency_it_was_given_or_its_own_default(celery_app, args, pool, concurrency):
    worker = _worker_as_typed(celery_app, *args)
    assert (worker.pool_cls, worker.concurrency) == (pool, concurrency)


def test_a_pool_chosen_in_the_environment_counts_as_typed(celery_app, monkeypatch):
    monkeypatch.setenv("CELERY_WORKER_POOL", "prefork")
    ctx = worker_command.make_context("worker", [], obj=CLIContext(celery_app, True, None),
                                      auto_envvar_prefix="CELERY_WORKER")
    worker = types.SimpleNamespace(pool_cls=ctx.params["pool"], concurrency=ctx.params["concurrency"])
    with ctx:
        choose_pool(worker)
    assert (worker.pool_cls, worker.concurrency) == (PreforkPool, cpu_count())


def test_a_worker_built_in_code_without_a_pool_runs_threads_and_keeps_its_concurrency():
    worker = types.SimpleNamespace(pool_cls="sfx_backend.worker_process:DefaultThreadPool", concurrency=7)
    assert choose_pool(worker) == "threads"
    assert (worker.pool_cls, worker.concurrency) == (ThreadPool, 7)


@pytest.mark.parametrize("pool", ["gevent", "eventlet", types.SimpleNamespace(
    __module__="celery.concurrency.gevent", __qualname__="TaskPool")])
def test_event_loop_pools_are_refused_with_a_message_even_when_installed(pool):
    with pytest.raises(UnsupportedPool) as refused:
        choose_pool(types.SimpleNamespace(pool_cls=pool, concurrency=4))
    assert "gevent" in str(refused.value) or "eventlet" in str(refused.value)
    assert "--pool prefork" in str(refused.value)


def test_worker_concurrency_is_read_and_checked():
    assert load_config({})["WORKER_CONCURRENCY"] == 32
    assert load_config({"WORKER_CONCURRENCY": "8"})["WORKER_CONCURRENCY"] == 8
    with pytest.raises(ConfigError):
        load_config({"WORKER_CONCURRENCY": "0"})


def _in_child(work) -> object:
    """Run `work` in a forked child and return what it returned (or raise what it raised)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            outcome = ("ok", work())
        except BaseException as exc:  # noqa: BLE001
            outcome = ("error", repr(exc))
        with os.fdopen(write, "wb") as out:
            pickle.dump(outcome, out)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as inp:
        status, value = pickle.load(inp)
    os.waitpid(pid, 0)
    assert status == "ok", value
    return value


def test_a_forked_child_connects_anew_and_leaves_the_parents_connection_working(app):
    backend_pid = sa.text("SELECT pg_backend_pid()")
    parents = db.session.scalar(backend_pid)
    db.session.commit()  # the connection goes back to the pool the child inherits
    provider, storage = app.extensions["sfx"].provider, app.extensions["sfx"].storage

    def child():
        reset_after_fork(app)
        rt = app.extensions["sfx"]
        with app.app_context():
            return db.session.scalar(backend_pid), rt.provider is not provider, rt.storage is not storage

    childs, new_provider, new_storage = _in_child(child)

    assert childs != parents and new_provider and new_storage
    assert db.session.scalar(backend_pid) == parents  # the parent's session is untouched
    db.session.rollback()


def test_a_forked_child_has_heartbeat_threads_and_holds_leases_under_its_own_name():
    generation._heartbeats.submit(lambda: None).result(5)  # a loop ran here: its thread now idles

    def child():
        return generation.HOLDER, generation._heartbeats.submit(lambda: os.getpid()).result(5)

    holder, beat_pid = _in_child(child)

    assert holder.endswith(f":{beat_pid}") and beat_pid != os.getpid()
    assert generation.HOLDER.endswith(f":{os.getpid()}")


def test_a_worker_serving_metrics_gets_a_multiprocess_directory_of_its_own(tmp_path, monkeypatch):
    assert prepare_worker_metrics({}) is None  # no exporter: nothing to join up
    assert prepare_worker_metrics({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}) == str(tmp_path)
    exits = []
    monkeypatch.setattr("atexit.register", exits.append)
    env = {"WORKER_METRICS_PORT": "9808"}

    path = prepare_worker_metrics(env)

    assert env["PROMETHEUS_MULTIPROC_DIR"] == path and Path(path).is_dir() and not os.listdir(path)
    exits[0]()
    assert not Path(path).exists()


def test_figures_counted_in_forked_children_are_served_by_the_parent(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # restored after the test
    use_multiprocess_values()
    calls = Counter("sfx_test_calls", "Calls counted by pool children.", ["outcome"], registry=None)

    for _ in range(2):
        _in_child(lambda: calls.labels("succeeded").inc())

    served = CollectorRegistry()
    MultiProcessCollector(served, path=str(tmp_path))
    assert served.get_sample_value("sfx_test_calls_total", {"outcome": "succeeded"}) == 2
