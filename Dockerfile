# Build stage: a virtualenv with the dependencies (cached apart from the code), then the app.
FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install -r requirements.txt
COPY README.md ./
COPY app ./app
RUN pip install --no-deps . && python -m compileall -q /opt/venv

# Runtime stage: only the virtualenv, no compiler, a fixed non-root user.
FROM python:3.12-slim
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin ingest \
 && install -d -o 10001 -g 10001 /var/lib/ws-ingest/spool
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER 10001:10001
EXPOSE 9108
# Bytewax closes partitions on SIGINT; the service also handles SIGTERM the same way.
STOPSIGNAL SIGTERM
# Process i of a cluster serves on INGEST_METRICS_PORT + i.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD \
  python -c "import os, urllib.request; port = int(os.environ.get('INGEST_METRICS_PORT', 9108)) + int(os.environ.get('BYTEWAX_PROCESS_ID') or 0); urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"
CMD ["python", "-m", "app"]
