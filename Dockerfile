# syntax=docker/dockerfile:1
# One image for every process: API (default command), worker, beat and Flower (see docker-compose.yml).

# --- build: the dependencies, compiled where needed, in a virtualenv ------------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Exactly the packages CI tested, each checked against its hash (requirements/runtime.lock, refreshed
# by `make lock`). The project itself is not installed: the runtime stage runs it from /app, where
# migrations/ and wsgi.py sit next to the package (config.py finds them relative to the package).
COPY requirements/runtime.lock ./
RUN pip install --require-hashes --no-deps -r runtime.lock && pip check

# --- runtime: no compilers, no root ----------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    APP_ENV=production \
    LOG_FORMAT=json \
    PORT=3000 \
    INSTANCE_PATH=/app/instance
RUN groupadd --system --gid 10001 sfx \
    && useradd --system --uid 10001 --gid sfx --home-dir /app --shell /usr/sbin/nologin sfx
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root wsgi.py gunicorn.conf.py ./
COPY --chown=root:root sfx_backend ./sfx_backend
COPY --chown=root:root workers ./workers
COPY --chown=root:root migrations ./migrations
COPY --chown=root:root scripts ./scripts
# The only places the processes write: the instance folder and the metrics folder of gunicorn.
RUN mkdir -p /app/instance/spool /tmp/sfx-metrics && chown sfx:sfx /app/instance /app/instance/spool /tmp/sfx-metrics
USER sfx
EXPOSE 3000
# The API's liveness; docker-compose.yml gives the worker, beat and Flower their own checks.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "scripts/healthcheck.py", "api"]
# gunicorn.conf.py (in WORKDIR) chooses gevent workers: a client waiting on a job (Prefer: wait, the event
# stream) holds a greenlet, not a thread, so there is no thread count to set; WEB_CONCURRENCY processes,
# about one per core.
CMD ["sh", "-c", "exec gunicorn wsgi:app --bind 0.0.0.0:${PORT} --workers ${WEB_CONCURRENCY:-2} --access-logfile -"]
