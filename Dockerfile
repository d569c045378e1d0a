# The reliability daemon. `docker compose up` (docker-compose.yml) runs it with PostgreSQL,
# Prometheus, Alertmanager and Grafana; alone:
#   docker build -t reliability . && docker run -v $PWD/reliability.yaml:/etc/reliability/reliability.yaml:ro reliability
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/reliability \
        --create-home --shell /usr/sbin/nologin reliability

# The migrations live in the repository's alembic/, found next to the package: install the
# package in place (editable) from the whole tree, owned by root so the daemon cannot change it.
COPY . /app
RUN pip install -e /app \
    && chmod 0755 /app/deploy/docker-entrypoint.sh

USER reliability
WORKDIR /var/lib/reliability
ENV RELIABILITY_CONFIG=/etc/reliability/reliability.yaml
EXPOSE 9464

# /readyz answers 200 while the database and the scheduler are up, 503 otherwise
# (urlopen raises on 503). Assumes http.listen on 0.0.0.0:9464 or 127.0.0.1:9464.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/readyz', timeout=4)"]

# No arguments: `reliability db upgrade`, then exec `reliability daemon` (SIGTERM reaches it).
# Arguments run that command instead: `docker run IMAGE incidents list`.
ENTRYPOINT ["/app/deploy/docker-entrypoint.sh"]
