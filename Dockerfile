# windowgate services image: one image, three commands (see docker-compose.yml):
#   python -m services.ingest | python -m services.window worker | python -m services.dispatcher
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# README.md* : the pyproject names a readme; the glob keeps the build working while it is absent.
COPY pyproject.toml README.md* ./
COPY schemas ./schemas
COPY windowgate ./windowgate
COPY services ./services
RUN pip install . \
    && useradd --create-home --uid 10001 windowgate \
    && mkdir -p /data \
    && chown windowgate /data

# Working directory of the services: the window worker's faust data dir (RocksDB tables) lives here.
WORKDIR /data
USER windowgate
EXPOSE 8080 8081 8082
CMD ["python", "-m", "services.ingest"]
