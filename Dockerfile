# syntax=docker/dockerfile:1
# Corral's container image: one process, `corral serve`, plain HTTP on port 8000 behind a TLS proxy, against
# an external PostgreSQL (CORRAL_DATABASE_URL); it also runs the background jobs unless
# CORRAL_EMBEDDED_WORKER=false, in which case run the same image with `corral worker` as well (no port, no
# health check). See docs/operations.md and docker-compose.yml.
#
#   docker build -t corral .
#
# Production needs CORRAL_ENV=production, CORRAL_SECRET_KEY, CORRAL_DATABASE_URL, CORRAL_BASE_URL (https://…)
# and CORRAL_TRUSTED_PROXIES (the proxy's addresses). Apply migrations with `corral db upgrade` before serving.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /app

# Runtime dependencies only (no test, lint or type-check tools), at exactly the versions requirements.lock pins.
COPY requirements.lock pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/runtime.txt \
    && /opt/venv/bin/pip install -c requirements.lock -r /tmp/runtime.txt

# The package itself, editable: corral.kit.paths finds templates/, static/ and migrations/ beside src/ in /app.
COPY README.md ./
COPY src ./src
RUN /opt/venv/bin/pip install --no-deps -e /app \
    && /opt/venv/bin/pip check

# ---------------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CORRAL_HOST=0.0.0.0 \
    CORRAL_PORT=8000 \
    CORRAL_DATA_DIR=/var/lib/corral
RUN groupadd --system --gid 10001 corral \
    && useradd --system --uid 10001 --gid corral --home-dir /var/lib/corral --create-home \
        --shell /usr/sbin/nologin corral
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
COPY alembic.ini /app/alembic.ini
COPY migrations /app/migrations
COPY templates /app/templates
COPY static /app/static
WORKDIR /app
USER corral
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CORRAL_PORT', '8000'), timeout=4)"]
# On SIGTERM uvicorn drains in-flight requests for up to 15 s, then the embedded worker gives running jobs up
# to CORRAL_WORKER_SHUTDOWN_SECONDS (10 s): run with `docker stop -t 30` (compose sets stop_grace_period) so
# the container is not killed first.
CMD ["corral", "serve", "--host", "0.0.0.0"]
