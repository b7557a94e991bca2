"""WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi ...`."""
from sfx_backend import create_app

app = create_app()
