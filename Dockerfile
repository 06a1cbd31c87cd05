# syntax=docker/dockerfile:1
# The one image of every process (web, workers, beat, migrations, simulator): the runtime dependencies pinned in
# requirements.lock, the project itself, no test or dev tools, and a non-root user. The process is chosen by the
# command (docker-compose.yml, deploy/kubernetes/); the default serves the web tier.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# Dependencies first, from the lock file alone, so that a code change reuses this layer.
COPY requirements.lock ./
RUN pip install --requirement requirements.lock
COPY pyproject.toml README.md alembic.ini ./
COPY migrations ./migrations
COPY shared ./shared
COPY web ./web
COPY worker ./worker
# --no-deps: every dependency came from the lock file above. Editable, so that the code stays in /app beside
# alembic.ini and migrations/, where `model-router db upgrade` finds them (shared.store.migrate).
RUN pip install --no-deps --editable . \
    && python -m compileall -q shared web worker migrations
# EXTRAS=demo adds what only the simulator needs (compose's simulator service), at the dev lock's versions.
ARG EXTRAS=""
COPY requirements-dev.lock ./
RUN if [ -n "$EXTRAS" ]; then pip install --constraint requirements-dev.lock --editable ".[$EXTRAS]"; fi

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed uid/gid so that Kubernetes' runAsNonRoot can verify it; the writable directories are the metrics of
# this container's processes and beat's schedule (volumes in compose and Kubernetes).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app \
    && mkdir -p /var/lib/model-router/metrics /var/lib/model-router/beat \
    && chown -R app:app /var/lib/model-router
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001
EXPOSE 8000
CMD ["gunicorn", "--worker-class=gevent", "--bind=0.0.0.0:8000", "--config=python:web.gunicorn_conf", \
     "--no-control-socket", "web.app:create_app()"]
