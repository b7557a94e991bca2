"""The Celery app: `celery -A workers worker --pool threads --concurrency 32`."""
from sfx_backend import create_app

flask_app = create_app()
celery = flask_app.extensions["celery"]
app = celery  # `celery -A workers` looks for `app` or `celery`

from . import jobs, maintenance  # noqa: E402,F401 - registers the tasks
