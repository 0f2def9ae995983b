# syntax=docker/dockerfile:1
#
# The messaging-service image: docker build -t messaging-service .
# Runs `messaging-service run`; the operator commands work too (docker run IMAGE config, send,
# render, dlq). `dev` does not: its embedded broker and mail catcher (the `embedded` extra) are
# not installed. See docs/operations.md for deploying it; scripts/image builds it with podman.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with the locked dependencies, then the project itself ---------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv

# The lock files alone decide this layer, so it stays cached until a dependency changes.
# Hashes pin the exact files; wheels only, so no compiler is ever needed. WITH_OTEL=true
# installs requirements-otel.lock instead: the same pins plus the `otel` extra, for traces.
ARG WITH_OTEL=false
COPY requirements.lock requirements-otel.lock /tmp/
RUN lock=/tmp/requirements.lock \
    && if [ "$WITH_OTEL" = true ]; then lock=/tmp/requirements-otel.lock; fi \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps --require-hashes --only-binary=:all: \
        -r "$lock"

# The build backend (setuptools, wheel) at the versions of requirements-build.lock, in a venv of
# its own that builds the project's wheel and stays in this stage; the runtime venv gets only
# the wheel. (`pip install /src` would fetch whatever setuptools and wheel are newest.)
COPY requirements-build.lock /tmp/requirements-build.lock
RUN python -m venv /opt/build-tools \
    && /opt/build-tools/bin/pip install --no-cache-dir --no-deps --require-hashes \
        --only-binary=:all: -r /tmp/requirements-build.lock

COPY pyproject.toml README.md /src/
COPY messaging_service /src/messaging_service
RUN /opt/build-tools/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation \
        --wheel-dir /tmp/wheels /src \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /tmp/wheels/*.whl

# --- runtime: the same slim Python, the virtualenv, an unprivileged user ---------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="messaging-service" \
      org.opencontainers.image.description="Kafka-driven email delivery with retries, dead letters and Prometheus metrics"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 app \
    && useradd --system --no-log-init --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001
EXPOSE 8000

# Exec form, no shell and no init: the Python process is PID 1 and gets SIGTERM itself. It
# installs its own SIGTERM/SIGINT handlers (so PID 1's "no default action" rule does not bite),
# drains within SHUTDOWN_TIMEOUT and exits 0. With SERVICE_PROCESSES=N (or auto) it is the
# supervisor: it forwards SIGTERM to its N service processes, waits for each to drain and reaps
# them; they get SIGTERM from the kernel if it dies. Use processes for one container given
# several CPUs, replicas for one CPU each (docs/operations.md, "Processes or replicas"). Give
# the runtime a stop timeout longer than SHUTDOWN_TIMEOUT (docker stop -t 40).
STOPSIGNAL SIGTERM
ENTRYPOINT ["messaging-service"]
CMD ["run"]

# /healthz answers 200 while the event loop runs; slim images have no curl, Python has urllib.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HTTP_PORT', '8000'), timeout=4)"]
