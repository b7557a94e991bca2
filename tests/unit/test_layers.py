"""The layering check: no module of sfx_backend (or workers) imports a layer above its own.

Reads every module's imports with `ast` (nothing is imported), lazy imports inside functions included.
The layers, lowest first; a module may import its own layer and the ones below it:

    base      config, crypto, plans, errors: shared by everyone
    models    extensions (the unbound `db`), models
    adapters  providers, storage, audio: the outside world behind Protocols
    domain    services, and the Prometheus counters they update (metrics)
    edge      api, auth, logs, cli, wiring, runtime, queue, worker_process, create_app, demo, client
    tasks     workers (the Celery task modules)

And the domain, the adapters and the models import no web or task framework (Flask, Celery) at all:
they are handed what they need by `sfx_backend/wiring.py`.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("sfx_backend.config", "sfx_backend.crypto", "sfx_backend.plans", "sfx_backend.errors")),
    ("models", ("sfx_backend.extensions", "sfx_backend.models")),
    ("adapters", ("sfx_backend.providers", "sfx_backend.storage", "sfx_backend.audio")),
    ("domain", ("sfx_backend.services", "sfx_backend.metrics")),
    ("edge", ("sfx_backend.api", "sfx_backend.auth", "sfx_backend.logs", "sfx_backend.cli", "sfx_backend.wiring",
              "sfx_backend.runtime", "sfx_backend.queue", "sfx_backend.worker_process", "sfx_backend.demo",
              "sfx_backend.client", "sfx_backend")),
    ("tasks", ("workers",)),
]
RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}

FRAMEWORKS = ("flask", "flask_jwt_extended", "flask_limiter", "flask_migrate", "flask_smorest", "flask_sqlalchemy",
              "werkzeug", "celery", "kombu", "billiard")
FRAMEWORK_FREE = ("sfx_backend.models", "sfx_backend.providers", "sfx_backend.storage", "sfx_backend.audio",
                  "sfx_backend.services", "sfx_backend.metrics")


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("sfx_backend", "workers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> str | None:
    """The layer whose longest prefix names `module` (None: not ours)."""
    best: tuple[int, str] | None = None
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if _within(module, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), name)
    return best[1] if best else None


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative ones resolved."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # `from . import quota` imports the module sfx_backend.services.quota, not the package
                child = f"{target}.{alias.name}"
                found.append((node.lineno, child if child in MODULES else target))
    return sorted(set(found))  # `from flask import g, request` is one import of flask


def violations() -> list[str]:
    """Every import that runs up the layers or into a framework from framework-free code."""
    problems = []
    for module, path in MODULES.items():
        mine = layer_of(module)
        assert mine is not None, f"{module} belongs to no layer: add it to LAYERS"
        for line, target in imports_of(module, path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if any(_within(module, p) for p in FRAMEWORK_FREE) and \
                    any(_within(target, f) for f in FRAMEWORKS):
                problems.append(f"{where} {module} ({mine}) imports the framework {target}")
            theirs = layer_of(target)
            if theirs is not None and RANK[theirs] > RANK[mine]:
                problems.append(f"{where} {module} ({mine}) imports {target} ({theirs})")
    return problems


def test_every_module_belongs_to_a_layer():
    assert "sfx_backend.services.generation" in MODULES and "workers.jobs" in MODULES
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_no_module_imports_a_layer_above_its_own():
    assert violations() == []


@pytest.mark.parametrize("source, expected", [
    ("from ..api.schemas import ProblemSchema", "sfx_backend.api.schemas"),
    ("from . import quota", "sfx_backend.services.quota"),
    ("from .dispatch import TaskSender", "sfx_backend.services.dispatch"),
    ("import flask", "flask"),
])
def test_the_check_resolves_relative_and_absolute_imports(tmp_path, source, expected):
    """The check itself: an import it failed to resolve would pass unseen."""
    path = tmp_path / "module.py"
    path.write_text(source + "\n")
    assert [target for _, target in imports_of("sfx_backend.services.module", path)] == [expected]
