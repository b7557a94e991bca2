"""The `workers` package: its task modules import without an app, and `celery -A workers` still finds one."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import TEST_SECRETS
from tests.support.processes import REPO_ROOT

TASKS = ["sfx.accounts.purge_deleted_audio", "sfx.billing.apply_event", "sfx.billing.send_meter_event",
         "sfx.billing.sweep", "sfx.jobs.generate", "sfx.keys.maintain", "sfx.maintenance.sweep_stranded_jobs",
         "sfx.notifications.deliver", "sfx.notifications.sweep", "sfx.webhooks.deliver", "sfx.webhooks.sweep"]


def _python(code: str, tmp_path) -> dict:
    env = {"APP_ENV": "test", "INSTANCE_PATH": str(tmp_path), "CELERY_BROKER_URL": "memory://",
           "LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin", **TEST_SECRETS}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_task_modules_builds_no_app(tmp_path):
    seen = _python("""
import json, sys
import sfx_backend
built = []
sfx_backend.create_app = lambda *a, **k: built.append(1)
import workers.accounts, workers.billing, workers.jobs, workers.keys, workers.maintenance, workers.notifications
import workers.webhooks
print(json.dumps({"built": len(built), "app_loaded": "workers.app" in sys.modules}))
""", tmp_path)
    assert seen == {"built": 0, "app_loaded": False}


def test_celery_finds_the_app_as_typed_with_every_task_registered(tmp_path):
    # What `celery -A workers ...` runs to load the app (celery/bin/celery.py -> find_app).
    seen = _python("""
import json
from celery.app.utils import find_app
app = find_app("workers")
import workers.app
print(json.dumps({"type": type(app).__name__, "tasks": sorted(t for t in app.tasks if t.startswith("sfx.")),
                  "flask": app is workers.app.flask_app.extensions["celery"]}))
""", tmp_path)
    assert seen == {"type": "Celery", "tasks": TASKS, "flask": True}
